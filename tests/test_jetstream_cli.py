"""``telestion-sync stream|consumer ...`` (in-process, against a real JetStream server) and
``telestion-sync server --jetstream --store-dir`` (a real subprocess)."""

from __future__ import annotations

import json
import os
from typing import Any, List, Tuple

import telestion_sync as ts
from telestion_sync import cli
from telestion_sync.server import NatsServer, free_port

from .conftest import wait_for_line
from .test_cli import assert_stops_cleanly, started


def run(capsys: Any, url: str, *args: str) -> Tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([*args, "-s", url])
    out, err = capsys.readouterr()
    return code, out, err


def test_stream_commands(js_server: NatsServer, capsys: Any) -> None:
    url = js_server.url
    code, out, err = run(capsys, url, "stream", "add", "CLI", "--subjects", "cli.>", "--max-age", "3600",
                         "--storage", "memory", "--allow-direct")  # fmt: skip
    assert code == 0 and "stream CLI created, subjects cli.>" in out, err
    with ts.connect(url) as bus:
        js = bus.jetstream()
        for i in range(5):
            js.publish("cli.a" if i < 3 else "cli.b", {"i": i})
    code, out, _ = run(capsys, url, "stream", "ls")
    assert code == 0 and "CLI" in out and "cli.>" in out and " 5 " in out
    code, out, _ = run(capsys, url, "stream", "info", "CLI")
    info = json.loads(out)
    assert info["config"]["max_age"] == 3600 * 10**9 and info["state"]["messages"] == 5
    code, out, _ = run(capsys, url, "stream", "get", "CLI", "2")
    assert code == 0 and "[2]" in out and "cli.a" in out and '{"i": 1}' in out
    code, out, _ = run(capsys, url, "stream", "get", "CLI", "--last-for", "cli.a")
    assert "[3]" in out
    code, out, err = run(capsys, url, "stream", "view", "CLI", "--subject", "cli.b")
    assert code == 0 and out.count("cli.b") == 2 and "2 messages" in err
    code, out, _ = run(capsys, url, "stream", "purge", "CLI", "--subject", "cli.a")
    assert code == 0 and "3 messages purged" in out
    code, _, err = run(capsys, url, "stream", "get", "CLI", "1")
    assert code == 1 and "MessageNotFoundError" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, url, "stream", "rm", "CLI")
    assert code == 0 and "deleted" in out
    code, _, err = run(capsys, url, "stream", "info", "CLI")
    assert code == 1 and "StreamNotFoundError" in err


def test_consumer_commands(js_server: NatsServer, capsys: Any) -> None:
    url = js_server.url
    with ts.connect(url) as bus:
        js = bus.jetstream()
        js.create_stream("CC", subjects=["cc.>"])
        for i in range(3):
            js.publish("cc.x", {"i": i})
        code, out, err = run(
            capsys, url, "consumer", "add", "CC", "worker", "--filter", "cc.x", "--ack-wait", "30"
        )
        assert code == 0 and "consumer CC/worker created" in out, err
        code, out, _ = run(capsys, url, "consumer", "ls", "CC")
        assert "worker" in out and "durable" in out
        code, out, _ = run(capsys, url, "consumer", "info", "CC", "worker")
        assert json.loads(out)["config"]["ack_wait"] == 30 * 10**9
        code, out, _ = run(capsys, url, "consumer", "next", "CC", "worker", "--count", "2")
        assert code == 0 and out.count("cc.x") == 2 and "delivered 1" in out
        assert js.consumer_info("CC", "worker").num_ack_pending == 0  # acknowledged
        code, out, _ = run(capsys, url, "consumer", "next", "CC", "worker", "--count", "5", "--wait", "0.5")
        assert code == 0 and out.count("cc.x") == 1
        code, _, err = run(capsys, url, "consumer", "next", "CC", "worker", "--wait", "0.3")
        assert code == 1 and "no message" in err
        code, out, _ = run(capsys, url, "consumer", "rm", "CC", "worker")
        assert code == 0 and "deleted" in out
        code, _, err = run(capsys, url, "consumer", "info", "CC", "worker")
        assert code == 1 and "ConsumerNotFoundError" in err
        js.delete_stream("CC")


def test_bad_names_fail_in_one_line(js_server: NatsServer, capsys: Any) -> None:
    code, _, err = run(capsys, js_server.url, "stream", "add", "bad.name")
    assert code == 1 and "InvalidArgumentError" in err and len(err.strip().splitlines()) == 1


def test_server_jetstream_store_dir(tmp_path: Any) -> None:
    port = free_port()
    store = str(tmp_path / "js-store")
    args: List[str] = [
        "server",
        "-p",
        str(port),
        "--monitor-port",
        "0",
        "--websocket-port",
        "0",
        "--jetstream",
    ]
    with started(*args, "--store-dir", store) as proc:
        line = wait_for_line(proc.stdout, "JetStream enabled")
        assert store in line
        wait_for_line(proc.stdout, "press Ctrl-C to stop")
        with ts.connect(f"127.0.0.1:{port}") as bus:
            js = bus.jetstream()
            js.create_stream("KEPT", subjects=["kept"])
            js.publish("kept", b"still here")
        assert_stops_cleanly(proc)
    assert os.path.isdir(store) and os.listdir(store)
    with started(*args, "--store-dir", store) as proc:  # the data is there after a restart
        wait_for_line(proc.stdout, "press Ctrl-C to stop")
        with ts.connect(f"127.0.0.1:{port}") as bus:
            assert bus.jetstream().get_msg("KEPT", 1).payload == b"still here"
        assert_stops_cleanly(proc)
