"""Regression tests for the core's hardening (issue 9): lost wake-ups, timeouts that hold on a
stalled link, drain during an outage, nothing handed out after unsubscribe, iteration ending on
close, a reader that never writes, bugs in the I/O loops, bounded error reporting and a publish
subject cache that cannot be poisoned. Each failed against the code before the fix."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, List, Optional

import pytest

import telestion_sync as ts
from telestion_sync.client import MessageBus, SubjectCache
from telestion_sync.connection import WRITE_HIGH_WATER, Connection
from telestion_sync.server import NatsServer
from telestion_sync.status import MAX_QUEUED_ERRORS

from .conftest import ErrorLog, join_all, wait_until
from .proxy import TCPProxy

FAST = dict(reconnect_time_wait=0.05, reconnect_jitter=0.01, max_reconnect_attempts=-1)
#: What "returns within its timeout" allows on top of the timeout (scheduling on a loaded CI
#: machine); the bugs these tests catch took 5 s to minutes.
MARGIN = 1.0


@pytest.fixture
def proxied(server: NatsServer) -> Any:
    """A proxy in front of ``server`` (for stalls in one or both directions)."""
    proxy = TCPProxy(server.host, server.port)
    yield proxy
    proxy.close()


# --- 1. several threads pulling from one subscription --------------------------------------


def test_a_timed_out_puller_does_not_hide_the_others_from_wake_ups(bus: ts.MessageBus, other: Any) -> None:
    sub = bus.subscribe("work")
    bus.flush()
    short_done = threading.Event()
    got: List[ts.Message] = []
    arrived = threading.Event()

    def short() -> None:
        with pytest.raises(ts.TimeoutError):
            sub.next_msg(timeout=0.2)
        short_done.set()

    def long() -> None:
        got.append(sub.next_msg(timeout=10))
        arrived.set()

    threads = [threading.Thread(target=short), threading.Thread(target=long)]
    for t in threads:
        t.start()
    assert short_done.wait(5)
    other.publish("work", b"job")
    other.flush()
    # Before the fix the long waiter slept its full 10 s with the message queued.
    assert arrived.wait(3), "a message sat queued while a thread waited for it"
    assert got[0].payload == b"job"
    join_all(threads)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round_", range(3))
def test_worker_pool_on_one_pull_subscription_gets_every_message(
    bus: ts.MessageBus, other: Any, round_: int
) -> None:
    """N threads with mixed timeouts on one subscription: every message goes to exactly one."""
    sub = bus.subscribe("jobs")
    bus.flush()
    total = 2000
    got: List[bytes] = []
    lock = threading.Lock()
    done = threading.Event()
    stop = threading.Event()

    def worker(timeout: float) -> None:
        while not stop.is_set():
            try:
                msg = sub.next_msg(timeout=timeout)
            except ts.TimeoutError:
                continue
            except ts.SubscriptionClosedError:
                return
            with lock:
                got.append(msg.payload)
                if len(got) == total:
                    done.set()

    threads = [threading.Thread(target=worker, args=(t,)) for t in (0.001, 0.01, 0.05, 5.0, 30.0, None)]
    for t in threads:
        t.start()
    for i in range(total):
        other.publish("jobs", b"%d" % i)
        if i % 100 == 0:
            time.sleep(0.001)  # let the pullers time out and come back in between
    other.flush()
    assert done.wait(20), f"{len(got)} of {total} messages handed out"
    stop.set()
    sub.unsubscribe()  # wakes the threads waiting without a timeout
    join_all(threads)
    assert sorted(got, key=int) == [b"%d" % i for i in range(total)]


# --- 2. timeouts hold while a large publish is stuck on a stalled link -----------------------


def _stuck_big_publish(bus: ts.MessageBus, proxy: TCPProxy) -> threading.Thread:
    """Stall the link upstream and start publishing 32 MiB: past 4 MiB (the high-water mark)
    the publisher sends itself, and that send gets stuck."""
    proxy.stall("up")

    def publish_all() -> None:
        try:
            for _ in range(32):
                bus.publish("big", b"x" * (1 << 20))
        except (ts.ConnectionClosedError, ts.OutboundBufferFullError):
            pass  # the test ended the bus (or the link) under the stuck publish: expected

    t = threading.Thread(target=publish_all, daemon=True)
    t.start()
    wait_until(lambda: bus.stats.out_bytes >= WRITE_HIGH_WATER, what="the publisher to send itself")
    return t


@pytest.mark.parametrize("call", ["request", "flush", "respond"])
def test_blocking_calls_keep_their_timeout_behind_a_stuck_send(
    proxied: TCPProxy, server: NatsServer, call: str
) -> None:
    bus = ts.connect(proxied.url, ping_interval=60, write_timeout=30, allow_reconnect=False)
    try:
        with ts.connect(server.url) as helper:
            helper.publish("need.answer", b"?", reply="reply.here")  # a message to respond() to
            sub = bus.subscribe("need.answer")
            bus.flush()
            helper.publish("need.answer", b"?", reply="reply.here")
            msg = sub.next_msg(5)
        publisher = _stuck_big_publish(bus, proxied)
        start = time.monotonic()
        if call == "request":
            with pytest.raises(ts.TimeoutError):
                bus.request("svc", b"", timeout=0.5)
        elif call == "flush":
            with pytest.raises(ts.TimeoutError):
                bus.flush(timeout=0.5)
        else:
            msg.respond(b"answer")  # no timeout of its own: it must not wait for the send
        took = time.monotonic() - start
        assert took < 0.5 + MARGIN, f"{call} took {took:.1f} s behind a stuck send"
    finally:
        proxied.resume()
        bus.close()
    publisher.join(10)


def test_a_stuck_write_has_a_deadline_of_its_own(proxied: TCPProxy, server: NatsServer) -> None:
    lost = threading.Event()
    bus = ts.connect(
        [proxied.url, server.url],
        randomize=False,
        ping_interval=120,  # pings would take minutes to notice
        write_timeout=0.5,
        on_disconnect=lost.set,
        **FAST,
    )
    try:
        _stuck_big_publish(bus, proxied)
        assert lost.wait(0.5 * 2 + 3 * MARGIN), "a send stuck on a stalled link was never given up"
        assert bus.wait_connected(5) and bus.connected_url == server.url
    finally:
        proxied.resume()
        bus.close()


# --- 3. drain during an outage ----------------------------------------------------------------


def test_drain_during_an_outage_does_not_resubscribe(proxied: TCPProxy, server: NatsServer) -> None:
    lost = threading.Event()
    reconnected = threading.Event()
    a = ts.connect(
        proxied.url, connect_timeout=0.3, on_disconnect=lost.set, on_reconnect=reconnected.set, **FAST
    )
    b = ts.connect(server.url)
    try:
        got_a: List[bytes] = []
        got_b: List[bytes] = []
        sub_a = a.subscribe("q.work", lambda m: got_a.append(m.payload), queue="g")
        b.subscribe("q.work", lambda m: got_b.append(m.payload), queue="g")
        a.flush()
        b.flush()
        proxied.stall()  # new connections through the proxy hang in the handshake...
        proxied.cut()
        assert lost.wait(5)
        threading.Timer(0.5, proxied.resume).start()  # ...until the drain below waits for one
        sub_a.drain(timeout=10)  # its flush waits for the reconnect
        assert reconnected.is_set()
        a.flush()
        for i in range(100):
            b.publish("q.work", b"%d" % i)
        b.flush()
        wait_until(lambda: len(got_b) == 100, what="every message at the remaining member")
        assert got_a == []
        assert a.stats.unrouted_msgs == 0  # the server sent a nothing: it has no interest left
    finally:
        a.close()
        b.close()


def test_messages_for_an_unsubscribed_sid_are_counted(proxied: TCPProxy, server: NatsServer) -> None:
    bus = ts.connect(proxied.url)
    try:
        with ts.connect(server.url) as pub:
            sub = bus.subscribe("late")
            bus.flush()
            proxied.stall()  # the UNSUB waits in the proxy while the server still routes to us
            sub.unsubscribe()
            for _ in range(10):
                pub.publish("late", b"in flight")
            pub.flush()
            proxied.resume()
            bus.flush()
        assert bus.stats.unrouted_msgs == 10
    finally:
        bus.close()


# --- 4. nothing handed out after unsubscribe() returned -------------------------------------


@pytest.fixture
def preemptive() -> Any:
    """Switch threads as often as the interpreter can: races show up in a few hundred tries."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.timeout(60)
def test_no_callback_runs_after_unsubscribe_returned(bus: ts.MessageBus, other: Any, preemptive: Any) -> None:
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            for _ in range(50):
                other.publish("flood", b"m")
            time.sleep(0.0005)

    flooder = threading.Thread(target=flood)
    flooder.start()
    late = 0
    try:
        for _ in range(30):
            unsubscribed = threading.Event()
            late_here: List[int] = []

            def cb(
                msg: ts.Message,
                unsubscribed: threading.Event = unsubscribed,
                late_here: List[int] = late_here,
            ) -> None:
                time.sleep(0.0002)  # a callback that takes a moment
                if unsubscribed.is_set():  # any callback code running after unsubscribe()
                    late_here.append(1)

            subs = [bus.subscribe("flood", cb) for _ in range(10)]
            for s in subs:
                wait_until(lambda s=s: s.delivered > 0, what="every subscription delivering")
            for sub in subs:
                sub.unsubscribe()
            unsubscribed.set()
            assert all(sub.pending == 0 for sub in subs)
            late += len(late_here)
    finally:
        stop.set()
        join_all([flooder])
    assert late == 0, f"{late} callbacks ran after unsubscribe() returned"


def test_next_msg_after_unsubscribe_hands_out_nothing_queued(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("queued")
    for _ in range(5):
        bus.publish("queued", b"x")
    bus.flush()
    wait_until(lambda: sub.pending == 5, what="five messages queued")
    sub.unsubscribe()
    with pytest.raises(ts.SubscriptionClosedError):
        sub.next_msg(timeout=0)


def test_unsubscribe_from_inside_its_own_callback_returns(bus: ts.MessageBus) -> None:
    calls: List[bytes] = []
    done = threading.Event()

    def cb(msg: ts.Message) -> None:
        calls.append(msg.payload)
        sub.unsubscribe()
        done.set()

    sub = bus.subscribe("self", cb)
    for _ in range(5):
        bus.publish("self", b"x")
    bus.flush()
    assert done.wait(5)
    bus.flush()
    assert calls == [b"x"]


# --- 6. iteration ends when the bus closes ----------------------------------------------------


def test_iteration_ends_quietly_when_the_bus_closes(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    sub = bus.subscribe("it")
    outcome: List[Any] = []

    def consume() -> None:
        try:
            outcome.extend(m.payload for m in sub)
            outcome.append("ended")
        except BaseException as exc:  # noqa: BLE001 - the test reports what escaped
            outcome.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    bus.publish("it", b"one")
    bus.flush()
    wait_until(lambda: outcome == [b"one"], what="the first message")
    bus.close()
    join_all([t])
    assert outcome == [b"one", "ended"]
    with pytest.raises(ts.ConnectionClosedError):
        sub.next_msg(timeout=0)


def test_subscription_closed_is_not_a_dead_connection() -> None:
    assert not issubclass(ts.SubscriptionClosedError, ts.ConnectionClosedError)
    assert issubclass(ts.SubscriptionClosedError, ts.Error)


# --- 5. the reader never waits on the send side ------------------------------------------------


def test_delivery_goes_on_while_the_link_is_stalled_upstream() -> None:
    # The server pings every 0.3 s and waits for 20 unanswered pings (6 s) before it gives up.
    with NatsServer(config='ping_interval: "300ms"\nping_max: 20') as server:
        proxy = TCPProxy(server.host, server.port)
        bus = ts.connect(proxy.url, ping_interval=60, write_timeout=30, allow_reconnect=False)
        try:
            got: List[bytes] = []
            all_in = threading.Event()

            def cb(msg: ts.Message) -> None:
                got.append(msg.payload)
                if len(got) == 20:
                    all_in.set()

            bus.subscribe("down", cb)
            bus.flush()
            _stuck_big_publish(bus, proxy)
            with ts.connect(server.url) as pub:
                for i in range(20):  # over 1 s: the server's PINGs arrive in between
                    pub.publish("down", b"%d" % i)
                    pub.flush()
                    time.sleep(0.05)
            # Before the fix the reader blocked on a PONG behind the stuck send.
            assert all_in.wait(3), f"{len(got)} of 20 delivered while the link was stalled upstream"
        finally:
            proxy.resume()
            bus.close()
            proxy.close()


# --- 7. properties are safe to read from any thread --------------------------------------------


@pytest.mark.timeout(60)
def test_properties_while_other_threads_subscribe_and_unsubscribe(bus: ts.MessageBus) -> None:
    stop = threading.Event()
    failures: List[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                subs = [bus.subscribe(f"churn.{i}", lambda m: None) for i in range(20)]
                for s in subs:
                    s.unsubscribe()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            assert isinstance(bus.threads, list)
            assert bus.stats.in_msgs >= 0
            assert isinstance(bus.subscriptions, list)
            repr(bus)
    finally:
        stop.set()
        join_all(threads)
    assert failures == []


# --- 8. bugs in the I/O loops and floods of errors ------------------------------------------


def test_a_bug_in_the_reader_loop_reconnects_instead_of_leaving_a_zombie(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = MessageBus._on_msg

    def buggy(self: MessageBus, event: Any) -> None:
        if event[1] == b"boom":
            raise RuntimeError("a bug in message handling")
        real(self, event)

    monkeypatch.setattr(MessageBus, "_on_msg", buggy)
    reconnected = threading.Event()
    bus = ts.connect(server.url, on_reconnect=reconnected.set, **FAST)
    try:
        sub = bus.subscribe(">")
        bus.flush()
        with caplog.at_level(logging.ERROR, logger="telestion_sync"):
            bus.publish("boom", b"")
            assert reconnected.wait(5), "the reader died and nobody noticed"
        assert any("reader" in r.message and r.exc_info for r in caplog.records)
        bus.publish("after", b"ok")
        assert sub.next_msg(5).subject in ("after", "boom")
    finally:
        bus.close()


def test_a_bug_in_the_writer_loop_reconnects(server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Connection._take
    armed = threading.Event()

    def buggy(self: Connection) -> bytearray:
        if armed.is_set() and threading.current_thread().name == "telestion_sync-writer":
            armed.clear()
            raise RuntimeError("a bug in the writer")
        return real(self)

    monkeypatch.setattr(Connection, "_take", buggy)
    reconnected = threading.Event()
    bus = ts.connect(server.url, on_reconnect=reconnected.set, **FAST)
    try:
        sub = bus.subscribe("w")
        bus.flush()
        armed.set()
        bus.publish("w", b"1")  # the writer sends it (publish does not send itself)
        assert reconnected.wait(5), "the writer died and nobody noticed"
        bus.publish("w", b"2")
        bus.flush()
        assert sub.next_msg(5).payload in (b"1", b"2")
    finally:
        bus.close()


def test_identical_errors_are_coalesced_and_counted(server: NatsServer) -> None:
    release = threading.Event()
    calls: List[BaseException] = []
    first = threading.Event()

    def handler(err: BaseException) -> None:
        calls.append(err)
        first.set()
        release.wait(10)

    bus = ts.connect(server.url, on_error=handler)
    try:
        sub = bus.subscribe("bad", codec="json", callback=lambda m: None)
        bus.flush()
        bus.publish("bad", b"not json")
        bus.flush()
        assert first.wait(5)  # the status thread is now stuck in the handler
        for _ in range(5000):
            bus.publish("bad", b"not json")
        bus.flush()
        wait_until(lambda: sub.delivered == 5001, what="every bad message decoded")
        assert bus.stats.errors == 5001
        release.set()
        wait_until(lambda: len(calls) == 2, what="the coalesced report")
        bus.flush()
        assert len(calls) == 2
        assert [getattr(e, "repeated", 1) for e in calls] == [1, 5000]
        assert all(isinstance(e, ts.DecodeError) for e in calls)
    finally:
        release.set()
        bus.close()


def test_distinct_errors_beyond_the_queue_bound_are_summarised(server: NatsServer) -> None:
    release = threading.Event()
    entered = threading.Event()
    calls: List[BaseException] = []

    def handler(err: BaseException) -> None:
        calls.append(err)
        entered.set()
        release.wait(10)

    bus = ts.connect(server.url, on_error=handler)
    try:
        bus._report_error(ts.Error("first"))
        assert entered.wait(5)  # the status thread is stuck in the handler from now on
        n = MAX_QUEUED_ERRORS + 500
        for i in range(n):
            bus._report_error(ts.Error(f"distinct {i}"))
        assert bus.stats.errors == n + 1
        release.set()
        wait_until(lambda: sum(getattr(e, "repeated", 1) for e in calls) == n + 1, what="all accounted for")
        summaries = [e for e in calls if "not reported one by one" in str(e)]
        assert len(summaries) == 1 and summaries[0].repeated == 500  # type: ignore[attr-defined]
        assert len(calls) == 1 + MAX_QUEUED_ERRORS + 1
    finally:
        release.set()
        bus.close()


# --- 9. answering requests does not slow publishing ----------------------------------------


def test_subject_cache_cannot_be_poisoned() -> None:
    cache = SubjectCache(size=100)
    cache.encode("hot")
    cache.encode("hot")  # admitted on its second use
    for i in range(10_000):
        cache.encode(f"unique.{i}")
        if i % 50 == 0:
            assert cache.get("hot") == b"hot"  # in steady use: stays
    assert len(cache) == 1  # one-off subjects never took a slot
    assert len(cache.seen) <= 100
    for i in range(300):  # subjects in steady use (more than fit) cycle through the generations
        cache.encode(f"steady.{i % 150}")
    assert len(cache) <= 200 and cache.get("hot") is not None


def test_replies_and_inboxes_never_take_a_cache_slot(bus: ts.MessageBus, other: Any) -> None:
    other.reply("svc.echo", lambda m: m.payload)
    other.flush()
    for i in range(300):
        bus.request("svc.echo", b"%d" % i, timeout=5)
    bus.publish("plain", b"")
    bus.publish("plain", b"")
    assert len(other._pub_subjects) == 0  # 300 replies: no reply subject cached
    assert len(bus._pub_subjects) == 2  # the request subject and "plain"


# --- public figures instead of private fields ---------------------------------------------


def test_pending_requests_in_stats(bus: ts.MessageBus, other: Any) -> None:
    got = threading.Event()
    release = threading.Event()

    def slow(msg: ts.Message) -> bytes:
        got.set()
        release.wait(5)
        return b"late"

    other.reply("slow", slow)
    other.flush()
    answer: List[Optional[ts.Message]] = []
    t = threading.Thread(target=lambda: answer.append(bus.request("slow", timeout=10)))
    t.start()
    assert got.wait(5)
    assert bus.stats.pending_requests == 1
    release.set()
    join_all([t])
    assert bus.stats.pending_requests == 0
    assert answer[0] is not None and answer[0].payload == b"late"


def test_slow_consumer_drops_are_in_stats(bus: ts.MessageBus, errors: ErrorLog) -> None:
    sub = bus.subscribe("drops", pending_msgs_limit=10)
    for _ in range(25):
        bus.publish("drops", b"x")
    bus.flush()
    wait_until(lambda: sub.pending + sub.dropped == 25, what="all 25 accounted for")
    assert bus.stats.dropped_msgs == 15 == sub.dropped
    sub.unsubscribe()
    assert bus.stats.dropped_msgs == 15  # kept after the subscription ended
    errors.wait(ts.SlowConsumerError)
