"""URL routes of the Django side: dashboard, sign-in, management API and admin.

``/v1/*`` never reaches these routes: config.asgi hands it to the lean relay app.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from portal.views import accounts, operator, organizations, tenant

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
    path("tokens/", accounts.access_tokens, name="account_tokens"),
    path("tokens/<int:token_id>/revoke/", accounts.access_token_revoke, name="token_revoke"),
]

organization_patterns = [
    path("", organizations.overview, name="org"),
    path("keys/", tenant.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", tenant.key_revoke, name="key_revoke"),
    path("usage/", tenant.usage, name="usage"),
    path("quickstart/", tenant.quickstart, name="quickstart"),
    path("members/", organizations.members, name="members"),
    path("tenants/", organizations.tenants, name="tenants"),
    path("billing/", organizations.billing, name="billing"),
    path("audit/", organizations.audit, name="org_audit"),
]

operator_patterns = [
    path("", operator.overview, name="operator"),
    path("channels/", operator.channels, name="channels"),
    path("channels/new/", operator.channel_create, name="channel_create"),
    path("channels/<int:channel_id>/", operator.channel_edit, name="channel_edit"),
    path("channels/<int:channel_id>/status/", operator.channel_status, name="channel_status"),
    path("channels/<int:channel_id>/test/", operator.channel_test, name="channel_test"),
    path("models/", operator.catalog, name="catalog"),
    path("organizations/", operator.organizations, name="operator_orgs"),
    path("audit/", operator.audit, name="operator_audit"),
]

urlpatterns = [
    path("", accounts.home, name="home"),
    path("models/", operator.public_models, name="models_public"),
    path("account/", include(auth_patterns)),
    path("o/<slug:slug>/", include(organization_patterns)),
    path("operator/", include(operator_patterns)),
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]
