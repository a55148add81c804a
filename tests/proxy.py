"""A TCP proxy for fault tests: forwards loopback traffic and can stall or cut it.

``stall()`` keeps every connection open but stops moving bytes in both directions (what a dead
link or a hung middlebox looks like to a client); ``cut()`` closes every connection at once.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import List, Tuple

from telestion_sync.server import free_port


class TCPProxy:
    """Listens on ``127.0.0.1:port`` and forwards each connection to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._forwarding = threading.Lock()  # held while a chunk is moved
        self._stalled_up = threading.Event()  # client -> server
        self._stalled_down = threading.Event()  # server -> client
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self.accepted = 0
        t = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            t = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Forward between the client side ``a`` and the server side ``b``; a stalled
        direction is not read from, so its bytes wait (and the sender's buffers fill up)."""
        peer = {a: b, b: a}
        try:
            while not self._stop.is_set():
                flags = ((a, self._stalled_up), (b, self._stalled_down))
                sources = [s for s, stalled in flags if not stalled.is_set()]
                if not sources:
                    self._stop.wait(0.05)  # hold the bytes: nothing flows while stalled
                    continue
                readable, _, _ = select.select(sources, [], [], 0.05)
                for src in readable:
                    with self._forwarding:  # so that stall() returns only once nothing moves
                        if (self._stalled_up if src is a else self._stalled_down).is_set():
                            continue
                        data = src.recv(65536)
                        if not data:
                            return
                        peer[src].sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def stall(self, direction: str = "both") -> None:
        """Stop forwarding; connections stay open. ``direction``: ``"both"``, ``"up"`` (client
        to server only) or ``"down"`` (server to client only)."""
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be 'both', 'up' or 'down', not {direction!r}")
        with self._forwarding:  # a chunk being forwarded now arrives; none after this returns
            if direction in ("both", "up"):
                self._stalled_up.set()
            if direction in ("both", "down"):
                self._stalled_down.set()

    def resume(self) -> None:
        self._stalled_up.clear()
        self._stalled_down.clear()

    def cut(self) -> None:
        """Close every proxied connection now."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        for t in self._threads:
            t.join(2)
