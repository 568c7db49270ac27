"""Server-rendered dashboard views; thin: authorise through ``portal.access``, call one
service, render."""
