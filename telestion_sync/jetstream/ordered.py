"""Ordered consumers: replay a stream (or some subjects) in order, each message once.

An ordered consumer is a chain of ephemeral, memory-stored, ack-none consumers. Each message's
consumer sequence must be one more than the last; on a gap, a missed heartbeat, a lost or
deleted consumer or a reconnect the chain starts over with a new consumer from the last stream
sequence handed out + 1, so the user sees no gap and no duplicate (messages of an abandoned
consumer are dropped by name).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from ..errors import Error, TimeoutError
from .consumer import (
    ACCEPT,
    DROP,
    RESET,
    ConsumeContext,
    ErrorHandler,
    MessagesIterator,
    _Puller,
    _Pump,
    fetch_batch,
)
from .context import check_count, check_timeout
from .errors import InvalidArgumentError, JetStreamError
from .message import JetStreamMessage, ack_sequences
from .models import ConsumerConfig, ConsumerInfo, from_json, to_json

if TYPE_CHECKING:  # pragma: no cover
    from .context import JetStream

log = logging.getLogger("telestion_sync.jetstream.ordered")

#: How many messages an ordered ``consume``/``messages`` keeps requested (nats.go: 500). More,
#: because this client's reader thread shares the GIL with the consuming thread, which holds it
#: for up to the 5 ms switch interval: a fast replay (400k msg/s) takes 2000 messages in that
#: time, and a window of two such slices keeps the server sending while the other thread runs
#: (ordered replay 335k msg/s at 500, 385k at 2000, 405k at 5000). Ordered consumers ack
#: nothing, so a deeper window risks no redelivery. Large messages do not fill it: the window
#: is also bounded to about ``DEFAULT_WINDOW_BYTES`` (32 MiB) by the size of the messages.
ORDERED_MAX_MESSAGES = 4000


class OrderedConsumer(_Puller):
    """An ordered replay of a stream (``js.ordered_consumer(...)``): ``fetch``, ``next``,
    ``consume`` and ``messages`` like a :class:`Consumer`, one at a time; nothing to ack."""

    ordered = True

    def __init__(self, js: JetStream, stream: str, template: ConsumerConfig, prefix: str) -> None:
        self.js = js
        self.stream = stream
        self._template = template
        self._prefix = prefix
        self._serial = 0
        self.name = ""
        self._subject = ""
        self._expected = 1  # the next consumer sequence of the current consumer
        self._ack_prefix = "$JS.ACK.-"  # what the current consumer's ack subjects begin with
        self._ack_prefix_len = len(self._ack_prefix)
        self.last_stream_seq = 0  # the stream sequence last accepted (a pump may not have handed it out yet)
        self._initial_pending = -1
        self._pool = js._inbox_pool
        self._lock = threading.Lock()  # one fetch/next at a time (ordering)
        self._active: Optional[_Pump] = None
        # A consume()/messages() stopped: its pull requests may still deliver to its dead
        # inbox, so the next read starts over from the last message handed out.
        self._stale = False
        self.resets = 0

    def __repr__(self) -> str:
        return f"<OrderedConsumer {self.stream}/{self.name} last_seq={self.last_stream_seq}>"

    def _next_subject(self) -> str:
        return self._subject

    @property
    def initial_pending(self) -> int:
        """How many messages the first consumer had to deliver when it was created (what an
        initial replay must read before it is "caught up", as KV watchers need)."""
        return max(self._initial_pending, 0)

    def _check(self, msg: JetStreamMessage) -> int:
        reply = msg.msg.reply
        if reply is not None and reply.startswith(self._ack_prefix):
            # The common form, $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>...: the
            # prefix names the current consumer, so only the two sequences are parsed.
            t = reply[self._ack_prefix_len :].split(".", 3)
            try:
                sseq, cseq = int(t[1]), int(t[2])
            except (ValueError, IndexError):
                return DROP
        else:
            seqs = ack_sequences(reply)
            if seqs is None or seqs[0] != self.name:
                return DROP  # from a consumer abandoned by a reset
            _, sseq, cseq = seqs
        if cseq != self._expected:
            log.debug(
                "ordered consumer %s: consumer seq %d, expected %d: reset", self.name, cseq, self._expected
            )
            return RESET
        self._expected = cseq + 1
        if sseq <= self.last_stream_seq:
            return DROP  # never twice
        self.last_stream_seq = sseq
        return ACCEPT

    def _config(self) -> ConsumerConfig:
        cfg = dataclasses.replace(self._template)
        cfg.name = f"{self._prefix}_{self._serial}"
        cfg.ack_policy = "none"
        cfg.max_deliver = 1
        cfg.mem_storage = True
        cfg.replicas = 1
        if self.last_stream_seq > 0:
            cfg.deliver_policy = "by_start_sequence"
            cfg.opt_start_seq = self.last_stream_seq + 1
            cfg.opt_start_time = None
        elif cfg.deliver_policy is None:
            if cfg.opt_start_seq:
                cfg.deliver_policy = "by_start_sequence"
            elif cfg.opt_start_time is not None:
                cfg.deliver_policy = "by_start_time"
        return cfg

    def _reset(self, timeout: float) -> bool:
        """Start over with a new consumer from the last sequence + 1; False if that failed
        (the caller tries again later)."""
        old = self.name
        self._serial += 1
        cfg = self._config()
        body = {"stream_name": self.stream, "config": to_json(cfg), "action": "create"}
        try:
            resp = self.js.api(f"CONSUMER.CREATE.{self.stream}.{cfg.name}", body, timeout)
        except (Error, OSError) as exc:
            if self._serial == 1:
                raise  # the first creation: the caller's arguments may be wrong
            log.info("ordered consumer on %s: recreating failed (%s); will retry", self.stream, exc)
            return False
        resp.pop("type", None)
        info = from_json(ConsumerInfo, resp)
        if self._serial == 1:
            self._initial_pending = info.num_pending
        else:
            self.resets += 1
        self.name = cfg.name or ""
        self._subject = f"{self.js.api_prefix}.CONSUMER.MSG.NEXT.{self.stream}.{self.name}"
        self._ack_prefix = f"$JS.ACK.{self.stream}.{self.name}."
        self._ack_prefix_len = len(self._ack_prefix)
        self._expected = 1
        if old:
            self._delete_quietly(old)
        return True

    def _stopped(self, unhanded: Optional[JetStreamMessage]) -> None:
        self._stale = True
        if unhanded is not None:  # sorted (and counted in last_stream_seq) but never handed out
            seqs = ack_sequences(unhanded.msg.reply)
            if seqs is not None and seqs[1] - 1 < self.last_stream_seq:
                self.last_stream_seq = seqs[1] - 1

    def _reset_by(self, deadline: float) -> bool:
        """Start over with a new consumer, trying until ``deadline``; False if that failed."""
        while not self._reset(max(0.05, min(self.js.timeout, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        return True

    def _delete_quietly(self, name: str) -> None:
        """Remove an abandoned consumer without waiting for the answer (it would expire
        after ``inactive_threshold`` anyway)."""
        try:
            self.js.bus.publish(f"{self.js.api_prefix}.CONSUMER.DELETE.{self.stream}.{name}", b"")
        except Error:
            pass

    def _busy(self) -> None:
        if self._active is not None and not self._active.done:
            raise InvalidArgumentError(
                "an ordered consumer serves one consume()/messages() at a time; stop it first"
            )

    def fetch(self, batch: int = 1, timeout: float = 5.0) -> List[JetStreamMessage]:
        """Up to ``batch`` messages in order (fewer or none when the time is up)."""
        check_count(batch, "batch")
        timeout = check_timeout(timeout)
        self._busy()
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(True, timeout):
            return []
        try:
            if self._stale:
                if not self._reset_by(deadline):
                    return []
                self._stale = False
            while True:
                left = deadline - time.monotonic()
                try:
                    msgs, reset = fetch_batch(self, self._pool, batch, max(left, 0.0), None)
                except JetStreamError:
                    msgs, reset = [], True
                if reset and not self._reset_by(deadline):
                    self._stale = True
                    return msgs
                if msgs or time.monotonic() >= deadline:
                    return msgs
        finally:
            self._lock.release()

    def next(self, timeout: float = 5.0) -> JetStreamMessage:
        """The next message in order; ``ts.TimeoutError`` when none came in time."""
        msgs = self.fetch(1, timeout)
        if not msgs:
            raise TimeoutError(f"no message from ordered consumer on {self.stream!r} within {timeout} s")
        return msgs[0]

    def _pump(
        self,
        max_messages: int,
        expires: float,
        heartbeat: Optional[float],
        error_handler: Optional[ErrorHandler],
    ) -> _Pump:
        self._busy()
        pump = _Pump(self, max_messages, None, expires, heartbeat, error_handler)
        if self._stale:  # the pump recreates the consumer before its first pull
            pump.need_reset = True
            self._stale = False
        self._active = pump
        return pump

    def consume(
        self,
        callback: Callable[[JetStreamMessage], Any],
        *,
        max_messages: int = ORDERED_MAX_MESSAGES,
        expires: float = 30.0,
        heartbeat: Optional[float] = None,
        error_handler: Optional[ErrorHandler] = None,
    ) -> ConsumeContext:
        """Call ``callback(msg)`` for each message in stream order until stopped. Keeps up to
        ``max_messages`` and about ``DEFAULT_WINDOW_BYTES`` (32 MiB) of messages requested."""
        if not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        return ConsumeContext(self._pump(max_messages, expires, heartbeat, error_handler), callback)

    def messages(
        self,
        *,
        max_messages: int = ORDERED_MAX_MESSAGES,
        expires: float = 30.0,
        heartbeat: Optional[float] = None,
        error_handler: Optional[ErrorHandler] = None,
    ) -> MessagesIterator:
        """A blocking iterator over the messages in stream order (window as in :meth:`consume`)."""
        return MessagesIterator(self._pump(max_messages, expires, heartbeat, error_handler))

    def info(self, timeout: Optional[float] = None) -> Any:
        """The info of the consumer currently behind this ordered consumer."""
        return self.js.consumer_info(self.stream, self.name, timeout=timeout)

    def close(self) -> None:
        """Stop what runs and delete the current server-side consumer (without waiting)."""
        if self._active is not None:
            self._active.stop()
        if self.name:
            self._delete_quietly(self.name)
