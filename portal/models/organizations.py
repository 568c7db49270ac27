"""Organisations (platform → resellers → tenants) and people's memberships in them."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from portal.models.limits import LimitFields, SellerLimitFields


class Organization(LimitFields, SellerLimitFields):
    class Kind(models.TextChoices):
        PLATFORM = "platform", "Platform"
        RESELLER = "reseller", "Reseller"
        TENANT = "tenant", "Tenant"

    # Which kinds of organisation may sit directly above each kind.
    ALLOWED_PARENTS: dict[str, set[str]] = {
        Kind.PLATFORM: set(),
        Kind.RESELLER: {Kind.PLATFORM},
        Kind.TENANT: {Kind.PLATFORM, Kind.RESELLER},
    }

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    is_active = models.BooleanField(default=True)
    # Deactivated by its seller (its Limits & access page), who may reactivate it; a tenant
    # the operator deactivates (the admin) only the operator reactivates.
    deactivated_by_seller = models.BooleanField(
        default=False, db_default=False, verbose_name="deactivated by its seller"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(LimitFields.Meta):
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind="platform", parent__isnull=True)
                | ~models.Q(kind="platform") & models.Q(parent__isnull=False),
                name="organization_parent_matches_kind",
            ),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(kind="platform"), name="single_platform"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        allowed = self.ALLOWED_PARENTS.get(self.kind)
        if allowed is None:
            return  # field validation reports the invalid kind
        if self.parent is None and allowed:
            raise ValidationError({"parent": f"A {self.kind} needs a parent organisation."})
        if self.parent is not None and self.parent.kind not in allowed:
            raise ValidationError(
                {"parent": f"A {self.kind} cannot sit under a {self.parent.kind}."}
            )

    @property
    def is_tenant(self) -> bool:
        return self.kind == self.Kind.TENANT


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"
        BILLING = "billing", "Billing"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="unique_membership"),
        ]

    def __str__(self) -> str:
        return f"{self.user} → {self.organization} ({self.role})"
