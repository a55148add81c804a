"""The sample services in examples/ as real processes against a real nats-server.

Each example runs with ``--dev --NATS_URL=<server> --DATA_DIR=<tmp>``; the test watches what it
does on the bus and on its stdout (read line by line with timeouts, never sleeps), then stops it
with SIGTERM (or lets it stop itself with ``MAX_MESSAGES``) and expects a clean exit 0.
"""

from __future__ import annotations

import datetime
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer

from .conftest import catches_sigterm, clean_env, wait_until
from .test_service import REPLY_WAIT, scatter_gather

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Example:
    """One example script as a child process; its stdout lines are read on a thread."""

    def __init__(self, name: str, server: NatsServer, tmp: Path, *args: str) -> None:
        self.name = name
        self.lines: List[str] = []
        self._queue: queue.Queue[Optional[str]] = queue.Queue()
        self._stderr = tmp / f"{name}.stderr"
        with open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(EXAMPLES / f"{name}.py"),
                    "--dev",
                    f"--NATS_URL={server.url}",
                    f"--DATA_DIR={tmp / 'data'}",
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=clean_env(),
                cwd=tmp,
                text=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def output(self) -> str:
        err = self._stderr.read_text(errors="replace")
        return "stdout:\n" + "\n".join(self.lines) + "\nstderr:\n" + err

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Read stdout lines until one matches ``pattern`` (a regex searched in the line)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0.0)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                if left > 0:
                    self._queue.put(None)  # the process closed stdout; keep the marker
                break
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        pytest.fail(f"{self.name}: no line matching {pattern!r} within {timeout} s\n{self.output()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"{self.name} did not exit within {timeout} s\n{self.output()}")
        self._reader.join(5)
        while True:  # keep what it printed last
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def wait_for_run_forever(self, timeout: float = 10.0) -> None:
        """Wait until the process catches SIGTERM, i.e. ``run_forever()`` installed its signal
        handlers (Linux: the SigCgt mask in /proc). A signal sent earlier would kill it with
        KeyboardInterrupt or the default action, which a slow machine makes likely when the test
        signals right after the example's first line."""
        if not Path("/proc/self/status").exists():  # not Linux: nothing to watch
            return
        try:  # (an example that exited is left to terminate() to report, with its output)
            wait_until(lambda: self.proc.poll() is not None or catches_sigterm(self.proc.pid), timeout)
        except AssertionError:
            pytest.fail(f"{self.name} did not reach run_forever() within {timeout} s\n{self.output()}")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` once the example is in ``run_forever()``; expect exit code 0 within a few
        seconds and the 'stopped' line."""
        self.wait_for_run_forever()
        self.proc.send_signal(sig)
        code = self.wait_exit()
        assert code == 0, self.output()
        assert any(line.endswith("stopped") for line in self.lines), self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def run_example(server: NatsServer, tmp_path: Path) -> Iterator:
    started: List[Example] = []

    def run(name: str, *args: str) -> Example:
        ex = Example(name, server, tmp_path, *args)
        started.append(ex)
        return ex

    yield run
    for ex in started:
        ex.kill()


def parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- publisher -------------------------------------------------------------------------------


def test_publisher_sends_random_values_with_timestamps(run_example, bus: ts.MessageBus) -> None:
    sub = bus.subscribe("data.test")
    bus.flush()
    before = datetime.datetime.now(datetime.timezone.utc)
    pub = run_example("publisher", "--DATA_SUBJECT=data.test", "--FREQUENCY=0.05")
    pub.expect(r"publishing on data\.test every 0\.05 s")
    values = []
    for _ in range(3):
        msg = sub.next_msg(timeout=10)
        data = msg.data
        assert set(data) == {"value", "time"}
        assert isinstance(data["value"], float) and 0 <= data["value"] < 1
        assert data["time"].endswith("Z")  # like JavaScript's toISOString()
        stamp = parse_iso(data["time"])
        assert (
            before - datetime.timedelta(seconds=1)
            <= stamp
            <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        )
        values.append(data["value"])
    assert len(set(values)) == 3  # random
    pub.expect(r"published .* to data\.test")
    pub.terminate()


def test_publisher_stops_itself_after_max_messages(run_example, bus: ts.MessageBus) -> None:
    sub = bus.subscribe("data.count")
    bus.flush()
    pub = run_example(
        "publisher", "--DATA_SUBJECT", "data.count", "--FREQUENCY", "0.02", "--MAX_MESSAGES", "3"
    )
    assert pub.wait_exit() == 0, pub.output()
    got = [sub.next_msg(timeout=5).data for _ in range(3)]
    assert all("value" in d for d in got)
    with pytest.raises(ts.TimeoutError):
        sub.next_msg(timeout=0.2)
    assert sum("published" in line for line in pub.lines) == 3
    assert pub.lines[-1] == "publisher stopped"


def test_publisher_runs_as_a_discoverable_dev_service(run_example, bus: ts.MessageBus) -> None:
    pub = run_example("publisher", "--FREQUENCY=5")
    pub.expect(r"publisher dev-\d+: publishing on data\.random")
    names = [s["name"] for s in ts.discover_services(bus, timeout=REPLY_WAIT, max_services=1)]
    assert f"dev-{pub.proc.pid}" in names  # --dev names the service after its process
    pub.terminate(signal.SIGINT)


# --- requester -------------------------------------------------------------------------------


def test_requester_prints_the_replies_and_forwards_them(run_example, bus: ts.MessageBus) -> None:
    count = 0

    def answer(msg: ts.Message) -> dict:
        nonlocal count
        count += 1
        return {"n": count}

    bus.reply("req.test", answer)
    out = bus.subscribe("out.test")
    bus.flush()
    req = run_example(
        "requester", "--REQUEST_SUBJECT=req.test", "--OUTPUT_SUBJECT=out.test", "--FREQUENCY=0.05"
    )
    req.expect(r"requesting req\.test every 0\.05 s")
    req.expect(r"^reply 1 from req\.test: \{'n': 1\}$")
    req.expect(r"^reply 2 from req\.test: \{'n': 2\}$")
    assert out.next_msg(timeout=5).data == {"n": 1}
    assert out.next_msg(timeout=5).data == {"n": 2}
    req.terminate()


def test_requester_survives_missing_responders_and_stops_itself(run_example) -> None:
    req = run_example(
        "requester", "--REQUEST_SUBJECT=req.nobody", "--FREQUENCY=0.02", "--TIMEOUT=1", "--MAX_MESSAGES=2"
    )
    assert req.wait_exit() == 0, req.output()
    failures = [line for line in req.lines if "failed: NoRespondersError" in line]
    assert len(failures) == 2, req.output()
    assert req.lines[-1] == "requester stopped"


# --- logger ----------------------------------------------------------------------------------


def test_logger_prints_a_hex_dump_of_any_payload(run_example, bus: ts.MessageBus) -> None:
    log = run_example("logger")
    log.expect(r"listening on log\.>")
    payload = b"Hello, \x00\xff telemetry!"  # 20 bytes: two dump lines
    bus.publish("log.test.raw", payload)
    log.expect(r"^log\.test\.raw: 20 bytes$")
    first = log.expect(r"^00000000  ")
    assert first.string == "00000000  48 65 6c 6c 6f 2c 20 00 ff 20 74 65 6c 65 6d 65  |Hello, .. teleme|"
    second = log.expect(r"^00000010  ")
    assert second.string == "00000010  74 72 79 21" + " " * 38 + "|try!|"

    bus.publish("log.cbor", {"x": 1}, codec="cbor")  # shown raw, with its Content-Type header
    log.expect(r"^log\.cbor: 4 bytes headers \{'Content-Type': 'application/cbor'\}$")
    assert log.expect(r"^00000000  ").string.startswith("00000000  a1 61 78 01 ")
    bus.publish("other.subject", b"ignored")
    bus.publish("log.empty", b"")
    log.expect(r"^log\.empty: 0 bytes$")
    assert log.expect(r"\S").string == "(empty payload)"
    assert not any("other.subject" in line for line in log.lines)
    log.terminate()


def test_logger_listens_on_a_configured_subject(run_example, bus: ts.MessageBus) -> None:
    log = run_example("logger", "--LOG_SUBJECT=audit.*", "--MAX_MESSAGES=1")
    log.expect(r"listening on audit\.\*")
    bus.publish("log.not-this", b"no")
    bus.publish("audit.login", b"\x01\x02")
    assert log.wait_exit() == 0, log.output()
    assert "audit.login: 2 bytes" in log.lines
    assert not any("log.not-this" in line for line in log.lines)


# --- latest-value cache ----------------------------------------------------------------------


def test_latest_value_cache_answers_the_latest_value_per_subject(run_example, bus: ts.MessageBus) -> None:
    cache = run_example("latest_value_cache", "--DATA_SUBJECT=data.>", "--REQUEST_SUBJECT=latest.>")
    name = cache.expect(r"cache (dev-\d+): caching data\.>, answering on latest\.>").group(1)
    bus.publish("data.temp", {"celsius": 20})
    bus.publish("data.temp", {"celsius": 21.5})
    bus.publish("data.raw.sensor", b"\x00\x01\x02")
    bus.publish("data.image", {"thumb": b"\x89PNG"}, codec="cbor")
    for key in ("temp", "temp", "raw.sensor", "image"):
        cache.expect(rf"stored \d+ bytes for key {re.escape(key)}$")

    assert bus.request("latest.temp", timeout=5).data == {"celsius": 21.5}
    assert bus.request("latest.raw.sensor", timeout=5).payload == b"\x00\x01\x02"
    image = bus.request("latest.image", timeout=5)
    assert image.headers["Content-Type"] == "application/cbor"
    assert image.data == {"thumb": b"\x89PNG"}
    assert bus.request("latest.unknown", timeout=5).payload == b""  # nothing stored yet
    cache.expect(r"answered request 4 for key unknown with 0 bytes")

    # The endpoint is visible to NATS micro discovery, with the service name as queue group.
    info = bus.request(f"$SRV.INFO.{name}", timeout=5).data
    assert info["endpoints"] == [
        {"name": "latest", "subject": "latest.>", "queue_group": name, "metadata": {}}
    ]
    stats = bus.request(f"$SRV.STATS.{name}", timeout=5).data
    assert stats["endpoints"][0]["num_requests"] == 4
    assert stats["endpoints"][0]["num_errors"] == 0
    cache.terminate()


def test_latest_value_cache_instances_share_the_requests(run_example, bus: ts.MessageBus) -> None:
    a = run_example("latest_value_cache", "--SERVICE_NAME=cache")
    b = run_example("latest_value_cache", "--SERVICE_NAME=cache")
    a.expect(r"cache cache: caching data\.>, answering on latest\.>")
    b.expect(r"cache cache: caching data\.>, answering on latest\.>")
    bus.publish("data.x", b"42")
    a.expect(r"stored 2 bytes for key x$")
    b.expect(r"stored 2 bytes for key x$")
    replies = scatter_gather(bus, "latest.x", requests=10)  # waits 1 s for late extra replies
    assert [[m.payload for m in r] for r in replies] == [[b"42"]] * 10  # one instance answers each
    a.terminate()
    b.terminate()
    answered = [line for line in a.lines + b.lines if line.startswith("answered request")]
    assert len(answered) == 10


def test_latest_value_cache_rejects_a_data_subject_without_wildcard(run_example) -> None:
    cache = run_example("latest_value_cache", "--DATA_SUBJECT=data.temp")
    assert cache.wait_exit() == 1
    assert "DATA_SUBJECT must end in '>'" in cache.output()
