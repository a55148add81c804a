"""Work that must happen when a script ends without cleaning up (closing buses, stopping
recorders)."""

from __future__ import annotations

import atexit
import threading
from typing import Callable


def register_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` when the main thread ends, before Python joins the threads that are not
    daemons (as concurrent.futures does): a script whose own thread still iterates a
    subscription then still exits, since closing the bus ends that iteration. Plain atexit
    runs only after those threads ended, which they never would; it stays as the fallback
    (``fn`` must be idempotent). Later registrations run first."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(fn)
    atexit.register(fn)
