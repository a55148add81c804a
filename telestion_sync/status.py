"""The status dispatcher: user callbacks for connection events and errors, on a thread of
their own.

The reader thread, the delivery threads and the reconnect loop never call user code for
status: they post here, and one status thread runs ``on_error``, ``on_disconnect``,
``on_reconnect``, ``on_discovered_servers``, ``on_lame_duck``, the status listeners of layers
built on the bus, and finally ``on_close``. The error queue is bounded: an error identical (type
and text) to one still queued is coalesced into it (``err.repeated`` counts the reports it
stands for), and past ``MAX_QUEUED_ERRORS`` distinct queued errors the rest are counted and
reported as one summary. Nothing is dropped unseen.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Dict, List, Optional

from .errors import Error

log = logging.getLogger("telestion_sync.status")

#: Distinct errors waiting for the status thread at most; identical ones are coalesced.
MAX_QUEUED_ERRORS = 1000

ErrorCallback = Callable[[BaseException], Any]


def log_error(err: BaseException) -> None:
    """What happens to a reported error when no ``on_error`` handler was given."""
    logging.getLogger("telestion_sync.client").warning("%s: %s", type(err).__name__, err)


class StatusDispatcher:
    """One bus's status thread and its bounded queue of errors and events."""

    def __init__(self, on_error: Optional[ErrorCallback], on_close: Optional[Callable[[], Any]]) -> None:
        self._on_error = on_error or log_error
        self._on_close = on_close
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.errors = 0  # every error reported (under _lock)
        self._queued: Dict[Any, BaseException] = {}  # (type, text) -> the queued one
        self._shed = 0  # reported while MAX_QUEUED_ERRORS distinct ones were queued
        self._listeners: List[Callable[[Any], Any]] = []  # copied on write, read lock-free

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="telestion_sync-status", daemon=True)
        self._thread.start()

    # --- posting (from any thread) ---------------------------------------------------------

    def post(self, fn: Optional[Callable[..., Any]], *args: Any) -> None:
        """Run ``fn(*args)`` on the status thread (nothing when ``fn`` is None)."""
        if fn is not None:
            self._q.put((fn, args))

    def report_error(self, err: BaseException) -> None:
        """Count ``err`` and hand it to ``on_error`` on the status thread (coalesced, bounded)."""
        key = (type(err), str(err))
        with self._lock:
            self.errors += 1
            queued = self._queued.get(key)
            if queued is not None:
                queued.repeated += 1  # type: ignore[attr-defined]
                return
            if len(self._queued) >= MAX_QUEUED_ERRORS:
                self._shed += 1
                return
            err.repeated = 1  # type: ignore[attr-defined]
            self._queued[key] = err
        self._q.put((self._deliver_error, (key,)))

    def add_listener(self, listener: Callable[[Any], Any]) -> Callable[[], None]:
        """Call ``listener(state)`` for every state posted with :meth:`tell`; returns a
        function that removes it."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {type(listener).__name__}")
        with self._lock:
            self._listeners = [*self._listeners, listener]

        def remove() -> None:
            with self._lock:
                self._listeners = [f for f in self._listeners if f is not listener]

        return remove

    def tell(self, state: Any) -> None:
        """Tell the listeners of a new connection state (on the status thread)."""
        self._q.put((self._tell, (state,)))

    # --- the status thread -----------------------------------------------------------------

    def _deliver_error(self, key: Any) -> None:
        with self._lock:
            err = self._queued.pop(key)
            shed, self._shed = self._shed, 0
        self._on_error(err)
        if shed:
            summary = Error(f"{shed} further error(s) were not reported one by one (error queue full)")
            summary.repeated = shed
            self._on_error(summary)

    def _tell(self, state: Any) -> None:
        for listener in self._listeners:
            try:
                listener(state)
            except Exception:
                log.exception("status listener %r raised", listener)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                break
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("status callback %r raised", fn)
        if self._on_close is not None:
            try:
                self._on_close()
            except Exception:
                log.exception("on_close callback raised")

    def close(self, timeout: float = 2.0) -> None:
        """Run what is queued, then ``on_close``, and end the thread (joined up to
        ``timeout`` seconds unless called from it)."""
        self._q.put(None)
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The status thread while it runs."""
        t = self._thread
        return t if t is not None and t.is_alive() else None


__all__ = ["StatusDispatcher", "MAX_QUEUED_ERRORS", "log_error"]
