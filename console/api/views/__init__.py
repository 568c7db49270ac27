"""Viewsets of the management API; each scopes its queryset through ``portal.access``."""
