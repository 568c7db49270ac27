"""Fault tests reuse the relay's fixtures: the simulator and a relay on loopback."""

from __future__ import annotations

from tests.relay.conftest import (  # noqa: F401 - fixtures
    gateway,
    relay_app,
    relay_settings,
    relay_url,
    sim,
    simulator,
)
