"""Pull consumers: ``fetch``, ``next``, ``consume`` and the ``messages`` iterator.

Follows ADR-37 and nats.go's ``jetstream`` package. ``fetch`` sends one pull request with
``no_wait`` and ``expires`` (the server returns as soon as some messages are there and no more
are ready, or when it expires, slightly before the caller's timeout so no request is left
orphaned). ``consume``/``messages`` keep up to ``max_messages`` requested (and, unless
``max_bytes`` is given, about ``DEFAULT_WINDOW_BYTES`` by an estimate of the message size: see
``_Pump``), pull again when half were received, watch idle heartbeats (twice the interval
missed: pull again), read the 404/408/409 status messages, pause the heartbeat check while
disconnected and pull again after a reconnect (the server may have restarted and forgotten
every request): they never end because of a disconnect.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Iterator, List, Optional, Tuple

from ..connection import State
from ..errors import ConnectionClosedError, Error, TimeoutError
from ..message import Message
from ..subscription import Subscription, SubscriptionClosedError
from .context import check_count, check_timeout
from .errors import (
    ConsumerDeletedError,
    ConsumerNotFoundError,
    InvalidArgumentError,
    JetStreamError,
    NoHeartbeatError,
    StreamNotFoundError,
)
from .message import JetStreamMessage
from .models import ConsumerInfo, to_nanos

if TYPE_CHECKING:  # pragma: no cover
    from ..client import MessageBus
    from .context import JetStream

log = logging.getLogger("telestion_sync.jetstream.consumer")

ACCEPT, DROP, RESET = 0, 1, 2
PENDING_MSGS = "Nats-Pending-Messages"
PENDING_BYTES = "Nats-Pending-Bytes"
FETCH_HEARTBEAT = 5.0  # nats.go: fetches of 10 s or more ask for heartbeats every 5 s
POLL_INTERVAL = 0.25  # how soon a pump notices a reconnect, a stop or a heartbeat deadline
_POOL_SIZE = 16
_BATCH = 256  # messages a pump takes from its subscription at once

#: The bytes a ``consume``/``messages`` in message mode (no ``max_bytes``) keeps requested at
#: most, by its estimate of the message size: half of nats-server's default ``max_pending``
#: (64 MiB), the client backlog beyond which the server cuts the connection as a slow consumer
#: (a window of 500 messages of 1 MiB would be 500 MiB). ``max_bytes=`` chooses an exact byte
#: window instead.
DEFAULT_WINDOW_BYTES = 32 * 1024 * 1024
_PROTOCOL_BYTES = 40  # per message on the wire besides subject, reply, headers and payload: HMSG line, CRLFs
_SIZE_MEMORY = 64  # messages: how long the decaying average of the message size remembers

ErrorHandler = Callable[[BaseException], Any]


def _expires_for(timeout: float) -> float:
    """The server-side expiry for a client wait of ``timeout``: a little shorter, so the
    server ends the request (and says so) before the client stops listening."""
    return timeout - min(0.1, timeout / 10)


def _msg_size(m: Message) -> int:
    size = len(m.payload) + len(m.subject) + len(m.reply or "")
    h = m.headers
    if h:
        size += sum(len(k) + len(v) + 4 for k, v in h.items()) + 12
    return size


class _Puller:
    """What ``fetch``, ``consume`` and ``messages`` need from a consumer: where to send pull
    requests, and (ordered consumers) a check of each message and a way to start over."""

    js: JetStream
    stream: str
    ordered = False

    def _next_subject(self) -> str:
        raise NotImplementedError

    def _check(self, msg: JetStreamMessage) -> int:
        return ACCEPT

    def _reset(self, timeout: float) -> bool:
        return True

    def _stopped(self, unhanded: Optional[JetStreamMessage]) -> None:
        """A ``consume``/``messages`` on this consumer stopped, its pull requests perhaps still
        with the server; ``unhanded`` is the first message it took but never handed out."""

    def _gone(self, timeout: float) -> bool:
        """After a 503 to a pull request: True when the consumer (or its stream) does not
        exist; False when it does, or cannot be told now (a leader election in a cluster
        answers 503 too, and that must not read as a deleted consumer)."""
        name = getattr(self, "name", None)
        if name is None:
            return False
        try:
            self.js.consumer_info(self.stream, name, timeout=max(0.1, timeout))
        except (ConsumerNotFoundError, StreamNotFoundError):
            return True
        except Error:
            return False
        return False


class _InboxPool:
    """Pull subscriptions for fetches, reused when their request ended cleanly (saves a SUB
    and an UNSUB per fetch); taken by one fetch at a time, so concurrent fetches never mix."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._idle: List[Subscription] = []
        self._lock = threading.Lock()

    def take(self) -> Subscription:
        with self._lock:
            while self._idle:
                sub = self._idle.pop()
                if sub.is_valid and sub.pending == 0:
                    return sub
                sub.unsubscribe()
        return self._bus.subscribe(self._bus.new_inbox())

    def give(self, sub: Subscription, clean: bool) -> None:
        if clean and sub.is_valid and sub.pending == 0:
            with self._lock:
                if len(self._idle) < _POOL_SIZE:
                    self._idle.append(sub)
                    return
        sub.unsubscribe()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sub in idle:
            sub.unsubscribe()


def fetch_batch(
    puller: _Puller,
    pool: _InboxPool,
    batch: int,
    timeout: float,
    max_bytes: Optional[int],
) -> Tuple[List[JetStreamMessage], bool]:
    """One pull request: the messages received (fewer when the server had no more ready or the
    time is up) and whether an ordered consumer must start over."""
    bus = puller.js.bus
    deadline = time.monotonic() + timeout
    expires = _expires_for(timeout)
    hb = FETCH_HEARTBEAT if expires >= 10.0 else None
    body: dict = {"batch": batch, "no_wait": True}
    if expires >= 0.001:
        body["expires"] = to_nanos(expires)
    if hb:
        body["idle_heartbeat"] = to_nanos(hb)
    if max_bytes:
        body["max_bytes"] = max_bytes
    subject = puller._next_subject()
    sub = pool.take()
    clean = False
    out: List[JetStreamMessage] = []
    reset = False
    try:
        bus.publish(subject, json.dumps(body).encode(), reply=sub.subject)
        last = time.monotonic()
        while len(out) < batch:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                break
            if hb and now - last > 2 * hb:
                log.warning("fetch from %s: no heartbeat for %.1f s", subject, now - last)
                reset = puller.ordered
                break
            try:
                m = sub.next_msg(min(left, 2 * hb) if hb else left)
            except TimeoutError:
                continue
            last = time.monotonic()
            status = m.status
            if status is None:
                jm = JetStreamMessage(m, bus)
                verdict = puller._check(jm)
                if verdict == ACCEPT:
                    out.append(jm)
                elif verdict == RESET:
                    reset = True
                    break
                continue
            if status == 100:
                continue
            desc = m.description
            if status == 408 and desc == "Requests Pending" and not out:
                # Other requests wait for what is there: wait in line (no no_wait) instead.
                left = deadline - time.monotonic()
                if _expires_for(left) >= 0.001:
                    body.pop("no_wait", None)
                    body["expires"] = to_nanos(_expires_for(left))
                    bus.publish(subject, json.dumps(body).encode(), reply=sub.subject)
                    continue
                clean = True
                break
            if status in (404, 408):
                clean = True
                break
            if status == 409:
                if desc == "Consumer Deleted":
                    if puller.ordered:
                        reset = True
                        break
                    if not out:
                        raise ConsumerDeletedError(f"consumer on stream {puller.stream!r} was deleted", 409)
                    break
                if desc == "Leadership Change":
                    clean = True
                    break
                if not out:
                    raise JetStreamError(f"pull request refused: {desc}", 409)
                break
            if status == 503:
                if puller.ordered:
                    reset = True
                    break
                if out or not puller._gone(min(1.0, deadline - time.monotonic())):
                    clean = True  # e.g. a consumer leader being elected: nothing this time
                    break
                raise ConsumerNotFoundError(
                    f"no consumer answers {subject!r} (deleted, or JetStream unavailable)", 503, 10014
                )
            if not out:
                raise JetStreamError(f"pull request failed: {status} {desc}", status)
            break
        else:
            clean = True  # the batch is complete: the request is over
    except SubscriptionClosedError as exc:
        if out:
            return out, reset
        raise ConnectionClosedError(str(exc)) from exc
    finally:
        pool.give(sub, clean)
    return out, reset


class Consumer(_Puller):
    """A pull consumer on a stream (from ``js.create_consumer`` or ``js.consumer``).

    ``fetch``, ``next``, ``consume`` and ``messages`` may be used from any number of threads;
    each message goes to exactly one of them.
    """

    def __init__(self, js: JetStream, stream: str, name: str, info: Optional[ConsumerInfo]) -> None:
        self.js = js
        self.stream = stream
        self.name = name
        self.cached_info = info
        self._subject = f"{js.api_prefix}.CONSUMER.MSG.NEXT.{stream}.{name}"
        self._pool = js._inbox_pool

    def __repr__(self) -> str:
        return f"<Consumer {self.stream}/{self.name}>"

    def _next_subject(self) -> str:
        return self._subject

    def info(self, timeout: Optional[float] = None) -> ConsumerInfo:
        """The consumer's current state from the server (also kept as ``cached_info``)."""
        self.cached_info = self.js.consumer_info(self.stream, self.name, timeout=timeout)
        return self.cached_info

    def fetch(
        self, batch: int = 1, timeout: float = 5.0, *, max_bytes: Optional[int] = None
    ) -> List[JetStreamMessage]:
        """Up to ``batch`` messages: returns as soon as some arrived and the server has no
        more ready, or after ``timeout`` seconds with fewer or none (never an exception for
        an empty result). :class:`ConsumerNotFoundError` when the consumer is gone.

        One request for the whole ``batch``: the server sends it as fast as it can, and a
        batch of many large messages (beyond its ``max_pending``, 64 MiB by default) can make
        it cut the connection as a slow consumer. ``max_bytes`` bounds the batch in bytes."""
        check_count(batch, "batch")
        timeout = check_timeout(timeout)
        if max_bytes is not None:
            check_count(max_bytes, "max_bytes")
        return fetch_batch(self, self._pool, batch, timeout, max_bytes)[0]

    def next(self, timeout: float = 5.0) -> JetStreamMessage:
        """The next message; ``ts.TimeoutError`` when none came within ``timeout`` seconds."""
        msgs = self.fetch(1, timeout)
        if not msgs:
            raise TimeoutError(f"no message from consumer {self.stream}/{self.name} within {timeout} s")
        return msgs[0]

    def consume(
        self,
        callback: Callable[[JetStreamMessage], Any],
        *,
        max_messages: int = 500,
        max_bytes: Optional[int] = None,
        expires: float = 30.0,
        heartbeat: Optional[float] = None,
        error_handler: Optional[ErrorHandler] = None,
    ) -> ConsumeContext:
        """Call ``callback(msg)`` for every message, in order, on a thread of its own, until
        ``stop()``, ``drain()`` or the bus closes. Keeps pulling across reconnects and server
        restarts. Errors (missed heartbeats, a missing consumer, a raising callback) go to
        ``error_handler`` (default: logged). The callback acknowledges.

        Keeps up to ``max_messages`` requested, and no more than about ``DEFAULT_WINDOW_BYTES``
        (32 MiB) by the size of the messages received so far (the first pull assumes the
        server's ``max_payload``): large messages never pile up beyond the server's
        ``max_pending`` (which would cut the connection). ``max_bytes`` requests an exact
        byte window from the server instead."""
        if not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        pump = _Pump(self, max_messages, max_bytes, expires, heartbeat, error_handler)
        return ConsumeContext(pump, callback)

    def messages(
        self,
        *,
        max_messages: int = 500,
        max_bytes: Optional[int] = None,
        expires: float = 30.0,
        heartbeat: Optional[float] = None,
        error_handler: Optional[ErrorHandler] = None,
    ) -> MessagesIterator:
        """A blocking iterator over the consumer's messages; ends on ``stop()`` or when the
        bus closes (a disconnect does not end it). ``it.next(timeout)`` waits at most
        ``timeout`` seconds. The window is bounded as in :meth:`consume` (``max_messages``,
        and about ``DEFAULT_WINDOW_BYTES`` unless ``max_bytes`` is given)."""
        return MessagesIterator(_Pump(self, max_messages, max_bytes, expires, heartbeat, error_handler))


class _Pump:
    """Keeps pull requests outstanding for one ``consume``/``messages`` and hands out what
    arrives; ``poll`` runs on the consumer's thread (or the iterating thread).

    In message mode (no ``max_bytes``) the window is ``max_messages`` and also about
    ``window_bytes`` (``DEFAULT_WINDOW_BYTES``) by an estimate of the size of a message as the
    server sends it: the server cuts off a client whose backlog exceeds its ``max_pending``
    (64 MiB by default), and a window of large messages is sent faster than any client reads.
    Until a message has arrived the estimate is the server's ``max_payload`` (a first pull of
    32 messages with 1 MiB); then the larger of the last batch's average and a decaying
    average (a switch to large messages shrinks the next pull; small ones regain the full
    window within a few hundred messages), taken from the subscription's own figures once per
    batch (payloads; headers are not counted, subject, reply and framing are). The pull
    requests themselves stay message counts.
    """

    def __init__(
        self,
        puller: _Puller,
        max_messages: int,
        max_bytes: Optional[int],
        expires: float,
        heartbeat: Optional[float],
        error_handler: Optional[ErrorHandler],
    ) -> None:
        check_count(max_messages, "max_messages")
        if max_bytes is not None:
            check_count(max_bytes, "max_bytes")
        expires = check_timeout(expires, "expires")
        if expires < 1.0:
            raise InvalidArgumentError(f"expires must be at least 1 second, got {expires}")
        if heartbeat is None:
            heartbeat = min(expires / 2, 30.0)
        heartbeat = check_timeout(heartbeat, "heartbeat")
        if heartbeat <= 0 or heartbeat > expires / 2:
            raise InvalidArgumentError(f"heartbeat must be > 0 and at most half of expires ({expires / 2} s)")
        self.puller = puller
        self.bus = puller.js.bus
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.expires = expires
        self.heartbeat = heartbeat
        self._report_to = error_handler
        self.pending_msgs = 0
        self.pending_bytes = 0
        self.window_bytes = DEFAULT_WINDOW_BYTES
        # Bytes per message as the server sends it: the largest possible until one arrived.
        self._size = max(1, self.bus.max_payload)
        self._avg = 0  # decaying average of the size (0: nothing received yet)
        self._extra = _PROTOCOL_BYTES  # subject, reply and protocol bytes per message
        self._half = 0  # pull again when at most this many are outstanding (message mode)
        self._seen = (0, 0)  # the subscription's delivered count and bytes at the last estimate
        self._set_window()
        self.last_activity = time.monotonic()
        self._fresh = False  # messages handed out since the last wait (they were activity)
        self.paused = not self.bus.is_connected
        self.reconnected = False
        self.need_reset = False
        self.retry_at = 0.0
        self.backoff = 0.25
        self.stopped = False  # no more pulls
        self.draining = False  # hand out what has arrived before ending
        self.done = False
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()
        # No pending limits: the pull window bounds what can arrive, and a message dropped
        # here as a slow consumer's would only come back after ack_wait (or, ordered, cost
        # a reset), where a window of large messages is simply what was asked for.
        self.sub = self.bus.subscribe(self.bus.new_inbox(), pending_msgs_limit=-1, pending_bytes_limit=-1)
        self._buf: Deque[Message] = deque()  # taken from the subscription, not yet sorted
        self._ready: Deque[JetStreamMessage] = deque()  # sorted, counted: to hand out
        self._remove_listener = self.bus.add_status_listener(self._on_status)

    def report(self, err: BaseException) -> None:
        handler = self._report_to
        if handler is None:
            log.warning("%s: %s", type(err).__name__, err)
            return
        try:
            handler(err)
        except Exception:
            log.exception("JetStream error handler raised")

    def _on_status(self, state: State) -> None:
        if state is State.RECONNECTING:
            self.paused = True
        elif state is State.CONNECTED:
            self.paused = False
            self.reconnected = True
        elif state is State.CLOSED:
            self.done = True

    def stop(self) -> None:
        """No more pulls and no more messages; what is buffered is dropped."""
        self.stopped = True
        self.done = True
        try:
            unhanded: Optional[JetStreamMessage] = self._ready[0]
        except IndexError:
            unhanded = None
        self._buf.clear()
        self._ready.clear()
        self.puller._stopped(unhanded)
        self._remove_listener()
        if self.sub.is_valid or self.sub.pending:
            try:
                self.sub.unsubscribe()
            except Error:
                pass

    def stop_pulling(self) -> None:
        """For drain: no more pulls; what arrived is still handed out."""
        self.stopped = True
        self.draining = True
        self.puller._stopped(None)
        self._remove_listener()
        try:
            self.sub.drain(1.0)
        except Error:
            pass
        self.done = True

    def _set_window(self) -> None:
        """The re-pull threshold: half of the window that ``window_bytes`` and ``max_messages``
        allow at the estimated size (at least one message)."""
        window = min(self.max_messages, max(1, self.window_bytes // self._size))
        self._half = window // 2

    def _estimate(self, last: Message) -> None:
        """Messages arrived: update the size estimate once per batch, from the subscription's
        own figures (what it handed out since the last batch: no work per message)."""
        sub = self.sub
        n, nbytes = sub.delivered, sub.delivered_bytes
        n, nbytes, self._seen = n - self._seen[0], nbytes - self._seen[1], (n, nbytes)
        if n <= 0:
            return
        reply = last.reply
        if reply is not None:
            self._extra = len(last.subject) + len(reply) + _PROTOCOL_BYTES
        avg = nbytes // n + self._extra
        old = self._avg
        self._avg = avg if old == 0 else (old * _SIZE_MEMORY + avg * n) // (_SIZE_MEMORY + n)
        self._size = max(avg, self._avg, 1)
        self._set_window()

    def _pull(self) -> None:
        if self.max_bytes:
            batch = 1_000_000
            want = self.max_bytes - self.pending_bytes
            if want <= self.max_bytes // 2:
                return
            body = {"batch": batch, "max_bytes": want}
        else:
            pending = self.pending_msgs
            if pending > self._half:
                return
            size = self._size
            batch = min(self.max_messages - pending, max(1, (self.window_bytes - pending * size) // size))
            if batch <= 0:
                return
            want = 0
            body = {"batch": batch}
        body["expires"] = to_nanos(self.expires)
        body["idle_heartbeat"] = to_nanos(self.heartbeat)
        try:
            # Sent at once: with the writer thread waiting for the GIL behind a busy consumer,
            # a buffered pull request would leave the pipeline empty for milliseconds.
            self.bus.publish(
                self.puller._next_subject(), json.dumps(body).encode(), reply=self.sub.subject, immediate=True
            )
        except ConnectionClosedError:
            self.done = True
            return
        self.pending_msgs += batch
        self.pending_bytes += want

    def _start_over(self, now: float) -> None:
        self.pending_msgs = 0
        self.pending_bytes = 0
        self.last_activity = now
        if self.puller.ordered:
            self.need_reset = True

    def _failed(self, now: float) -> None:
        """Pull again later, with a growing wait (a restarting server, a missing consumer)."""
        self.pending_msgs = 0
        self.pending_bytes = 0
        self.retry_at = now + self.backoff
        self.backoff = min(self.backoff * 2, 5.0)

    def poll(self, timeout: Optional[float]) -> Optional[JetStreamMessage]:
        """The next message, or None after ``timeout`` or once ``done``."""
        ready = self._ready
        if ready and not self.done:
            try:
                return ready.popleft()  # sorted and counted already: no lock, no clock
            except IndexError:  # another thread took the last one
                pass
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(True, -1 if timeout is None else timeout):
            return None
        try:
            return self._poll(deadline)
        finally:
            self._lock.release()

    def _housekeeping(self, now: float, deadline: Optional[float]) -> None:
        """After a reconnect start over; pull (or first recreate an ordered consumer) when
        half of what was asked for has arrived, unless waiting out a failure."""
        if self.reconnected:
            self.reconnected = False
            self._start_over(now)
            self.retry_at = 0.0
        if self.paused or now < self.retry_at:
            return
        if self.need_reset:
            left = 5.0 if deadline is None else max(deadline - now, 0.05)
            if self.puller._reset(min(self.puller.js.timeout, max(left, 1.0))):
                self.need_reset = False
                self.pending_msgs = self.pending_bytes = 0
                self.backoff = 0.25
                self.last_activity = time.monotonic()
            else:
                self._failed(time.monotonic())
                return
        self._pull()

    def _poll(self, deadline: Optional[float]) -> Optional[JetStreamMessage]:
        sub = self.sub
        buf = self._buf
        ready = self._ready
        while True:
            if self.done:
                # After a failure (consumer deleted) or in a drain, what arrived before it is
                # still handed out; after stop() or a close nothing is.
                if ready and (self.draining or self.error is not None):
                    try:
                        return ready.popleft()
                    except IndexError:  # another thread took the last one (lock-free)
                        continue
                if not (self.draining and (buf or sub.pending)):
                    return None
            if not self.stopped and (
                self.reconnected or self.need_reset or self.max_bytes or self.pending_msgs <= self._half
            ):
                self._housekeeping(time.monotonic(), deadline)
            if ready:
                try:
                    return ready.popleft()
                except IndexError:  # another thread took the last one (lock-free)
                    continue
            if buf:
                self._sort(list(buf))
                continue
            now = time.monotonic()
            if self._fresh:  # messages were handed out since the last wait
                self._fresh = False
                self.last_activity = now
            if not self.stopped and not self.paused and now - self.last_activity > 2 * self.heartbeat:
                self.report(
                    NoHeartbeatError(
                        f"no message or heartbeat from {self.puller.stream} for "
                        f"{now - self.last_activity:.1f} s; pulling again",
                        408,
                    )
                )
                self._start_over(now)
                continue
            wait = POLL_INTERVAL if deadline is None else min(deadline - now, POLL_INTERVAL)
            try:
                # In batches: one wait and one check per batch, not per message.
                self._sort(sub.next_msgs(_BATCH, max(wait, 0.0)))
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
            except (ConnectionClosedError, SubscriptionClosedError):  # bus closed, or stop()
                self.done = True
                return None

    def _sort(self, msgs: List[Message]) -> None:
        """Turn messages taken from the subscription into messages to hand out, in order:
        count them against what was pulled, check an ordered consumer's sequence, act on
        status messages. Stops early when an ordered consumer must start over (the rest
        waits in ``_buf`` for the new consumer, which drops it by name) or after a failure."""
        buf = self._buf
        buf.clear()  # msgs is either new from the subscription or what was left here
        ready = self._ready
        bus = self.bus
        puller = self.puller
        ordered = puller.ordered
        check = puller._check
        by_bytes = self.max_bytes
        taken = 0  # data messages not yet counted against pending_msgs
        accepted = False
        i = 0
        for m in msgs:
            i += 1
            if m.status is None:
                taken += 1
                if by_bytes:
                    self.pending_bytes = max(0, self.pending_bytes - _msg_size(m))
                jm = JetStreamMessage(m, bus)
                if not ordered:
                    ready.append(jm)
                    continue
                verdict = check(jm)
                if verdict == ACCEPT:
                    accepted = True
                    ready.append(jm)
                elif verdict == RESET:
                    self._start_over(time.monotonic())
                    buf.extend(msgs[i:])
                    break
                continue
            self._count(taken)  # before the status acts on the pending counts
            taken = 0
            now = time.monotonic()
            self.last_activity = now
            self._on_status_msg(m, now)
            if self.error is not None or self.need_reset:
                buf.extend(msgs[i:])
                break
        self._count(taken)
        self._estimate(m)
        if accepted:
            self.backoff = 0.25

    def _count(self, taken: int) -> None:
        """``taken`` data messages arrived: that much less is still pulled."""
        if taken:
            self._fresh = True
            self.pending_msgs = max(0, self.pending_msgs - taken)

    def _on_status_msg(self, m: Message, now: float) -> None:
        status, desc, h = m.status, m.description, m.headers
        if status == 100:
            return
        if PENDING_MSGS in h:
            try:
                self.pending_msgs = max(0, self.pending_msgs - int(h[PENDING_MSGS]))
                self.pending_bytes = max(0, self.pending_bytes - int(h.get(PENDING_BYTES, "0")))
            except ValueError:
                self.pending_msgs = self.pending_bytes = 0
        elif status in (404, 408):
            self.pending_msgs = self.pending_bytes = 0
        if status in (404, 408):
            return
        if status == 409:
            if desc == "Consumer Deleted":
                if self.puller.ordered:
                    self._start_over(now)
                    return
                self.error = ConsumerDeletedError(
                    f"consumer on stream {self.puller.stream!r} was deleted", 409
                )
                self.report(self.error)
                self.done = True
                return
            if desc == "Leadership Change":
                self.pending_msgs = self.pending_bytes = 0
                return
            if PENDING_MSGS not in h:
                self.report(JetStreamError(f"pull request refused: {desc}", 409))
                self._failed(now)
            return
        if status == 503:
            self.report(
                ConsumerNotFoundError(
                    f"no consumer answers on stream {self.puller.stream!r} (deleted, or JetStream "
                    f"unavailable); trying again in {self.backoff:.2f} s",
                    503,
                    10014,
                )
            )
            if self.puller.ordered:
                self.need_reset = True
            self._failed(now)
            return
        self.report(JetStreamError(f"pull request failed: {status} {desc}", status or 0))
        self._failed(now)


class ConsumeContext:
    """A running ``consume()``: ``stop()`` ends it, ``drain()`` first hands the callback
    what has arrived; ``closed`` is set when its thread has ended."""

    def __init__(self, pump: _Pump, callback: Callable[[JetStreamMessage], Any]) -> None:
        self._pump = pump
        self._callback = callback
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telestion_sync-js-consume", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pump = self._pump
        try:
            while True:
                m = pump.poll(1.0)
                if m is None:
                    if pump.done:
                        return
                    continue
                try:
                    self._callback(m)
                except Exception as exc:
                    err = Error(f"consume callback raised {exc!r}")
                    err.__cause__ = exc
                    pump.report(err)
        finally:
            pump.stop()  # e.g. the consumer was deleted: its subscription and listener go too
            self.closed.set()

    @property
    def error(self) -> Optional[BaseException]:
        """What ended it (e.g. :class:`ConsumerDeletedError`), else None."""
        return self._pump.error

    def stop(self) -> None:
        """Stop now: no more pulls, no more callbacks after the one running (if any)."""
        self._pump.stop()

    def drain(self, timeout: float = 10.0) -> None:
        """Stop pulling, hand the callback what has arrived, then end (waits for that)."""
        self._pump.stop_pulling()
        if threading.current_thread() is not self._thread and not self.closed.wait(timeout):
            self._pump.stop()
            raise TimeoutError(f"consume did not drain within {timeout} s")

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the consume thread has ended; True if it has."""
        return self.closed.wait(timeout)

    def __enter__(self) -> ConsumeContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class MessagesIterator:
    """A blocking iterator over a consumer's messages (``for msg in c.messages()``)."""

    def __init__(self, pump: _Pump) -> None:
        self._pump = pump

    def __iter__(self) -> Iterator[JetStreamMessage]:
        return self

    def __next__(self) -> JetStreamMessage:
        pump = self._pump
        ready = pump._ready
        if ready and not pump.done:  # the common case: sorted already, no lock, no clock
            try:
                return ready.popleft()
            except IndexError:  # another thread took the last one
                pass
        m = pump.poll(None)
        if m is not None:
            return m
        try:
            return self.next(None)
        except SubscriptionClosedError:  # stopped, or the bus closed: the iteration ends
            raise StopIteration from None

    def next(self, timeout: Optional[float] = None) -> JetStreamMessage:
        """The next message; ``ts.TimeoutError`` after ``timeout`` seconds, and
        ``SubscriptionClosedError`` once stopped or the bus closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            m = self._pump.poll(left)
            if m is not None:
                return m
            if self._pump.error is not None:
                self._pump.stop()
                raise self._pump.error
            if self._pump.done:
                self._pump.stop()
                raise SubscriptionClosedError("the messages iterator was stopped or the bus closed")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no message from {self._pump.puller.stream} within {timeout} s")

    def stop(self) -> None:
        """End the iteration (a ``for`` loop over it ends after the current message)."""
        self._pump.stop()

    def drain(self) -> None:
        """Stop pulling; iteration ends once what has arrived is handed out."""
        self._pump.stop_pulling()

    def __enter__(self) -> MessagesIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
