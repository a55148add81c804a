"""Operator helpers: block until telemetry says something (``bus.wait_for``), as mission-control
scripting APIs do (COSMOS ``wait_check``, F Prime ``await_telemetry``).

Built on the public bus API only: a waiter is a pull subscription drained by the caller's own
thread, so a thousand waiters cost a thousand subscriptions and no thread. Pull subscriptions
are subscribed again after a reconnect, so a wait goes on across an outage.
"""

from __future__ import annotations

import logging
import reprlib
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from .errors import Error, TimeoutError
from .message import Message
from .options import CALL, check_int, check_timeout
from .subscription import Subscription

if TYPE_CHECKING:  # pragma: no cover
    from .client import MessageBus

log = logging.getLogger("telestion_sync.operator")

Predicate = Callable[[Message], Any]

_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80
_short.maxdict = 8
_short.maxlist = 8


def describe_value(msg: Message) -> str:
    """A short text of a message's decoded value (its payload if it does not decode)."""
    try:
        return _short.repr(msg.data)
    except Exception:
        return _short.repr(msg.payload)


class Waiter:
    """Waits for messages on a subject that pass a predicate.

    Subscribes when created, so whatever arrives from then on counts: create it *before* the
    action that should cause the telemetry (``bus.expect(...)``), then call :meth:`wait`. A
    context manager; :meth:`close` unsubscribes (``wait`` does when it returns or raises).
    """

    def __init__(
        self,
        bus: MessageBus,
        subject: str,
        predicate: Optional[Predicate] = None,
        *,
        count: int = 1,
        latest: bool = False,
        stream: Optional[str] = None,
    ) -> None:
        if predicate is not None and not callable(predicate):
            raise TypeError(f"predicate must be callable or None, not {type(predicate).__name__}")
        check_int("count", count, 1, "must be at least 1", errors=CALL)
        self.bus = bus
        self.subject = subject
        self.predicate = predicate
        self.count = count
        self.seen = 0  # messages looked at
        self.last: Optional[Message] = None  # the last message looked at
        self.matches: List[Message] = []
        self.errors = 0  # predicate calls that raised
        self.last_error: Optional[BaseException] = None
        self._sub: Optional[Subscription] = bus.subscribe(subject)  # pull: no thread of its own
        if latest:
            self._check_stored(stream)

    def _check_stored(self, stream: Optional[str]) -> None:
        """Test the latest value stored in JetStream first (after subscribing: nothing is
        missed between the two)."""
        from .jetstream import MessageNotFoundError

        js = self.bus.jetstream()
        try:
            name = stream if stream is not None else js.find_stream(self.subject)
            stored = js.get_last_msg_for_subject(name, self.subject)
        except MessageNotFoundError:
            return  # a stream stores the subject, nothing stored yet: wait for live ones
        except BaseException:
            self.close()
            raise
        self._look(Message(stored.subject, stored.payload, None, stored.headers or None))

    def _look(self, msg: Message) -> None:
        self.seen += 1
        self.last = msg
        if self.predicate is None:
            self.matches.append(msg)
            return
        try:
            ok = self.predicate(msg)
        except Exception as exc:  # counted, logged once, and named in the timeout error
            self.errors += 1
            if self.last_error is None:
                log.warning(
                    "wait_for(%r): the predicate raised %r on %s (the message counts as no match)",
                    self.subject,
                    exc,
                    describe_value(msg),
                )
            self.last_error = exc
            return
        if ok:
            self.matches.append(msg)

    @property
    def done(self) -> bool:
        """True once ``count`` messages matched."""
        return len(self.matches) >= self.count

    def wait(self, timeout: float) -> List[Message]:
        """Block until ``count`` messages matched (returned, oldest first) or raise
        :class:`~telestion_sync.TimeoutError` after ``timeout`` seconds, naming the subject,
        how many were seen and the last value. Unsubscribes in either case."""
        check_timeout("timeout", timeout)
        deadline = time.monotonic() + timeout
        sub = self._sub
        if sub is None:
            raise Error(f"this waiter for {self.subject!r} is closed")
        try:
            while not self.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout_error(timeout) from self.last_error
                try:
                    msg = sub.next_msg(left)
                except TimeoutError:
                    raise self._timeout_error(timeout) from self.last_error
                self._look(msg)
            return self.matches[: self.count]
        finally:
            self.close()

    def _timeout_error(self, timeout: float) -> TimeoutError:
        want = "a matching message" if self.count == 1 else f"{self.count} matching messages"
        got = f", {len(self.matches)} matched" if self.count > 1 else ""
        if self.last is None:
            text = f"no message on {self.subject!r} within {timeout} s (waited for {want})"
        else:
            text = (
                f"no {want[2:] if self.count == 1 else want} on {self.subject!r} within {timeout} s "
                f"({self.seen} seen{got}; last value {describe_value(self.last)} "
                f"on {self.last.subject!r})"
            )
        if self.errors:
            text += f"; the predicate raised {self.errors} time(s), last {self.last_error!r}"
        err = TimeoutError(text)
        err.subject = self.subject  # type: ignore[attr-defined]
        err.last = self.last  # type: ignore[attr-defined]
        return err

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                sub.unsubscribe()
            except Error:  # the bus closed meanwhile: nothing left to undo
                pass

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Waiter subject={self.subject!r} matched={len(self.matches)}/{self.count} seen={self.seen}>"


def wait_for(
    bus: MessageBus,
    subject: str,
    predicate: Optional[Predicate] = None,
    *,
    timeout: float,
    latest: bool = False,
    stream: Optional[str] = None,
) -> Message:
    """The first message on ``subject`` from now on for which ``predicate(msg)`` is true (any
    message without a predicate). See :meth:`MessageBus.wait_for`."""
    check_timeout("timeout", timeout)
    return Waiter(bus, subject, predicate, latest=latest, stream=stream).wait(timeout)[0]


def wait_for_many(
    bus: MessageBus,
    subject: str,
    count: int,
    predicate: Optional[Predicate] = None,
    *,
    timeout: float,
    latest: bool = False,
    stream: Optional[str] = None,
) -> List[Message]:
    """The first ``count`` matching messages on ``subject`` from now on, oldest first. See
    :meth:`MessageBus.wait_for_many`."""
    check_timeout("timeout", timeout)
    return Waiter(bus, subject, predicate, count=count, latest=latest, stream=stream).wait(timeout)
