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
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

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
        # token -> (future, subject, deadline)
        self._pending: Dict[str, Tuple[concurrent.futures.Future[PubAck], str, float]] = {}
        self._ids = itertools.count(1)
        self._sub: Optional[Subscription] = None
        self._prefix = ""
        self._prefix_len = 0
        self._sweeper: Optional[threading.Thread] = None
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
                    self._cond.wait(min(left, 0.25))
                    self._expire(time.monotonic())
            finally:
                self._waiters -= 1

    def publish(
        self,
        subject: str,
        data: Any,
        headers: Optional[Mapping[str, Any]],
        codec: _codecs.CodecSpec,
        timeout: float,
    ) -> concurrent.futures.Future[PubAck]:
        if self._sub is None:
            self._start()
        if self._closed:
            raise ConnectionClosedError("the bus is closed")
        if len(self._pending) >= self.max_pending:
            self._wait_for_room(timeout)
        fut: concurrent.futures.Future[PubAck] = concurrent.futures.Future()
        token = str(next(self._ids))
        self._pending[token] = (fut, subject, time.monotonic() + timeout)
        if self._sweeper is None:
            self._start_sweeper()
        try:
            self._js.bus.publish(subject, data, reply=self._prefix + token, headers=headers, codec=codec)
        except BaseException:
            self._pending.pop(token, None)
            raise
        return fut

    def _on_ack(self, msg: Message) -> None:
        entry = self._pending.pop(msg.subject[self._prefix_len :], None)
        if self._waiters:
            with self._cond:
                self._cond.notify_all()
        if entry is None:
            return  # timed out already
        fut, subject, _ = entry
        try:
            result = parse_pub_ack(msg, subject)
        except BaseException as exc:
            _settle(fut, None, exc)
        else:
            _settle(fut, result, None)

    def _expire(self, now: float) -> None:
        """Fail the futures whose ack is overdue."""
        late = [t for t, (_, _, dl) in list(self._pending.items()) if dl <= now]
        for t in late:
            entry = self._pending.pop(t, None)
            if entry is not None:
                _settle(entry[0], None, TimeoutError(f"no publish acknowledgement for {entry[1]!r} in time"))

    def _start_sweeper(self) -> None:
        with self._cond:
            if self._sweeper is None and not self._closed:
                self._sweeper = threading.Thread(
                    target=self._sweep, name="telestion_sync-js-ack-timeouts", daemon=True
                )
                self._sweeper.start()

    def _sweep(self) -> None:
        """Times out overdue acks; ends after 10 s with nothing outstanding or on close."""
        idle_since = time.monotonic()
        with self._cond:
            while not self._closed:
                self._cond.wait(0.25)
                now = time.monotonic()
                if self._pending:
                    idle_since = now
                    self._expire(now)
                    if self._waiters:
                        self._cond.notify_all()
                elif now - idle_since > 10.0:
                    break
            self._sweeper = None

    def _on_status(self, state: State) -> None:
        if state is State.CLOSED:
            self.close()

    def close(self) -> None:
        """Fail everything outstanding (the bus closed)."""
        with self._cond:
            self._closed = True
            pending = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        err = ConnectionClosedError("the bus closed before the publish was acknowledged")
        for fut, _, _ in pending:
            _settle(fut, None, err)
        if self._remove_listener is not None:
            self._remove_listener()

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
                    self._cond.wait(min(left, 0.25))
                    self._expire(time.monotonic())
            finally:
                self._waiters -= 1


def _settle(
    fut: concurrent.futures.Future[PubAck], result: Optional[PubAck], exc: Optional[BaseException]
) -> None:
    """Resolve a future unless the user cancelled it."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by the user
