"""Routes of the management API, its OpenAPI schema and browsable docs."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from console.api.docs import api_docs, api_schema
from console.api.views.activity import AuditEntryViewSet, MeView, UsageViewSet
from console.api.views.billing import BalanceView, InvoiceViewSet, PriceListViewSet, TopUpView
from console.api.views.invitations import InvitationDetailView, InvitationListView
from console.api.views.keys import AccessTokenViewSet, ApiKeyViewSet
from console.api.views.organizations import OrganizationViewSet
from console.api.views.plans import PlanViewSet, SubscriptionView
from console.api.views.platform import CatalogModelViewSet, ChannelViewSet
from console.api.views.prices import TenantPricesView

app_name = "api"

router = DefaultRouter()
router.register("organizations", OrganizationViewSet, basename="organization")
router.register("keys", ApiKeyViewSet, basename="key")
router.register("tokens", AccessTokenViewSet, basename="token")
router.register("channels", ChannelViewSet, basename="channel")
router.register("models", CatalogModelViewSet, basename="model")
router.register("usage", UsageViewSet, basename="usage")
router.register("audit", AuditEntryViewSet, basename="audit")
router.register("price-lists", PriceListViewSet, basename="price-list")
router.register("invoices", InvoiceViewSet, basename="invoice")
router.register("plans", PlanViewSet, basename="plan")

urlpatterns = [
    path("me/", MeView.as_view(), name="me"),
    path("organizations/<slug:slug>/balance/", BalanceView.as_view(), name="balance"),
    path("organizations/<slug:slug>/topups/", TopUpView.as_view(), name="topups"),
    path("organizations/<slug:slug>/prices/", TenantPricesView.as_view(), name="tenant-prices"),
    path(
        "organizations/<slug:slug>/invitations/",
        InvitationListView.as_view(),
        name="invitations",
    ),
    path(
        "organizations/<slug:slug>/invitations/<int:invitation_id>/",
        InvitationDetailView.as_view(),
        name="invitation-detail",
    ),
    path("organizations/<slug:slug>/plan/", SubscriptionView.as_view(), name="subscription"),
    path("schema/", api_schema, name="schema"),
    path("docs/", api_docs, name="docs"),
    path("", include(router.urls)),
]
