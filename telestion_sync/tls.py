"""TLS for the connection: the SSL context from the options, and a TLS stream that a reader
thread and a writer thread can share.

An OpenSSL connection object must not be used from two threads at once, yet the client reads on
one thread and writes on another. ``ssl.SSLSocket`` gives no such guarantee: with a socket timeout
a ``sendall`` that OpenSSL needs to read for can wait on data the reader thread consumes and time
out. So the encryption runs in memory (``ssl.SSLObject`` over two ``MemoryBIO``s) under one lock
that is never held while waiting on the network, and the plain socket carries the bytes.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Optional, Union

from .errors import ConfigError

_RECORD = 16 * 1024 + 256  # one TLS record with its overhead


def tls_context(
    tls: Union[bool, ssl.SSLContext, None],
    ca_file: Optional[str] = None,
    cert_file: Optional[str] = None,
    key_file: Optional[str] = None,
    implied: bool = False,
) -> Optional[ssl.SSLContext]:
    """The SSL context to use, or None for plain TCP (a ``tls://`` URL still turns TLS on).

    An ``SSLContext`` is used as given; otherwise the CA file (default: the system's CAs) and
    an optional client certificate for mutual TLS make one. Any TLS option (or ``implied``, for
    ``tls_hostname``/``tls_handshake_first``) turns TLS on.
    """
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is False:
        if ca_file or cert_file or key_file or implied:
            raise ConfigError("tls=False contradicts the other tls_* options")
        return None
    if not tls and not (ca_file or cert_file or key_file or implied):
        return None
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_ca_file {ca_file!r} is not a usable CA file: {_reason(exc)}") from None
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"tls_cert_file {cert_file!r} / tls_key_file {key_file!r} are not a usable client "
                f"certificate and key: {_reason(exc)}"
            ) from None
    elif key_file:
        raise ConfigError("tls_key_file needs tls_cert_file (the client certificate)")
    return ctx


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


class TLSStream:
    """A TLS connection over ``sock`` with the socket methods the connection uses
    (``recv``, ``sendall``, ``settimeout``, ``shutdown``, ``close``), safe for one reading and
    any number of writing threads."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._lock = threading.Lock()  # every call into the TLS object
        self._send_lock = threading.Lock()  # ciphertext leaves in the order it was made

    def handshake(self, deadline: float) -> None:
        """Run the TLS handshake; ``socket.timeout`` when it does not finish by ``deadline``."""
        while True:
            try:
                with self._lock:
                    self._tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = self._sock.recv(_RECORD)
                if not data:
                    raise ConnectionResetError("the server closed the connection during the TLS handshake")
                with self._lock:
                    self._incoming.write(data)

    def _flush(self) -> None:
        """Send the ciphertext the TLS object has produced."""
        with self._send_lock:
            with self._lock:
                data = self._outgoing.read()
            if data:
                self._sock.sendall(data)

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of plaintext; b"" when the server closed the connection."""
        while True:
            with self._lock:
                try:
                    data: Optional[bytes] = self._tls.read(size)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""  # closed, with or without a close_notify
                produced = self._outgoing.pending  # e.g. an answer to a key update
            if produced:
                self._flush()
            if data is not None:
                return data
            raw = self._sock.recv(max(size, _RECORD))  # no lock held while waiting
            with self._lock:
                if raw:
                    self._incoming.write(raw)
                else:
                    self._incoming.write_eof()

    def sendall(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Encrypt and send all of ``data``."""
        view = memoryview(data)
        with self._send_lock:
            while view:
                with self._lock:
                    written = self._tls.write(view[: 1 << 20])
                    out = self._outgoing.read()
                view = view[written:]
                if out:
                    self._sock.sendall(out)

    def settimeout(self, timeout: Optional[float]) -> None:
        self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        """The socket's descriptor (for a writability check; never read or write it)."""
        return self._sock.fileno()

    @property
    def version(self) -> Optional[str]:
        """The negotiated TLS version, e.g. ``"TLSv1.3"``."""
        return self._tls.version()
