"""The transport layer's I/O deadlines: a link's socket blocks and the kernel keeps the time
(``set_io_timeout``), so a silent or stalled peer still ends a receive or a send in time, and a
slow peer that keeps reading does not."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer, free_port
from telestion_sync.transport import IO_TIMEOUT, open_tcp, set_io_timeout

from .proxy import TCPProxy
from .tlsutil import TLSFiles

TIMEOUT = 0.3
MARGIN = 1.0  # scheduling slack on a loaded 2-core machine


@pytest.fixture
def link() -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: ours (opened by ``open_tcp``) and the peer's end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = open_tcp("127.0.0.1", listener.getsockname()[1], time.monotonic() + 5)
        peer, _ = listener.accept()
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


@pytest.mark.skipif(sys.platform == "win32", reason="Windows keeps Python's socket timeout")
def test_the_socket_blocks_and_the_kernel_keeps_the_time(link: Tuple[socket.socket, socket.socket]) -> None:
    ours, _ = link
    set_io_timeout(ours, ours, TIMEOUT)
    assert ours.gettimeout() is None  # no poll() before every recv and send
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) != bytes(16)
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16) != bytes(16)


def test_a_receive_from_a_silent_peer_ends_at_the_timeout(link: Tuple[socket.socket, socket.socket]) -> None:
    ours, _ = link
    set_io_timeout(ours, ours, TIMEOUT)
    start = time.monotonic()
    with pytest.raises(IO_TIMEOUT):
        ours.recv(100)
    took = time.monotonic() - start
    assert TIMEOUT * 0.8 <= took < TIMEOUT + MARGIN


@pytest.mark.timeout(10)
def test_a_timeout_under_a_microsecond_is_not_no_timeout(link: Tuple[socket.socket, socket.socket]) -> None:
    """A timeval of zero means "wait forever" to the kernel: a valid write_timeout of 0.5 us
    must still end a receive (it did not: the reader's recv never came back)."""
    ours, _ = link
    set_io_timeout(ours, ours, 5e-7)
    start = time.monotonic()
    with pytest.raises(IO_TIMEOUT):
        ours.recv(100)
    assert time.monotonic() - start < MARGIN


def test_a_send_to_a_peer_that_reads_nothing_ends_at_the_timeout(
    link: Tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = link
    set_io_timeout(ours, ours, TIMEOUT)
    chunk = bytes(1 << 20)
    start = time.monotonic()
    with pytest.raises(IO_TIMEOUT):
        for _ in range(256):  # far more than any socket buffer holds
            ours.sendall(chunk)
    assert time.monotonic() - start < 256 * 0.01 + TIMEOUT + MARGIN


def test_a_slow_peer_that_keeps_reading_is_not_a_stalled_one(
    link: Tuple[socket.socket, socket.socket],
) -> None:
    """Each pause of the reader is shorter than the timeout; the whole send takes longer."""
    ours, peer = link
    set_io_timeout(ours, ours, TIMEOUT)
    total = 32 << 20
    got = 0
    done = threading.Event()

    def read_slowly() -> None:
        nonlocal got
        peer.settimeout(10)
        while got < total:
            time.sleep(TIMEOUT / 3)
            for _ in range(64):
                if got >= total:
                    break
                data = peer.recv(1 << 16)
                if not data:
                    return
                got += len(data)
        done.set()

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    start = time.monotonic()
    ours.sendall(bytes(total))  # raises if the kernel's timeout is not renewed by progress
    took = time.monotonic() - start
    assert done.wait(30), f"the peer read {got} of {total} bytes"
    reader.join(5)
    assert got == total
    assert took > TIMEOUT, "the test did not make the sender wait longer than one timeout"


# --- a dead link is given up after write_timeout, not after several of them ------------------

DEAD = 1.0  # a timeout long enough that a second one shows (the kernel returned partial sends)


def test_a_send_that_fills_the_buffers_and_then_moves_nothing_ends_after_one_timeout(
    link: Tuple[socket.socket, socket.socket],
) -> None:
    """The first send() fills the socket buffers at once and then waits: that wait is one
    ``write_timeout`` without progress, not one more before the next send() is even tried
    (the kernel's timer ran out twice or three times: 3 s for a timeout of 1 s)."""
    ours, _ = link
    set_io_timeout(ours, ours, DEAD)
    start = time.monotonic()
    with pytest.raises(IO_TIMEOUT):
        ours.sendall(bytes(64 << 20))  # far more than any socket buffer holds
    took = time.monotonic() - start
    assert DEAD * 0.8 <= took < DEAD * 1.8, f"a send that moved nothing for {DEAD} s took {took:.2f} s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["nats", "ws", "tls"])
def test_a_stalled_link_is_given_up_after_one_write_timeout(scheme: str, tmp_path: Path) -> None:
    """Through a proxy that stops forwarding, a publisher fills the buffers at once: the link
    is lost ``write_timeout`` later (plus slack), whatever the transport."""
    options: Dict[str, Any] = {}
    if scheme == "tls":
        files = TLSFiles(str(tmp_path))
        server = files.nats_server()
        options["tls_ca_file"] = files.ca_file
    else:
        server = NatsServer(websocket_port=free_port() if scheme == "ws" else None)
    with server:
        port = server.websocket_port if scheme == "ws" else server.port
        assert port is not None
        proxy = TCPProxy(server.host, port)
        lost = threading.Event()
        causes: List[BaseException] = []
        bus = ts.connect(
            f"{scheme}://127.0.0.1:{proxy.port}",
            write_timeout=DEAD,
            ping_interval=120,
            allow_reconnect=False,
            on_disconnect=lambda: lost.set(),
            on_error=causes.append,
            **options,
        )
        try:
            bus.flush()
            proxy.stall()
            publisher = threading.Thread(target=_publish_until_closed, args=(bus,), daemon=True)
            start = time.monotonic()
            publisher.start()
            assert lost.wait(DEAD * 10), "the stalled link was never given up"
            took = time.monotonic() - start
            assert took < DEAD + MARGIN, f"a link stalled for {DEAD} s was given up after {took:.2f} s"
            assert any("stalled connection" in str(c) for c in causes), causes
        finally:
            proxy.resume()
            bus.close()
            proxy.close()
        publisher.join(10)
        assert not publisher.is_alive()


def _publish_until_closed(bus: ts.MessageBus) -> None:
    """Publish 1 MiB messages until the bus refuses (the stalled link was given up)."""
    try:
        for _ in range(256):
            bus.publish("big", bytes(1 << 20))
    except (ts.ConnectionClosedError, ts.OutboundBufferFullError):
        pass
