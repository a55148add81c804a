"""The received message users touch: subject, reply, headers, raw payload and decoded data."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Protocol

from . import codecs as _codecs
from .errors import DecodeError, ProtocolError
from .options import check_publish
from .protocol import parse_headers

_UNSET: Any = object()

#: Headers of NATS micro error replies (nats.go's micro package uses the same).
SERVICE_ERROR_HEADER = "Nats-Service-Error"
SERVICE_ERROR_CODE_HEADER = "Nats-Service-Error-Code"


class MessageHost(Protocol):
    """What a received message needs from its bus (the narrow interface; ``MessageBus`` is
    one): a way to publish its reply, and to report a header block that does not parse."""

    def _publish(
        self,
        subject: str,
        data: Any,
        reply: Optional[bytes],
        headers: Optional[Mapping[str, Any]],
        codec: _codecs.CodecSpec,
        now: bool,
        cache: bool = True,
    ) -> None: ...

    def _report_error(self, err: BaseException) -> None: ...


class MessageContext:
    """What a message needs from where it arrived: the bus (to respond), codec and schema.

    A :class:`~telestion_sync.Subscription` is one; the bus has one for request replies.
    Sharing it keeps the per-message object small on the receive hot path.
    """

    __slots__ = ("_bus", "codec", "schema")

    def __init__(
        self,
        bus: Optional[MessageHost],
        codec: _codecs.Codec = _codecs.AUTO,
        schema: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        self._bus = bus
        self.codec = codec
        self.schema = schema


_DETACHED = MessageContext(None)


class Message:
    """One received message.

    ``payload`` is always the raw bytes. ``data`` is the payload decoded by the subscription's
    codec (by default ``"auto"``: the ``Content-Type`` header decides, otherwise JSON if it parses,
    otherwise the bytes), decoded once on first access; a payload that does not decode raises
    :class:`~telestion_sync.DecodeError`. ``respond()`` answers a request. ``status`` is the
    NATS status code of a status message (503 for no responders, 408/409 from JetStream), else
    None, and ``description`` its text.

    A received header block is kept raw and parsed on first use (``headers``, ``status``,
    decoding): the socket reader never pays for it.
    """

    __slots__ = (
        "subject",
        "reply",
        "payload",
        "_hraw",
        "_hdict",
        "_status",
        "_description",
        "_ctx",
        "_data",
        "_responded",
    )

    def __init__(
        self,
        subject: str,
        payload: bytes = b"",
        reply: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
        ctx: MessageContext = _DETACHED,
        raw_headers: Optional[bytes] = None,
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.payload = payload
        # The received header block, kept (recordings keep it exact) and parsed on first use
        # into _hdict, _status and _description (set only then: the reader never pays).
        self._hraw = raw_headers
        self._hdict = headers
        self._ctx = ctx
        self._data = _UNSET

    def _parse_headers(self) -> None:
        """Parse the received header block once (``_hdict`` is set last: a second thread
        parsing at the same time stores the same values)."""
        raw = self._hraw
        if raw is None or self._hdict is not None:
            return
        try:
            status, description, headers = parse_headers(raw)
        except ProtocolError as exc:  # not from a conforming server: reported, not fatal
            status, description, headers = None, "", {}
            bus = self._ctx._bus
            if bus is not None:
                bus._report_error(exc)
        self._status = status
        self._description = description
        self._hdict = headers

    @property
    def _headers(self) -> Optional[Dict[str, str]]:
        """The parsed headers, or None when the message had none."""
        h = self._hdict
        if h is None and self._hraw is not None:
            self._parse_headers()
            h = self._hdict
        return h

    @property
    def headers(self) -> Dict[str, str]:
        """The message headers (an empty dict when it had none)."""
        h = self._headers
        return h if h is not None else {}

    @property
    def header_block(self) -> Optional[bytes]:
        """The header block exactly as received (``NATS/1.0`` line, every ``Key: Value`` line
        in order, repeated keys apart), or None (no headers, or a message built locally).
        ``headers`` joins a repeated key's values; recorders keep them apart from this."""
        return self._hraw

    @property
    def status(self) -> Optional[int]:
        """The inline status code of a status message (e.g. 503 for no responders), else None."""
        if self._hraw is None:
            return None
        if self._hdict is None:
            self._parse_headers()
        return self._status

    @property
    def description(self) -> str:
        """The text after a status code (``"No Messages"``, ``"Request Timeout"``...)."""
        if self._hraw is None:
            return ""
        if self._hdict is None:
            self._parse_headers()
        return self._description

    @property
    def data(self) -> Any:
        """The payload decoded by the subscription's codec (and ``schema=``), cached."""
        d = self._data
        if d is _UNSET:
            d = self._data = self._decode()
        return d

    def _decode(self) -> Any:
        codec = self._ctx.codec
        try:
            if codec is _codecs.AUTO:
                value = _codecs.decode_auto(self.payload, self._headers)
            else:
                value = codec.decode(self.payload)
        except Exception as exc:
            raise DecodeError(
                f"message on {self.subject!r} does not decode as {codec.name}: {exc}", self
            ) from exc
        schema = self._ctx.schema
        if schema is not None:
            try:
                value = _codecs.apply_schema(schema, value)
            except Exception as exc:
                raise DecodeError(f"message on {self.subject!r} fails its schema: {exc}", self) from exc
        return value

    def json(self) -> Any:
        """The payload parsed as JSON, whatever the subscription's codec."""
        try:
            return _codecs.json_loads(self.payload)
        except ValueError as exc:
            raise DecodeError(f"message on {self.subject!r} is not JSON: {exc}", self) from exc

    def cbor(self) -> Any:
        """The payload parsed as CBOR, whatever the subscription's codec."""
        try:
            return _codecs.CBOR.decode(self.payload)
        except ValueError as exc:
            raise DecodeError(f"message on {self.subject!r} is not CBOR: {exc}", self) from exc

    def respond(
        self,
        data: Any = b"",
        *,
        codec: _codecs.CodecSpec = None,
        headers: Optional[Mapping[str, Any]] = None,
        immediate: bool = True,
    ) -> None:
        """Publish ``data`` to this message's reply subject (answer a request).

        Sent at once from the calling thread (for the requester's latency), never waiting
        behind another send; ``immediate=False`` leaves it to the writer thread, which
        batches (JetStream acks). The reply subject came from the server, so it is not
        checked again."""
        if headers is not None or codec is not None:
            check_publish(None, headers, codec)
        if not self.reply:
            raise ValueError(f"message on {self.subject!r} has no reply subject to respond to")
        bus = self._ctx._bus
        if bus is None:
            raise ValueError("message is not bound to a bus; use bus.publish(msg.reply, ...)")
        bus._publish(self.reply, data, None, headers, codec, immediate, cache=False)
        self._responded = True

    @property
    def service_error(self) -> Optional[str]:
        """The ``Nats-Service-Error`` text of an error reply, else None."""
        h = self._headers
        return h.get(SERVICE_ERROR_HEADER) if h else None

    def __repr__(self) -> str:
        shown = self.payload[:40]
        more = "..." if len(self.payload) > 40 else ""
        extra = f" reply={self.reply!r}" if self.reply else ""
        if self._headers:
            extra += f" headers={self._headers!r}"
        if self.status is not None:
            extra += f" status={self.status}"
        return f"<Message subject={self.subject!r}{extra} payload={shown!r}{more}>"

    def _repr_html_(self) -> str:
        from ._html import message_html

        return message_html(self)

    @property
    def responded(self) -> bool:
        """True once ``respond()`` answered this message."""
        return getattr(self, "_responded", False)


def make_message(
    subject: str,
    payload: bytes,
    reply: Optional[str],
    headers: Optional[Dict[str, str]],
    ctx: MessageContext,
    status: Optional[int],
    description: str,
) -> Message:
    """A Message with headers and a status (for messages not read off the wire), built as
    if received: its header block carries them."""
    line = "NATS/1.0" if status is None else f"NATS/1.0 {status} {description}".rstrip()
    block = "\r\n".join([line, *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""])
    return Message(subject, payload, reply, None, ctx, block.encode())
