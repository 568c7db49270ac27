"""Root URL routes of the Django side: everything people use lives in the console.

``/v1/*`` never reaches these routes: config.asgi hands it to the lean relay app.
"""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("console.urls")),
]
