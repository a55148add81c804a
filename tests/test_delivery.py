"""Callback delivery on the bus's shared, self-sizing pool of threads (issue 10): order per
subscription, no starvation by a blocking callback, no deadlock for callbacks that request from
responders on the same bus, growing and shrinking, and thousands of subscriptions."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import pytest

import telestion_sync as ts
from telestion_sync import dispatch
from telestion_sync.server import NatsServer

from .conftest import join_all, wait_until


def delivery_threads(bus: ts.MessageBus) -> List[str]:
    return [t.name for t in bus.threads if "-deliver-" in t.name]


@pytest.mark.timeout(60)
def test_order_per_subscription_and_never_concurrent_with_many_subscriptions(
    bus: ts.MessageBus, other: ts.MessageBus
) -> None:
    n_subs, per_sub = 500, 40
    got: Dict[int, List[int]] = {i: [] for i in range(n_subs)}
    inside: Dict[int, bool] = dict.fromkeys(range(n_subs), False)
    overlaps: List[int] = []
    remaining = [n_subs * per_sub]
    lock = threading.Lock()
    done = threading.Event()

    def make(i: int) -> Any:
        def cb(msg: ts.Message) -> None:
            if inside[i]:
                overlaps.append(i)
            inside[i] = True
            got[i].append(int(msg.payload))
            if int(msg.payload) % 7 == 0:
                time.sleep(0.0005)  # some callbacks take a moment: workers interleave
            inside[i] = False
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        return cb

    for i in range(n_subs):
        bus.subscribe(f"ord.{i}", make(i))
    bus.flush()
    for k in range(per_sub):
        for i in range(n_subs):
            other.publish(f"ord.{i}", b"%d" % k)
    other.flush()
    assert done.wait(40), f"{remaining[0]} messages not delivered"
    assert overlaps == []
    assert all(got[i] == list(range(per_sub)) for i in range(n_subs))


def test_a_blocking_callback_does_not_starve_the_others(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    release = threading.Event()
    blocked = threading.Event()

    def stuck(msg: ts.Message) -> None:
        blocked.set()
        release.wait(20)  # blocks on something the bus cannot see

    bus.subscribe("stuck", stuck)
    delays: List[float] = []
    all_in = threading.Event()
    n = 50

    def fast(msg: ts.Message) -> None:
        delays.append(time.monotonic() - float(msg.payload))
        if len(delays) == n:
            all_in.set()

    for i in range(n):
        bus.subscribe(f"fast.{i}", fast)
    bus.flush()
    try:
        for _ in range(dispatch.CORE):  # every core worker stuck in its own callback
            bus.subscribe("stuck", stuck)
        bus.flush()
        other.publish("stuck", b"")
        other.flush()
        assert blocked.wait(5)
        for i in range(n):
            other.publish(f"fast.{i}", str(time.monotonic()).encode())
        other.flush()
        assert all_in.wait(5), f"{len(delays)} of {n} fast callbacks ran while one blocked"
        # The watchdog's bound is dispatch.STALL (50 ms); allow scheduling slack.
        assert max(delays) < 1.0, f"a fast callback waited {max(delays):.3f} s"
    finally:
        release.set()


@pytest.mark.timeout(60)
def test_two_hundred_callbacks_requesting_from_responders_on_the_same_bus(bus: ts.MessageBus) -> None:
    bus.reply("svc.double", lambda m: m.data * 2)
    results: Dict[int, int] = {}
    failures: List[BaseException] = []
    done = threading.Event()
    n = 200

    def caller(msg: ts.Message) -> None:
        try:
            i = msg.data
            results[i] = bus.request("svc.double", i, timeout=5).data  # (10 s without compensation)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        if len(results) + len(failures) == n:
            done.set()

    for i in range(n):
        bus.subscribe(f"call.{i}", caller)
    bus.flush()
    for i in range(n):
        bus.publish(f"call.{i}", i)  # all at once
    assert done.wait(15), f"{len(results)} of {n} requests answered: deadlock"
    assert failures == []
    assert results == {i: 2 * i for i in range(n)}


def test_pool_grows_while_callbacks_block_and_shrinks_when_idle(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "IDLE_TIMEOUT", 0.3)
    bus = ts.connect(server.url)
    try:
        release = threading.Event()
        entered: List[int] = []
        n = 20

        def block(msg: ts.Message) -> None:
            entered.append(1)
            release.wait(20)

        for i in range(n):
            bus.subscribe(f"blk.{i}", block)
        bus.flush()
        for i in range(n):
            bus.publish(f"blk.{i}", b"")
        wait_until(lambda: len(entered) == n, what="every blocking callback running at once")
        assert len(delivery_threads(bus)) >= n
        release.set()
        wait_until(lambda: delivery_threads(bus) == [], what="the pool shrinking to nothing")
        # and it comes back when needed
        got = threading.Event()
        bus.subscribe("again", lambda m: got.set())
        bus.publish("again", b"")
        assert got.wait(5)
    finally:
        bus.close()


@pytest.mark.timeout(120)
def test_ten_thousand_subscriptions_on_a_few_threads(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    try:
        n, per = 10_000, 3
        count = [0]
        lock = threading.Lock()
        done = threading.Event()

        def cb(msg: ts.Message) -> None:
            with lock:
                count[0] += 1
                if count[0] == n * per:
                    done.set()

        for i in range(n):
            bus.subscribe(f"tlm.p{i}", cb)
        bus.flush()  # with its default timeout, right after subscribing
        most = 0
        with ts.connect(server.url) as pub:
            for _ in range(per):
                for i in range(n):
                    pub.publish(f"tlm.p{i}", b"1")
                most = max(most, len(bus.threads))
            pub.flush()
        while not done.wait(0.05):
            most = max(most, len(bus.threads))
        assert count[0] == n * per
        assert most <= 64, f"{most} threads for fast callbacks"
        start = time.monotonic()
        bus.close()
        assert time.monotonic() - start < 5.0
    finally:
        bus.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["close", "drain"])
def test_close_and_drain_with_thousands_of_subscriptions_are_bounded(server: NatsServer, ending: str) -> None:
    bus = ts.connect(server.url)
    got = [0]
    lock = threading.Lock()

    def cb(msg: ts.Message) -> None:
        with lock:
            got[0] += 1

    for i in range(3000):
        bus.subscribe(f"many.{i}", cb)
    bus.flush()
    for i in range(3000):
        bus.publish(f"many.{i}", b"x")
    start = time.monotonic()
    if ending == "close":
        bus.close()
    else:
        bus.drain(timeout=10)
        assert got[0] == 3000  # drain delivers what was pending
    assert time.monotonic() - start < 5.0, f"{ending} took too long"
    assert bus.threads == []


def test_internal_handlers_cost_no_thread_each(server: NatsServer, tmp_path: Any) -> None:
    service = ts.start_service(
        argv=[], env={"NATS_URL": server.url, "SERVICE_NAME": "thrifty", "DATA_DIR": str(tmp_path)}
    )
    try:
        service.bus.flush()
        names = sorted(t.name.split("-")[1] for t in service.bus.threads)
        assert names == ["reader", "status", "writer"]  # no thread for health and $SRV handlers
        with ts.connect(server.url) as probe:
            assert probe.request("__telestion__.health", timeout=5).data["name"] == "thrifty"
    finally:
        service.close()


def test_unsubscribe_from_another_callback_and_exceptions_keep_the_worker(
    bus: ts.MessageBus, errors: Any
) -> None:
    got: List[bytes] = []
    done = threading.Event()

    def failing(msg: ts.Message) -> None:
        raise RuntimeError("callback bug")

    victim = bus.subscribe("victim", lambda m: got.append(m.payload))

    def killer(msg: ts.Message) -> None:
        victim.unsubscribe()
        done.set()

    bus.subscribe("fail", failing)
    bus.subscribe("kill", killer)
    bus.flush()
    for _ in range(3):
        bus.publish("fail", b"")
    bus.publish("victim", b"before")
    bus.flush()
    wait_until(lambda: got == [b"before"], what="the victim's first message")
    bus.publish("kill", b"")
    assert done.wait(5)
    bus.publish("victim", b"after")
    bus.flush()
    assert got == [b"before"]
    assert len(errors.wait_many(ts.Error, 3)) == 3


def test_close_from_inside_a_callback(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    closed = threading.Event()

    def cb(msg: ts.Message) -> None:
        bus.close()
        closed.set()

    bus.subscribe("bye", cb)
    bus.publish("bye", b"")
    assert closed.wait(5)
    assert bus.is_closed
    wait_until(lambda: bus.threads == [], what="every thread gone")


def test_drain_from_inside_its_own_callback(bus: ts.MessageBus) -> None:
    got: List[bytes] = []
    done = threading.Event()

    def cb(msg: ts.Message) -> None:
        got.append(msg.payload)
        if msg.payload == b"0":
            sub.drain()
            done.set()

    sub = bus.subscribe("drainme", cb)
    for i in range(5):
        bus.publish("drainme", b"%d" % i)
    bus.flush()
    assert done.wait(5)
    wait_until(lambda: len(got) == 5, what="the messages pending at the drain")
    assert got == [b"%d" % i for i in range(5)]
    join_all([])


@pytest.mark.timeout(30)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_callback_ending_its_worker_with_system_exit_does_not_strand_its_subscription(
    bus: ts.MessageBus, other: ts.MessageBus
) -> None:
    # The only worker ends (SystemExit in a callback) while its subscription still has a
    # message queued; the subscription goes back on the run queue, and a worker must come for
    # it although nothing else is ever scheduled.
    entered = threading.Event()
    leave = threading.Event()
    got: List[bytes] = []
    second = threading.Event()

    def cb(msg: ts.Message) -> None:
        if msg.payload == b"first":
            entered.set()
            assert leave.wait(10)
            raise SystemExit
        got.append(msg.payload)
        second.set()

    bus.subscribe("exit", cb)
    bus.flush()
    other.publish("exit", b"first")
    other.flush()
    assert entered.wait(5)
    other.publish("exit", b"second")
    other.flush()
    bus.flush()  # the server sent "second" before this PONG: it is queued, the sub still scheduled
    leave.set()
    assert second.wait(5), "the subscription's next message was never delivered"
    assert got == [b"second"]


class _HeldWakeups(threading.Condition):
    """The dispatcher's idle-worker condition, able to hold a woken worker back before it
    takes the lock again (what a busy machine's scheduler may do for a while)."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.holding = False
        self.held = threading.Event()
        self.go = threading.Event()

    def _acquire_restore(self, state: Any) -> None:
        if self.holding:
            self.held.set()
            self.go.wait(10)
        self._lock.acquire()  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
def test_work_queued_while_the_idle_worker_is_already_woken_is_not_left_to_it(
    bus: ts.MessageBus, other: ts.MessageBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers: one blocked in a callback, one idle. The idle one is woken for a
    # subscription (whose callback blocks too) but has not run yet when a second subscription
    # is queued: that one must not count on the same idle worker; the watchdog's bound holds.
    monkeypatch.setattr(dispatch, "CORE", 2)
    pool = bus._dispatcher
    release = threading.Event()
    blocked = threading.Semaphore(0)
    quick = threading.Event()
    fast = threading.Event()

    def block(msg: ts.Message) -> None:
        blocked.release()
        release.wait(20)

    bus.subscribe("held.block1", block)
    bus.subscribe("held.block2", block)
    bus.subscribe("held.quick", lambda msg: quick.set())
    bus.subscribe("held.fast", lambda msg: fast.set())
    bus.flush()
    cond = _HeldWakeups(pool._lock)
    try:
        other.publish("held.block1", b"")
        other.flush()
        assert blocked.acquire(timeout=5)  # worker 1 stuck
        with pool._lock:
            assert pool._idle == 0
            pool._work = cond  # nobody waits on the old one
        other.publish("held.quick", b"")
        other.flush()
        assert quick.wait(5)  # worker 2 started, delivered, and is idle
        wait_until(lambda: len(cond._waiters) == 1, 5, "an idle worker")  # type: ignore[attr-defined]
        cond.holding = True
        other.publish("held.block2", b"")
        other.flush()
        assert cond.held.wait(5)  # worker 2 woken for block2, not running yet
        other.publish("held.fast", b"")
        other.flush()
        wait_until(lambda: len(pool._runq) == 2, 5, "block2 and fast queued")
        cond.holding = False
        cond.go.set()
        assert blocked.acquire(timeout=5)  # worker 2 stuck in block2
        assert fast.wait(2), "a queued callback waited for two blocked ones: no worker came"
    finally:
        cond.go.set()
        release.set()


@pytest.mark.timeout(30)
def test_a_delivery_thread_that_cannot_start_costs_no_link_and_no_slot(
    bus: ts.MessageBus, other: ts.MessageBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process can start no thread for a while ("can't start new thread"): the reader goes
    on (the link is not lost), and once threads start again the queued messages are delivered
    by a full set of workers (no dead entry counted against ``CORE``)."""
    got: List[bytes] = []
    all_in = threading.Event()
    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if "-deliver-" in self.name or "-watchdog" in self.name:
            raise RuntimeError("can't start new thread")
        real_start(self)

    def cb(msg: ts.Message) -> None:
        got.append(msg.payload)
        if len(got) == 2:
            all_in.set()

    bus.subscribe("nothread", cb)
    bus.subscribe("nothread.other", cb)
    bus.flush()
    monkeypatch.setattr(threading.Thread, "start", refuse)
    other.publish("nothread", b"1")
    other.flush()
    bus.flush()  # the reader has handled the message (and tried to start a worker) by the PONG
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert bus.status is ts.State.CONNECTED
    assert delivery_threads(bus) == []
    other.publish("nothread.other", b"2")  # the next scheduling starts workers that can run
    other.flush()
    assert all_in.wait(10), f"delivered {got}"
    assert sorted(got) == [b"1", b"2"]
    assert bus.stats.reconnects == 0
