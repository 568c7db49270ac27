"""The user interface: dashboard views, the management REST API, forms, admin and template tags.

It has no models; it builds on the relay, billing and the tenancy domain in ``portal``.
"""
