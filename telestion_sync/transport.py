"""Transports: TCP, TLS and WebSocket, behind one small interface.

A transport moves bytes between the network and the Sans-I/O protocol. All three have the
socket methods the connection uses (:class:`Transport`): a plain TCP socket, :class:`TLSStream`
(TLS in memory, shared safely by the reader and writer threads) and :class:`WebSocketStream`
(NATS bytes in binary WebSocket frames, over TCP or TLS). This module opens and layers them:
TCP with every address of a host name tried within one deadline, then TLS, then WebSocket.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import sys
import time
from typing import Any, Optional, Protocol, Union

from .errors import TLSError
from .pool import ServerAddr
from .tls import TLSStream
from .websocket import WebSocketStream

log = logging.getLogger("telestion_sync.transport")


class Transport(Protocol):
    """What the connection needs of a transport: blocking reads and writes with a timeout,
    and a way to end it while other threads are blocked on it."""

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" once the peer closed the connection."""
        ...

    def sendall(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Send all of ``data`` (``socket.timeout`` when it cannot within the timeout)."""
        ...

    def settimeout(self, timeout: Optional[float]) -> None:
        """The timeout of each blocking call."""
        ...

    def shutdown(self, how: int) -> None:
        """End the connection; threads blocked on it return."""
        ...

    def close(self) -> None:
        """Release the descriptor (only once no thread uses it)."""
        ...


def open_tcp(host: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection to ``host:port``. A name with several addresses (``localhost``: ``::1``
    and ``127.0.0.1``) is tried address by address, all within one deadline: each address gets
    an equal share of the time left (at least half a second, if there is that much), so one
    that does not answer cannot use up the time of the others."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: Optional[OSError] = None
    for i, (family, kind, proto, _, sockaddr) in enumerate(infos):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        share = max(left / (len(infos) - i), min(left, 0.5))
        sock = _TCPSocket(family, kind, proto)
        try:
            sock.settimeout(share)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            log.debug("connecting to %s (%s) failed: %s", host, sockaddr[0], exc)
    if last is not None:
        raise last
    raise socket.timeout(f"no address of {host} answered in time")


#: What a send or receive raises when the kernel's timeout (see :func:`set_io_timeout`) or
#: Python's ran out.
IO_TIMEOUT = (socket.timeout, BlockingIOError)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class _TCPSocket(socket.socket):
    """A TCP socket whose ``sendall``, once :func:`set_io_timeout` gave it ``io_timeout``, fails
    only after that long without progress.

    The kernel's own send timeout cannot say that: a send() that fills the buffer and then
    waits returns the part it took when its timer runs out, and the next send() waits a whole
    timeout again (a dead link took 2-3 timeouts). So each send() takes what fits now
    (``MSG_DONTWAIT``: one system call when all fits, the common case) and a full buffer is
    waited for with poll(), up to ``io_timeout`` after the last progress.
    """

    __slots__ = ("io_timeout",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.io_timeout: Optional[float] = None  # None: Python's timeout (the handshake)

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        limit = self.io_timeout
        if limit is None:
            super().sendall(data, flags)
            return
        flags |= _DONTWAIT
        try:
            sent = self.send(data, flags)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        poller = select.poll()
        poller.register(self, select.POLLOUT)
        moved = time.monotonic()
        while view:
            left = moved + limit - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise socket.timeout(f"the send moved nothing for {limit} s")
            try:
                sent = self.send(view, flags)
            except BlockingIOError:
                continue
            view = view[sent:]
            moved = time.monotonic()


def set_io_timeout(tcp: socket.socket, stream: Any, seconds: float) -> None:
    """Bound every send and receive on an open link to ``seconds`` without progress.

    The kernel keeps the time (``SO_SNDTIMEO``/``SO_RCVTIMEO`` on the TCP socket ``tcp``; a
    socket from :func:`open_tcp` also measures the progress of its ``sendall`` itself) and the
    socket blocks: a Python socket timeout polls before every send and every receive, two
    system calls where one does (one A/B run of requests on the project's machine: about 3 us
    less CPU per request in each of the requesting and the reader thread). A receive that
    times out raises ``BlockingIOError``, a send ``socket.timeout`` (catch :data:`IO_TIMEOUT`).
    Where the options cannot be set (Windows takes another format) Python's timeout on
    ``stream``, the transport stacked on ``tcp``, does the same.
    """
    if sys.platform != "win32":
        whole = int(seconds)
        # at least 1 us: a zero timeval means no timeout at all
        tv = struct.pack("ll", whole, max(int((seconds - whole) * 1e6), 0 if whole else 1))
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        except (OSError, AttributeError) as exc:
            log.debug("kernel socket timeouts not available (%s): Python's instead", exc)
        else:
            stream.settimeout(None)
            if isinstance(tcp, _TCPSocket):
                tcp.io_timeout = seconds
            return
    stream.settimeout(seconds)  # pragma: no cover - Windows, or options refused


def hang_up(sock: Any) -> None:
    """End a connection without closing the socket: threads blocked on it see EOF or an error
    at once, and the one that owns it closes it (the connection's ``_release``). Closing it under
    a blocked thread would free the descriptor number for reuse by another socket."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def start_tls(sock: Any, ctx: ssl.SSLContext, url: str, host: str, deadline: float) -> TLSStream:
    """TLS over ``sock`` (handshake done by ``deadline``); the certificate is checked against
    ``host``. Failures are :class:`TLSError` saying what to check."""
    stream = TLSStream(sock, ctx, host)
    try:
        stream.handshake(deadline)
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(
            f"the TLS certificate of {host} ({url}) is not trusted: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        hint = ""
        if "HANDSHAKE_FAILURE" in reason.upper() or "CERTIFICATE" in reason.upper():
            hint = "; does the server require a client certificate (tls_cert_file, tls_key_file)?"
        raise TLSError(f"TLS handshake with {host} ({url}) failed: {reason}{hint}") from None
    return stream


def start_websocket(
    sock: Any, addr: ServerAddr, secure: bool, compression: bool, deadline: float
) -> WebSocketStream:
    """The WebSocket upgrade over ``sock`` (TCP, or TLS for wss://), done by ``deadline``."""
    stream = WebSocketStream(
        sock,
        addr.host,
        addr.port,
        secure=secure,
        path=addr.path,
        compression=compression,
        label=addr.url,
    )
    stream.handshake(deadline)
    return stream


__all__ = [
    "Transport",
    "open_tcp",
    "set_io_timeout",
    "IO_TIMEOUT",
    "hang_up",
    "start_tls",
    "start_websocket",
    "TLSStream",
    "WebSocketStream",
]
