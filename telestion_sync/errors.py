"""The exceptions telestion_sync raises.

Every error derives from :class:`Error`, so ``except ts.Error`` catches all of them. Where a
builtin category fits, the error also derives from it (``TimeoutError``, ``ValueError``), so
generic code that knows nothing of this package still handles it sensibly.
"""

from __future__ import annotations

import builtins
from typing import Any, Optional


class Error(Exception):
    """Base class of every telestion_sync error.

    ``repeated``: how many identical reports an error handed to ``on_error`` stands for
    (identical errors queued at once are coalesced into one call).
    """

    repeated: int = 1


class ConnectionClosedError(Error):
    """The bus is closed (by ``close()``, ``drain()`` or a lost connection that gave up)."""


class NoServersError(Error):
    """No server in the pool could be reached; the message names the URLs tried."""


class AuthenticationError(Error):
    """The server refused the credentials (wrong or missing user, password, token, key), or
    told a live connection that they expired or were revoked.

    ``server_text`` is the server's ``-ERR`` text (e.g. ``Authorization Violation``), empty when
    the refusal was not a server error.
    """

    def __init__(self, message: str, server_text: str = "") -> None:
        self.server_text = server_text
        super().__init__(message)


class ProtocolError(Error):
    """The peer sent something that is not valid NATS protocol."""


class PermissionViolationError(Error):
    """The server denied a publish or subscribe on a subject for this user.

    ``operation`` is ``"publish"`` or ``"subscribe"``, ``subject`` the denied subject and
    ``queue`` the queue group of a denied queue subscription.
    """

    def __init__(
        self, operation: str, subject: str, message: Optional[str] = None, queue: Optional[str] = None
    ) -> None:
        self.operation = operation
        self.subject = subject
        self.queue = queue
        super().__init__(message or f"permission denied to {operation} on {subject!r}")


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 - deliberate: ts.TimeoutError
    """A blocking call did not complete within its timeout."""


class NoRespondersError(Error):
    """A request found nobody subscribed to its subject (the server said 503 at once)."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"no responders for request on {subject!r}")


class ServiceError(Error):
    """A responder answered with an error (NATS micro ``Nats-Service-Error`` headers).

    ``code`` is the ``Nats-Service-Error-Code`` value (an int, 500 by default), ``description``
    the error text. Raise it from a ``reply`` handler to choose the code sent back.
    """

    def __init__(self, description: str, code: int = 500, message: Any = None) -> None:
        self.description = description
        self.code = code
        self.message = message
        super().__init__(f"service error {code}: {description}")


class MaxPayloadError(Error, ValueError):
    """A message is larger than the server's ``max_payload``; nothing was sent."""

    def __init__(self, size: int, max_payload: int) -> None:
        self.size = size
        self.max_payload = max_payload
        super().__init__(f"message of {size} bytes exceeds the server's max_payload of {max_payload} bytes")


class SlowConsumerError(Error):
    """A subscription's pending queue was full, so messages were dropped (and counted)."""

    def __init__(self, subject: str, sid: int, dropped: int) -> None:
        self.subject = subject
        self.sid = sid
        self.dropped = dropped
        super().__init__(
            f"slow consumer on {subject!r} (sid {sid}): pending limit reached, "
            f"{dropped} message(s) dropped so far"
        )


class BadSubjectError(Error, ValueError):
    """A subject (or queue group name) is not valid NATS syntax; nothing was sent."""


class DecodeError(Error, ValueError):
    """A received payload did not decode with its codec (or failed ``schema=``).

    ``msg`` is the undecoded :class:`~telestion_sync.Message`; its ``payload`` is intact.
    """

    def __init__(self, text: str, msg: Any = None) -> None:
        self.msg = msg
        super().__init__(text)


class OutboundBufferFullError(Error):
    """The outgoing buffer is full (e.g. while disconnected); the publish was not accepted."""


class ConfigError(Error, ValueError):
    """Service configuration is missing or invalid; the message names the keys or file."""


class TLSError(Error):
    """TLS is misconfigured for this server: required but not enabled, not offered, an
    untrusted certificate (the message names the host), or a refused client certificate."""


class WebSocketError(Error):
    """A ``ws://``/``wss://`` server did not open the WebSocket: it refused the HTTP upgrade
    (``status`` is the HTTP status, e.g. 401, 403, 404), or the port is not a WebSocket port
    (the message says which); or a ``nats://`` URL reached a WebSocket (HTTP) port, which
    answered with HTTP. ``retryable`` is False for errors another try will not fix (a wrong
    port, a 4xx status): those fail ``connect()`` at once."""

    def __init__(self, message: str, status: Optional[int] = None, retryable: Optional[bool] = None) -> None:
        self.status = status
        if retryable is None:
            retryable = status is not None and status >= 500
        self.retryable = retryable
        super().__init__(message)
