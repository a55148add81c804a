"""Asynchronous JetStream publishing: futures resolved by one wildcard reply subscription.

Every ``publish_async`` sends a plain publish whose reply subject is ``<inbox>.<n>`` on one
callback subscription to ``<inbox>.*``; the ack resolves the future registered under ``n``.
A window bounds the acks outstanding (``publish_async`` blocks while it is full); an ack that
does not come within its timeout fails its future with ``ts.TimeoutError``.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import re
import threading
import time
from concurrent.futures import _base
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from .. import codecs as _codecs
from ..connection import State
from ..errors import ConnectionClosedError, NoRespondersError, TimeoutError
from ..message import Message
from ..subscription import Subscription
from .errors import JetStreamError, api_error
from .models import PubAck

if TYPE_CHECKING:  # pragma: no cover
    from .context import JetStream

log = logging.getLogger("telestion_sync.jetstream.publish")

DEFAULT_MAX_PENDING = 4000  # nats.go's PublishAsyncMaxPending


# The common acknowledgement, ``{"stream":"S","seq":1}`` (no duplicate, domain or error):
# read without the JSON parser (a third of the cost of an ack); anything else goes to json.
_PLAIN_ACK = re.compile(rb'\{"stream":"([^"\\]+)","seq":(\d+)\}')


def parse_pub_ack(msg: Message, subject: str) -> PubAck:
    """The PubAck in a stream's reply, or the exception its error stands for."""
    m = _PLAIN_ACK.fullmatch(msg.payload)
    if m is not None and msg.header_block is None:
        return PubAck(m.group(1).decode(), int(m.group(2)))
    if msg.status == 503:
        raise NoRespondersError(subject)
    try:
        resp = json.loads(msg.payload)
    except ValueError as exc:
        raise JetStreamError(
            f"invalid publish acknowledgement for {subject!r}: {msg.payload[:80]!r}"
        ) from exc
    if not isinstance(resp, dict):
        raise JetStreamError(f"invalid publish acknowledgement for {subject!r}: {resp!r}")
    err = resp.get("error")
    if err:
        raise api_error(err, f"publish to {subject!r}")
    if "stream" not in resp or "seq" not in resp:
        raise JetStreamError(f"invalid publish acknowledgement for {subject!r}: {resp!r}")
    return PubAck(resp["stream"], int(resp["seq"]), bool(resp.get("duplicate", False)), resp.get("domain"))


_LAZY = threading.Lock()  # makes a PubAckFuture's condition, or settles one that has none


class PubAckFuture(concurrent.futures.Future[PubAck]):
    """The ``concurrent.futures.Future`` of one ``publish_async``, made for thousands in flight.

    A plain Future builds a ``threading.Condition`` (an object, its dict, a deque and an RLock)
    up front; with 4000 publishes outstanding those objects are most of what the garbage
    collector walks, and they cost a third of the publishing thread's time. Here the condition
    is made on first need (a waiter, a done-callback, ``cancel``, ``concurrent.futures.wait``);
    an ack that finds none settles the future without it. It is a Future in every other way.
    """

    def __init__(self, subject: str, deadline: float) -> None:  # Future's state, no condition
        self._state = _base.PENDING
        self._result: Any = None
        self._exception: Optional[BaseException] = None
        self._waiters: List[Any] = []
        self._done_callbacks: List[Any] = []
        self.subject = subject
        self.deadline = deadline

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]  # made lazily here
        cond = self.__dict__.get("_cond")
        if cond is None:
            with _LAZY:
                cond = self.__dict__.get("_cond")
                if cond is None:
                    cond = self.__dict__["_cond"] = threading.Condition()
        return cond

    def settle(self, result: Optional[PubAck], exc: Optional[BaseException]) -> None:
        """Resolve it (unless cancelled): without a condition when nobody could be waiting."""
        with _LAZY:
            if "_cond" not in self.__dict__:
                # No condition: no waiter, no callback, no cancel so far; one that comes now
                # makes the condition under _LAZY and then sees the state set here.
                if self._state == _base.PENDING:
                    self._result = result
                    self._exception = exc
                    self._state = _base.FINISHED
                return
        try:
            if exc is not None:
                self.set_exception(exc)
            else:
                self.set_result(result)  # type: ignore[arg-type]  # None only with exc
        except concurrent.futures.InvalidStateError:
            pass  # cancelled by the user


class AsyncPublisher:
    """The outstanding asynchronous publishes of one :class:`JetStream` context.

    The table of outstanding acks is a dict changed without a lock (single dict operations are
    atomic); the condition is only taken when someone waits (a full window, ``complete``), so
    publishing and the ack thread do not contend on every message.
    """

    def __init__(self, js: JetStream, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._js = js
        self.max_pending = max_pending
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0  # threads blocked on the window or in complete() (under _cond)
        # Waiters are woken once the window is down to this, not on every ack: a publisher
        # stalled on a full window then sends a burst instead of one message per wake-up
        # (nats.go likewise releases its stalled publishers once).
        self._low_water = max_pending - max(1, max_pending // 4)
        self._sweep_wake = threading.Event()  # set on close: the sweeper ends
        self._pending: Dict[str, PubAckFuture] = {}  # by reply token
        self._ids = itertools.count(1)
        self._sub: Optional[Subscription] = None
        self._prefix = ""
        self._prefix_len = 0
        self._sweeper: Optional[threading.Thread] = None
        self._idle_exit = 10.0  # seconds with nothing outstanding after which the sweeper ends
        self._closed = False
        self._remove_listener: Any = None

    @property
    def pending(self) -> int:
        """Acks not yet received."""
        return len(self._pending)

    def _start(self) -> None:
        """Subscribe the reply inbox and start the ack-timeout sweeper (once)."""
        with self._cond:
            if self._sub is not None:
                return
            if self._closed:
                raise ConnectionClosedError("the bus is closed")
            bus = self._js.bus
            prefix = bus.new_inbox() + "."
            self._prefix_len = len(prefix)
            self._sub = bus.subscribe(prefix + "*", self._on_ack, codec="raw")
            self._prefix = prefix
            self._remove_listener = bus.add_status_listener(self._on_status)

    def _wait_for_room(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while len(self._pending) >= self.max_pending:
                    if self._closed:
                        raise ConnectionClosedError("the bus is closed")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"publish_async: {len(self._pending)} acks outstanding (window "
                            f"{self.max_pending}) and none came within {timeout} s"
                        )
                    self._cond.wait(min(left, 0.25))  # overdue acks: the sweeper fails them
            finally:
                self._waiters -= 1

    def publish(
        self,
        subject: str,
        data: Any,
        headers: Optional[Mapping[str, Any]],
        codec: _codecs.CodecSpec,
        timeout: float,
    ) -> PubAckFuture:
        if self._sub is None:
            self._start()
        if self._closed:
            raise ConnectionClosedError("the bus is closed")
        if len(self._pending) >= self.max_pending:
            self._wait_for_room(timeout)
        fut = PubAckFuture(subject, time.monotonic() + timeout)
        token = str(next(self._ids))
        self._pending[token] = fut
        if self._sweeper is None:
            self._start_sweeper()
        try:
            self._js.bus.publish(subject, data, reply=self._prefix + token, headers=headers, codec=codec)
        except BaseException:
            self._pending.pop(token, None)
            raise
        return fut

    def _on_ack(self, msg: Message) -> None:
        pending = self._pending
        token = msg.subject[self._prefix_len :]
        entry = pending.get(token)
        if entry is not None:  # else timed out already
            try:
                result = parse_pub_ack(msg, entry.subject)
            except BaseException as exc:
                entry.settle(None, exc)
            else:
                entry.settle(result, None)
            # Removed once settled: complete() sees the table empty only with every future done.
            pending.pop(token, None)
        if self._waiters and len(pending) <= self._low_water:
            with self._cond:
                self._cond.notify_all()

    def _expire(self, now: float) -> None:
        """Fail the futures whose ack is overdue (each settled before it leaves the table, so
        complete() never sees the table empty while one is still pending)."""
        for t, fut in list(self._pending.items()):
            if fut.deadline <= now:
                fut.settle(None, TimeoutError(f"no publish acknowledgement for {fut.subject!r} in time"))
                self._pending.pop(t, None)

    def _start_sweeper(self) -> None:
        with self._cond:
            if self._sweeper is None and not self._closed:
                self._sweeper = threading.Thread(
                    target=self._sweep, name="telestion_sync-js-ack-timeouts", daemon=True
                )
                self._sweeper.start()

    def _sweep(self) -> None:
        """Times out overdue acks four times a second (sleeping on an event of its own, not
        woken by acks); ends after 10 s with nothing outstanding or on close."""
        idle_since = time.monotonic()
        while not self._closed:
            self._sweep_wake.wait(0.25)
            now = time.monotonic()
            if self._pending:
                idle_since = now
                self._expire(now)
                if self._waiters:
                    with self._cond:
                        self._cond.notify_all()
            elif now - idle_since > self._idle_exit:
                with self._cond:
                    self._sweeper = None  # a publish from now on starts another sweeper
                if not self._pending:
                    return  # and none before added an entry: nothing is left unswept
                with self._cond:  # a publish that saw this sweeper still running came
                    if self._sweeper is not None or self._closed:
                        return  # it started another
                    self._sweeper = threading.current_thread()
                idle_since = now
        with self._cond:
            if self._sweeper is threading.current_thread():
                self._sweeper = None

    def _on_status(self, state: State) -> None:
        if state is State.CLOSED:
            self.close()

    def close(self) -> None:
        """Fail everything outstanding (the bus closed) and end the sweeper (joined: it does
        not outlive ``bus.close()``, which runs this on its status thread)."""
        with self._cond:
            self._closed = True
            pending = list(self._pending.values())
            sweeper = self._sweeper
        self._sweep_wake.set()
        err = ConnectionClosedError("the bus closed before the publish was acknowledged")
        for fut in pending:
            fut.settle(None, err)
        with self._cond:  # emptied after the settles: complete() returns with every future done
            self._pending.clear()
            self._cond.notify_all()
        if self._remove_listener is not None:
            self._remove_listener()
        if sweeper is not None and sweeper is not threading.current_thread():
            sweeper.join(1.0)

    def complete(self, timeout: float) -> None:
        """Wait until every outstanding ack arrived (or failed); raise ts.TimeoutError naming
        how many are still outstanding after ``timeout`` seconds."""
        if not self._pending:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            try:
                while self._pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        left_over = len(self._pending)
                        raise TimeoutError(
                            f"{left_over} publish acknowledgements still outstanding after {timeout} s"
                        )
                    self._cond.wait(min(left, 0.25))  # overdue acks: the sweeper fails them
            finally:
                self._waiters -= 1
