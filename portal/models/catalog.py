"""The model catalog: the public model ids clients may ask for."""

from __future__ import annotations

from django.db import models

# The client APIs (``/v1/...``) the relay serves; see relay/dialects.
SURFACES = ("chat", "responses", "messages", "embeddings", "completions")
TEXT_SURFACES = ("chat", "responses", "messages", "completions")


def default_model_surfaces() -> list[str]:
    return list(TEXT_SURFACES)


class CatalogModel(models.Model):
    """One public model id, e.g. ``gpt-4o-mini``; channels say which upstream serves it."""

    public_id = models.CharField(
        max_length=200,
        unique=True,
        help_text="The id clients send as `model` and see in /v1/models.",
    )
    owned_by = models.CharField(max_length=100, default="tollgate")
    description = models.CharField(max_length=500, blank=True)
    capabilities = models.JSONField(
        default=list,
        blank=True,
        help_text='Free-form tags, e.g. ["chat", "tools", "vision", "json_schema"].',
    )
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    surfaces = models.JSONField(
        default=default_model_surfaces,
        blank=True,
        help_text="Client APIs this model is offered on: chat, responses, messages, "
        'completions, embeddings (an embedding model: ["embeddings"]).',
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["public_id"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.public_id
