"""Messages delivered by a JetStream consumer, and messages read straight from a stream.

A :class:`JetStreamMessage` wraps the :class:`~telestion_sync.Message` the bus delivered and adds
``metadata`` (parsed from the ``$JS.ACK`` reply subject, v1 and v2 formats) and the
acknowledgements. Acknowledging twice raises :class:`MsgAlreadyAckedError`: a second ack is a
bug in the caller, not something to hide.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .. import codecs as _codecs
from ..errors import DecodeError
from ..message import Message
from .errors import InvalidArgumentError, MsgAlreadyAckedError, NotAckableError
from .models import MsgMetadata, SequencePair, seconds, time_from_nanos, to_nanos

if TYPE_CHECKING:  # pragma: no cover
    from ..client import MessageBus

_ACK_LOCK = threading.Lock()  # the check-and-set of a message's ack state (short, uncontended)

_ACK = b"+ACK"
_NAK = b"-NAK"
_WPI = b"+WPI"
_TERM = b"+TERM"


def _ack_tokens(reply: Optional[str]) -> Optional[Tuple[List[str], int]]:
    """The tokens of a ``$JS.ACK`` reply subject and the index of its stream token (v1: 9
    tokens, ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``; v2: 11 or
    more, with domain and account hash before the stream), or None for any other subject."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    t = reply.split(".")
    n = len(t)
    if n == 9:
        return t, 2
    if n >= 11:
        return t, 4
    return None


def parse_metadata(reply: Optional[str]) -> MsgMetadata:
    """The metadata in a ``$JS.ACK`` reply subject. Raises :class:`NotAckableError` for any
    other subject."""
    found = _ack_tokens(reply)
    if found is None:
        if reply and reply.startswith("$JS.ACK."):
            raise NotAckableError(f"malformed JetStream ack subject {reply!r}: {reply.count('.') + 1} tokens")
        raise NotAckableError(f"not a JetStream message (reply subject {reply!r})")
    t, off = found
    try:
        return MsgMetadata(
            sequence=SequencePair(int(t[off + 3]), int(t[off + 4])),
            num_delivered=int(t[off + 2]),
            num_pending=int(t[off + 6]),
            timestamp=time_from_nanos(int(t[off + 5])),
            stream=t[off],
            consumer=t[off + 1],
            domain="" if off == 2 or t[2] == "_" else t[2],
        )
    except (ValueError, IndexError) as exc:
        raise NotAckableError(f"malformed JetStream ack subject {reply!r}: {exc}") from exc


def ack_sequences(reply: Optional[str]) -> Optional[Tuple[str, int, int]]:
    """``(consumer, stream seq, consumer seq)`` from a ``$JS.ACK`` subject, None if it is not
    one: the ordered consumer's per-message check, cheaper than the full metadata."""
    found = _ack_tokens(reply)
    if found is None:
        return None
    t, off = found
    try:
        return t[off + 1], int(t[off + 3]), int(t[off + 4])
    except ValueError:
        return None


def ack_fields(reply: Optional[str]) -> Optional[Tuple[int, int, int]]:
    """``(stream seq, timestamp in ns, pending)`` from a ``$JS.ACK`` subject, None if it is
    not one (what a KV watch needs per entry, without building the full metadata)."""
    found = _ack_tokens(reply)
    if found is None:
        return None
    t, off = found
    try:
        return int(t[off + 3]), int(t[off + 5]), int(t[off + 6])
    except ValueError:
        return None


class JetStreamMessage:
    """A message delivered by a JetStream consumer.

    ``data``, ``payload``, ``headers`` and ``subject`` are those of the stored message;
    ``metadata`` has its stream and consumer sequences, delivery count, pending count and
    timestamp. Acknowledge it with exactly one of ``ack``, ``ack_sync``, ``nak`` or ``term``
    (``in_progress`` may come before, any number of times).
    """

    __slots__ = ("msg", "_bus", "_acked", "_meta")

    def __init__(self, msg: Message, bus: MessageBus) -> None:
        self.msg = msg
        self._bus = bus
        self._acked = False
        self._meta: Optional[MsgMetadata] = None

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def reply(self) -> Optional[str]:
        return self.msg.reply

    @property
    def headers(self) -> Dict[str, str]:
        return self.msg.headers

    @property
    def payload(self) -> bytes:
        return self.msg.payload

    @property
    def data(self) -> Any:
        """The payload decoded like ``Message.data`` (CBOR by header, JSON, else bytes)."""
        return self.msg.data

    def json(self) -> Any:
        return self.msg.json()

    def cbor(self) -> Any:
        return self.msg.cbor()

    @property
    def metadata(self) -> MsgMetadata:
        """Stream, consumer, sequences, delivery count, pending, timestamp (parsed once)."""
        m = self._meta
        if m is None:
            m = self._meta = parse_metadata(self.msg.reply)
        return m

    @property
    def acked(self) -> bool:
        """True once ack, ack_sync, nak or term was sent."""
        return self._acked

    def _claim(self, what: str) -> str:
        reply = self.msg.reply
        if not reply or not reply.startswith("$JS.ACK."):
            raise NotAckableError(f"cannot {what}: message on {self.subject!r} has no JetStream ack subject")
        with _ACK_LOCK:
            if self._acked:
                raise MsgAlreadyAckedError(f"message on {self.subject!r} was acknowledged already")
            self._acked = True
        return reply

    def ack(self) -> None:
        """Acknowledge: processed, do not redeliver (no confirmation is awaited)."""
        self._claim("ack")
        self.msg.respond(_ACK, immediate=False)  # batched by the writer; the server's subject

    def ack_sync(self, timeout: float = 5.0) -> None:
        """Acknowledge and wait until the server confirms it (raises ts.TimeoutError)."""
        reply = self._claim("ack")
        try:
            self._bus.request(reply, _ACK, timeout=timeout)
        except BaseException:
            self._acked = False  # not confirmed: the caller may try again
            raise

    def nak(self, delay: Optional[float] = None) -> None:
        """Negative ack: redeliver, after ``delay`` seconds (float or timedelta) if given."""
        d = seconds(delay, "delay")
        reply = self._claim("nak")
        body = _NAK if d is None else _NAK + b" " + json.dumps({"delay": to_nanos(d)}).encode()
        self._bus.publish(reply, body)

    def in_progress(self) -> None:
        """Still working on it: resets the ack wait timer (may be sent repeatedly)."""
        reply = self.msg.reply
        if not reply or not reply.startswith("$JS.ACK."):
            raise NotAckableError(f"message on {self.subject!r} has no JetStream ack subject")
        if self._acked:
            raise MsgAlreadyAckedError(f"message on {self.subject!r} was acknowledged already")
        self._bus.publish(reply, _WPI)

    def term(self, reason: Optional[str] = None) -> None:
        """Terminate: never redeliver this message (``reason`` is reported in the advisory)."""
        if reason is not None and ("\r" in reason or "\n" in reason):
            raise InvalidArgumentError("reason must be one line")
        reply = self._claim("term")
        body = _TERM if not reason else _TERM + b" " + reason.encode()
        self._bus.publish(reply, body)

    def _repr_html_(self) -> str:
        from .._html import message_html

        md = self.metadata
        return message_html(self, f"JetStream message {md.stream} #{md.sequence.stream}")

    def __repr__(self) -> str:
        try:
            m = self.metadata
            where = f" stream={m.stream!r} seq={m.sequence.stream} delivered={m.num_delivered}"
        except NotAckableError:
            where = ""
        return f"<JetStreamMessage subject={self.subject!r}{where} payload={self.payload[:40]!r}>"


_DIRECT_HEADERS = (
    "Nats-Stream",
    "Nats-Subject",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Num-Pending",
    "Nats-Last-Sequence",
)


@dataclass
class StoredMessage:
    """A message read straight from a stream (``get_msg``): subject, sequence, time, headers,
    payload; ``data`` decodes the payload like ``Message.data`` in ``"auto"`` mode."""

    stream: str
    subject: str
    seq: int
    time: Optional[datetime]
    payload: bytes
    headers: Dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Any:
        try:
            return _codecs.decode_auto(self.payload, self.headers or None)
        except Exception as exc:
            raise DecodeError(
                f"stored message {self.seq} on {self.subject!r} does not decode: {exc}"
            ) from exc

    def _repr_html_(self) -> str:
        from .._html import message_html

        return message_html(self, f"Stored message {self.stream} #{self.seq}")


def parse_header_block(block: bytes) -> Dict[str, str]:
    """Headers from a NATS header block (``NATS/1.0\\r\\nKey: Value\\r\\n\\r\\n``); a repeated
    key keeps every value joined with ``", "``, as ``Message.headers`` shows them."""
    headers: Dict[str, str] = {}
    lines = block.decode("utf-8", "replace").split("\r\n")
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            key, value = key.strip(), value.strip()
            headers[key] = headers[key] + ", " + value if key in headers else value
    return headers
