"""The example notebook runs headless in a real Jupyter kernel (whose asyncio loop is already
running, where asyncio clients need workarounds) against a server and live telemetry."""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "telemetry.ipynb"


@pytest.mark.timeout(120)
def test_telemetry_notebook_runs_headless(server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()

    def publish_telemetry() -> None:  # stands in for the sample publisher
        with ts.connect(server.url) as bus:
            i = 0
            while not stop.wait(0.05):
                now = datetime.datetime.now(datetime.timezone.utc).isoformat()
                bus.publish("telemetry.temp", {"value": 20 + i % 5, "time": now})
                i += 1

    publisher = threading.Thread(target=publish_telemetry)
    publisher.start()
    monkeypatch.setenv("NATS_URL", server.url)
    monkeypatch.setenv("TELEMETRY_SUBJECT", "telemetry.>")
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
        )
        client.execute()
    finally:
        stop.set()
        publisher.join(10)
    assert not publisher.is_alive(), "the telemetry publisher did not stop"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    texts = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "subject" in texts and "value" in texts  # the table header
    assert "42" in texts  # request/reply inside the kernel
    assert "True" in texts  # bus.is_closed at the end
    assert "timed out: no matching message on 'telemetry.>'" in texts  # wait_for
    assert "<Recording " in texts and "replayed " in texts  # record, load, replay
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images  # the static plot and the live plot
