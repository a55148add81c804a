"""JetStream errors: the API's error replies as exceptions, named for the common cases.

The JetStream API answers a failed request with ``{"error": {"code", "err_code",
"description"}}``; :func:`api_error` turns that into :class:`JetStreamError` or the subclass its
``err_code`` names, so callers catch ``StreamNotFoundError`` rather than compare numbers.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

from ..errors import Error


class JetStreamError(Error):
    """A JetStream API request failed.

    ``code`` is the HTTP-like status (404, 400, 503...), ``err_code`` the server's JetStream
    error number (10059 for "stream not found"...), ``description`` the server's text.
    """

    def __init__(self, description: str, code: int = 0, err_code: int = 0) -> None:
        self.description = description
        self.code = code
        self.err_code = err_code
        detail = f" (code {code}, err_code {err_code})" if code or err_code else ""
        super().__init__(f"{description}{detail}")


class JetStreamNotEnabledError(JetStreamError):
    """JetStream is not enabled on the server or for this account (or nothing answered the
    API, as when no server in reach runs JetStream)."""


class StreamNotFoundError(JetStreamError):
    """The stream does not exist (err_code 10059)."""


class StreamNameInUseError(JetStreamError):
    """A stream with that name exists already with a different configuration (10058)."""


class ConsumerNotFoundError(JetStreamError):
    """The consumer does not exist (10014; 10149 when an update found nothing to update)."""


class ConsumerExistsError(JetStreamError):
    """A consumer with that name exists already with a different configuration (10148, 10013)."""


class WrongLastSequenceError(JetStreamError):
    """A publish precondition on the last sequence (stream or subject) failed (10071)."""


class KeyExistsError(WrongLastSequenceError):
    """``kv.create`` on a key that has a live value (the server refused the "no previous
    revision" precondition, err_code 10071)."""


class KeyNotFoundError(JetStreamError):
    """The key has no value: never written, deleted or purged (or not at that revision)."""


class BucketNotFoundError(JetStreamError):
    """No Key-Value bucket or Object Store of that name (its stream does not exist)."""


class ObjectNotFoundError(JetStreamError):
    """No object of that name in the store (never put, or deleted)."""


class DigestMismatchError(JetStreamError):
    """An object's bytes do not match the SHA-256 digest (or size) recorded in its info."""


class WrongLastMsgIdError(JetStreamError):
    """The ``expected_last_msg_id`` precondition failed (10070)."""


class StreamMismatchError(JetStreamError):
    """The ``expected_stream`` precondition failed (10060)."""


class MessageNotFoundError(JetStreamError):
    """No stored message at that sequence or for that subject (10037)."""


class ConsumerDeletedError(JetStreamError):
    """The consumer was deleted while messages were being pulled (409 Consumer Deleted)."""


class NoHeartbeatError(JetStreamError):
    """The server sent neither messages nor idle heartbeats for twice the heartbeat interval;
    the pull is re-issued (reported to the bus's error handler, not raised)."""


class MsgAlreadyAckedError(Error):
    """The message was acknowledged (ack, nak or term) already; a second one is refused."""


class InvalidArgumentError(Error, ValueError):
    """A JetStream call got an invalid argument (the message names the parameter); nothing was
    sent."""


class InvalidKeyError(InvalidArgumentError):
    """A Key-Value key (or watch filter) breaks the key rules; the message names the key and
    the rule. Nothing was sent."""


class NotAckableError(Error):
    """The message cannot be acknowledged (no JetStream reply subject, e.g. an ack-none
    consumer or a message read with ``get_msg``)."""


_BY_ERR_CODE: Dict[int, Type[JetStreamError]] = {
    10039: JetStreamNotEnabledError,
    10076: JetStreamNotEnabledError,
    10059: StreamNotFoundError,
    10058: StreamNameInUseError,
    10014: ConsumerNotFoundError,
    10149: ConsumerNotFoundError,
    10148: ConsumerExistsError,
    10013: ConsumerExistsError,
    10071: WrongLastSequenceError,
    10164: WrongLastSequenceError,  # what replicated streams answer to a failed precondition
    10070: WrongLastMsgIdError,
    10060: StreamMismatchError,
    10037: MessageNotFoundError,
}


def api_error(err: Mapping[str, Any], context: Optional[str] = None) -> JetStreamError:
    """The exception for an API error object (``{"code", "err_code", "description"}``)."""
    code = int(err.get("code") or 0)
    err_code = int(err.get("err_code") or 0)
    description = str(err.get("description") or "JetStream API error")
    if context:
        description = f"{context}: {description}"
    cls = _BY_ERR_CODE.get(err_code, JetStreamError)
    return cls(description, code, err_code)


__all__ = [
    "JetStreamError",
    "JetStreamNotEnabledError",
    "StreamNotFoundError",
    "StreamNameInUseError",
    "ConsumerNotFoundError",
    "ConsumerExistsError",
    "WrongLastSequenceError",
    "WrongLastMsgIdError",
    "KeyExistsError",
    "KeyNotFoundError",
    "BucketNotFoundError",
    "ObjectNotFoundError",
    "DigestMismatchError",
    "InvalidKeyError",
    "StreamMismatchError",
    "MessageNotFoundError",
    "ConsumerDeletedError",
    "NoHeartbeatError",
    "MsgAlreadyAckedError",
    "InvalidArgumentError",
    "NotAckableError",
    "api_error",
]
