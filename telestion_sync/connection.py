"""One NATS connection: socket, handshake, a reader thread, a writer thread, pings.

Publishers append encoded frames to a write buffer under a lock; the writer thread sends the
whole buffer with one ``sendall`` whenever it is non-empty, so a burst of publishes becomes a few
large writes. The reader thread feeds received bytes to the Sans-I/O parser and hands messages to
the client. The handshake waits for the server's PONG (or -ERR) after CONNECT, so a wrong
password fails ``connect()`` at once instead of on the first publish.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import tenacity

from ._version import __version__
from .auth import Credentials
from .errors import (
    AuthenticationError,
    ConfigError,
    ConnectionClosedError,
    Error,
    NoServersError,
    OutboundBufferFullError,
    PermissionViolationError,
    ProtocolError,
    TimeoutError,
    TLSError,
    WebSocketError,
)
from .pool import (
    WEBSOCKET_SCHEMES,
    Server,
    ServerAddr,
    ServerPool,
    parse_server,
    parse_servers,
)
from .protocol import (
    ERR,
    GOT_INFO,
    INFO,
    LARGE_PAYLOAD,
    OPEN,
    PING,
    PING_DUE,
    PING_FRAME,
    PONG,
    STALE,
    ClientProtocol,
    Event,
)
from .transport import (
    IO_TIMEOUT,
    WebSocketStream,
    hang_up,
    open_tcp,
    set_io_timeout,
    start_tls,
    start_websocket,
)

log = logging.getLogger("telestion_sync.connection")

DEFAULT_CONNECT_TIMEOUT = 2.0  # nats.go's default
DEFAULT_PING_INTERVAL = 120.0  # nats.go's default
DEFAULT_MAX_OUTSTANDING_PINGS = 2  # nats.go's default
#: A send that moves nothing for this many seconds means a dead link (nats-server's own
#: write_deadline is 10 s). Separate from ``ping_interval``, so a
#: stalled send is found in seconds, not minutes.
DEFAULT_WRITE_TIMEOUT = 10.0
_SEND_CHUNK = 1024 * 1024
#: Above this many buffered bytes a publisher sends the buffer itself (backpressure).
WRITE_HIGH_WATER = 4 * 1024 * 1024
DEFAULT_MAX_RECONNECT_ATTEMPTS = 60  # nats.go's default, per server; -1: forever
DEFAULT_RECONNECT_TIME_WAIT = 2.0  # nats.go's default
DEFAULT_RECONNECT_JITTER = 0.1  # nats.go's default
DEFAULT_RECONNECT_BUF_SIZE = 8 * 1024 * 1024  # nats.go's default
_READ_SIZE = 64 * 1024
_MAX_READ_SIZE = 4 * 1024 * 1024
#: A NATS server sends INFO as soon as it accepts; a WebSocket port is HTTP and waits for a
#: request. After this long without a byte (or four times the TCP connect's round trip, if
#: longer; at most a quarter of ``connect_timeout``), a plain nats:// connection sends an HTTP
#: request (``http_probe``), so a WebSocket port fails at once instead of after the timeout.
HTTP_PROBE_DELAY = 0.25
_HTTP_PROBE_RTTS = 4


class _ProbeMissed(Exception):
    """The HTTP probe was answered, but not with HTTP (an INFO, -ERR, a closed connection...):
    the peer may be a slow NATS server the probe spoiled, so the attempt is made again without
    one. Never leaves :meth:`Connection._handshake`."""


class Handler:
    """What the connection calls back into (implemented by the client).

    ``_on_msg``/``_on_batch_end`` run on the reader thread; ``_resubscribe_frames`` runs with the
    connection's write lock held and must not call back into the connection.
    """

    def _on_msg(self, event: Event) -> None: ...

    def _on_batch_end(self) -> None: ...

    def _on_server_error(self, err: Error) -> None: ...

    def _on_disconnected(self, err: BaseException) -> None: ...

    def _on_reconnected(self) -> None: ...

    def _on_connection_closed(self, err: BaseException) -> None: ...

    def _on_discovered_servers(self, urls: List[str]) -> None: ...

    def _on_lame_duck(self) -> None: ...

    def _resubscribe_frames(self) -> bytes:
        return b""


class State(enum.Enum):
    """Where a connection is in its life."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class _Link:
    """One socket and the reader and writer threads that serve it."""

    __slots__ = ("sock", "server", "proto", "reader", "writer", "alive", "drainer", "users", "last_error")

    def __init__(self, sock: Any, server: Server, proto: ClientProtocol) -> None:
        self.sock = sock
        self.server = server
        self.proto = proto  # the Sans-I/O protocol state of this connection
        self.reader: Optional[threading.Thread] = None
        self.writer: Optional[threading.Thread] = None
        self.alive = True
        # Set while the link is being left (lame duck): its writer stops, its reader goes on.
        self.drainer: Optional[threading.Thread] = None
        # Threads using the socket; the last one to finish closes it. Everyone else only shuts
        # it down: closing under a thread blocked on the descriptor lets the number be reused,
        # and that thread would then poll (or write to) someone else's socket.
        self.users = 0
        self.last_error: Optional[Error] = None  # the server's last -ERR: the likely cause


class _Pong:
    """A flush() waiting for its PONG; ``ok`` is False when the link died first."""

    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = True


def _fail(waiters: Sequence[Optional[_Pong]]) -> None:
    """Wake flush() calls whose PING died with a link (None: a timer ping, nobody waits)."""
    for w in waiters:
        if w is not None:
            w.ok = False
            w.event.set()


class Connection:
    """The client's connection to a server pool: one live link at a time, reconnecting on loss.

    While disconnected, publishes wait in the write buffer (up to ``reconnect_buf_size`` bytes,
    then :class:`OutboundBufferFullError`); subscriptions are re-established from the client's
    state before the buffer is replayed.
    """

    def __init__(
        self,
        servers: List[ServerAddr],
        handler: Handler,
        *,
        name: Optional[str] = None,
        credentials: Optional[Credentials] = None,
        tls: Optional[ssl.SSLContext] = None,
        tls_hostname: Optional[str] = None,
        tls_handshake_first: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        max_outstanding_pings: int = DEFAULT_MAX_OUTSTANDING_PINGS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        echo: bool = True,
        allow_reconnect: bool = True,
        max_reconnect_attempts: int = DEFAULT_MAX_RECONNECT_ATTEMPTS,
        reconnect_time_wait: float = DEFAULT_RECONNECT_TIME_WAIT,
        reconnect_jitter: float = DEFAULT_RECONNECT_JITTER,
        reconnect_wait: Optional[Callable[[tenacity.RetryCallState], float]] = None,
        reconnect_buf_size: int = DEFAULT_RECONNECT_BUF_SIZE,
        randomize: bool = True,
        ignore_discovered_servers: bool = False,
        retry_on_failed_connect: bool = False,
        ignore_auth_error_abort: bool = False,
        ws_compression: bool = True,
        http_probe: bool = True,
    ) -> None:
        self._handler = handler
        self._ws_compression = ws_compression
        self._http_probe = http_probe
        self._name = name
        self._credentials = credentials or Credentials()
        self._tls = tls
        self._tls_hostname = tls_hostname
        self._tls_handshake_first = tls_handshake_first
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.max_outstanding_pings = max_outstanding_pings
        self.write_timeout = write_timeout
        self._echo = echo
        self.allow_reconnect = allow_reconnect
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_buf_size = reconnect_buf_size
        self._wait = reconnect_wait or (
            tenacity.wait_fixed(reconnect_time_wait) + tenacity.wait_random(0, reconnect_jitter)
        )
        self.reconnect_time_wait = reconnect_time_wait
        self._randomize = randomize
        self._ignore_discovered = ignore_discovered_servers
        self._retry_on_failed_connect = retry_on_failed_connect
        self._ignore_auth_error_abort = ignore_auth_error_abort

        self._pool = ServerPool(servers, randomize, ignore_discovered_servers)

        self.max_payload = 1024 * 1024
        # Payloads up to this size take the publish fast path: small enough for %-formatting
        # and within the server's max_payload (one comparison instead of two per publish).
        self.inline_max = min(LARGE_PAYLOAD, self.max_payload)
        self._link: Optional[_Link] = None
        self._connecting_sock: Optional[socket.socket] = None

        self._wlock = threading.Lock()
        self._wcond = threading.Condition(self._wlock)  # the writer waits here for data
        self._state_cond = threading.Condition(self._wlock)  # state changes
        self._send_lock = threading.Lock()
        self._wbuf = bytearray()
        self._writer_waiting = False
        self._pongs: Deque[Optional[_Pong]] = deque()  # under _wlock; None for timer pings
        self._pings_in_buf = 0  # PINGs in _wbuf not yet taken by a sender (under _wlock)
        self.state = State.CONNECTING
        self.connected = False  # state is CONNECTED (kept as a plain bool for the hot path)
        self.closed = False
        self._closed_event = threading.Event()
        self._closing = False  # close() waits for the writer to take the buffer
        self._aux: List[threading.Thread] = []  # reconnect and drain threads, old links' threads
        self._last_reader: Optional[threading.Thread] = None  # the given-up link's reader
        self.out_msgs = 0  # under _wlock
        self.out_bytes = 0  # under _wlock
        self.in_msgs = 0  # reader thread only
        self.in_bytes = 0  # reader thread only
        self.reconnects = 0
        self.last_error: Optional[BaseException] = None
        self.close_cause: Optional[BaseException] = None  # why reconnecting ended, if it did

    # --- properties --------------------------------------------------------------------------

    @property
    def info(self) -> Dict[str, Any]:
        """The current (or last) server's INFO, with later INFOs merged in."""
        link = self._link
        return link.proto.info if link is not None else {}

    @property
    def addr(self) -> Optional[ServerAddr]:
        """The address of the current (or last) server."""
        link = self._link
        return link.server.addr if link is not None else None

    @property
    def transport(self) -> Dict[str, Any]:
        """How the current link is carried: ``scheme``, and for WebSocket links whether
        permessage-deflate was negotiated (``ws_compression``); empty when not connected."""
        link = self._link
        if link is None or not self.connected:
            return {}
        found: Dict[str, Any] = {"scheme": link.server.addr.scheme}
        if isinstance(link.sock, WebSocketStream):
            found["ws_compression"] = link.sock.compression
        return found

    @property
    def servers(self) -> List[ServerAddr]:
        """The server pool: given URLs and, unless ignored, those the cluster announced."""
        return self._pool.addrs()

    @property
    def discovered_servers(self) -> List[ServerAddr]:
        """Servers learned from the cluster's INFO ``connect_urls``."""
        return self._pool.addrs(discovered_only=True)

    # --- connecting --------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect to the first server of the pool that accepts us, then start the threads.

        A refusal of the credentials ends the attempt at once (:class:`AuthenticationError`);
        servers that cannot be reached are skipped, and when none is left the error is
        :class:`NoServersError` naming every URL tried. With ``retry_on_failed_connect`` the
        connection instead keeps trying in the background and this returns at once.
        """
        failures: List[str] = []
        last: Optional[BaseException] = None
        for srv in self._pool:
            try:
                sock, proto = self._handshake(srv)
            except (AuthenticationError, TLSError, ConfigError):
                raise  # wrong configuration: no other server will fix it
            except (OSError, TimeoutError, ProtocolError, Error) as exc:
                if isinstance(exc, WebSocketError) and not exc.retryable:
                    raise  # a wrong port or an HTTP 4xx: no other server will fix it
                failures.append(f"{srv.addr.url} ({exc})")
                last = exc
                srv.last_attempt = time.monotonic()
                continue
            with self._wlock:
                self._start(srv, sock, proto)
            return
        error = NoServersError("could not connect to any server: " + "; ".join(failures))
        error.__cause__ = last
        if self._retry_on_failed_connect and self.allow_reconnect:
            log.info("%s; retrying in the background", error)
            with self._wlock:
                self._set_state(State.RECONNECTING)
            self.last_error = error
            self._start_reconnect()
            return
        raise error

    def _handshake(self, srv: Server) -> Any:
        """Connect to ``srv`` and run the NATS handshake (the steps are the Sans-I/O
        :class:`ClientProtocol`'s); returns the transport and the protocol, open.

        A plain TCP server not yet known to speak NATS may get the HTTP probe; when the probe
        meets anything but an HTTP answer, the attempt is made once more without it, with a
        ``connect_timeout`` of its own, so a slow NATS server still connects."""
        try:
            return self._attempt(srv, self._http_probe and not srv.speaks_nats)
        except _ProbeMissed as exc:
            log.info("%s; connecting again without the HTTP probe", exc)
        if self.closed:
            raise ConnectionClosedError("the connection was closed while connecting")
        return self._attempt(srv, False)

    def _attempt(self, srv: Server, probe: bool) -> Any:
        """One connection to ``srv`` and the handshake on it (see :meth:`_handshake`)."""
        addr = srv.addr
        started = time.monotonic()
        deadline = started + self.connect_timeout
        tcp = open_tcp(addr.host, addr.port, deadline)
        sock: Any = tcp
        self._connecting_sock = sock
        try:
            ctx = self._tls
            ws = addr.scheme in WEBSOCKET_SCHEMES
            if ctx is None and addr.scheme in ("tls", "wss"):
                ctx = ssl.create_default_context()
            if ctx is not None and (self._tls_handshake_first or ws):
                sock = start_tls(sock, ctx, addr.url, self._tls_name(srv), deadline)
            if ws:  # TLS (wss://) below the WebSocket, NATS inside it
                sock = start_websocket(sock, addr, ctx is not None, self._ws_compression, deadline)
            proto = ClientProtocol(
                addr.url,
                ping_interval=self.ping_interval,
                max_outstanding_pings=self.max_outstanding_pings,
                now=time.monotonic(),
            )
            probe_at = None
            if probe and ctx is None and not ws:  # plain TCP only: never a probe beside TLS
                now = time.monotonic()
                delay = max(HTTP_PROBE_DELAY, _HTTP_PROBE_RTTS * (now - started))
                probe_at = now + min(delay, self.connect_timeout / 4)
            try:
                self._read_until(sock, proto, deadline, GOT_INFO, probe_at, addr)
            except socket.timeout:
                hint = "" if ctx is not None else " (if it expects TLS first, pass tls_handshake_first=True)"
                if proto.probed:
                    hint += "; nor did it answer an HTTP request, as a WebSocket port would"
                elif not ws:
                    hint += "; a WebSocket port answers nothing here: use a ws:// or wss:// URL for it"
                raise TimeoutError(
                    f"server {addr.url} sent no INFO within {self.connect_timeout} s{hint}"
                ) from None
            except WebSocketError:
                raise  # the probe was answered with HTTP: a WebSocket port
            except (OSError, Error) as exc:
                if proto.probed and not self.closed:
                    raise _ProbeMissed(f"the HTTP probe to {addr.url} got no HTTP answer ({exc})") from exc
                raise
            srv.speaks_nats = True
            info = proto.info
            if ws:  # the INFO's TLS fields describe the WebSocket listener's TLS, done above
                sock.max_message_size = proto.max_payload
            elif info.get("tls_required") and ctx is None:
                raise TLSError(
                    f"server {addr.url} requires TLS: use a tls:// URL, tls=True, tls_ca_file=... "
                    "or tls=ssl.SSLContext"
                )
            elif ctx is not None and not self._tls_handshake_first:
                if not (info.get("tls_required") or info.get("tls_available")):
                    raise TLSError(f"TLS was asked for, but server {addr.url} does not offer TLS")
                sock = start_tls(sock, ctx, addr.url, self._tls_name(srv), deadline)
            fields = self._connect_options(addr, ctx is not None, info.get("nonce"))
            sock.sendall(proto.connect_frame(fields))
            self._read_until(sock, proto, deadline, OPEN)
            # Bounds a writer's send into a stalled connection (_send); the reader's recv just
            # wakes up this often to see whether the link was given up.
            set_io_timeout(tcp, sock, self.write_timeout)
            return sock, proto
        except TimeoutError:  # ours (a subclass of socket.timeout): it says what timed out
            sock.close()
            raise
        except socket.timeout:
            sock.close()
            raise TimeoutError(
                f"server {addr.url} did not complete the handshake within {self.connect_timeout} s"
            ) from None
        except ssl.SSLError as exc:
            sock.close()
            raise TLSError(
                f"server {addr.url} refused the TLS connection ({exc.reason or exc}); "
                "does it need a client certificate (tls_cert_file, tls_key_file)?"
            ) from None
        except BaseException:
            sock.close()
            raise
        finally:
            self._connecting_sock = None

    def _tls_name(self, srv: Server) -> str:
        return self._pool.tls_name(srv, self._tls_hostname)

    def _connect_options(self, addr: ServerAddr, use_tls: bool, nonce: Optional[str]) -> Dict[str, Any]:
        options: Dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": use_tls,
            "lang": "python3",
            "version": __version__,
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "echo": self._echo,
        }
        if self._name:
            options["name"] = self._name
        options.update(self._credentials.connect_fields(addr.user, addr.password, addr.token, nonce))
        return options

    def _read_until(
        self,
        sock: Any,
        proto: ClientProtocol,
        deadline: float,
        state: str,
        probe_at: Optional[float] = None,
        addr: Optional[ServerAddr] = None,
    ) -> None:
        """Read until the handshake reaches ``state``, answering the server on the way; if not
        a byte has come by ``probe_at``, send ``addr`` the HTTP probe first."""
        while proto.state != state:
            out = proto.data_to_send()
            if out:
                sock.sendall(out)
            now = time.monotonic()
            left = deadline - now
            if left <= 0 or self.closed:
                raise socket.timeout()
            if probe_at is not None and addr is not None:
                if now >= probe_at:
                    log.debug("%s has said nothing since the connect: sending the HTTP probe", addr.url)
                    host = f"[{addr.host}]" if ":" in addr.host else addr.host
                    sock.sendall(proto.http_probe(f"{host}:{addr.port}"))
                    probe_at = None
                else:
                    left = min(left, probe_at - now)
            sock.settimeout(left)
            try:
                data = sock.recv(_READ_SIZE)
            except socket.timeout:
                if probe_at is not None:
                    continue  # time for the probe (or for the deadline check)
                raise
            if not data:
                raise ConnectionResetError("server closed the connection during the handshake")
            probe_at = None  # the server spoke: whatever it is, it is not a silent HTTP port
            proto.receive_handshake(data)

    def _start(self, srv: Server, sock: Any, proto: ClientProtocol) -> None:
        """Make a handshaken transport the live link (called with _wlock held)."""
        link = _Link(sock, srv, proto)
        self._link = link
        info = proto.info
        if "max_payload" in info:
            self.max_payload = proto.max_payload  # as announced, within DEFAULT_MAX_PAYLOAD
        self.inline_max = min(LARGE_PAYLOAD, self.max_payload)
        srv.attempts = 0
        srv.last_auth_error = None
        self._add_discovered(info)
        previous, self._last_reader = self._last_reader, None
        link.reader = threading.Thread(
            target=self._read_loop,
            args=(link, previous),
            name="telestion_sync-reader",
            daemon=True,
        )
        link.writer = threading.Thread(
            target=self._write_loop, args=(link,), name="telestion_sync-writer", daemon=True
        )
        link.users = 2
        self._set_state(State.CONNECTED)
        link.reader.start()
        link.writer.start()
        log.debug("connected to %s (server %s)", srv.addr.url, info.get("server_id"))

    def _set_state(self, state: State) -> None:
        """Change state and wake whoever waits for it (called with _wlock held)."""
        self.state = state
        self.connected = state is State.CONNECTED
        self._state_cond.notify_all()
        if self._writer_waiting:
            self._wcond.notify_all()

    def wait_connected(self, timeout: Optional[float]) -> bool:
        """Block until connected (True) or closed / timed out (False)."""
        with self._wlock:
            return self._state_cond.wait_for(lambda: self.connected or self.closed, timeout) and (
                self.connected
            )

    def _add_discovered(self, info: Dict[str, Any]) -> None:
        """Servers the cluster announced join the pool (called with _wlock held)."""
        current = self._link.server.addr if self._link is not None else self._pool.first.addr
        added = self._pool.add_discovered(info, current)
        if added:
            self._handler._on_discovered_servers(added)

    # --- writing -----------------------------------------------------------------------------

    def write(self, frame: bytes, nmsgs: int = 0, nbytes: int = 0, *more: bytes, block: bool = True) -> None:
        """Queue ``frame`` (and the parts in ``more``) for the writer thread; while
        disconnected, for the next server.

        Over the high-water mark a publisher sends the buffer itself (backpressure); with
        ``block=False`` (calls with a timeout of their own, which call :meth:`send_now` next)
        it never waits for another send.
        Raises :class:`OutboundBufferFullError` when disconnected and the reconnect buffer
        cannot take the frame, :class:`ConnectionClosedError` when closed.
        """
        with self._wlock:
            buf = self._wbuf
            if not self.connected:
                if self.closed:
                    raise self._closed_error()
                size = len(frame) + sum(len(p) for p in more)
                if len(buf) + size > self.reconnect_buf_size:
                    raise OutboundBufferFullError(
                        f"reconnect buffer full ({len(buf)} of {self.reconnect_buf_size} bytes) "
                        "while disconnected; the message was not accepted"
                    )
            buf += frame
            for part in more:
                buf += part
            self.out_msgs += nmsgs
            self.out_bytes += nbytes
            # With block=False the caller sends at once itself (send_now), so the writer thread
            # is not woken for it: a request costs no thread switch (send_now wakes the writer
            # when another send holds the socket).
            if self._writer_waiting and block:
                self._writer_waiting = False
                self._wcond.notify()
            big = self.connected and len(buf) > WRITE_HIGH_WATER
        if big:
            self.send_now(block)

    def write_small(self, frame: bytes, nbytes: int) -> None:
        """Queue one small message frame (``nbytes`` of payload): the publish fast path, the
        same as :meth:`write` with the common case inline."""
        with self._wlock:
            if self.connected:
                buf = self._wbuf
                buf += frame
                self.out_msgs += 1
                self.out_bytes += nbytes
                if self._writer_waiting:
                    self._writer_waiting = False
                    self._wcond.notify()
                if len(buf) <= WRITE_HIGH_WATER:
                    return
                frame = b""
        if frame:
            self.write(frame, 1, nbytes)  # disconnected: the reconnect buffer decides
        else:
            self.send_now()  # over the high-water mark: send it ourselves (backpressure)

    def write_now(self, frame: bytes, nbytes: int) -> None:
        """Queue one message frame and send the buffer from the calling thread at once: the
        same as :meth:`write` and :meth:`send_now` with ``block=False`` (requests, replies),
        in one lock round when no other send is in progress."""
        if self._send_lock.acquire(False):
            try:
                with self._wlock:
                    link = self._link
                    if self.connected and link is not None:
                        self._wbuf += frame
                        self.out_msgs += 1
                        self.out_bytes += nbytes
                        data: Optional[bytearray] = self._take()
                    else:
                        data = None
                if data is not None and link is not None:
                    self._send(link, data)
                    return
            finally:
                self._send_lock.release()
        self.write(frame, 1, nbytes, block=False)
        self.send_now(block=False)

    def write_control(self, frame: bytes) -> None:
        """Queue a SUB/UNSUB frame. While disconnected it is dropped: the client's state is
        replayed on reconnect instead (``Handler._resubscribe_frames``)."""
        with self._wlock:
            if self.closed:
                raise self._closed_error()
            if not self.connected:
                return
            self._wbuf += frame
            if self._writer_waiting:
                self._writer_waiting = False
                self._wcond.notify()

    def _take(self) -> bytearray:
        """Take the whole write buffer for sending (called with _wlock held)."""
        data = self._wbuf
        self._wbuf = bytearray()
        self._pings_in_buf = 0
        if self._closing:
            self._state_cond.notify_all()
        return data

    def send_now(self, block: bool = True) -> None:
        """Send everything buffered from the calling thread (for latency and backpressure).

        With ``block=False`` it leaves the buffer to the writer thread when another send is in
        progress: a request, flush or reply never waits behind a large publish on a slow link
        (nats.go's Flush and Request can). A send that moves nothing for ``write_timeout`` fails.
        """
        if not self._send_lock.acquire(block):
            with self._wlock:
                self._wcond.notify()  # the writer takes it after the send in progress
            return
        try:
            with self._wlock:
                link = self._link
                if not self.connected or link is None or not self._wbuf:
                    return
                data = self._take()
            self._send(link, data)
        finally:
            self._send_lock.release()

    def _send(self, link: _Link, data: bytearray) -> bool:
        """Send ``data`` on ``link`` (with _send_lock held); a link that takes nothing for
        ``write_timeout`` is lost (a slow link that still moves data is not). True when all
        was sent."""
        sendall = link.sock.sendall
        try:
            if len(data) <= _SEND_CHUNK:
                sendall(data)
            else:
                view = memoryview(data)
                for i in range(0, len(view), _SEND_CHUNK):
                    sendall(view[i : i + _SEND_CHUNK])
            return True
        except IO_TIMEOUT:
            self._lost(link, Error(f"stalled connection: could not send for {self.write_timeout} s"))
        except OSError as exc:
            self._lost(link, exc)
        return False

    def ping(self, timeout: float) -> None:
        """Round trip a PING; return when the server's PONG arrived (everything before it has
        been processed by the server). While disconnected it waits for the reconnect. Raises
        :class:`TimeoutError` when that takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            pong = _Pong()
            with self._wlock:
                if not self.connected:
                    left = deadline - time.monotonic()
                    self._state_cond.wait_for(lambda: self.connected or self.closed, max(0.0, left))
                if self.closed:
                    raise self._closed_error()
                if not self.connected:
                    raise TimeoutError(f"not reconnected within {timeout} s")
                self._pongs.append(pong)
                self._wbuf += PING_FRAME
                self._pings_in_buf += 1
            self.send_now(block=False)
            if not pong.event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no PONG from the server within {timeout} s")
            if pong.ok:
                return
            if self.closed:
                raise self._closed_error("the connection closed while waiting for the server")

    def _write_loop(self, link: _Link) -> None:
        try:
            self._write(link)
        except Exception as exc:  # a bug must not leave a link that nobody writes to
            log.error("writer for %s failed", link.server.addr.url, exc_info=True)
            self._lost(link, exc)
        finally:
            self._release(link)

    def _write(self, link: _Link) -> None:
        cond = self._wcond
        proto = link.proto
        while True:
            stale = False
            with cond:
                while link.alive and link.drainer is None and not (self.connected and self._wbuf):
                    left = proto.next_ping - time.monotonic()
                    if left <= 0:
                        break
                    self._writer_waiting = True
                    cond.wait(left)
                    self._writer_waiting = False
                if not link.alive or link.drainer is not None:
                    return
                due = proto.keepalive(time.monotonic())
                if due == STALE:
                    stale = True
                elif due == PING_DUE:
                    self._pongs.append(None)
                    self._wbuf += PING_FRAME
                    self._pings_in_buf += 1
            if stale:
                self._lost(link, Error("stale connection: the server did not answer pings"))
                return
            with self._send_lock:
                with self._wlock:
                    if not link.alive or link.drainer is not None:
                        return
                    data = self._take()
                if data and not self._send(link, data):
                    return

    # --- reading -----------------------------------------------------------------------------

    def _read_loop(self, link: _Link, previous: Optional[threading.Thread]) -> None:
        try:
            if previous is not None:
                # The last link's reader may still be delivering its final batch: one reader
                # at a time keeps delivery in order (and the handler single-threaded).
                previous.join(self.connect_timeout)
            self._read(link)
        finally:
            self._release(link)

    def _read(self, link: _Link) -> None:
        proto = link.proto
        parser = proto.parser
        early = proto.early
        handler = self._handler
        on_msg = handler._on_msg
        on_batch_end = handler._on_batch_end
        recv = link.sock.recv
        events = early
        try:
            while True:
                nmsgs = nbytes = 0
                for ev in events:
                    kind = ev[0]
                    if kind <= 2:  # MSG, HMSG
                        nmsgs += 1
                        nbytes += len(ev[4])
                        on_msg(ev)
                    elif kind == PING:
                        # Queued for the writer: the reader never waits on the send side, so
                        # a link stalled upstream does not stop delivery (replies included).
                        with self._wlock:
                            self._wbuf += proto.on_ping()
                            if self._writer_waiting:
                                self._writer_waiting = False
                                self._wcond.notify()
                    elif kind == PONG:
                        self._on_pong(link)
                    elif kind == ERR:
                        self._on_err(link, ev[1])
                    elif kind == INFO:
                        self._on_info(link, ev[1])
                self.in_msgs += nmsgs
                self.in_bytes += nbytes
                on_batch_end()
                need = parser.bytes_needed
                while True:
                    try:
                        data = recv(min(need, _MAX_READ_SIZE) if need > _READ_SIZE else _READ_SIZE)
                        break
                    except IO_TIMEOUT:
                        if not link.alive:
                            return
                if not data:
                    raise ConnectionResetError("the server closed the connection")
                events = parser.feed(data)
        except (OSError, ProtocolError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                handler._on_server_error(exc)
            self._lost(link, exc)
        except Exception as exc:  # a bug must not leave a zombie link until stale detection
            log.error("reader for %s failed", link.server.addr.url, exc_info=True)
            self._lost(link, exc)

    def _on_pong(self, link: _Link) -> None:
        with self._wlock:
            if not link.alive:  # a late PONG from a link given up: its waiters were failed
                return
            link.proto.on_pong()
            waiter = self._pongs.popleft() if self._pongs else None
        if waiter is not None:
            waiter.event.set()

    def _auth_refused_again(self, srv: Server, err: AuthenticationError) -> bool:
        """Record a refusal by ``srv``; True when it repeats the previous one (nats.go's
        reconnect abort, unless ``ignore_auth_error_abort``)."""
        text = err.server_text.strip().strip("'").lower()
        again = srv.last_auth_error == text
        srv.last_auth_error = text
        return again and not self._ignore_auth_error_abort

    def _on_err(self, link: _Link, text: str) -> None:
        err = link.proto.on_err(text)
        log.debug("server error from %s: %s", link.server.addr.url, text)
        if isinstance(err, AuthenticationError):
            # Expired or revoked on a live connection: a reconnect that is refused the same
            # way next ends the reconnect loop.
            self._auth_refused_again(link.server, err)
        if not isinstance(err, PermissionViolationError):
            link.last_error = err  # the server closes the connection after most errors
        self._handler._on_server_error(err)

    def _on_info(self, link: _Link, info: Dict[str, Any]) -> None:
        with self._wlock:
            ldm = link.proto.on_info(info)
            self._add_discovered(info)
            others = self._pool.has_other(link.server)
        if ldm:
            log.info("server %s entered lame duck mode", link.server.addr.url)
            self._handler._on_lame_duck()
            if others and self.allow_reconnect:
                # Move to another server now rather than wait to be cut off.
                link.server.last_attempt = time.monotonic()
                self._hand_off(link)

    def _hand_off(self, link: _Link) -> None:
        """Leave a server that is still healthy (lame duck) without losing what was sent to
        it: what is queued now, and a PING behind it, belong to this server; from now on
        publishes go into the reconnect buffer for the next one, while a thread of its own
        finishes with this link (:meth:`_drain_link`)."""
        with self._wlock:
            if not link.alive or link.drainer is not None or self._link is not link or self.closed:
                return
            link.users += 1
            data = self._take()  # taken now, so it does not count against the reconnect buffer
            data += PING_FRAME
            barrier = _Pong()
            self._pongs.append(barrier)  # after the waiters of PINGs already queued or sent
            self._set_state(State.RECONNECTING)
            self._wcond.notify_all()  # the link's writer stops
            link.drainer = self._spawn(self._drain_link, link, data, barrier)

    def _drain_link(self, link: _Link, data: bytearray, barrier: _Pong) -> None:
        """Send ``data`` (ending in a PING) to the old server; once its PONG shows the server
        has processed all of it (or after ``connect_timeout``), tear the link down and
        reconnect."""
        try:
            with self._send_lock:  # after a send in progress on this link
                try:
                    link.sock.sendall(data)
                except OSError as exc:
                    self._lost(link, exc)
                    return
            barrier.event.wait(self.connect_timeout)  # close() and a lost link wake it too
            self._lost(link, Error(f"server {link.server.addr.url} entered lame duck mode"))
        finally:
            self._release(link)

    # --- losing and regaining the link -------------------------------------------------------

    def _lost(self, link: _Link, exc: BaseException) -> None:
        """The link failed, went stale or is being abandoned: tear it down, then reconnect."""
        with self._wlock:
            if not link.alive:
                return
            link.alive = False
            self._track(link.reader, link.writer)
            if self._link is link:
                self._last_reader = link.reader
            if self._link is not link or self.closed:
                self._wcond.notify_all()
                hang_up(link.sock)
                return
            # PINGs still in the buffer go to the next server and keep their waiters; the
            # ones already sent died with this link, so their flush() calls try again.
            keep = self._pings_in_buf
            waiters = list(self._pongs)
            gone, kept = waiters[: len(waiters) - keep], waiters[len(waiters) - keep :]
            self._pongs = deque(kept)
            cause = link.last_error or exc
            self.last_error = cause
            # Without reconnects the client closes the bus right after this.
            self._set_state(State.RECONNECTING if self.allow_reconnect else State.CLOSED)
            self._wcond.notify_all()
        hang_up(link.sock)
        _fail(gone)
        log.info("connection to %s lost: %s", link.server.addr.url, cause)
        self._handler._on_disconnected(cause)
        if self.allow_reconnect:
            self._start_reconnect()
        else:
            self._give_up(cause)

    def _release(self, link: _Link) -> None:
        """A thread is done with the link's socket; the last one closes it."""
        with self._wlock:
            link.users -= 1
            last = link.users <= 0
        if last:
            try:
                link.sock.close()
            except OSError:
                pass

    def _track(self, *threads: Optional[threading.Thread]) -> None:
        """Keep threads that are not the live link's (a given-up link's, reconnect and drain
        threads) where close() joins them (called with _wlock held)."""
        self._aux = [t for t in self._aux if t.is_alive()]
        self._aux += [t for t in threads if t is not None]

    def _spawn(self, target: Callable[..., Any], *args: Any) -> threading.Thread:
        """Start a helper thread (reconnect loop, lame-duck drain) that close() joins (called
        with _wlock held, so close() never sees it unstarted)."""
        t = threading.Thread(target=target, args=args, name="telestion_sync-reconnect", daemon=True)
        t.start()
        self._track(t)
        return t

    def _start_reconnect(self) -> None:
        with self._wlock:
            self._spawn(self._reconnect_loop)

    def _next_server(self, current: Optional[Server]) -> Optional[Server]:
        """The next server to try, or None when none is left (called with _wlock held)."""
        return self._pool.rotate(current, self.max_reconnect_attempts)

    def _reconnect_loop(self) -> None:
        current = self._link.server if self._link is not None else None
        last: Optional[BaseException] = self.last_error
        rounds = 0
        tried_this_round = 0
        while not self.closed:
            with self._wlock:
                srv = self._next_server(current)
                pool_size = len(self._pool)
            if srv is None:
                break
            current = srv
            if tried_this_round >= pool_size:
                tried_this_round = 0
                rounds += 1
            since = time.monotonic() - srv.last_attempt
            state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
            state.attempt_number = rounds + 1
            delay = self._wait(state) - since
            if delay > 0 and self._closed_event.wait(delay):
                break
            tried_this_round += 1
            srv.attempts += 1
            srv.last_attempt = time.monotonic()
            try:
                sock, proto = self._handshake(srv)
            except AuthenticationError as exc:
                last = exc
                self._handler._on_server_error(exc)
                if self._auth_refused_again(srv, exc):
                    # nats.go: the same refusal twice from one server ends reconnecting; the
                    # credentials will not change by trying again.
                    log.info("%s refused the credentials twice; giving up", srv.addr.url)
                    self._give_up(exc)
                    return
                continue
            except (OSError, Error, ssl.SSLError) as exc:
                last = exc
                log.debug("reconnect to %s failed: %s", srv.addr.url, exc)
                continue
            with self._wlock:
                if self.closed:  # no thread of ours uses this socket yet
                    hang_up(sock)
                    sock.close()
                    return
                frames = self._handler._resubscribe_frames()
                self._wbuf[:0] = frames  # subscriptions first, then what was buffered
                self._start(srv, sock, proto)
                self.reconnects += 1
            log.info("reconnected to %s", srv.addr.url)
            self._handler._on_reconnected()
            return
        if self.closed:
            return
        error = NoServersError(
            f"gave up reconnecting after {self.max_reconnect_attempts} attempt(s) on each server"
            + (f"; last error: {last}" if last else "")
        )
        error.__cause__ = last
        self._give_up(error)

    def _give_up(self, err: BaseException) -> None:
        """No more reconnecting: ``err`` becomes the cause of every ConnectionClosedError."""
        self.last_error = self.close_cause = err
        self._handler._on_connection_closed(err)

    def _closed_error(self, text: str = "the connection is closed") -> ConnectionClosedError:
        cause = self.close_cause
        err = ConnectionClosedError(text + (f": {cause}" if cause else ""))
        err.__cause__ = cause
        return err

    # --- ending ------------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (for up to ``timeout`` seconds in all), close the socket and
        join the threads (up to a second more: they end at once once it is shut) (idempotent)."""
        me = threading.current_thread()
        deadline = time.monotonic() + timeout
        with self._wlock:
            if self.closed:
                return
            self._closing = True
            link = self._link
        drainer = link.drainer if link is not None else None
        if drainer is not None and drainer is not me:
            drainer.join(timeout)  # what was queued for a lame-duck server reaches it first
            link = self._link
        if link is not None and link.alive and link.writer is not me:
            self._drain_writer(link, deadline)
        with self._wlock:
            self.closed = True
            self._set_state(State.CLOSED)
            waiters = list(self._pongs)
            self._pongs.clear()
            link = self._link  # a reconnect may have completed meanwhile: that link ends too
            if link is not None:
                link.alive = False
            self._wcond.notify_all()
        self._closed_event.set()
        sock = self._connecting_sock
        if sock is not None:  # a handshake in progress fails at once and closes its socket
            hang_up(sock)
        _fail(waiters)
        if link is not None:
            hang_up(link.sock)
        deadline = max(deadline, time.monotonic()) + 1.0
        while True:  # a helper may start another (a drain starts the reconnect loop)
            with self._wlock:
                others = [t for t in self._threads(link) if t is not me and t.is_alive()]
            if not others or time.monotonic() >= deadline:
                break
            for t in others:
                t.join(max(0.0, deadline - time.monotonic()))

    def _drain_writer(self, link: _Link, deadline: float) -> None:
        """Wait until the writer has taken everything buffered and sent it, by ``deadline``."""
        with self._wlock:
            self._wcond.notify_all()
            self._state_cond.wait_for(
                lambda: not (self._wbuf and link.alive and self.connected),
                max(0.0, deadline - time.monotonic()),
            )
        # a sendall in progress finishes first
        if self._send_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._send_lock.release()

    def _threads(self, link: Optional[_Link]) -> List[threading.Thread]:
        found = [t for t in ((link.reader, link.writer) if link else ()) if t is not None]
        return found + self._aux

    @property
    def threads(self) -> List[threading.Thread]:
        """The live threads of this connection (for tests and diagnostics)."""
        with self._wlock:
            return [t for t in self._threads(self._link) if t.is_alive()]


__all__ = ["Connection", "ServerAddr", "State", "parse_server", "parse_servers", "Handler"]
