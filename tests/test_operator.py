"""bus.wait_for / wait_for_many / expect against real servers: matches, timeouts, many waiters,
a server restart while waiting, and the latest value stored in JetStream."""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterator, List

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer

from .conftest import join_all, wait_until


def _publish_later(bus: ts.MessageBus, items: List[tuple], delay: float = 0.1) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        for subject, data in items:
            bus.publish(subject, data)
        bus.flush()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_wait_for_returns_the_first_match(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    items = [("telemetry.temp", {"celsius": c}) for c in (20, 25, 31, 35)]
    t = _publish_later(other, items)
    msg = bus.wait_for("telemetry.temp", lambda m: m.data["celsius"] > 30, timeout=5)
    t.join()
    assert msg.data == {"celsius": 31}
    assert bus.subscriptions == []  # the waiter's subscription is gone


def test_wait_for_without_predicate_and_wildcards(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    t = _publish_later(other, [("telemetry.a.temp", 1)])
    msg = bus.wait_for("telemetry.>", timeout=5)
    t.join()
    assert (msg.subject, msg.data) == ("telemetry.a.temp", 1)


def test_only_messages_after_the_call_count(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    other.publish("x.y", {"v": 99})
    other.flush()
    with pytest.raises(ts.TimeoutError):
        bus.wait_for("x.y", timeout=0.2)


def test_timeout_names_subject_and_last_value(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    t = _publish_later(other, [("telemetry.temp", {"celsius": c}) for c in (20, 21, 22)], delay=0.05)
    start = time.monotonic()
    with pytest.raises(ts.TimeoutError) as info:
        bus.wait_for("telemetry.temp", lambda m: m.data["celsius"] > 30, timeout=0.5)
    elapsed = time.monotonic() - start
    t.join()
    text = str(info.value)
    assert "'telemetry.temp'" in text and "3 seen" in text and "{'celsius': 22}" in text, text
    assert 0.45 <= elapsed < 2.0
    assert isinstance(info.value, TimeoutError)  # the builtin too
    assert info.value.last.data == {"celsius": 22}  # type: ignore[attr-defined]


def test_timeout_with_nothing_seen(bus: ts.MessageBus) -> None:
    with pytest.raises(ts.TimeoutError, match=r"no message on 'quiet\.subject' within 0\.1 s"):
        bus.wait_for("quiet.subject", timeout=0.1)


def test_predicate_errors_are_reported(
    bus: ts.MessageBus, other: ts.MessageBus, caplog: pytest.LogCaptureFixture
) -> None:
    t = _publish_later(other, [("t.x", {"other": 1}), ("t.x", {"other": 2})], delay=0.05)
    with caplog.at_level(logging.WARNING, logger="telestion_sync.operator"):
        with pytest.raises(ts.TimeoutError) as info:
            bus.wait_for("t.x", lambda m: m.data["celsius"] > 30, timeout=0.4)
    t.join()
    assert "predicate raised 2 time(s)" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)
    assert "KeyError('celsius')" in caplog.text


def test_wait_for_many(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    t = _publish_later(other, [("n", i) for i in range(10)])
    msgs = bus.wait_for_many("n", 3, lambda m: m.data % 2 == 1, timeout=5)
    t.join()
    assert [m.data for m in msgs] == [1, 3, 5]
    with pytest.raises(ts.TimeoutError, match=r"5 matching messages.*2 matched"):
        t = _publish_later(other, [("n", 1), ("n", 2)], delay=0.05)
        bus.wait_for_many("n", 5, lambda m: m.data < 3, timeout=0.4)
    t.join()


def test_expect_has_no_race(bus: ts.MessageBus) -> None:
    with bus.expect("cmd.ack") as w:
        bus.publish("cmd.ack", {"ok": True})  # sent right away, before waiting
        (msg,) = w.wait(timeout=2)
    assert msg.data == {"ok": True}


def test_bad_arguments(bus: ts.MessageBus) -> None:
    with pytest.raises(ValueError, match="timeout"):
        bus.wait_for("a", timeout=0)
    with pytest.raises(TypeError, match="predicate"):
        bus.wait_for("a", 42, timeout=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        bus.wait_for_many("a", 0, timeout=1)
    with pytest.raises(ts.BadSubjectError):
        bus.wait_for("a b", timeout=1)


def test_many_waiters_cost_no_thread(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    n = 50
    results: List[object] = [None] * n
    before = threading.active_count()

    def waiter(i: int) -> None:
        try:
            results[i] = bus.wait_for("fan.out", lambda m, i=i: m.data >= i, timeout=10).data
        except Exception as exc:  # pragma: no cover - shown by the assert below
            results[i] = exc

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: len(bus.subscriptions) == n, what="all waiters subscribed")
    assert threading.active_count() - before <= n + 2  # the callers' threads, nothing per waiter
    bus.flush()
    for v in range(n):
        other.publish("fan.out", v)
    other.flush()
    join_all(threads)
    assert results == list(range(n))


@pytest.fixture
def restartable() -> Iterator[NatsServer]:
    with NatsServer() as srv:
        yield srv


def test_waiting_goes_on_across_a_reconnect(restartable: NatsServer) -> None:
    with ts.connect(restartable.url, reconnect_time_wait=0.05) as bus:
        result: List[object] = []
        t = threading.Thread(
            target=lambda: result.append(bus.wait_for("after.restart", timeout=15).data), daemon=True
        )
        t.start()
        wait_until(lambda: len(bus.subscriptions) == 1)
        bus.flush()
        restartable.kill()
        restartable.start()
        assert bus.wait_connected(10)
        bus.flush()
        with ts.connect(restartable.url) as pub:
            pub.publish("after.restart", {"ok": 1})
            pub.flush()
        t.join(10)
        assert result == [{"ok": 1}]





def test_latest_stored_value_first(fresh_js_server: NatsServer) -> None:
    with ts.connect(fresh_js_server.url) as bus:
        js = bus.jetstream()
        js.create_stream("TM", subjects=["tm.>"])
        js.publish("tm.temp", {"celsius": 35})
        js.publish("tm.other", {"celsius": 0})
        msg = bus.wait_for("tm.temp", lambda m: m.data["celsius"] > 30, timeout=1, latest=True)
        assert msg.data == {"celsius": 35}
        # The stored value does not match: live messages are waited for.
        t = _publish_later(bus, [("tm.temp", {"celsius": 40})])
        msg = bus.wait_for("tm.temp", lambda m: m.data["celsius"] > 38, timeout=5, latest=True)
        t.join()
        assert msg.data == {"celsius": 40}
        # Nothing stored yet on that subject: live.
        with pytest.raises(ts.TimeoutError):
            bus.wait_for("tm.none", timeout=0.2, latest=True)
        with pytest.raises(ts.StreamNotFoundError):
            bus.wait_for("nostream.x", timeout=0.2, latest=True)
        assert bus.subscriptions == []
