"""Fixtures: real nats-server processes on ephemeral loopback ports (never a mocked server)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List

import pytest
from hypothesis import settings

import telestion_sync as ts
from telestion_sync.server import NatsServer

# CI (HYPOTHESIS_PROFILE=ci, set by .ci/run) replays the same examples on every run, so a red CI
# always reproduces; local runs keep exploring new random inputs.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def server() -> Iterator[NatsServer]:
    """A fresh nats-server for one test."""
    with NatsServer() as srv:
        yield srv


@pytest.fixture
def auth_server() -> Iterator[NatsServer]:
    """A nats-server that requires user ``alice`` with password ``s3cret``."""
    with NatsServer(user="alice", password="s3cret") as srv:
        yield srv


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` (for state no event announces, e.g. a request registered inside the
    library) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.005)


def join_all(threads: Iterable[threading.Thread], timeout: float = 20.0, what: str = "a thread") -> None:
    """Join ``threads`` within one shared ``timeout``; fail if any is still running."""
    deadline = time.monotonic() + timeout
    threads = list(threads)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"{what} did not end within {timeout} s: {hung}"


def wait_for_line(stream: Any, needle: str = "", timeout: float = 20) -> str:
    """Read lines from a child's text stream until one contains ``needle`` (by default: the
    next line), on a thread, so the wait has a timeout."""
    found: List[str] = []
    done = threading.Event()

    def reader() -> None:
        try:
            for line in stream:
                if needle in line:
                    found.append(line)
                    return
        finally:
            done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"{needle!r} not seen within {timeout} s"
    assert found, f"the stream ended without a line containing {needle!r}"
    return found[0]


_CONFIG_KEYS = {"SERVICE_NAME", "DATA_DIR", "X_DISABLE_NATS"}


def clean_env() -> Dict[str, str]:
    """The test process's environment without any Telestion configuration in it (for child
    processes that must see only the configuration a test gives them)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "CONFIG_")) and k not in _CONFIG_KEYS
    }


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler installed (Linux: SigCgt in /proc), i.e.
    a signal sent now reaches its handler instead of the default action."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


class ErrorLog:
    """Collects what a bus reports to its error handler; wait() blocks until one matches."""

    def __init__(self) -> None:
        self.errors: List[BaseException] = []
        self._cond = threading.Condition()

    def __call__(self, err: BaseException) -> None:
        with self._cond:
            self.errors += [err] * getattr(err, "repeated", 1)  # identical ones come coalesced
            self._cond.notify_all()

    def wait(self, kind: type, timeout: float = 5.0) -> BaseException:
        """The first reported error of ``kind``, waiting for it."""
        return self.wait_many(kind, 1, timeout)[0]

    def wait_many(self, kind: type, count: int, timeout: float = 5.0) -> List[BaseException]:
        """The reported errors of ``kind``, once there are at least ``count``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.of(kind)) >= count, timeout)
            assert ok, f"not {count} {kind.__name__} reported within {timeout} s; got {self.errors!r}"
            return self.of(kind)

    def of(self, kind: type) -> List[BaseException]:
        return [e for e in self.errors if isinstance(e, kind)]


@pytest.fixture
def errors() -> ErrorLog:
    return ErrorLog()


@pytest.fixture
def bus(server: NatsServer, errors: ErrorLog) -> Iterator[ts.MessageBus]:
    """A connected bus whose reported errors land in the ``errors`` fixture."""
    b = ts.connect(server.url, name="test", on_error=errors)
    yield b
    b.close()


@pytest.fixture
def other(server: NatsServer) -> Iterator[ts.MessageBus]:
    """A second, independent connection to the same server."""
    b = ts.connect(server.url, name="other")
    yield b
    b.close()


# --- JetStream servers and buses (shared by the JetStream, KV, Object Store, CLI, docs tests) ---


@pytest.fixture(scope="module")
def js_server() -> Iterator[NatsServer]:
    """A JetStream-enabled nats-server shared by one test module (``jsbus`` cleans it up)."""
    with NatsServer(jetstream=True) as srv:
        yield srv


@pytest.fixture
def fresh_js_server() -> Iterator[NatsServer]:
    """A JetStream-enabled nats-server of the test's own (for tests that kill or restart it)."""
    with NatsServer(jetstream=True) as srv:
        yield srv


def fast_bus(url: Any) -> ts.MessageBus:
    """A bus that reconnects at once and forever (restart tests should not wait on the
    default back-off), its reported errors silenced."""
    return ts.connect(
        url, name="js-test", reconnect_time_wait=0.1, max_reconnect_attempts=-1, on_error=lambda e: None
    )


@pytest.fixture
def jsbus(js_server: NatsServer) -> Iterator[ts.MessageBus]:
    """A bus on the module's JetStream server; every stream it left is deleted afterwards."""
    b = fast_bus(js_server.url)
    yield b
    if not b.is_closed:
        js = b.jetstream()
        for name in js.stream_names():
            js.delete_stream(name)
    b.close()


@pytest.fixture
def js(jsbus: ts.MessageBus) -> ts.JetStream:
    return jsbus.jetstream()
