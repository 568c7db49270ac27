"""Reads of plans and subscriptions that the dashboard and the API share."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from billing.models import Plan, Subscription
from portal.models import Organization


def plans_of(seller: Organization) -> QuerySet[Plan]:
    """A seller's plans, with their windows and how many tenants subscribe now."""
    return (
        Plan.objects.filter(seller=seller)
        .prefetch_related("windows")
        .annotate(subscribers=Count("subscriptions", filter=Q(subscriptions__status="active")))
        .order_by("-is_active", "name")
    )


def plans_offered_to(tenant: Organization) -> QuerySet[Plan]:
    """The plans a tenant may subscribe to: its seller's open ones."""
    return (
        Plan.objects.filter(seller_id=tenant.parent_id, is_active=True)
        .prefetch_related("windows")
        .order_by("monthly_fee_micros", "name")
    )


def subscriptions_sold_by(seller: Organization) -> QuerySet[Subscription]:
    """The current subscriptions of a seller's tenants."""
    return (
        Subscription.objects.filter(plan__seller=seller, status=Subscription.Status.ACTIVE)
        .select_related("tenant", "plan")
        .order_by("tenant__name")
    )


def active_subscription(tenant: Organization) -> Subscription | None:
    return (
        Subscription.objects.filter(tenant=tenant, status=Subscription.Status.ACTIVE)
        .select_related("plan")
        .prefetch_related("plan__windows")
        .first()
    )
