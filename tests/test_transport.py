"""The transport layer's I/O deadlines: a link's socket blocks and the kernel keeps the time
(``set_io_timeout``), so a silent or stalled peer still ends a receive or a send in time, and a
slow peer that keeps reading does not."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Iterator, Tuple

import pytest

from telestion_sync.transport import IO_TIMEOUT, open_tcp, set_io_timeout

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
