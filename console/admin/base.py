"""What every portal admin shares: site titles and audited saves."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from portal.models import (
    AuditEntry,
    Organization,
)

admin.site.site_header = "Tollgate administration"
admin.site.site_title = "Tollgate"
admin.site.index_title = "Operator console"

REDACTED = "[redacted]"


def _jsonable(value: Any) -> Any:
    """Turn a form value into something AuditEntry.data (a JSONField) can store."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, models.Model):
        return {"id": value.pk, "repr": str(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [_jsonable(v) for v in value]
    return str(value)


class AuditedAdmin(admin.ModelAdmin):
    """Writes an AuditEntry for every add, change and delete made through the admin.

    The admin runs each form submission in a transaction, so the entry commits with the
    change. Values of password inputs and of fields named in ``audit_redacted_fields``
    are never logged, only the fact that they changed.
    """

    audit_name = ""
    audit_add_verb = "create"
    audit_redacted_fields: tuple[str, ...] = ()

    def audit_organization(self, obj: Any) -> Organization | None:
        return None

    def _is_secret(self, form: forms.ModelForm, name: str) -> bool:
        # Password inputs are redacted even when nobody remembered to list them.
        field = form.fields.get(name)
        return name in self.audit_redacted_fields or (
            field is not None and isinstance(field.widget, forms.PasswordInput)
        )

    def _audit(self, request: HttpRequest, obj: Any, verb: str, data: dict[str, Any]) -> None:
        AuditEntry.record(
            actor=request.user,
            action=f"{self.audit_name}.{verb}",
            target=obj,
            organization=self.audit_organization(obj),
            data={**data, "via": "admin"},
        )

    def save_model(
        self, request: HttpRequest, obj: Any, form: forms.ModelForm, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        changed = {
            name: REDACTED
            if self._is_secret(form, name)
            else _jsonable(form.cleaned_data.get(name))
            for name in form.changed_data
        }
        if change and not changed:
            return
        self._audit(request, obj, "update" if change else self.audit_add_verb, {"changed": changed})

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm, formsets: list[Any], change: bool
    ) -> None:
        super().save_related(request, form, formsets, change)
        for formset in formsets:
            if not formset.has_changed():
                continue
            self._audit(
                request,
                form.instance,
                "update",
                {
                    "inline": str(formset.model._meta.verbose_name_plural),
                    "added": [str(o) for o in formset.new_objects],
                    "changed": [
                        {"object": str(o), "fields": fields}
                        for o, fields in formset.changed_objects
                    ],
                    "deleted": [str(o) for o in formset.deleted_objects],
                },
            )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._audit(request, obj, "delete", {"repr": str(obj)})
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            self._audit(request, obj, "delete", {"repr": str(obj)})
        super().delete_queryset(request, queryset)
