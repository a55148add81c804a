"""One NATS connection: socket, handshake, a reader thread, a writer thread, pings.

Publishers append encoded frames to a write buffer under a lock; the writer thread sends the
whole buffer with one ``sendall`` whenever it is non-empty, so a burst of publishes becomes a few
large writes. The reader thread feeds received bytes to the Sans-I/O parser and hands messages to
the client. The handshake waits for the server's PONG (or -ERR) after CONNECT, so a wrong
password fails ``connect()`` at once instead of on the first publish.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Sequence, Union
from urllib.parse import unquote, urlsplit

from ._version import __version__
from .errors import (
    AuthenticationError,
    ConnectionClosedError,
    Error,
    NoServersError,
    PermissionViolationError,
    ProtocolError,
    TimeoutError,
)
from .protocol import (
    ERR,
    INFO,
    OK,
    PING,
    PING_FRAME,
    PONG,
    PONG_FRAME,
    Event,
    Parser,
    encode_connect,
)

log = logging.getLogger("telestion_sync.connection")

DEFAULT_PORT = 4222
DEFAULT_CONNECT_TIMEOUT = 2.0  # nats.go's default
DEFAULT_PING_INTERVAL = 120.0  # nats.go's default
DEFAULT_MAX_OUTSTANDING_PINGS = 2  # nats.go's default
#: Above this many buffered bytes a publisher sends the buffer itself (backpressure).
WRITE_HIGH_WATER = 4 * 1024 * 1024
_READ_SIZE = 64 * 1024
_MAX_READ_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServerAddr:
    """A server URL taken apart; credentials found in the URL are percent-decoded."""

    scheme: str
    host: str
    port: int
    user: Optional[str] = None
    password: Optional[str] = None
    token: Optional[str] = None

    @property
    def url(self) -> str:
        """The URL without credentials (safe to log and show)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:  # never show secrets
        return f"ServerAddr({self.url!r})"


def parse_server(url: str) -> ServerAddr:
    """Parse ``nats://user:pass@host:port``, ``tls://host``, ``host:port`` or ``host``."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"server URL must be a non-empty string, not {url!r}")
    text = url.strip()
    if "://" not in text:
        text = "nats://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls"):
        raise ValueError(f"server URL {url!r}: scheme must be nats:// or tls://, not {scheme}://")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"server URL {url!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"server URL {url!r} has no host")
    user = password = token = None
    if parts.username is not None:
        if parts.password is not None:
            user, password = unquote(parts.username), unquote(parts.password)
        else:
            token = unquote(parts.username)
    return ServerAddr(scheme, host, port, user, password, token)


def parse_servers(servers: Union[str, Sequence[str]]) -> List[ServerAddr]:
    """A URL, a comma-separated list of URLs, or a list of them, parsed."""
    if isinstance(servers, str):
        items = [s for s in servers.split(",") if s.strip()]
    else:
        items = list(servers)
    if not items:
        raise ValueError("no server URL given")
    return [parse_server(s) for s in items]


def _server_error(text: str, url: str) -> Error:
    """The exception for a server ``-ERR`` text."""
    low = text.lower()
    if low.startswith("permissions violation"):
        # 'Permissions Violation for Publish to "x"' / '... for Subscription to "x" ...'
        operation = "subscribe" if "subscription" in low else "publish"
        subject = text.split('"')[1] if text.count('"') >= 2 else ""
        return PermissionViolationError(operation, subject, f"{text} (server {url})")
    if "authorization" in low or "authentication" in low or "user" in low and "expired" in low:
        return AuthenticationError(f"server {url} refused the credentials: {text}")
    return Error(f"server {url} reported: {text}")


class Handler:
    """What the connection calls back into (implemented by the client)."""

    def _on_msg(self, event: Event) -> None: ...

    def _on_batch_end(self) -> None: ...

    def _on_server_error(self, err: Error) -> None: ...

    def _on_connection_lost(self, err: BaseException) -> None: ...


class Connection:
    """A live connection to one server of the pool, with its reader and writer threads."""

    def __init__(
        self,
        servers: List[ServerAddr],
        handler: Handler,
        *,
        name: Optional[str] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[str] = None,
        tls: Optional[ssl.SSLContext] = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        max_outstanding_pings: int = DEFAULT_MAX_OUTSTANDING_PINGS,
        echo: bool = True,
    ) -> None:
        self.servers = servers
        self._handler = handler
        self._name = name
        self._user = user
        self._password = password
        self._token = token
        self._tls = tls
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.max_outstanding_pings = max_outstanding_pings
        self._echo = echo

        self.info: Dict[str, Any] = {}
        self.max_payload = 1024 * 1024
        self.addr: Optional[ServerAddr] = None
        self._sock: Optional[socket.socket] = None

        self._wlock = threading.Lock()
        self._wcond = threading.Condition(self._wlock)
        self._send_lock = threading.Lock()
        self._wbuf = bytearray()
        self._writer_waiting = False
        self._pongs: Deque[Optional[threading.Event]] = deque()  # under _wlock
        self._pings_out = 0  # under _wlock
        self._stopping = False
        self.closed = False
        self.connected = False
        self.out_msgs = 0  # under _wlock
        self.out_bytes = 0  # under _wlock
        self.in_msgs = 0  # reader thread only
        self.in_bytes = 0  # reader thread only
        self._last_error: Optional[Error] = None  # the server's last -ERR, the likely cause
        self._reader: Optional[threading.Thread] = None
        self._writer: Optional[threading.Thread] = None

    # --- connecting --------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect to the first server of the pool that accepts us, then start the threads.

        A refusal of the credentials ends the attempt at once (:class:`AuthenticationError`);
        servers that cannot be reached are skipped, and when none is left the error is
        :class:`NoServersError` naming every URL tried.
        """
        failures: List[str] = []
        last: Optional[BaseException] = None
        for addr in self.servers:
            try:
                sock, parser, info, early = self._handshake(addr)
            except (AuthenticationError, ssl.SSLCertVerificationError):
                raise
            except (OSError, TimeoutError, ProtocolError, Error) as exc:
                failures.append(f"{addr.url} ({exc})")
                last = exc
                continue
            self._start(addr, sock, parser, info, early)
            return
        raise NoServersError("could not connect to any server: " + "; ".join(failures)) from last

    def _handshake(self, addr: ServerAddr) -> Any:
        deadline = time.monotonic() + self.connect_timeout
        sock = socket.create_connection((addr.host, addr.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = Parser()
            events: List[Event] = []
            info = self._read_until(sock, parser, events, deadline, INFO)[1]
            max_payload = info.get("max_payload")
            if isinstance(max_payload, int) and max_payload > 0:
                parser.max_payload = max_payload
            use_tls = addr.scheme == "tls" or self._tls is not None
            if info.get("tls_required") and not use_tls:
                raise Error(f"server {addr.url} requires TLS; use a tls:// URL or pass tls=ssl.SSLContext")
            if use_tls:
                ctx = self._tls or ssl.create_default_context()
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock = ctx.wrap_socket(sock, server_hostname=addr.host)
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
            user = self._user if self._user is not None else addr.user
            password = self._password if self._password is not None else addr.password
            token = self._token if self._token is not None else addr.token
            if user is not None:
                options["user"] = user
                options["pass"] = password or ""
            if token is not None:
                options["auth_token"] = token
            sock.sendall(encode_connect(options) + PING_FRAME)
            self._read_until(sock, parser, events, deadline, PONG, addr)
            sock.settimeout(None)
            return sock, parser, info, events
        except socket.timeout:
            sock.close()
            raise TimeoutError(
                f"server {addr.url} did not complete the handshake within {self.connect_timeout} s"
            ) from None
        except BaseException:
            sock.close()
            raise

    def _read_until(
        self,
        sock: socket.socket,
        parser: Parser,
        events: List[Event],
        deadline: float,
        want: int,
        addr: Optional[ServerAddr] = None,
    ) -> Event:
        """Read until an event of kind ``want``; events after it stay in ``events``."""
        while True:
            while events:
                ev = events.pop(0)
                kind = ev[0]
                if kind == want:
                    return ev
                if kind == ERR and addr is not None:
                    raise _server_error(ev[1], addr.url)
                if kind == INFO and want == PONG:
                    continue
                if kind in (OK, PING):
                    if kind == PING:
                        sock.sendall(PONG_FRAME)
                    continue
                raise ProtocolError(f"unexpected {ev!r} during the handshake")
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            sock.settimeout(left)
            data = sock.recv(_READ_SIZE)
            if not data:
                raise ConnectionResetError("server closed the connection during the handshake")
            events.extend(parser.feed(data))

    def _start(
        self,
        addr: ServerAddr,
        sock: socket.socket,
        parser: Parser,
        info: Dict[str, Any],
        early: List[Event],
    ) -> None:
        self.addr = addr
        self.info = info
        self.max_payload = int(info.get("max_payload") or self.max_payload)
        self._sock = sock
        self.connected = True
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock, parser, early), name="telestion_sync-reader", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, args=(sock,), name="telestion_sync-writer", daemon=True
        )
        self._reader.start()
        self._writer.start()
        log.debug("connected to %s (server %s)", addr.url, info.get("server_id"))

    # --- writing -----------------------------------------------------------------------------

    def write(self, frame: bytes, nmsgs: int = 0, nbytes: int = 0, *more: bytes) -> None:
        """Queue ``frame`` (and the parts in ``more``) for the writer thread."""
        with self._wlock:
            if not self.connected:
                self._not_writable()
            buf = self._wbuf
            buf += frame
            for part in more:
                buf += part
            self.out_msgs += nmsgs
            self.out_bytes += nbytes
            if self._writer_waiting:
                self._writer_waiting = False
                self._wcond.notify()
            big = len(buf) > WRITE_HIGH_WATER
        if big:
            self.send_now()

    def _not_writable(self) -> None:
        if self.closed:
            raise ConnectionClosedError("the connection is closed")
        raise ConnectionClosedError("not connected to a server: nothing can be sent")

    def send_now(self) -> None:
        """Send everything buffered from the calling thread (for latency and backpressure)."""
        with self._send_lock:
            with self._wlock:
                data = self._wbuf
                if not data:
                    return
                self._wbuf = bytearray()
            sock = self._sock
            if sock is None:
                return
            try:
                sock.sendall(data)
            except OSError as exc:
                self._lost(exc)

    def ping(self, timeout: float) -> None:
        """Round trip a PING; return when the server's PONG arrived (everything before it has
        been processed by the server), raise :class:`TimeoutError` otherwise."""
        ev = threading.Event()
        with self._wlock:
            if not self.connected:
                self._not_writable()
            self._pongs.append(ev)
            self._wbuf += PING_FRAME
        self.send_now()
        if not ev.wait(timeout):
            raise TimeoutError(f"no PONG from the server within {timeout} s")
        if self.closed and not self.connected:
            raise ConnectionClosedError("the connection closed while waiting for the server")

    def _write_loop(self, sock: socket.socket) -> None:
        cond = self._wcond
        interval = self.ping_interval
        next_ping = time.monotonic() + interval
        while True:
            with cond:
                while not self._wbuf and not self._stopping:
                    left = next_ping - time.monotonic()
                    if left <= 0:
                        break
                    self._writer_waiting = True
                    cond.wait(left)
                    self._writer_waiting = False
                if self._stopping and not self._wbuf:
                    return
                if time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + interval
                    if self._pings_out >= self.max_outstanding_pings:
                        stale = True
                    else:
                        stale = False
                        self._pings_out += 1
                        self._pongs.append(None)
                        self._wbuf += PING_FRAME
                else:
                    stale = False
            if stale:
                self._lost(Error("stale connection: the server did not answer pings"))
                return
            with self._send_lock:
                with self._wlock:
                    data = self._wbuf
                    self._wbuf = bytearray()
                if data:
                    try:
                        sock.sendall(data)
                    except OSError as exc:
                        self._lost(exc)
                        return

    # --- reading -----------------------------------------------------------------------------

    def _read_loop(self, sock: socket.socket, parser: Parser, early: List[Event]) -> None:
        handler = self._handler
        on_msg = handler._on_msg
        on_batch_end = handler._on_batch_end
        recv = sock.recv
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
                        with self._wlock:
                            self._wbuf += PONG_FRAME
                        self.send_now()
                    elif kind == PONG:
                        self._on_pong()
                    elif kind == ERR:
                        self._on_err(ev[1])
                    elif kind == INFO:
                        self.info.update(ev[1])
                self.in_msgs += nmsgs
                self.in_bytes += nbytes
                on_batch_end()
                need = parser.bytes_needed
                data = recv(min(need, _MAX_READ_SIZE) if need > _READ_SIZE else _READ_SIZE)
                if not data:
                    raise ConnectionResetError("the server closed the connection")
                events = parser.feed(data)
        except (OSError, ProtocolError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                handler._on_server_error(exc)
            self._lost(exc)

    def _on_pong(self) -> None:
        with self._wlock:
            self._pings_out = 0
            waiter = self._pongs.popleft() if self._pongs else None
        if waiter is not None:
            waiter.set()

    def _on_err(self, text: str) -> None:
        url = self.addr.url if self.addr else "?"
        err = _server_error(text, url)
        log.debug("server error from %s: %s", url, text)
        self._last_error = err
        self._handler._on_server_error(err)

    # --- ending ------------------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        """The socket failed or the server went silent: tear down and tell the client."""
        with self._wlock:
            if not self.connected:
                return
            self.connected = False
            waiters = list(self._pongs)
            self._pongs.clear()
            self._stopping = True
            self._wcond.notify_all()
        self._shutdown_socket()
        for w in waiters:
            if w is not None:
                w.set()
        if not self.closed:
            cause = self._last_error or exc
            log.info("connection to %s lost: %s", self.addr.url if self.addr else "?", cause)
            self._handler._on_connection_lost(cause)

    def _shutdown_socket(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered, close the socket and join the threads (idempotent)."""
        with self._wlock:
            if self.closed:
                return
            self.closed = True
            self._stopping = True
            self._wcond.notify_all()
            waiters = list(self._pongs)
            self._pongs.clear()
        for w in waiters:
            if w is not None:
                w.set()
        me = threading.current_thread()
        if self._writer is not None and self._writer is not me:
            self._writer.join(timeout)
        with self._wlock:
            self.connected = False
        self._shutdown_socket()
        if self._reader is not None and self._reader is not me:
            self._reader.join(timeout)

    @property
    def threads(self) -> List[threading.Thread]:
        """The live threads of this connection (for tests and diagnostics)."""
        return [t for t in (self._reader, self._writer) if t is not None and t.is_alive()]


__all__ = ["Connection", "ServerAddr", "parse_server", "parse_servers", "Handler"]
