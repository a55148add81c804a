"""The request multiplexer: every ``request()`` of a bus shares one wildcard reply inbox.

As nats.go does, the bus subscribes once to ``<inbox prefix>.<random>.*`` and gives each
request its own last token; the reader thread resolves a reply straight into the waiting
request's slot (no thread, no queue), so a callback may call ``request()`` on the same bus.
A denied publish or a denied inbox fails the requests it concerns at once.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from typing import Any, Callable, Dict, Optional

from .errors import PermissionViolationError
from .message import Message, MessageContext
from .protocol import encode_sub

#: A slot's value when the bus closed under the request.
CLOSED: Any = object()


class Slot:
    """One request waiting for its reply: released when ``value`` is set."""

    __slots__ = ("lock", "value", "subject")

    def __init__(self, subject: str) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value: Any = None  # the reply Message, an exception, or CLOSED
        self.subject = subject

    def resolve(self, value: Any) -> None:
        self.value = value
        try:
            self.lock.release()
        except RuntimeError:  # resolved twice (a reply racing a failure): the first counts
            pass


class RequestMux:
    """The shared reply inbox of one bus and the requests waiting on it."""

    def __init__(self, inbox_prefix: str, new_sid: Callable[[], int], reply_ctx: MessageContext) -> None:
        self._inbox_prefix = inbox_prefix
        self._new_sid = new_sid
        self._ctx = reply_ctx
        self._lock = threading.Lock()
        self.sid = -1  # the inbox subscription's sid once made
        self._prefix = b""
        self._prefix_len = 0
        self._slots: Dict[bytes, Slot] = {}
        self._ids = itertools.count(1)
        self.denied: Optional[PermissionViolationError] = None  # the inbox may not be subscribed

    def ensure_inbox(self, write_control: Callable[[bytes], None]) -> None:
        """Subscribe the wildcard inbox on first use (``write_control`` sends the SUB)."""
        if self.sid > 0:
            return
        with self._lock:
            if self.sid > 0:
                return
            self._prefix = f"{self._inbox_prefix}.{secrets.token_hex(11)}.".encode()
            self._prefix_len = len(self._prefix)
            sid = self._new_sid()
            write_control(encode_sub(self._prefix + b"*", sid))
            self.sid = sid

    def open(self, subject: str) -> tuple[bytes, Slot]:
        """Register a request to ``subject``: its reply subject and the slot to wait on."""
        if self.denied is not None:
            raise self.denied
        token = b"%d" % next(self._ids)
        slot = Slot(subject)
        self._slots[token] = slot
        return self._prefix + token, slot

    def close_slot(self, reply: bytes) -> None:
        """The request returned (answered, timed out or failed): forget its slot."""
        self._slots.pop(reply[self._prefix_len :], None)

    def on_reply(self, subject: bytes, payload: bytes, hdr: Optional[bytes]) -> None:
        """A reply arrived on the inbox (reader thread): resolve its request."""
        slot = self._slots.pop(subject[self._prefix_len :], None)
        if slot is None:
            return  # a late or duplicate reply; its request already returned
        slot.resolve(Message(_text(subject), payload, None, None, self._ctx, hdr))

    def fail_all(self, value: Any = CLOSED) -> None:
        """Every waiting request returns with ``value`` (an exception, or CLOSED)."""
        slots = list(self._slots.values())
        self._slots.clear()
        for slot in slots:
            slot.resolve(value)

    def on_permission_violation(self, err: PermissionViolationError) -> bool:
        """Fail what a denial hits: every request when it is the inbox's subscription, else
        the requests to the denied subject. True when the denial was the inbox's."""
        if err.operation == "subscribe":
            if self.sid > 0 and err.subject == (self._prefix + b"*").decode():
                self.denied = err
                self.fail_all(err)
                return True
            return False
        for token, slot in list(self._slots.items()):
            if slot.subject == err.subject and self._slots.pop(token, None) is slot:
                slot.resolve(err)
        return False

    def resubscribe_frame(self) -> bytes:
        """The inbox's SUB for a new connection (a denial is tried again there)."""
        if self.sid <= 0:
            return b""
        self.denied = None  # cleared before the new reader can deliver a new answer
        return encode_sub(self._prefix + b"*", self.sid)

    @property
    def pending(self) -> int:
        """Requests waiting for a reply now."""
        return len(self._slots)


def _text(subject: bytes) -> str:
    """A received subject as text; bytes that are not UTF-8 survive as surrogates."""
    return subject.decode("utf-8", "surrogateescape")


__all__ = ["RequestMux", "Slot", "CLOSED"]
