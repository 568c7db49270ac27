"""``python -m relay.simulator``: serve the simulated upstream."""

from __future__ import annotations

import sys

from relay.simulator.cli import main

sys.exit(main())
