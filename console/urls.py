"""The console's URL routes: dashboard, sign-in, management API and admin.

``/v1/*`` never reaches these routes: config.asgi hands it to the lean relay app.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from console.sso import SsoCallbackView, SsoRequestView
from console.views import (
    accounts,
    billing,
    exports,
    invitations,
    operator,
    organizations,
    payments,
    plans,
    selling,
    sso,
    tenant,
    two_factor,
)

auth_patterns = [
    path("login/", accounts.ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "password/change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("password/reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password/reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("two-factor/", two_factor.two_factor_setup, name="two_factor_setup"),
    path("two-factor/verify/", two_factor.two_factor_verify, name="two_factor_verify"),
    path("tokens/", accounts.access_tokens, name="account_tokens"),
    path("sso/", sso.sso_start, name="sso_start"),
    path("sso/callback/", SsoCallbackView.as_view(), name="sso_callback"),
    path("sso/<slug:key>/", SsoRequestView.as_view(), name="sso_login"),
    path("tokens/<int:token_id>/revoke/", accounts.access_token_revoke, name="token_revoke"),
]

organization_patterns = [
    path("", organizations.overview, name="org"),
    path("keys/", tenant.keys, name="keys"),
    path("models/", tenant.models, name="tenant_models"),
    path("keys/<int:key_id>/revoke/", tenant.key_revoke, name="key_revoke"),
    path("usage/", tenant.usage, name="usage"),
    path("usage/export.csv", exports.usage_export, name="usage_export"),
    path("quickstart/", tenant.quickstart, name="quickstart"),
    path("members/", organizations.members, name="members"),
    path("members/<int:membership_id>/role/", organizations.member_role, name="member_role"),
    path("members/<int:membership_id>/remove/", organizations.member_remove, name="member_remove"),
    path("invitations/", organizations.invite, name="invite"),
    path(
        "invitations/<int:invitation_id>/revoke/",
        organizations.invitation_revoke,
        name="invitation_revoke",
    ),
    path("tenants/", organizations.tenants, name="tenants"),
    path("limits/", organizations.limits, name="tenant_limits"),
    path("status/", organizations.tenant_status, name="tenant_status"),
    path("billing/", billing.billing_page, name="billing"),
    path("billing/redeem/", billing.redeem, name="redeem"),
    path("billing/budget/", billing.budget, name="budget"),
    path("billing/terms/", billing.terms, name="terms"),
    path("billing/topup/", billing.topup, name="topup"),
    path("plans/", plans.plans, name="plans"),
    path("plan/", plans.plan, name="plan"),
    path("price-lists/", selling.price_lists, name="price_lists"),
    path("price-lists/<int:list_id>/", selling.price_list, name="price_list"),
    path("revenue/", selling.revenue, name="revenue"),
    path("codes/", selling.codes, name="codes"),
    path("invoices/", billing.invoices_issued, name="invoices_issued"),
    path("invoices/draft-now/", billing.invoices_draft_now, name="invoices_draft_now"),
    path("audit/", organizations.audit, name="org_audit"),
    path("payments/", payments.payments, name="payments"),
    path("payments/invoices/<int:invoice_id>/pay/", payments.invoice_pay, name="invoice_pay"),
    path("stripe/", payments.seller_stripe, name="seller_stripe"),
    path("sso/", sso.sso_settings, name="sso_settings"),
]

operator_patterns = [
    path("", operator.overview, name="operator"),
    path("channels/", operator.channels, name="channels"),
    path("channels/new/", operator.channel_create, name="channel_create"),
    path("channels/<int:channel_id>/", operator.channel_edit, name="channel_edit"),
    path("channels/<int:channel_id>/status/", operator.channel_status, name="channel_status"),
    path("channels/<int:channel_id>/test/", operator.channel_test, name="channel_test"),
    path("channels/<int:channel_id>/discover/", operator.channel_discover, name="channel_discover"),
    path("models/", operator.catalog, name="catalog"),
    path("organizations/", operator.organizations, name="operator_orgs"),
    path("usage/", operator.usage_log, name="usage_log"),
    path("invoices/", billing.operator_invoices, name="operator_invoices"),
    path(
        "invoices/draft-now/",
        billing.operator_invoices_draft_now,
        name="operator_invoices_draft_now",
    ),
    path("price-lists/", selling.operator_price_lists, name="operator_price_lists"),
    path("codes/", selling.operator_codes, name="operator_codes"),
    path("plans/", plans.operator_plans, name="operator_plans"),
    path("audit/", operator.audit, name="operator_audit"),
    path("stripe/", payments.operator_stripe, name="operator_stripe"),
]

urlpatterns = [
    path("", accounts.home, name="home"),
    path("models/", operator.public_models, name="models_public"),
    path("invite/<str:token>/", invitations.invitation_accept, name="invitation_accept"),
    path("account/", include(auth_patterns)),
    path("o/<slug:slug>/", include(organization_patterns)),
    path("operator/", include(operator_patterns)),
    path(
        "invoices/<int:invoice_id>/download.<str:fmt>",
        billing.invoice_download,
        name="invoice_download",
    ),
    path("invoices/<int:invoice_id>/<str:action>/", billing.invoice_action, name="invoice_action"),
    path("stripe/webhook/<uuid:account_id>/", payments.stripe_webhook, name="stripe_webhook"),
    path("api/", include("console.api.urls")),
    path("admin/", admin.site.urls),
]
