"""Test servers for the WebSocket transport: a re-framing WebSocket proxy and a fake HTTP server.

:class:`ReframingProxy` sits between a client and a nats-server's WebSocket port, speaking
WebSocket on both sides with websockets' Sans-I/O protocols (the library the client uses, but its
server side). It forwards the client's data unchanged and re-frames what the server sends: odd
batches cut into fragments of 1-5 bytes (a NATS frame spread over many WebSocket frames), even
batches packed into one frame (several NATS frames in one WebSocket frame); it also sends the
client a WebSocket PING before every batch and counts the PONGs that come back.

:class:`HTTPRefuser` answers every connection with one fixed HTTP status (a WebSocket upgrade
refused by a proxy: 401, 403, 404...).

For the HTTP probe of plain connections: :class:`SilentPort` accepts and never says a word (it
records what clients send), :class:`SlowGreeter` is a TCP proxy to a nats-server that holds the
server's bytes back for a while after each connect (a slow or far-away NATS server).
"""

from __future__ import annotations

import queue
import random
import selectors
import socket
import threading
from typing import List, Optional

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from telestion_sync.server import free_port


def _pump_out(sock: socket.socket, proto: object) -> None:
    for chunk in proto.data_to_send():  # type: ignore[attr-defined]
        if chunk:
            sock.sendall(chunk)


class _Listener:
    """A test server on ``127.0.0.1:port``: accepts on a thread of its own and serves each
    connection with :meth:`_serve` on another; ``drop()`` cuts the connections it tracks,
    ``close()`` stops everything. ``scheme`` makes ``url``."""

    scheme = "nats"

    def __init__(self, name: str) -> None:
        self.port = free_port()
        self._name = name
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: List[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept_loop, name=name, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name=f"{self._name}-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks += socks

    def _untrack(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks = [s for s in self._socks if s not in socks]

    def drop(self) -> None:
        """Cut every connection (a client then reconnects)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.drop()
        self._listener.close()
        for t in self._threads:
            t.join(5)


class ReframingProxy(_Listener):
    """Listens on ``127.0.0.1:port`` (``url``) and proxies to ``ws://127.0.0.1:target_port``."""

    scheme = "ws"

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.pings = 0
        self.pongs = 0
        self.split_frames = 0  # data frames of fewer than 6 bytes sent to the client
        self.packed_frames = 0  # data frames sent whole (one or more NATS frames each)
        self._rng = random.Random(11)
        super().__init__("ws-proxy")

    def _serve(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        try:
            client.settimeout(5)
            server_side = ServerProtocol()  # no extensions: no compression on this side
            while True:
                server_side.receive_data(client.recv(65536))
                reqs = [e for e in server_side.events_received() if isinstance(e, Request)]
                if reqs:
                    break
            server_side.send_response(server_side.accept(reqs[0]))
            _pump_out(client, server_side)
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            self._track(client, upstream)
            client_side = ClientProtocol(parse_uri(f"ws://127.0.0.1:{self.target_port}/"), max_size=None)
            client_side.send_request(client_side.connect())
            _pump_out(upstream, client_side)
            while client_side.state is State.CONNECTING:
                client_side.receive_data(upstream.recv(65536))
            early = [e for e in client_side.events_received() if isinstance(e, Frame)]
            assert client_side.state is State.OPEN, client_side.handshake_exc
            batch = 0
            pending = [e.data for e in early if e.opcode is Opcode.BINARY]
            if pending:
                self._reframe(client, server_side, b"".join(pending), batch)
                batch += 1
            self._relay(client, upstream, server_side, client_side, batch)
        except (OSError, AssertionError, ValueError):
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    s.close()

    def _relay(
        self,
        client: socket.socket,
        upstream: socket.socket,
        server_side: ServerProtocol,
        client_side: ClientProtocol,
        batch: int,
    ) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "client")
        sel.register(upstream, selectors.EVENT_READ, "upstream")
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.05):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    if key.data == "client":
                        server_side.receive_data(data)
                        for ev in server_side.events_received():
                            if ev.opcode is Opcode.PONG:
                                with self._lock:
                                    self.pongs += 1
                            elif ev.opcode in (Opcode.BINARY, Opcode.CONT):
                                client_side.send_binary(ev.data)
                        _pump_out(upstream, client_side)
                        _pump_out(client, server_side)
                    else:
                        client_side.receive_data(data)
                        got = [e.data for e in client_side.events_received() if e.opcode is Opcode.BINARY]
                        _pump_out(upstream, client_side)
                        if got:
                            self._reframe(client, server_side, b"".join(got), batch)
                            batch += 1
        finally:
            sel.close()

    def _reframe(self, client: socket.socket, proto: ServerProtocol, data: bytes, batch: int) -> None:
        with self._lock:
            self.pings += 1
        proto.send_ping(b"%d" % batch)
        if batch % 2:
            pieces = []
            while data:
                n = self._rng.randint(1, 5)
                pieces.append(data[:n])
                data = data[n:]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                if i == 0:
                    proto.send_binary(piece, fin=last)
                else:
                    proto.send_continuation(piece, fin=last)
            with self._lock:
                self.split_frames += len(pieces)
        else:
            proto.send_binary(data)
            with self._lock:
                self.packed_frames += 1
        _pump_out(client, proto)


class HTTPRefuser(_Listener):
    """Answers each connection's request with ``status`` and closes; ``requests`` keeps the
    request heads it read."""

    scheme = "ws"

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        self.requests: List[bytes] = []
        super().__init__("http-refuser")

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head)
                body = f"{self.reason}: go away\n".encode()
                conn.sendall(
                    f"HTTP/1.1 {self.status} {self.reason}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass


class SilentPort(_Listener):
    """Accepts connections and never sends a byte; once a client closes a connection,
    everything it sent on it goes into ``received``. ``accepted`` counts the connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.received: queue.Queue[bytes] = queue.Queue()
        super().__init__("silent-port")

    def _serve(self, conn: socket.socket) -> None:
        self.accepted += 1
        got = b""
        conn.settimeout(20)
        try:
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        finally:
            conn.close()
            self.received.put(got)


class SlowGreeter(_Listener):
    """A TCP proxy to the nats-server at ``127.0.0.1:target_port`` that holds the server's bytes
    (its INFO first) back for ``delay`` seconds after each connect; what the client sends goes
    through at once. ``first_sent`` has the first bytes the client sent on each connection."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.first_sent: List[bytes] = []
        super().__init__("slow-greeter")

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        upstream.settimeout(None)
        self._track(client, upstream)
        up = threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True)
        up.start()
        self._stop.wait(self.delay)  # the server's INFO waits in upstream's receive buffer
        self._pipe(upstream, client, False)
        up.join(5)  # each pipe shuts both sockets down as it ends, so the other ends too
        self._untrack(client, upstream)
        client.close()
        upstream.close()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self._lock:
                        self.first_sent.append(data)
                    record = False
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


__all__ = ["ReframingProxy", "HTTPRefuser", "SilentPort", "SlowGreeter"]
