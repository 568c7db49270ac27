"""``python -m tests.relay.clocked_relay <uvicorn arguments>``: a relay process whose
clock runs ``TEST_CLOCK_SHIFT_SECONDS`` ahead, moved by time-machine before Django loads.

Tests use it to move a relay process's time (a rolling window rolling on) without any
clock hook in the relay itself: everything the relay reads from the wall clock is moved,
the monotonic clock its event loop uses is not.
"""

from __future__ import annotations

import os
import sys
import time

import time_machine
from uvicorn.main import main

if __name__ == "__main__":
    shift = float(os.environ.get("TEST_CLOCK_SHIFT_SECONDS", "0"))
    time_machine.travel(time.time() + shift, tick=True).start()
    sys.exit(main())
