"""Callback delivery on a bounded, self-sizing set of threads (the delivery layer).

Ten thousand callback subscriptions must not mean ten thousand threads. A subscription with
messages waiting is put on the dispatcher's run queue (at most once at a time); a worker thread
takes it, runs its callbacks for a batch of messages, and puts it back at the end of the queue
if more are waiting. A subscription is held by one worker at a time, so its callbacks never run
concurrently or out of order (nats.c's shared delivery pool keeps order per subscription the
same way).

The pool sizes itself:

- it starts with no thread and grows to ``core`` workers as work arrives while none is idle;
- a worker that enters one of the bus's own blocking calls (``request()``, ``flush()``,
  ``next_msg()``...) is compensated at once by another worker when work is queued (as
  ForkJoinPool's managed blockers are), so callbacks that make requests to responders on the
  same bus never deadlock;
- a watchdog injects a worker when queued work has not moved for ``STALL`` seconds (a callback
  that sleeps or blocks on something the bus cannot see), so a slow callback delays others by
  about ``STALL`` at most, the starvation detection of thread pools such as .NET's;
- a worker idle for ``IDLE_TIMEOUT`` seconds ends, down to none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from typing import Deque, Iterator, List, Optional, Protocol, Sequence

log = logging.getLogger("telestion_sync.dispatch")

#: Queued work that has not moved for this long gets a new worker (the starvation bound).
STALL = 0.05
#: A worker with nothing to do for this long ends.
IDLE_TIMEOUT = 5.0
#: Messages one worker delivers from one subscription before it serves the next (fairness).
BATCH = 256
#: Workers started without waiting for the watchdog (callbacks are Python: more threads than
#: this only help callbacks that block).
CORE = max(2, min(8, os.cpu_count() or 2))
#: No more workers than this, however many callbacks block.
MAX_WORKERS = 2048


class Deliverable(Protocol):
    """What the dispatcher runs: a subscription (see ``Subscription._deliver_batch``)."""

    _scheduled: bool

    def _deliver_batch(self, budget: int) -> None:
        """Run callbacks for up to ``budget`` queued messages."""
        ...

    def _has_work(self) -> bool:
        """Whether it needs another turn (asked under the dispatcher's lock, so a message or
        an end that comes in meanwhile either is seen here or schedules it again)."""
        ...


class Dispatcher:
    """The delivery threads of one bus."""

    def __init__(self, name: str = "telestion_sync") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle workers wait here
        self._watch = threading.Condition(self._lock)  # the watchdog waits here
        self._runq: Deque[Deliverable] = deque()
        self._workers: List[threading.Thread] = []
        # Workers waiting for work and not yet woken: a woken one that has not taken the lock
        # yet must not be counted on again (the work queued meanwhile waited for it).
        self._idle = 0
        self._wakeups = 0  # wake-ups sent to waiting workers and not yet taken
        self._blocked = 0  # workers inside a blocking call of the bus
        self._moved = time.monotonic()  # the last time a worker took work off the queue
        self._watchdog: Optional[threading.Thread] = None
        self._guard_parked = False  # the watchdog waits without a deadline (nothing queued)
        self._closed = False
        self._local = threading.local()
        self._counter = 0
        self._capped = False

    # --- scheduling ------------------------------------------------------------------------

    def schedule(self, sub: Deliverable) -> None:
        """Queue ``sub`` for delivery unless it is queued or being delivered already."""
        self.schedule_many((sub,))

    def schedule_many(self, subs: Sequence[Deliverable]) -> None:
        """:meth:`schedule` for each of ``subs`` (a read batch's), under one lock."""
        with self._lock:
            if self._closed:
                return
            runq = self._runq
            added = 0
            for sub in subs:
                if not sub._scheduled:
                    sub._scheduled = True
                    runq.append(sub)
                    added += 1
            if added:
                self._kick(added)

    def _kick(self, added: int) -> None:
        """Get ``added`` newly queued subscriptions served (called with the lock held): wake
        idle workers, start one while under ``CORE``, else let the watchdog watch."""
        added -= self._wake_idle(added)
        while added and len(self._workers) - self._blocked < CORE and self._spawn():
            added -= 1
        if added:
            self._wake_watchdog()

    def _wake_idle(self, n: int) -> int:
        """Wake up to ``n`` idle workers (called with the lock held); how many."""
        n = min(n, self._idle)
        if n:
            self._idle -= n
            self._wakeups += n
            self._work.notify(n)
        return n

    def _spawn(self) -> bool:
        """Start a worker (called with the lock held); False at ``MAX_WORKERS`` or when the
        process can start no thread (the queued work waits for a worker that can)."""
        if len(self._workers) >= MAX_WORKERS:
            if not self._capped:
                self._capped = True
                log.warning("all %d delivery threads are busy; callbacks wait", MAX_WORKERS)
            return False
        self._counter += 1
        t = threading.Thread(target=self._run, name=f"{self._name}-deliver-{self._counter}", daemon=True)
        self._workers.append(t)
        try:
            t.start()
        except RuntimeError as exc:  # "can't start new thread": no dead entry left behind
            self._workers.remove(t)
            log.error("could not start a delivery thread: %s", exc)
            return False
        return True

    def _wake_watchdog(self) -> None:
        """Make sure the watchdog looks at the queue (called with the lock held). A watchdog
        already timing a non-empty queue looks again within ``STALL`` anyway: it is not woken
        (that was a thread switch per message when every worker was busy)."""
        if self._watchdog is None:
            watchdog = threading.Thread(target=self._guard, name=f"{self._name}-watchdog", daemon=True)
            try:
                watchdog.start()
            except RuntimeError as exc:  # tried again on the next call
                log.error("could not start the delivery watchdog: %s", exc)
                return
            self._watchdog = watchdog
        elif self._guard_parked:
            self._watch.notify()

    # --- the workers -----------------------------------------------------------------------

    def _run(self) -> None:
        me = threading.current_thread()
        self._local.worker = True
        lock = self._lock
        runq = self._runq
        sub: Optional[Deliverable] = None  # the one delivered last, put back under the lock
        try:
            while True:
                with lock:  # one round: the last subscription back, the next one out
                    if sub is not None:  # one in, one out below: nobody else to wake
                        self._put_back(sub)
                        sub = None
                    while not runq:
                        if self._closed:
                            return
                        self._idle += 1
                        woken = self._work.wait(IDLE_TIMEOUT)
                        if self._wakeups:  # one of the waiting workers was woken: this one
                            self._wakeups -= 1
                        else:
                            self._idle -= 1
                        if not woken and not runq:
                            return  # idle for long: the pool shrinks
                    sub = runq.popleft()
                    self._moved = time.monotonic()
                try:
                    sub._deliver_batch(BATCH)
                except Exception:  # a bug in delivery: reported, and the worker goes on
                    log.exception("delivery failed")
        finally:
            with lock:
                self._workers.remove(me)
                # A callback ended the thread (SystemExit): its subscription goes back, and
                # another worker (or the watchdog) must come for it, as for any queued work.
                if sub is not None and self._put_back(sub):
                    self._kick(1)

    def _put_back(self, sub: Deliverable) -> bool:
        """After a worker's turn (lock held): to the back of the queue when it has more, for
        fairness (True), else no longer scheduled."""
        if not self._closed and sub._has_work():
            self._runq.append(sub)  # still scheduled
            return True
        sub._scheduled = False
        return False

    def _guard(self) -> None:
        """Inject a worker when queued work does not move (all workers stuck in callbacks)."""
        with self._lock:
            while not self._closed:
                if self._runq and not self._idle:
                    stuck = time.monotonic() - self._moved
                    if stuck >= STALL:
                        log.debug("queued callbacks stuck for %.3f s: adding a delivery thread", stuck)
                        self._spawn()
                        self._moved = time.monotonic()  # give the new worker a chance first
                        stuck = 0.0
                    self._watch.wait(STALL - stuck)
                else:
                    self._guard_parked = True
                    try:
                        self._watch.wait()
                    finally:
                        self._guard_parked = False

    # --- blocking calls on worker threads --------------------------------------------------

    def on_worker(self) -> bool:
        """True on one of this dispatcher's delivery threads (a blocking call there needs
        :meth:`blocking`)."""
        return getattr(self._local, "worker", False)

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """Around a blocking call of the bus: on a delivery thread, another worker takes over
        the queued work at once (so callbacks that wait for other callbacks, e.g. requests to
        ``reply()`` handlers on the same bus, never deadlock); elsewhere it does nothing."""
        if not self.on_worker():
            yield
            return
        with self._lock:
            self._blocked += 1
            if self._runq and not self._idle:
                self._spawn()
        try:
            yield
        finally:
            with self._lock:
                self._blocked -= 1

    # --- figures and ending ----------------------------------------------------------------

    @property
    def threads(self) -> List[threading.Thread]:
        """The live delivery threads (and the watchdog)."""
        with self._lock:
            found = list(self._workers)
            if self._watchdog is not None:
                found.append(self._watchdog)
        return [t for t in found if t.is_alive()]

    def close(self, timeout: float) -> None:
        """Stop: queued work is dropped, workers end after the callback they run (joined for
        up to ``timeout`` seconds)."""
        with self._lock:
            self._closed = True
            for sub in self._runq:
                sub._scheduled = False
            self._runq.clear()
            self._work.notify_all()
            self._watch.notify_all()
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        for t in self.threads:
            if t is not me:
                t.join(max(0.0, deadline - time.monotonic()))


__all__ = ["Dispatcher", "Deliverable", "STALL", "IDLE_TIMEOUT", "BATCH", "CORE", "MAX_WORKERS"]
