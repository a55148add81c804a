"""The WebSocket transport: NATS bytes in binary WebSocket frames, for ``ws://`` and ``wss://``.

:class:`WebSocketStream` has the socket methods the connection uses (``recv``, ``sendall``,
``settimeout``, ``shutdown``, ``close``, plus ``handshake(deadline)``), like
:class:`~telestion_sync.tls.TLSStream`, and runs over a plain socket or over a TLSStream
(``wss://``). The WebSocket protocol itself is websockets' Sans-I/O ``ClientProtocol``, driven by
the connection's own reader and writer threads: no thread of its own.

Why websockets' Sans-I/O layer and not wsproto (measured here, CPython 3.11, websockets 17.4,
wsproto 1.3.2): websockets encodes a 16-byte binary frame in 1.5 us (wsproto 4.0 us), decodes one
in 1.9 us (5.8 us), and decodes a 1 MiB frame in 49 us (1200 us: wsproto copies the buffer in
Python); masking runs in its C extension. Both implement permessage-deflate (RFC 7692); websockets
is typed, released often, and is what nats-py's successor builds on. Its API fits a reader thread
and writer threads: ``receive_data``/``events_received`` on the reader, ``send_binary`` on a
writer, ``data_to_send`` for both, all under one short lock.

Thread safety: the protocol object is used under ``_lock``, which is never held while waiting on
the network. Bytes it produces go into an outgoing queue that the thread holding ``_send_lock``
sends in order. Writers block on ``_send_lock`` (as on a socket). The reader never waits for it:
control frames it must answer (a PONG for the server's PING, the reply to a close frame) are
queued and sent by the reader only if it gets ``_send_lock`` at once and the socket is writable
now; otherwise the writer sending at that moment sends them right after its own data (it looks
at the queue again after releasing the lock, so nothing queued meanwhile is left behind), or the
next ``sendall`` does. A stalled send side therefore never blocks the reader.

Not done: no close frame on ``close()`` (the connection has already shut the socket down, as for
TCP; nats-server treats both alike), and no ``Nats-No-Masking`` (client frames stay masked as
RFC 6455 requires, so proxies in between keep working; masking runs in C).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import deque
from typing import Any, Deque, List, Optional, Union

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidMessage, InvalidState, InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from ._version import __version__
from .errors import ProtocolError, WebSocketError

log = logging.getLogger("telestion_sync.websocket")

_READ_SIZE = 64 * 1024
_JOIN_LIMIT = 64 * 1024  # queued frames up to this size go out in one send
#: nats-server refuses a compressed message that inflates to more than max_payload (and kills
#: the connection), so compressed data goes out in messages of at most this many bytes (or
#: ``max_message_size``, if smaller): NATS frames may span messages, the server parses a stream.
_COMPRESSED_MESSAGE = 16 * 1024
_DATA = (Opcode.BINARY, Opcode.CONT, Opcode.TEXT)
Bytes = Union[bytes, bytearray, memoryview]


class WebSocketStream:
    """A WebSocket client connection over ``sock`` (a socket or a TLSStream) that carries NATS
    bytes in binary frames, safe for one reading and any number of writing threads.

    ``label`` names the server in error messages; ``compression`` offers permessage-deflate
    (used when the server accepts it: see :attr:`compression`).
    """

    def __init__(
        self,
        sock: Any,
        host: str,
        port: int,
        *,
        secure: bool = False,
        path: str = "/",
        compression: bool = True,
        label: Optional[str] = None,
    ) -> None:
        self._sock = sock
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.label = label or f"{'wss' if secure else 'ws'}://{hostport}"
        uri = parse_uri(f"{'wss' if secure else 'ws'}://{hostport}{path or '/'}")
        extensions = None
        if compression:
            # nats-server answers "server_no_context_takeover; client_no_context_takeover" and
            # compresses every message on its own; asking for both up front says we know.
            extensions = [
                ClientPerMessageDeflateFactory(
                    server_no_context_takeover=True, client_no_context_takeover=True
                )
            ]
        # No size limit: the server's max_payload bounds a NATS message, and a WebSocket
        # message may carry several of them.
        self._proto = ClientProtocol(uri, extensions=extensions, max_size=None, logger=log)
        self._lock = threading.Lock()  # every call into the protocol object
        self._send_lock = threading.Lock()  # frames leave in the order made
        self._out: List[bytes] = []  # bytes the protocol made, not yet sent (under _lock)
        self._chunks: Deque[bytes] = deque()  # received NATS bytes (reader thread only)
        self._offset = 0  # bytes of _chunks[0] already returned
        self._eof = False
        self.compression = False
        #: Set from the server's max_payload once INFO arrived (bounds compressed messages).
        self.max_message_size = _COMPRESSED_MESSAGE
        self.close_code: Optional[int] = None
        self.close_reason = ""

    # --- handshake ---------------------------------------------------------------------------

    def handshake(self, deadline: float) -> None:
        """Send the HTTP upgrade and wait for ``101 Switching Protocols``.

        Raises :class:`WebSocketError` (with ``status`` for an HTTP error) when the server
        refuses or is not a WebSocket server (a plain NATS port is named as such), and
        ``socket.timeout`` when the answer does not come by ``deadline``.
        """
        proto = self._proto
        with self._lock:
            request = proto.connect()
            request.headers["User-Agent"] = f"telestion-sync/{__version__}"
            proto.send_request(request)
            self._queue(proto.data_to_send())
        self._settimeout_until(deadline)
        with self._send_lock:
            self._drain()
        first = True
        while proto.state is State.CONNECTING and proto.handshake_exc is None:
            self._settimeout_until(deadline)
            data = self._sock.recv(_READ_SIZE)
            if first and data.startswith(b"INFO"):
                raise WebSocketError(
                    f"{self.label} answered like a plain NATS port (INFO), not with "
                    "'HTTP/1.1 101 Switching Protocols': use a nats:// (or tls://) URL for it, "
                    "or the server's WebSocket port for ws://"
                )
            first = False
            self._feed(data)
        exc = proto.handshake_exc
        if exc is not None:
            raise self._refused(exc) from None
        self.compression = any(e.name == "permessage-deflate" for e in proto.extensions)
        log.debug("WebSocket connection to %s open (compression %s)", self.label, self.compression)

    def _settimeout_until(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("WebSocket handshake timed out")
        self._sock.settimeout(left)

    def _refused(self, exc: Exception) -> WebSocketError:
        """The error for a failed upgrade."""
        if isinstance(exc, InvalidStatus):
            resp = exc.response
            body = resp.body.decode("utf-8", "replace").strip() if resp.body else ""
            detail = f": {body[:200]}" if body else ""
            return WebSocketError(
                f"{self.label} refused the WebSocket upgrade: HTTP {resp.status_code} "
                f"{resp.reason_phrase}{detail}",
                status=resp.status_code,
            )
        if isinstance(exc, InvalidMessage):
            if isinstance(exc.__cause__, EOFError):
                return WebSocketError(
                    f"{self.label} closed the connection during the WebSocket handshake "
                    "(is it a WebSocket port?)",
                    retryable=True,
                )
            return WebSocketError(
                f"{self.label} did not answer the WebSocket upgrade with HTTP: is it a WebSocket "
                f"port? ({exc.__cause__ or exc})"
            )
        if isinstance(exc, InvalidHandshake):
            return WebSocketError(f"WebSocket handshake with {self.label} failed: {exc}")
        return WebSocketError(f"WebSocket handshake with {self.label} failed: {exc!r}")

    # --- receiving (the reader thread) -------------------------------------------------------

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of the NATS stream; b"" once the server closed the connection."""
        chunks = self._chunks
        while not chunks:
            if self._eof:
                return b""
            self._feed(self._sock.recv(size if size > _READ_SIZE else _READ_SIZE))
        if len(chunks) == 1 and not self._offset and len(chunks[0]) <= size:
            return chunks.popleft()  # the common case: one whole frame's data
        return self._take(size)

    def _take(self, size: int) -> bytes:
        chunks = self._chunks
        off = self._offset
        parts = []
        room = size
        while chunks and room > 0:
            head = chunks[0]
            avail = len(head) - off
            if avail <= room:
                parts.append(head[off:] if off else head)
                chunks.popleft()
                room -= avail
                off = 0
            else:
                parts.append(head[off : off + room])
                off += room
                room = 0
        self._offset = off
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _feed(self, data: bytes) -> None:
        """Give received bytes (b"": end of stream) to the protocol; keep the data frames and
        send what it answers (pong, close)."""
        proto = self._proto
        with self._lock:
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            events = proto.events_received()
            out = proto.data_to_send()
            produced = bool(out) and self._queue(out)
            failure = proto.parser_exc
        if not data:
            self._eof = True
        chunks = self._chunks
        for ev in events:
            if type(ev) is Frame:
                if ev.opcode in _DATA:
                    if ev.data:
                        payload = ev.data
                        chunks.append(payload if type(payload) is bytes else bytes(payload))
                elif ev.opcode is Opcode.CLOSE:
                    self._eof = True
                    self._closed_by_server()
            # a Response: the handshake reads the outcome from the protocol object
        if produced:
            self._kick()
        if failure is not None and proto.state is not State.CONNECTING:
            self._eof = True
            if not isinstance(failure, EOFError):
                raise ProtocolError(f"invalid WebSocket data from {self.label}: {failure}")

    def _closed_by_server(self) -> None:
        with self._lock:
            rcvd = self._proto.close_rcvd
        if rcvd is not None:
            self.close_code, self.close_reason = int(rcvd.code), rcvd.reason
        log.debug("%s closed the WebSocket: %s %s", self.label, self.close_code, self.close_reason)

    # --- sending -----------------------------------------------------------------------------

    def sendall(self, data: Bytes) -> None:
        """Send ``data`` as one binary WebSocket message (after anything queued before it)."""
        if not data:
            return
        if self.compression and len(data) > self._compressed_step():
            self._sendall_split(data)
            return
        # The common case in one pass: one frame, one lock round, one send.
        with self._send_lock:
            with self._lock:
                out = self._encode(data)
                if self._out:  # control frames the reader queued go first
                    out[:0] = self._out
                    self._out = []
            send = self._sock.sendall
            for chunk in out:
                send(chunk)
        self._drain_late()

    def _sendall_split(self, data: Bytes) -> None:
        """Send ``data`` compressed, in messages the server can inflate within max_payload."""
        step = self._compressed_step()
        view = memoryview(data)
        with self._send_lock:
            for start in range(0, len(view), step):
                with self._lock:  # released between messages: the reader is not kept waiting
                    self._out.extend(self._encode(view[start : start + step]))
                self._drain()
        self._drain_late()

    def _compressed_step(self) -> int:
        """The largest compressed message to send (see ``_COMPRESSED_MESSAGE``)."""
        return max(1, min(self.max_message_size, _COMPRESSED_MESSAGE))

    def _drain_late(self) -> None:
        """Send what the reader queued after the sender's last look, while it held the lock."""
        while self._out:
            with self._send_lock:
                self._drain()

    def _encode(self, data: Bytes) -> List[bytes]:
        """``data`` as a binary frame, ready to send (called with _lock held)."""
        try:
            self._proto.send_binary(data)
        except InvalidState:
            raise ConnectionResetError(f"the WebSocket connection to {self.label} is closing") from None
        return self._proto.data_to_send()

    def _queue(self, produced: List[bytes]) -> bool:
        """Queue the protocol's output (called with _lock held); True if there was any. The
        protocol's end-of-stream marker (b"") is dropped: the connection closes the socket."""
        added = False
        for chunk in produced:
            if chunk:
                self._out.append(chunk)
                added = True
        return added

    def _drain(self) -> None:
        """Send everything queued (called with _send_lock held)."""
        while True:
            with self._lock:
                out = self._out
                if not out:
                    return
                self._out = []
            if len(out) > 1 and sum(len(c) for c in out) <= _JOIN_LIMIT:
                self._sock.sendall(b"".join(out))
            else:
                for chunk in out:
                    self._sock.sendall(chunk)

    def _kick(self) -> None:
        """Send queued control frames if that cannot block: only when no other thread is
        sending and the socket has room now; otherwise the sending thread, or the next
        sendall, sends them."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            if self._writable():
                self._drain()
        except OSError as exc:  # the reader sees the failure on its next recv
            log.debug("sending a control frame to %s failed: %s", self.label, exc)
        finally:
            self._send_lock.release()

    def _writable(self) -> bool:
        try:
            fd = self._sock.fileno()
        except (AttributeError, OSError):
            return True
        if fd < 0:
            return False
        if hasattr(select, "poll"):
            p = select.poll()
            p.register(fd, select.POLLOUT)
            return bool(p.poll(0))
        return bool(select.select([], [fd], [], 0)[1])  # pragma: no cover - no poll()

    # --- the socket methods the connection uses ----------------------------------------------

    def settimeout(self, timeout: Optional[float]) -> None:
        self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return int(self._sock.fileno())


__all__ = ["WebSocketStream"]
