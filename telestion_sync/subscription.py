"""Subscriptions: a bounded pending queue each, drained by callbacks or by ``next_msg``.

The socket reader only appends to a subscription's queue (and drops, counts and reports when the
queue is full), so a slow callback never stalls reading. A callback subscription is delivered in
order by the bus's dispatcher (a shared, self-sizing set of threads, see ``dispatch.py``) or, when
asked for, on a thread of its own; one without a callback is pulled with ``next_msg(timeout)`` or
iteration, by any number of threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Protocol

from . import codecs as _codecs
from .dispatch import Dispatcher
from .errors import ConnectionClosedError, DecodeError, Error, SlowConsumerError, TimeoutError
from .message import Message, MessageContext, MessageHost
from .options import CALL, check_max_msgs, check_seconds, check_wait, effective_limit
from .protocol import encode_unsub

log = logging.getLogger("telestion_sync.subscription")

#: nats.go's defaults for a subscription's pending limits.
DEFAULT_PENDING_MSGS_LIMIT = 512 * 1024
DEFAULT_PENDING_BYTES_LIMIT = 64 * 1024 * 1024

Callback = Callable[[Message], Any]
_COND_LOCK = threading.Lock()  # guards the lazy creation of subscriptions' conditions
#: ``active`` is set while the current thread runs a callback (pool worker or own thread).
_delivering = threading.local()


def in_callback() -> bool:
    """True while the calling thread runs a subscription callback (of any subscription)."""
    return getattr(_delivering, "active", False)


class SubscriptionClosedError(Error):
    """The subscription was unsubscribed, drained, or reached its auto-unsubscribe limit.

    Not a :class:`ConnectionClosedError`: the bus may well be alive. A pull subscription whose
    bus closed raises ``ConnectionClosedError`` from ``next_msg`` instead; iteration ends
    quietly on either."""


class SubscriptionHost(MessageHost, Protocol):
    """What a subscription needs from its bus (the narrow interface; ``MessageBus`` is one)."""

    def _unsubscribe(self, sub: Subscription) -> None: ...

    def _auto_unsubscribe(self, sub: Subscription, max_msgs: int) -> None: ...

    def _drain_sub(self, sub: Subscription, timeout: Optional[float]) -> None: ...

    def _remove_sub(self, sid: int) -> Optional[Subscription]: ...

    def _count_unrouted(self) -> None: ...


class SubscriptionTable:
    """A bus's live subscriptions by sid: the reader's routing table (``get`` is the dict's
    own, for the hot path), the SUB frames a new connection replays, and the figures of
    messages no subscription took."""

    def __init__(self) -> None:
        self._subs: Dict[int, Subscription] = {}
        self.get = self._subs.get
        self.unrouted = 0  # messages for no live subscription (reader thread only)
        self._dropped_gone = 0  # slow-consumer drops of subscriptions that have ended

    def add(self, sub: Subscription) -> None:
        self._subs[sub.sid] = sub

    def remove(self, sid: int) -> Optional[Subscription]:
        """Take a subscription out (its drops stay counted); None when it was not in."""
        sub = self._subs.pop(sid, None)
        if sub is not None:
            self._dropped_gone += sub.dropped
        return sub

    def all(self) -> List[Subscription]:
        """A snapshot: safe while other threads subscribe and unsubscribe."""
        return list(self._subs.values())

    def __len__(self) -> int:
        return len(self._subs)

    @property
    def dropped(self) -> int:
        """Slow-consumer drops of every subscription, live or ended."""
        return self._dropped_gone + sum(sub.dropped for sub in self.all())

    def resubscribe_frames(self) -> List[bytes]:
        """SUB frames for every live subscription not being drained, with what is left of
        auto-unsubscribe limits."""
        frames = []
        for sub in self.all():
            if sub._draining:
                continue
            frames.append(sub._sub_frame)
            if sub._max is not None:
                left = sub._max - sub._received
                if left > 0:
                    frames.append(encode_unsub(sub.sid, left))
        return frames


class Subscription(MessageContext):
    """Interest in a subject (with wildcards and an optional queue group).

    ``pending`` counts messages waiting to be delivered, ``delivered`` those handed to the user,
    ``dropped`` those lost because the pending limits were reached (each drop is also reported
    to the bus's error handler as :class:`~telestion_sync.SlowConsumerError`).
    """

    _bus: SubscriptionHost  # never None here, unlike a detached MessageContext

    def __init__(
        self,
        bus: SubscriptionHost,
        sid: int,
        subject: str,
        queue: Optional[str],
        callback: Optional[Callback],
        codec: _codecs.Codec,
        schema: Optional[Callable[[Any], Any]],
        pending_msgs_limit: int,
        pending_bytes_limit: int,
        dispatcher: Optional[Dispatcher] = None,
        own_thread: bool = False,
    ) -> None:
        # Negative (unlimited) becomes a limit no queue reaches: _enqueue's check is unchanged.
        pending_msgs_limit = effective_limit(pending_msgs_limit)
        pending_bytes_limit = effective_limit(pending_bytes_limit)
        self._bus = bus
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self._callback = callback
        self.codec = codec
        self.schema = schema
        self.pending_msgs_limit = pending_msgs_limit
        self.pending_bytes_limit = pending_bytes_limit
        self._queue: Deque[Message] = deque()
        # Made on first need (a pull subscription that never waits never pays for it); a
        # waiter creates it before it looks at the queue, a closer sets _closed before it looks
        # for it, so no wake-up is lost.
        self._cond: Optional[threading.Condition] = None
        # Consumers in (or about to enter) wait(), counted under _cond; read by the reader. A
        # count, not a flag: with several threads pulling, one that times out must not hide
        # the others from the reader's wake-up (a lost wake-up left a message queued while a
        # second thread slept out its whole timeout).
        self._waiters = 0
        self._touched = False  # already in the reader's wake list for this batch
        # Counters written by exactly one thread each, so no lock is needed.
        self._received = 0  # reader
        self._bytes_in = 0  # reader
        self._dropped = 0  # reader
        self._slow = False  # reader
        self._delivered = 0  # consumer
        self._bytes_out = 0  # consumer
        self._max: Optional[int] = None
        self._sub_frame = b""  # the SUB frame, replayed on reconnect
        self._closed = False  # no more messages will be queued
        self._draining = False  # drain() sent its UNSUB: never subscribed again on a reconnect
        # unsubscribe()/close() ran: nothing more is handed out, not even what is queued.
        self._stopped = False
        # Held while a callback runs, so unsubscribe() from another thread can wait for it.
        self._deliver_lock = threading.Lock()
        self._error: Optional[BaseException] = None  # why it failed, raised by next_msg
        self._thread: Optional[threading.Thread] = None  # a callback's own thread, if asked for
        # Pooled callbacks: the dispatcher, whether the sub is on its run queue or being
        # delivered (under the dispatcher's lock), and the thread delivering it now.
        self._pool = dispatcher if callback is not None and not own_thread else None
        self._dispatcher = dispatcher  # told when a delivery thread blocks in next_msg()
        self._scheduled = False
        self._deliverer: Optional[threading.Thread] = None
        # Callbacks run in the context of the thread that subscribed (contextvars): in a
        # notebook, what a callback prints lands under the cell that subscribed.
        self._context = contextvars.copy_context()
        self._finished = False  # closed and everything pending delivered (under _cond)
        # Decoding happens before delivery when it can fail, so a bad payload never reaches a
        # callback; otherwise it is left to the first access of ``msg.data``.
        self._eager = schema is not None or codec is not _codecs.AUTO and codec is not _codecs.RAW
        self.on_decode_error: Optional[Callable[[Message, DecodeError], None]] = None
        if callback is not None and self._pool is None:
            self._get_cond()
            self._thread = threading.Thread(
                target=self._run, name=f"telestion_sync-sub-{sid}-{subject}", daemon=True
            )
            self._thread.start()

    # --- counters ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages received and not yet delivered (0 once unsubscribed: none will be)."""
        return 0 if self._stopped else len(self._queue)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes received and not yet delivered."""
        return self._bytes_in - self._bytes_out

    @property
    def delivered(self) -> int:
        """Messages handed to the callback or returned by ``next_msg``."""
        return self._delivered

    @property
    def delivered_bytes(self) -> int:
        """Payload bytes of the messages counted in ``delivered``."""
        return self._bytes_out

    @property
    def dropped(self) -> int:
        """Messages dropped because the pending limits were reached."""
        return self._dropped

    @property
    def error(self) -> Optional[BaseException]:
        """Why the subscription failed (e.g. a ``PermissionViolationError``), else None."""
        return self._error

    @property
    def is_valid(self) -> bool:
        """False once unsubscribed, drained, at its limit, failed or the bus closed."""
        return not self._closed and self._error is None

    # --- reader side (called on the socket reader thread only) ------------------------------

    def _enqueue(self, msg: Message, size: int) -> bool:
        """Queue a message; return True when the consumer may need waking."""
        if self._stopped:  # unsubscribed after the reader looked it up: as if unrouted
            self._bus._count_unrouted()
            return False
        self._received += 1
        q = self._queue
        if len(q) >= self.pending_msgs_limit or (
            self._bytes_in - self._bytes_out + size > self.pending_bytes_limit
        ):
            self._dropped += 1
            if not self._slow:
                self._slow = True
                self._bus._report_error(SlowConsumerError(self.subject, self.sid, self._dropped))
            return False
        if self._slow:
            self._slow = False
        self._bytes_in += size
        q.append(msg)
        if self._max is not None and self._received >= self._max:
            self._bus._remove_sub(self.sid)
            self._closed = True
        return True

    def _get_cond(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _COND_LOCK:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(threading.Lock())
        return cond

    def _notify(self) -> None:
        cond = self._cond
        if cond is not None:
            with cond:
                cond.notify_all()

    def _wake(self) -> None:
        """Called once per read batch: schedules a pooled callback, or wakes the consumers
        blocked in wait()."""
        self._touched = False
        pool = self._pool
        if pool is not None:
            pool.schedule(self)
        elif self._waiters or self._closed:
            self._notify()

    # --- consumer side -----------------------------------------------------------------------

    def _pop(self, timeout: Optional[float]) -> Optional[Message]:
        """The next message, None when stopped, or closed and empty; raise TimeoutError on
        timeout."""
        q = self._queue
        if not self._stopped:
            try:
                return q.popleft()
            except IndexError:
                pass
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._get_cond()
        pool = self._dispatcher
        # A callback pulling from another subscription: other callbacks go on meanwhile.
        with pool.blocking() if pool is not None else contextlib.nullcontext(), cond:
            self._waiters += 1  # before looking at the queue: the reader then wakes us
            try:
                while True:
                    if self._stopped:
                        return None
                    if q:
                        return q.popleft()
                    if self._closed or self._error is not None:
                        return None
                    if deadline is None:
                        cond.wait()
                    else:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError(f"no message on {self.subject!r} within {timeout} s")
                        cond.wait(left)
            finally:
                self._waiters -= 1

    def _take(self, msg: Message) -> bool:
        """Account for a popped message; decode it first when that can fail. False when it
        must not be handed out (undecodable, or past the auto-unsubscribe limit)."""
        if self._max is not None and self._delivered >= self._max:
            self._discard()  # the limit counts delivered messages (nats.go); the rest go
            return False
        self._delivered += 1
        self._bytes_out += len(msg.payload)
        if self._eager or (msg._headers is not None and _codecs.may_fail(self.codec, msg._headers)):
            try:
                msg.data  # noqa: B018 - decode now, so a bad payload is caught here
            except DecodeError as exc:
                handler = self.on_decode_error
                if handler is not None:
                    handler(msg, exc)
                self._bus._report_error(exc)
                return False
        return True

    def next_msg(self, timeout: Optional[float] = 1.0) -> Message:
        """The next message, waiting up to ``timeout`` seconds (None: forever).

        Raises :class:`~telestion_sync.TimeoutError` when nothing arrived in time,
        ``SubscriptionClosedError`` once the subscription ended and its queue is empty (at once
        after ``unsubscribe()``), and ``ConnectionClosedError`` once the bus closed. Several
        threads may wait on one subscription; each message goes to one of them. A message
        whose payload does not decode is reported to the error handler and skipped.
        """
        check_wait(timeout)
        if self._callback is not None:
            raise TypeError("next_msg() is for subscriptions without a callback")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            msg = self._pop(left)
            if msg is None:
                self._finish()
                if self._error is not None:
                    raise self._error
                raise SubscriptionClosedError(f"subscription to {self.subject!r} is closed")
            if self._take(msg):
                return msg

    def next_msgs(self, max_msgs: int = 256, timeout: Optional[float] = 1.0) -> List[Message]:
        """Up to ``max_msgs`` messages at once: waits like ``next_msg`` for the first (and
        raises as it does), then takes whatever else is queued without waiting.

        For reading a fast stream: one call and one check per batch instead of per message.
        """
        check_max_msgs("max_msgs", max_msgs, none=False)
        out = [self.next_msg(timeout)]
        q = self._queue
        plain = not self._eager and self._max is None
        while len(out) < max_msgs and not self._stopped:
            try:
                msg = q.popleft()
            except IndexError:
                break
            if plain and msg._hraw is None and msg._hdict is None:
                self._delivered += 1
                self._bytes_out += len(msg.payload)
                out.append(msg)
            elif self._take(msg):
                out.append(msg)
        return out

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the subscription ends (unsubscribe, drain, limit) or the bus
        closes; a failure such as a denied subscription is raised."""
        while True:
            try:
                yield self.next_msg(timeout=None)
            except (SubscriptionClosedError, ConnectionClosedError):
                return

    def _call(self, msg: Message) -> None:
        """Run the callback for one message (in the subscriber's context); its exceptions go
        to the error handler, never ending the subscription."""
        try:
            self._context.run(self._callback, msg)  # type: ignore[arg-type]
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """A callback raised: reported to the error handler; the subscription goes on."""
        log.debug("callback for %r raised", self.subject, exc_info=True)
        err = Error(f"callback for subscription {self.subject!r} raised {exc!r}")
        err.__cause__ = exc
        self._bus._report_error(err)

    def _deliver_batch(self, budget: int) -> None:
        """Deliver up to ``budget`` queued messages on a dispatcher worker. The deliver lock
        is held throughout, so unsubscribe() on another thread waits for the callback in
        progress; once the subscription ended and nothing is left, it is marked finished."""
        q = self._queue
        callback = self._callback
        run = self._context.run
        # Nothing to decode first and no limit to count against: the common case, inline.
        plain = not self._eager and self._max is None
        with self._deliver_lock:
            self._deliverer = threading.current_thread()
            _delivering.active = True
            try:
                for _ in range(budget):
                    if self._stopped or not q:
                        break
                    msg = q.popleft()
                    if plain and msg._hraw is None and msg._hdict is None:
                        self._delivered += 1
                        self._bytes_out += len(msg.payload)
                        try:
                            run(callback, msg)  # type: ignore[arg-type]
                        except Exception as exc:
                            self._failed(exc)
                    elif self._take(msg):
                        self._call(msg)
            finally:
                self._deliverer = None
                _delivering.active = False
            if (self._closed and not q) or self._stopped:
                self._finish()

    def _has_work(self) -> bool:
        """Messages to deliver, or an end not yet marked (asked by the dispatcher)."""
        if self._stopped:
            return not self._finished
        return bool(self._queue) or (self._closed and not self._finished)

    def _run(self) -> None:
        """A callback's own thread (``own_thread=True``): deliver until the end."""
        lock = self._deliver_lock
        self._deliverer = threading.current_thread()
        _delivering.active = True
        while True:
            with lock:  # from taking the message until the callback returned (unsubscribe)
                msg = self._pop(None)
                if msg is None:
                    break
                if self._take(msg):
                    self._call(msg)
        self._finish()

    def _in_callback(self) -> bool:
        """True when called from inside this subscription's own callback."""
        return self._deliverer is threading.current_thread()

    # --- ending ------------------------------------------------------------------------------

    def unsubscribe(self) -> None:
        """Stop receiving now; messages still pending are discarded.

        Once it returns, the subscription hands out nothing more: ``next_msg`` raises, no
        callback starts, and one running on another thread has returned. Called from inside
        a callback (this subscription's or another's) it does not wait for the running one
        (two callbacks ending each other's subscriptions must not deadlock), but no further
        call follows. nats.go only promises that no new message is queued; a callback could
        still start after its Unsubscribe.
        """
        if not (self._closed and not self._queue):
            self._bus._unsubscribe(self)
        self._stop()

    def _stop(self, error: Optional[BaseException] = None, wait: Optional[float] = None) -> None:
        """Hand out nothing more; wait (up to ``wait`` seconds, None: as long as it takes) for
        a callback running on another thread to return."""
        self._stopped = True
        self._discard(error)
        if self._callback is not None and not in_callback():
            if self._deliver_lock.acquire(timeout=-1 if wait is None else wait):
                self._deliver_lock.release()
                if self._pool is not None:
                    self._finish()  # no callback runs now, and none will

    def auto_unsubscribe(self, max_msgs: int) -> None:
        """End the subscription after ``max_msgs`` messages in total have been delivered
        (those delivered so far count; pending ones within the limit are still delivered)."""
        check_max_msgs("max_msgs", max_msgs, none=False)
        if max_msgs <= 0:
            raise ValueError("max_msgs must be positive")
        self._max = max_msgs
        if self._delivered >= max_msgs:
            self.unsubscribe()
        elif self._received >= max_msgs:  # enough have arrived: stop receiving, deliver those
            self._bus._unsubscribe(self)
            self._close()
        else:
            self._bus._auto_unsubscribe(self, max_msgs)

    def drain(self, timeout: Optional[float] = 10.0) -> None:
        """Stop new messages, deliver the pending ones, then end the subscription.

        Blocks until a callback subscription has processed everything pending (a pull
        subscription keeps its queue for ``next_msg`` and returns at once).
        """
        check_seconds("timeout", timeout, none=True, errors=CALL)
        if not self._closed:
            try:
                self._bus._drain_sub(self, timeout)
            finally:
                self._close()  # pending messages are still handed out; then it ends
        if self._callback is not None and not self._in_callback():
            if not self.wait_finished(timeout):
                raise TimeoutError(f"draining {self.subject!r} did not finish within {timeout} s")

    def _close(self, error: Optional[BaseException] = None) -> None:
        """No more messages will arrive; wake the consumer so it finishes the queue."""
        if error is not None and self._error is None:
            self._error = error
        self._closed = True
        self._notify()
        if self._pool is not None:
            self._pool.schedule(self)  # a worker delivers the rest, then marks it finished
        elif self._callback is None and not self._queue:
            self._finish()

    def _discard(self, error: Optional[BaseException] = None) -> None:
        """End now: what is pending is dropped (close, a drain that timed out, the limit)."""
        self._queue.clear()
        self._close(error)
        if self._callback is None:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._notify()

    def wait_finished(self, timeout: Optional[float]) -> bool:
        """Block until the subscription ended and everything pending was delivered."""
        cond = self._get_cond()
        with cond:
            return cond.wait_for(lambda: self._finished, timeout)

    def _join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a callback running now (and an own thread)."""
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        elif self._pool is not None and not self._in_callback():
            if self._deliver_lock.acquire(timeout=timeout):
                self._deliver_lock.release()

    def __repr__(self) -> str:
        q = f" queue={self.queue!r}" if self.queue else ""
        kind = "callback" if self._callback is not None else "pull"
        state = "" if self.is_valid else " closed"
        return (
            f"<Subscription sid={self.sid} subject={self.subject!r}{q} {kind}{state} "
            f"pending={self.pending} delivered={self.delivered} dropped={self.dropped}>"
        )

    def _repr_html_(self) -> str:
        from ._html import subscription_html

        return subscription_html(self)


def wake_all(subs: List[Subscription]) -> None:
    """Wake the consumers of the subscriptions a read batch touched; the callback ones are
    scheduled together, under one lock of their dispatcher."""
    pooled: List[Any] = []
    pool: Optional[Dispatcher] = None
    for sub in subs:
        p = sub._pool
        if p is None:
            sub._wake()
            continue
        sub._touched = False
        if p is not pool:
            if pool is not None and pooled:
                pool.schedule_many(pooled)
                pooled = []
            pool = p
        pooled.append(sub)
    if pool is not None and pooled:
        pool.schedule_many(pooled)
    subs.clear()
