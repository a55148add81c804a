"""``telestion-sync kv ...`` and ``telestion-sync object ...`` (in-process, real JetStream server)."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Tuple

import telestion_sync as ts
from telestion_sync import cli
from telestion_sync.cli_kv import Progress
from telestion_sync.server import NatsServer


def run(capsys: Any, url: str, *args: str) -> Tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([*args, "-s", url])
    out, err = capsys.readouterr()
    return code, out, err


def test_kv_commands(js_server: NatsServer, capsys: Any) -> None:
    url = js_server.url
    code, out, err = run(capsys, url, "kv", "add", "cli", "--history", "5")
    assert code == 0 and "bucket cli created" in out, err
    assert run(capsys, url, "kv", "put", "cli", "antenna.az", "123.5")[1] == "antenna.az revision 1\n"
    assert run(capsys, url, "kv", "put", "cli", "mode", "idle")[1] == "mode revision 2\n"
    assert (
        run(capsys, url, "kv", "put", "cli", "antenna.az", "124", "--last", "1")[1]
        == "antenna.az revision 3\n"
    )
    code, out, err = run(capsys, url, "kv", "put", "cli", "mode", "x", "--create")
    assert code == 1 and "exists" in err
    code, out, err = run(capsys, url, "kv", "put", "cli", "bad key", "1")
    assert code == 1 and "invalid key 'bad key'" in err
    assert run(capsys, url, "kv", "get", "cli", "antenna.az")[1] == "124\n"
    assert run(capsys, url, "kv", "get", "cli", "mode")[1] == '"idle"\n'
    assert run(capsys, url, "kv", "get", "cli", "antenna.az", "--revision", "1")[1] == "123.5\n"
    code, out, err = run(capsys, url, "kv", "get", "cli", "nope")
    assert code == 1 and "not found" in err
    assert run(capsys, url, "kv", "ls", "cli")[1] == "antenna.az\nmode\n"
    out = run(capsys, url, "kv", "ls")[1]
    assert "cli" in out and "BUCKET" in out
    out = run(capsys, url, "kv", "history", "cli", "antenna.az")[1]
    assert "[1]" in out and "[3]" in out and "123.5" in out
    assert run(capsys, url, "kv", "del", "cli", "mode")[1] == "mode deleted\n"
    assert run(capsys, url, "kv", "ls", "cli")[1] == "antenna.az\n"
    out = run(capsys, url, "kv", "watch", "cli", "--count", "1")[1]
    assert out.splitlines()[0].startswith("[3]") and "PUT antenna.az" in out
    assert run(capsys, url, "kv", "del", "cli")[1] == "bucket cli deleted\n"


def test_kv_watch_prints_updates(js_server: NatsServer, capsys: Any) -> None:
    url = js_server.url
    with ts.connect(url) as bus:
        kv = bus.jetstream().create_key_value("w")
        kv.put("a", 1)
        result: list = []
        t = threading.Thread(
            target=lambda: result.append(cli.main(["kv", "watch", "w", "--count", "2", "-s", url]))
        )
        t.start()
        w = kv.watch(updates_only=True)  # the CLI's watch has started once its consumer exists
        try:
            from .conftest import wait_until

            wait_until(lambda: bus.jetstream().stream_info("KV_w").state.consumer_count >= 2, 10)
        finally:
            w.stop()
        kv.put("b", {"x": 2})
        t.join(10)
        assert not t.is_alive() and result == [0]
        out = capsys.readouterr().out
        assert "--- initial values done ---" in out and '{"x": 2}' in out
        bus.jetstream().delete_key_value("w")


def test_object_commands(js_server: NatsServer, capsys: Any, tmp_path: Path) -> None:
    url = js_server.url
    assert run(capsys, url, "object", "add", "files")[0] == 0
    src = tmp_path / "pass.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    code, out, err = run(capsys, url, "object", "put", "files", str(src))
    assert code == 0 and out.startswith("pass.bin: 300000 bytes in 3 chunks, SHA-256="), err
    dest = tmp_path / "got.bin"
    code, out, err = run(capsys, url, "object", "get", "files", "pass.bin", "-o", str(dest))
    assert code == 0 and dest.read_bytes() == data and "digest verified" in out
    out = run(capsys, url, "object", "ls", "files")[1]
    assert "pass.bin" in out and "300000" in out
    assert "files" in run(capsys, url, "object", "ls")[1]
    info = json.loads(run(capsys, url, "object", "info", "files", "pass.bin")[1])
    assert info["size"] == 300000 and info["chunks"] == 3
    assert run(capsys, url, "object", "rm", "files", "pass.bin")[1] == "pass.bin deleted\n"
    assert run(capsys, url, "object", "ls", "files")[1] == "no objects\n"
    code, out, err = run(capsys, url, "object", "get", "files", "pass.bin", "-o", str(dest))
    assert code == 1 and "ObjectNotFoundError" in err and "deleted" in err
    assert run(capsys, url, "object", "rm", "files")[1] == "object store files deleted\n"


def test_progress_bar() -> None:
    buf = io.StringIO()
    p = Progress(4 << 20, "put x", buf)
    p(2 << 20)
    p(4 << 20)
    p.end()
    text = buf.getvalue()
    assert "put x [###############---------------]  50.0%" in text
    assert "100.0%" in text and text.endswith("\n")
