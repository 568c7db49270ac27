"""URL routes of the Django side: admin, dashboard and management API.

``/v1/*`` never reaches these routes: config.asgi hands it to the lean relay app.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
