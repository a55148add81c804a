"""In a real ipykernel, what a subscription callback prints lands under the cell that subscribed,
and a live plot shows (and updates) an image output in its own cell.

nbclient throws away output addressed to a cell that has finished, so this test talks to the
kernel with jupyter_client and sorts the iopub messages by their parent cell
(``parent_header.msg_id``), as a notebook front end does.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, List

import pytest

from telestion_sync.server import NatsServer

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")


class Kernel:
    """A kernel and every iopub message it sent, in order."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.km = jupyter_client.KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.iopub: List[Dict[str, Any]] = []

    def run(self, code: str, timeout: float = 30) -> str:
        """Execute a cell; return its msg_id once the kernel is idle after it."""
        msg_id: str = self.kc.execute(code)
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"cell did not finish: {code[:60]!r}"
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            self.iopub.append(msg)
            if (
                msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_id") == msg_id
            ):
                break
        reply = self.kc.get_shell_msg(timeout=10)
        assert reply["content"]["status"] == "ok", reply["content"]
        return msg_id

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.iopub.append(self.kc.get_iopub_msg(timeout=0.1))
            except Exception:
                pass

    def outputs(self, msg_id: str) -> List[Dict[str, Any]]:
        return [m for m in self.iopub if m["parent_header"].get("msg_id") == msg_id]

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(server: NatsServer) -> Iterator[Kernel]:
    k = Kernel({**os.environ, "NATS_URL": server.url})
    yield k
    k.close()


def _text(msgs: List[Dict[str, Any]]) -> str:
    return "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")


@pytest.mark.timeout(120)
def test_callback_output_lands_under_the_subscribing_cell(kernel: Kernel) -> None:
    subscribing = kernel.run(
        "import os, time, telestion_sync as ts\n"
        "bus = ts.connect(os.environ['NATS_URL'])\n"
        # one string per print: two callback threads print at once, and print() writes its
        # arguments one by one (they would interleave)
        "sub = bus.subscribe('nb.hello', lambda m: print(f'callback got {m.data}'))\n"
        "pull_thread_sub = bus.subscribe('nb.own', lambda m: print(f'own thread got {m.data}'),"
        " own_thread=True)\n"
        "plot = ts.live_plot(bus, 'nb.temp', 'value', interval=0.1)\n"
        "bus.flush()\n"
        "print('subscribed')"
    )
    publishing = kernel.run(
        "bus.publish('nb.hello', 1)\n"
        "bus.publish('nb.own', 2)\n"
        "for i in range(5):\n"
        "    bus.publish('nb.temp', {'value': i * 1.5})\n"
        "    bus.flush(); time.sleep(0.1)\n"
        "time.sleep(1.0)\n"
        "print('published')"
    )
    later = kernel.run("bus.publish('nb.hello', 3); bus.flush(); time.sleep(0.5); print('later')")
    kernel.run("plot.stop(); print(plot.renders, plot.values); bus.close()")
    kernel.drain(0.5)

    under_sub = _text(kernel.outputs(subscribing))
    assert "callback got 1" in under_sub and "callback got 3" in under_sub, under_sub
    assert "own thread got 2" in under_sub, under_sub
    for other in (publishing, later):
        text = _text(kernel.outputs(other))
        assert "callback got" not in text and "own thread got" not in text, text
    assert "published" in _text(kernel.outputs(publishing))

    # The live plot: an image output in the subscribing cell, updated in place by display id.
    shown = [m for m in kernel.outputs(subscribing) if m["msg_type"] == "display_data"]
    images = [m for m in shown if "image/png" in m["content"]["data"]]
    assert images, [m["msg_type"] for m in kernel.outputs(subscribing)]
    display_id = images[0]["content"]["transient"]["display_id"]
    updates = [
        m
        for m in kernel.iopub
        if m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == display_id
    ]
    assert updates and all("image/png" in m["content"]["data"] for m in updates)
