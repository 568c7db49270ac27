"""Tests of the console: dashboard views, the REST API, admin and the demo seed."""
