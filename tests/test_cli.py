"""The ``telestion-sync`` command, run for real in subprocesses against real servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer, free_port

from . import authgen
from .conftest import wait_for_line, wait_until
from .tlsutil import TLSFiles

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


def run_all(calls: Sequence[Tuple[Sequence[str], str]]) -> List[subprocess.CompletedProcess]:
    """Run several CLI commands (args, url) at once: independent checks, less waiting."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, *args, url=url) for args, url in calls]
        return [f.result() for f in futures]


def error_lines(proc: subprocess.CompletedProcess) -> List[str]:
    return proc.stderr.strip().splitlines()


def assert_fails_in_one_line(proc: subprocess.CompletedProcess, words: str, code: int = 1) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc)) == 1, proc.stderr
    assert words in proc.stderr, proc.stderr


@contextmanager
def started(*args: str, url: Optional[str] = None) -> Iterator[subprocess.Popen]:
    """The command running in the background; killed (if still running) and reaped on leaving."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "telestion_sync", *args],
        env=cli_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def assert_stops_cleanly(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (Ctrl-C's effect on the server command) ends it with exit code 0."""
    proc.terminate()
    proc.communicate(timeout=timeout)
    assert proc.returncode == 0


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
    with started("sub", "cli.sub.*", "--count", "2", url=server.url) as proc:
        wait_for_line(proc.stderr, "listening on cli.sub.*")
        watcher.publish("cli.sub.a", {"celsius": 21.5})
        watcher.publish("cli.sub.b", {"blob": b"\x01"}, codec="cbor")
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "cli.sub.a" in out and '"celsius": 21.5' in out
    assert "cli.sub.b" in out and "Content-Type: application/cbor" in out and "0x01" in out


def test_request_and_reply_commands(server: NatsServer, watcher: ts.MessageBus) -> None:
    with started("reply", "cli.svc", "--answer", '{"ok": true}', "--count", "1", url=server.url) as responder:
        wait_for_line(responder.stderr, "answering requests on cli.svc")
        proc = run("request", "cli.svc", '{"q": 1}', url=server.url)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"ok": True}
        assert responder.wait(20) == 0
    watcher.reply("cli.echo", lambda msg: msg.data)
    watcher.flush()
    proc = run("request", "cli.echo", "[1, 2]", url=server.url)
    assert json.loads(proc.stdout) == [1, 2]


def test_reply_echo_keeps_the_request_headers(server: NatsServer, watcher: ts.MessageBus) -> None:
    """The echo answers with the request's headers, so a CBOR request round-trips (without its
    Content-Type the reply came back as undecodable bytes)."""
    with started("reply", "cli.echo", "--count", "2", url=server.url) as responder:
        wait_for_line(responder.stderr, "answering requests on cli.echo")
        proc = run("request", "cli.echo", '{"b": [1, 2]}', "--cbor", url=server.url)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"b": [1, 2]}
        reply = watcher.request("cli.echo", b"\x01", headers={"Trace": "7"}, timeout=10)
        assert reply.payload == b"\x01" and reply.headers["Trace"] == "7"
        assert responder.wait(20) == 0


def test_reply_and_sub_end_in_one_line_when_the_server_dies(server: NatsServer) -> None:
    """Without reconnects, a lost connection ends `reply` (it waited forever) and `sub` (it
    printed the error up to three times) at once, with one line."""
    with started("reply", "cli.gone", url=server.url) as reply:
        with started("sub", "cli.gone", url=server.url) as sub:
            wait_for_line(reply.stderr, "answering requests on cli.gone")
            wait_for_line(sub.stderr, "listening on cli.gone")
            server.kill()
            for proc in (reply, sub):
                assert proc.wait(10) == 1
                assert proc.stderr is not None
                rest = proc.stderr.read()
                assert "Traceback" not in rest
                assert len(rest.strip().splitlines()) == 1, rest
                assert "closed" in rest


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


PERMISSIONS = """
authorization { users = [
  { user: u, password: p,
    permissions: { publish: { allow: ["ok.>", "_INBOX.>"] }, subscribe: { allow: ["ok.>", "_INBOX.>"] } } }
] }
"""


def test_permission_denied_fails_in_one_line() -> None:
    """A denied pub fails (it said "published" and exited 0); a denied sub or request says so
    once (the bus's error handler printed the same error again)."""
    with NatsServer(config=PERMISSIONS) as srv:
        creds = ("--user", "u", "--password", "p")
        pub, sub, request = run_all(
            [
                (("pub", "secret.x", "1", "--count", "3", *creds), srv.url),
                (("sub", "secret.>", "--count", "1", *creds), srv.url),
                (("request", "secret.x", "1", *creds), srv.url),
            ]
        )
    for proc in (pub, sub, request):
        assert_fails_in_one_line(proc, "Permissions Violation")
        assert "published" not in proc.stderr and "listening" not in proc.stderr
    assert 'Publish to "secret.x"' in pub.stderr and "3 errors in all" in pub.stderr
    assert 'Subscription to "secret.>"' in sub.stderr
    assert 'Publish to "secret.x"' in request.stderr


def test_counts_and_timeouts_are_validated() -> None:
    """`pub --count -5` printed "published -5 messages"; argparse now rejects such values
    before anything connects (so no server is needed)."""
    url = f"127.0.0.1:{free_port()}"
    calls: List[Tuple[Sequence[str], str]] = [
        (("pub", "x", "1", "--count", "-5"), url),
        (("pub", "x", "1", "--count", "0"), url),
        (("sub", "x", "--count", "0"), url),
        (("request", "x", "1", "--timeout", "-1"), url),
    ]
    for (args, _), proc in zip(calls, run_all(calls)):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "must be" in error_lines(proc)[-1] and "published" not in proc.stderr, (args, proc.stderr)


def test_connection_options_token_nkey_creds_and_tls(tmp_path: Any) -> None:
    """--token, --nkey, --creds, --tls-ca and --tls-cert/--tls-key against servers that require
    them (credentials from authgen, certificates from trustme)."""
    token = "cli-t0k3n-8Hq2"
    nkey_user = authgen.new_user_key()
    op = authgen.OperatorSetup()
    tls = TLSFiles(str(tmp_path))
    seed = authgen.write_seed(str(tmp_path / "user.nk"), nkey_user.seed)
    creds = op.user().write_creds(str(tmp_path / "user.creds"))
    with ExitStack() as stack:
        token_srv = stack.enter_context(NatsServer(config=authgen.token_config(token)))
        nkey_srv = stack.enter_context(NatsServer(config=authgen.nkey_config(nkey_user.public)))
        jwt_srv = stack.enter_context(NatsServer(config=op.config()))
        tls_srv = stack.enter_context(NatsServer(config=tls.server_config()))
        mtls_srv = stack.enter_context(NatsServer(config=tls.server_config(verify=True)))
        tls_url, mtls_url = f"tls://127.0.0.1:{tls_srv.port}", f"tls://127.0.0.1:{mtls_srv.port}"
        client_cert = ("--tls-cert", tls.client_cert, "--tls-key", tls.client_key)
        good = {
            "token": (("pub", "a", "1", "--token", token), token_srv.url),
            "nkey": (("pub", "a", "1", "--nkey", seed), nkey_srv.url),
            "creds": (("pub", "a", "1", "--creds", creds), jwt_srv.url),
            "tls": (("pub", "a", "1", "--tls-ca", tls.ca_file), tls_url),
            "mtls": (("pub", "a", "1", "--tls-ca", tls.ca_file, *client_cert), mtls_url),
        }
        bad = {  # (the library's own tests cover every refusal; these check the CLI's report)
            "token": (("pub", "a", "1", "--token", "wrong-token"), token_srv.url),
            "tls": (("pub", "a", "1"), tls_url),  # no --tls-ca: the test CA is not trusted
        }
        results = run_all([*good.values(), *bad.values()])
    for name, proc in zip(good, results[: len(good)]):
        assert proc.returncode == 0, (name, proc.stderr)
        assert "published 1 message" in proc.stderr, (name, proc.stderr)
    wrong_token, untrusted = results[len(good) :]
    assert_fails_in_one_line(wrong_token, "AuthenticationError")
    assert_fails_in_one_line(untrusted, "TLSError")


def test_health_lists_services(server: NatsServer, tmp_path: Any) -> None:
    services = [
        ts.start_service(
            argv=[], env={"NATS_URL": server.url, "SERVICE_NAME": name, "DATA_DIR": str(tmp_path)}
        )
        for name in ("alpha", "beta")
    ]
    # The Telestion Deno library answers the health check with its name only: no error count.
    deno = ts.connect(server.url)
    deno.reply("__telestion__.health", lambda msg: {"name": "gamma"})
    deno.flush()
    try:
        # A generous scatter window: a fresh subprocess on a slow machine must not miss a reply.
        proc = run("health", "--timeout", "2", url=server.url)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split() == ["SERVICE", "ERRORS"]
        assert [line.split() for line in lines[2:]] == [["alpha", "0"], ["beta", "0"], ["gamma", "-"]]
    finally:
        deno.close()
        for s in services:
            s.close()
    proc = run("health", url=server.url)
    assert proc.returncode == 1 and "no Telestion service" in proc.stderr


def test_server_command_starts_and_stops_cleanly() -> None:
    port, monitor, ws = free_port(), free_port(), free_port()
    with started(
        "server", "-p", str(port), "--monitor-port", str(monitor), "--websocket-port", str(ws)
    ) as proc:
        wait_for_line(proc.stdout, "press Ctrl-C to stop")
        with ts.connect(f"127.0.0.1:{port}") as bus:
            assert bus.rtt() < 5
        assert_stops_cleanly(proc)


def test_server_command_cluster() -> None:
    with started("server", "--cluster", "3", "-p", "0") as proc:
        line = wait_for_line(proc.stdout, "nats-server", timeout=30)
        url = line.split()[-1]
        wait_for_line(proc.stdout, "press Ctrl-C to stop", timeout=30)
        with ts.connect(url) as bus:
            # The other nodes are announced in an INFO that may come after connect() returned.
            wait_until(lambda: len(bus.discovered_servers) == 2, what="two discovered servers")
        assert_stops_cleanly(proc)


def test_server_command_reports_a_busy_port() -> None:
    with socket.socket() as taken:
        # Bound, not listening: nats-server's bind fails all the same, and the readiness probe
        # of NatsServer.start is refused at once instead of waiting on an unanswered connection.
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = run("server", "-p", str(port), "--monitor-port", "0", "--websocket-port", "0")
    assert_fails_in_one_line(proc, "address already in use")
    assert str(port) in proc.stderr


def test_server_command_cluster_honours_user_and_port() -> None:
    """--user/--password protect every node of --cluster (they were ignored while the command
    said a user was set), and -p is the first node's port."""
    port = free_port()
    with started(
        "server", "--cluster", "2", "-p", str(port), "--monitor-port", "0", "--websocket-port", "0",
        "--user", "al\"ice", "--password", "s3\\cret",
    ) as proc:  # fmt: skip
        line = wait_for_line(proc.stdout, "nats-server", timeout=30)
        assert line.split()[-1] == f"nats://127.0.0.1:{port}"
        wait_for_line(proc.stdout, "press Ctrl-C to stop", timeout=30)
        with pytest.raises(ts.AuthenticationError):
            ts.connect(f"127.0.0.1:{port}", connect_timeout=5).close()
        with ts.connect(f"127.0.0.1:{port}", user='al"ice', password="s3\\cret", connect_timeout=5) as bus:
            wait_until(lambda: len(bus.discovered_servers) == 1, what="the second node announced")
            other = bus.discovered_servers[0]
        with pytest.raises(ts.AuthenticationError):
            ts.connect(other, connect_timeout=5).close()
        assert_stops_cleanly(proc)


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
