"""The ``telestion-sync`` command, run for real in subprocesses against real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any, Dict, Iterator, List, Optional

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer, free_port

pytestmark = pytest.mark.timeout(60)


def cli_env(url: Optional[str] = None, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    if url:
        env["NATS_URL"] = url
    env.update(extra)
    return env


def run(
    *args: str, url: Optional[str] = None, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "telestion_sync", *args],
        env=cli_env(url, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, url: Optional[str] = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "telestion_sync", *args],
        env=cli_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(stream: Any, needle: str, timeout: float = 20) -> str:
    """Read lines until one contains ``needle`` (on a thread, so the wait has a timeout)."""
    found: List[str] = []
    done = threading.Event()

    def reader() -> None:
        for line in stream:
            if needle in line:
                found.append(line)
                done.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"{needle!r} not seen within {timeout} s"
    return found[0]


@pytest.fixture
def watcher(server: NatsServer) -> Iterator[ts.MessageBus]:
    with ts.connect(server.url) as bus:
        yield bus


def test_pub_json_cbor_raw_headers_and_count(server: NatsServer, watcher: ts.MessageBus) -> None:
    sub = watcher.subscribe("cli.>")
    watcher.flush()
    assert run("pub", "cli.json", '{"a": 1}', url=server.url).returncode == 0
    assert run("pub", "cli.cbor", '{"b": [1, 2]}', "--cbor", "-H", "Trace:7", url=server.url).returncode == 0
    assert run("pub", "cli.raw", "plain text", "--raw", url=server.url).returncode == 0
    proc = run("pub", "cli.many", "1", "--count", "50", url=server.url)
    assert proc.returncode == 0 and "published 50 messages" in proc.stderr
    msgs = [sub.next_msg(5) for _ in range(53)]
    assert msgs[0].data == {"a": 1} and msgs[0].headers == {}
    assert msgs[1].data == {"b": [1, 2]} and msgs[1].headers["Content-Type"] == "application/cbor"
    assert msgs[1].headers["Trace"] == "7"
    assert msgs[2].payload == b"plain text"
    assert [m.data for m in msgs[3:]] == [1] * 50


def test_pub_from_file(server: NatsServer, watcher: ts.MessageBus, tmp_path: Any) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x00\x01binary")
    sub = watcher.subscribe("cli.file")
    watcher.flush()
    assert run("pub", "cli.file", "--file", str(path), "--raw", url=server.url).returncode == 0
    assert sub.next_msg(5).payload == b"\x00\x01binary"


def test_sub_prints_decoded_messages(server: NatsServer, watcher: ts.MessageBus) -> None:
    proc = start("sub", "cli.sub.*", "--count", "2", url=server.url)
    try:
        wait_for_line(proc.stderr, "listening on cli.sub.*")
        watcher.publish("cli.sub.a", {"celsius": 21.5})
        watcher.publish("cli.sub.b", {"blob": b"\x01"}, codec="cbor")
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "cli.sub.a" in out and '"celsius": 21.5' in out
    assert "cli.sub.b" in out and "Content-Type: application/cbor" in out and "0x01" in out


def test_request_and_reply_commands(server: NatsServer, watcher: ts.MessageBus) -> None:
    responder = start("reply", "cli.svc", "--answer", '{"ok": true}', "--count", "1", url=server.url)
    try:
        wait_for_line(responder.stderr, "answering requests on cli.svc")
        proc = run("request", "cli.svc", '{"q": 1}', url=server.url)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"ok": True}
        assert responder.wait(20) == 0
    finally:
        responder.kill()
    watcher.reply("cli.echo", lambda msg: msg.data)
    watcher.flush()
    proc = run("request", "cli.echo", "[1, 2]", url=server.url)
    assert json.loads(proc.stdout) == [1, 2]


@pytest.mark.parametrize(
    "args, words",
    [
        (("request", "cli.nobody", "1"), "no responders"),
        (("pub", "bad subject", "1"), "whitespace"),
        (("pub", "cli.x", "not json"), "not valid JSON"),
    ],
)
def test_expected_failures_are_one_line_without_traceback(server: NatsServer, args: Any, words: str) -> None:
    proc = run(*args, url=server.url)
    assert proc.returncode == 1
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_request_timeout_fails_cleanly(server: NatsServer, watcher: ts.MessageBus) -> None:
    watcher.subscribe("cli.silent")
    watcher.flush()
    proc = run("request", "cli.silent", "1", "--timeout", "0.2", url=server.url)
    assert proc.returncode == 1 and "TimeoutError" in proc.stderr and "Traceback" not in proc.stderr


def test_server_down_and_wrong_password(auth_server: NatsServer) -> None:
    proc = run("pub", "x", "1", url=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 1 and "NoServersError" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("pub", "x", "1", "--user", "alice", "--password", "nope", url=auth_server.url)
    assert proc.returncode == 1 and "AuthenticationError" in proc.stderr and "nope" not in proc.stderr
    proc = run("pub", "x", "1", url=auth_server.url, NATS_USER="alice", NATS_PASSWORD="s3cret")
    assert proc.returncode == 0, proc.stderr


def test_permission_denied_is_reported(errors: Any) -> None:
    config = 'authorization { users = [ { user: u, password: p, permissions: { subscribe: ["ok.>"] } } ] }'
    with NatsServer(config=config) as srv:
        proc = run("sub", "secret.>", "--count", "1", "--user", "u", "--password", "p", url=srv.url)
        assert proc.returncode == 1
        assert "Permissions Violation" in proc.stderr and "Traceback" not in proc.stderr


def test_health_lists_services(server: NatsServer, tmp_path: Any) -> None:
    services = [
        ts.start_service(
            argv=[], env={"NATS_URL": server.url, "SERVICE_NAME": name, "DATA_DIR": str(tmp_path)}
        )
        for name in ("alpha", "beta")
    ]
    try:
        proc = run("health", url=server.url)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split() == ["SERVICE", "ERRORS"]
        assert [line.split() for line in lines[2:]] == [["alpha", "0"], ["beta", "0"]]
    finally:
        for s in services:
            s.close()
    proc = run("health", url=server.url)
    assert proc.returncode == 1 and "no Telestion service" in proc.stderr


def test_server_command_starts_and_stops_cleanly() -> None:
    port, monitor, ws = free_port(), free_port(), free_port()
    proc = start("server", "-p", str(port), "--monitor-port", str(monitor), "--websocket-port", str(ws))
    try:
        wait_for_line(proc.stdout, "press Ctrl-C to stop")
        with ts.connect(f"127.0.0.1:{port}") as bus:
            assert bus.rtt() < 5
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
    finally:
        proc.kill()


def test_server_command_cluster() -> None:
    proc = start("server", "--cluster", "3", "-p", "0")
    try:
        line = wait_for_line(proc.stdout, "nats-server", timeout=30)
        url = line.split()[-1]
        wait_for_line(proc.stdout, "press Ctrl-C to stop", timeout=30)
        with ts.connect(url) as bus:
            assert len(bus.discovered_servers) == 2
        proc.terminate()
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        proc.kill()


def test_bench_command_prints_a_summary(server: NatsServer) -> None:
    proc = run("bench", "--count", "2000", url=server.url, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for row in ("publish", "pub->sub", "requests", "request p50"):
        assert row in proc.stdout


def test_help_and_version() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("server", "pub", "sub", "request", "reply", "health", "bench"):
        assert command in proc.stdout
    assert run("--version").stdout.strip() == ts.__version__
