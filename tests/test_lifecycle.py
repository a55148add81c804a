"""Ending things: callbacks that end each other's subscriptions, drains that fail or time out,
scripts that forget close() or a recorder's stop(), and iterators stopped while they wait.
Each test failed before its fix (found by a review of issues 9-14)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer

from .conftest import join_all, wait_until
from .proxy import TCPProxy


def test_callbacks_unsubscribing_each_others_subscriptions_do_not_deadlock(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    try:
        for _ in range(5):
            entered = threading.Barrier(2, timeout=5)
            returned: List[str] = []
            subs: List[ts.Subscription] = []

            def cb(
                msg: ts.Message,
                entered: threading.Barrier = entered,
                returned: List[str] = returned,
                subs: List[ts.Subscription] = subs,
            ) -> None:
                entered.wait()  # both callbacks run at once
                for sub in subs:  # "first answer wins": each ends both subscriptions
                    sub.unsubscribe()
                returned.append(msg.subject)

            subs += [bus.subscribe("race.a", cb), bus.subscribe("race.b", cb)]
            bus.publish("race.a", b"")
            bus.publish("race.b", b"")
            wait_until(lambda returned=returned: len(returned) == 2, what="both callbacks returning")
        start = time.monotonic()
        bus.close()
        assert time.monotonic() - start < 3.0
        assert bus.threads == []
    finally:
        bus.close()


def test_a_drain_that_fails_during_an_outage_still_ends_the_subscription(server: NatsServer) -> None:
    proxy = TCPProxy(server.host, server.port)
    lost = threading.Event()
    bus = ts.connect(proxy.url, connect_timeout=0.3, on_disconnect=lost.set, reconnect_time_wait=0.05)
    try:
        sub = bus.subscribe("gone")
        bus.flush()
        proxy.stall()
        proxy.cut()
        assert lost.wait(5)
        with pytest.raises(ts.TimeoutError):
            sub.drain(timeout=0.5)  # its flush cannot reach a server
        assert not sub.is_valid and sub not in bus.subscriptions
        with pytest.raises(ts.SubscriptionClosedError):
            sub.next_msg(timeout=0)
        assert list(sub) == []  # iteration ends instead of waiting for messages that never come
    finally:
        proxy.resume()
        bus.close()
        proxy.close()


def test_bus_drain_keeps_its_timeout(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    release = threading.Event()
    bus.subscribe("busy", lambda m: release.wait(10))
    bus.publish("busy", b"")
    bus.flush()
    try:
        start = time.monotonic()
        bus.drain(timeout=0.5)
        took = time.monotonic() - start
        assert took < 0.5 + 1.0, f"drain(timeout=0.5) took {took:.2f} s"
    finally:
        release.set()
        bus.close()


_FORGETFUL = """
import sys, threading, time, telestion_sync as ts
bus = ts.connect(sys.argv[1])
sub = bus.subscribe("jobs")

def worker():  # a thread that is not a daemon, iterating until the bus closes
    for msg in sub:
        pass

threading.Thread(target=worker).start()
rec = bus.record("t.>", sys.argv[2])  # never stopped either
for i in range(5):
    bus.publish("t.x", i)
bus.flush()
time.sleep(0.2)
print("script done", flush=True)
"""


def test_a_script_that_forgets_close_and_stop_still_exits_and_keeps_its_recording(
    server: NatsServer, tmp_path: Path
) -> None:
    path = tmp_path / "forgotten.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", _FORGETFUL, server.url, str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "script done"
    assert [m.data for m in ts.load_recording(path)] == [0, 1, 2, 3, 4]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_the_recorder_keeps_payloads_that_do_not_match_their_content_type(
    bus: ts.MessageBus, tmp_path: Path, errors: Any
) -> None:
    path = tmp_path / "mismatch.jsonl"
    with bus.record("mis.>", path):
        bus.publish("mis.a", b"not cbor", headers={"Content-Type": "application/cbor"})
        bus.publish("mis.b", b"\xff\x00", headers={"K": "  padded  "})
        bus.flush()
    rec = list(ts.load_recording(path))
    assert [(m.subject, m.payload) for m in rec] == [("mis.a", b"not cbor"), ("mis.b", b"\xff\x00")]
    assert rec[1].headers["K"] == "  padded  "  # as sent, not stripped
    assert errors.of(ts.DecodeError) == []


def test_stopping_jetstream_iteration_and_consume_while_they_wait(tmp_path: Path) -> None:
    with NatsServer(jetstream=True) as srv, ts.connect(srv.url) as bus:
        js = bus.jetstream()
        js.create_stream("S", subjects=["s.>"])
        consumer = js.create_consumer("S", durable="d")
        for source in (consumer, js.ordered_consumer("S")):
            it = source.messages()
            outcome: List[Any] = []

            def loop(it: Any = it, outcome: List[Any] = outcome) -> None:
                try:
                    outcome.extend(it)
                    outcome.append("ended")
                except BaseException as exc:  # noqa: BLE001 - the test reports what escaped
                    outcome.append(exc)

            t = threading.Thread(target=loop)
            t.start()
            # its pull request at the server: it waits (the stop must interrupt that)
            wait_until(lambda source=source: source.info().num_waiting >= 1, 5, "the pull request")
            it.stop()
            join_all([t])
            assert outcome == ["ended"]
        failures: List[BaseException] = []
        old_hook = threading.excepthook
        threading.excepthook = lambda args: failures.append(args.exc_value)  # type: ignore[assignment]
        try:
            cc = consumer.consume(lambda m: m.ack())
            time.sleep(0.3)
            cc.stop()
            cc.join(5)
        finally:
            threading.excepthook = old_hook
        assert failures == []


def test_jetstream_needs_a_timeout_above_zero(bus: ts.MessageBus) -> None:
    with pytest.raises(ts.InvalidArgumentError, match="timeout must be a number of seconds > 0"):
        bus.jetstream(timeout=0)
