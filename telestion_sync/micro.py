"""The NATS micro reply conventions, out of the core client.

A responder that fails answers with the headers ``Nats-Service-Error`` (the text) and
``Nats-Service-Error-Code`` (an HTTP-like code), as nats.go's micro package does; a requester
turns such a reply, or a no-responders status, into an exception. ``MessageBus.reply`` and the
Telestion service library use these; the core client only publishes and routes.
"""

from __future__ import annotations

from typing import Any

from . import codecs as _codecs
from .errors import NoRespondersError, ServiceError
from .message import SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER, Message


def respond_error(msg: Message, description: str, code: int) -> None:
    """Answer ``msg`` with the micro error headers (once; nothing for a message without a
    reply subject or one already answered)."""
    if not msg.reply or msg.responded:
        return
    text = description.replace("\r", " ").replace("\n", " ")
    msg.respond(b"", headers={SERVICE_ERROR_HEADER: text, SERVICE_ERROR_CODE_HEADER: str(code)})


def respond_value(msg: Message, result: Any, codec: _codecs.Codec, default: _codecs.Codec) -> None:
    """Answer ``msg`` with a handler's return value. In ``"auto"`` mode bytes go out raw, a
    CBOR request gets a CBOR reply, anything else ``default``. A value that does not encode
    is answered with code 500 and raised."""
    if codec is _codecs.AUTO:
        if isinstance(result, (bytes, bytearray, memoryview)):
            codec = _codecs.RAW
        else:
            cbor = _codecs.content_type(msg._headers) == _codecs.CBOR_CONTENT_TYPE
            codec = _codecs.CBOR if cbor else default
    try:
        msg.respond(result, codec=codec)
    except (TypeError, ValueError) as exc:
        respond_error(msg, f"reply does not encode: {exc}", 500)
        raise


def check_reply(subject: str, msg: Message) -> Message:
    """``msg`` when it is an answer; :class:`NoRespondersError` for a no-responders status and
    :class:`ServiceError` for a micro error reply."""
    if msg.header_block is None:  # the common answer: no headers, so no status either
        return msg
    if msg.status == 503:
        raise NoRespondersError(subject)
    h = msg._headers
    if h is not None and SERVICE_ERROR_HEADER in h:

        try:
            code = int(h.get(SERVICE_ERROR_CODE_HEADER, "500"))
        except ValueError:
            code = 500
        raise ServiceError(h[SERVICE_ERROR_HEADER], code, msg)
    return msg


__all__ = [
    "respond_error",
    "respond_value",
    "check_reply",
    "SERVICE_ERROR_HEADER",
    "SERVICE_ERROR_CODE_HEADER",
]
