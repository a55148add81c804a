"""The README's Python examples run as written (against a real server on the port they name)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer

from .conftest import catches_sigterm, clean_env, wait_for_line, wait_until

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> List[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def block_with(text: str) -> str:
    found = [b for b in python_blocks() if text in b]
    assert len(found) == 1, f"expected one README python block containing {text!r}"
    return found[0]


def point_at(code: str, srv: NatsServer) -> str:
    """The block with ``localhost:4222`` replaced by the test server's address (the only edit)."""
    assert "localhost:4222" in code
    return code.replace("localhost:4222", f"{srv.host}:{srv.port}")


def test_quickstart_runs_as_written(server: NatsServer) -> None:
    code = point_at(block_with("ts.connect("), server)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    # the callback's line, then (after the bus closed) the pulled message, the sum, and no
    # Telestion service answering health
    assert out.stdout.splitlines() == ["telemetry.temp {'celsius': 21.5}", "events.door {'open': True} 3 0"]
    assert out.stderr == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_service_example_starts_and_stops_on_sigterm(server: NatsServer, tmp_path: Path) -> None:
    code = block_with("ts.start_service()")
    env = dict(clean_env(), NATS_URL=server.url, SERVICE_NAME="readme", DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        first = wait_for_line(proc.stdout)  # printed once connected and configured
        assert first.split()[0] == "readme", first
        with ts.connect(server.url) as bus:
            assert bus.request("svc.add", {"a": 2, "b": 3}, timeout=10).data == 5
        wait_until(lambda: catches_sigterm(proc.pid), what="run_forever() handling SIGTERM")
        proc.terminate()
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(10)
