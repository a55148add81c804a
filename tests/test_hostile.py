"""A hostile or broken server: the reader rejects what it cannot trust with a clear
ProtocolError, never allocates without bound, and the client reconnects to a sane server."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any, Iterator, List

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import telestion_sync as ts
from telestion_sync.server import NatsServer

from .conftest import ErrorLog, wait_until

pytestmark = pytest.mark.timeout(60)

INFO = b"INFO " + json.dumps({"server_id": "hostile", "max_payload": 1048576, "headers": True}).encode()


class HostileServer:
    """Speaks the NATS handshake; on the client's next bytes after it, sends ``payload``, then
    keeps the socket open and answers PINGs (so the bad input arrives on a live connection, not
    mid-handshake, and valid "junk" leaves a working server behind)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.payload = b""
        self.info = INFO
        self.close_after_payload = False  # hang up after the payload, as a server closing us
        self._conns: List[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        try:
            conn.sendall(self.info + b"\r\n")
            seen = b""
            while b"PING\r\n" not in seen:
                data = conn.recv(4096)
                if not data:
                    return
                seen += data
            conn.sendall(b"PONG\r\n")
            seen = conn.recv(4096)
            if not seen:
                return
            conn.sendall(self.payload)
            if self.close_after_payload:
                return
            # Then answer PINGs like a server would: when the junk happened to be valid protocol
            # the client stays here, and its flush() must not wait on a server that went mute.
            while not self._stop.is_set():
                pings = seen.count(b"PING\r\n")
                if pings:
                    conn.sendall(b"PONG\r\n" * pings)
                seen = seen[seen.rfind(b"\r\n") + 2 :] if b"\r\n" in seen else seen
                data = conn.recv(4096)
                if not data:
                    return
                seen += data
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(2)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:  # wakes a talker blocked in recv()
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    h = HostileServer()
    yield h
    h.close()


def run_against(hostile: HostileServer, good: NatsServer, payload: bytes) -> ErrorLog:
    """Connect to the hostile server first, let it send ``payload``; return the reported errors
    after the client has moved to the good server and proven it works."""
    hostile.payload = payload
    errors = ErrorLog()
    reconnected = threading.Event()
    bus = ts.connect(
        [hostile.url, good.url],
        randomize=False,
        reconnect_time_wait=0.05,
        on_error=errors,
        on_reconnect=reconnected.set,
    )
    try:
        assert bus.connected_url == hostile.url
        bus.publish("trigger", b"")  # the hostile server answers this with the payload
        assert reconnected.wait(10), f"no reconnect; errors: {errors.errors}"
        assert bus.connected_url == good.url
        sub = bus.subscribe("sane")
        bus.publish("sane", b"ok")
        assert sub.next_msg(5).payload == b"ok"
    finally:
        bus.close()
    return errors


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"MSG a 1 99999999999\r\n", "limit"),  # a size far over max_payload
        (b"MSG a 1 -5\r\n", "invalid protocol line"),
        (b"A" * 200_000, "exceeds"),  # an endless line: rejected after the limit
        (b"INFO {not json}\r\n", "invalid protocol line"),
        (b"HMSG a 1 50 10\r\n" + b"x" * 10 + b"\r\n", "invalid protocol line"),
        (b"MSG a 1 3\r\nabcdef\r\n", "size mismatch"),
        (b"\x00\xff garbage\r\n", "invalid protocol line"),
    ],
)
def test_hostile_input_is_a_protocol_error_then_a_reconnect(
    hostile: HostileServer, server: NatsServer, payload: bytes, words: str
) -> None:
    errors = run_against(hostile, server, payload)
    assert words in str(errors.wait(ts.ProtocolError))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=300).map(lambda b: b + b"\r\n"))
@example(junk=b"+OK\r\n")  # valid protocol: the client stays on the hostile server
@example(junk=b"PING\r\n")
@example(junk=b"PONG\r\n")  # an unsolicited PONG
@example(junk=b"-ERR 'Unknown Protocol Operation'\r\n")
def test_fuzzed_garbage_never_kills_the_client(
    hostile: HostileServer, server: NatsServer, junk: bytes
) -> None:
    hostile.payload = junk
    errors: List[Any] = []
    bus = ts.connect(
        [hostile.url, server.url], randomize=False, reconnect_time_wait=0.05, on_error=errors.append
    )
    try:
        # Whatever the junk was, the bus is usable: on the hostile server if the junk happened
        # to be valid protocol, else on the good server after a ProtocolError.
        assert bus.wait_connected(10)
        bus.flush(timeout=10)
        assert all(isinstance(e, ts.Error) for e in errors)
    finally:
        bus.close()
    assert not bus.threads


def test_announced_limits_cannot_lift_the_clients_bounds(hostile: HostileServer) -> None:
    """An INFO claiming a terabyte max_payload, then one announcing thousands of servers: the
    payload bound stays at nats-server's 64 MiB maximum and the pool stays bounded."""
    from telestion_sync.pool import MAX_DISCOVERED_SERVERS
    from telestion_sync.protocol import DEFAULT_MAX_PAYLOAD

    hostile.info = b"INFO " + json.dumps({"server_id": "x", "max_payload": 10**12}).encode()
    urls = [f"10.0.{i // 250}.{i % 250}:4222" for i in range(1000)]  # within the line limit
    hostile.payload = b"INFO " + json.dumps({"connect_urls": urls}).encode() + b"\r\n"
    discovered = threading.Event()
    bus = ts.connect(hostile.url, on_discovered_servers=lambda added: discovered.set())
    try:
        assert bus.max_payload == DEFAULT_MAX_PAYLOAD
        bus.flush(timeout=5)  # the hostile server sends its INFO on these bytes
        assert discovered.wait(5)
        assert len(bus.discovered_servers) == MAX_DISCOVERED_SERVERS
    finally:
        bus.close()


@pytest.mark.parametrize("text", ["Stale Connection", "Slow Consumer", "Maximum Connections Exceeded"])
def test_server_closing_us_with_an_error_is_reported_then_left_for_another(
    hostile: HostileServer, server: NatsServer, text: str
) -> None:
    """A server that says why it closes the connection (stale, slow consumer...): the reason
    reaches the error handler and the client moves on to the next server."""
    hostile.close_after_payload = True
    errors = run_against(hostile, server, f"-ERR '{text}'\r\n".encode())
    wait_until(lambda: any(text in str(e) for e in errors.errors), what=f"an error saying {text!r}")
