"""JetStream consume(), messages(), ordered consumers and history: heartbeats, status
messages, reconnects and server restarts (kill -9, same store dir) on real servers."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator, List, Set, Tuple

import pytest

import telestion_sync as ts
from telestion_sync.jetstream.consumer import DEFAULT_WINDOW_BYTES
from telestion_sync.jetstream.ordered import ORDERED_MAX_MESSAGES
from telestion_sync.server import NatsServer

from .conftest import ErrorLog, fast_bus, join_all, wait_until
from .proxy import TCPProxy


@pytest.fixture
def jsbus(fresh_js_server: NatsServer) -> Iterator[ts.MessageBus]:
    b = fast_bus(fresh_js_server.url)
    yield b
    b.close()


@pytest.fixture
def js(jsbus: ts.MessageBus) -> ts.JetStream:
    js = jsbus.jetstream()
    js.create_stream("T", subjects=["t.>"])
    return js


def _publish(js: ts.JetStream, n: int, subject: str = "t.a", start: int = 0) -> None:
    for i in range(start, start + n):
        js.publish_async(subject, {"i": i})
    js.publish_async_complete(20)


class Collector:
    """Collects stream sequences from a callback; wait() until a count is reached."""

    def __init__(self, ack: bool = True) -> None:
        self.seqs: List[int] = []
        self.cond = threading.Condition()
        self.ack = ack

    def __call__(self, msg: ts.JetStreamMessage) -> None:
        if self.ack:
            msg.ack()
        with self.cond:
            self.seqs.append(msg.metadata.sequence.stream)
            self.cond.notify_all()

    def wait_unique(self, n: int, timeout: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(set(self.seqs)) >= n, timeout)
        assert ok, f"only {len(set(self.seqs))} of {n} distinct messages within {timeout} s"


# --- consume ----------------------------------------------------------------------------------


def test_consume_all_with_small_batches(js: ts.JetStream) -> None:
    _publish(js, 1000)
    c = js.create_consumer("T", durable="c")
    got = Collector()
    cc = c.consume(got, max_messages=10)  # re-pulls at half: many pull requests
    got.wait_unique(1000, 20)
    cc.stop()
    assert cc.join(5)
    assert got.seqs == list(range(1, 1001))  # in order, once each
    wait_until(lambda: c.info().num_ack_pending == 0, 5, "acks processed")


def test_consume_keeps_going_for_new_messages_and_stop_ends_it(js: ts.JetStream) -> None:
    c = js.create_consumer("T", durable="c")
    got = Collector()
    with c.consume(got, expires=2, heartbeat=0.5) as cc:
        for i in range(5):
            js.publish("t.a", {"i": i})
            got.wait_unique(i + 1, 5)
        time.sleep(2.5)  # past one expiry: the 408 is read and the pull renewed
        js.publish("t.a", {"i": 5})
        got.wait_unique(6, 5)
    assert cc.join(5) and cc.error is None
    js.publish("t.a", {"i": 6})
    assert c.fetch(5, 1)[0].data == {"i": 6}  # nothing consumed it after stop


def test_consume_callback_error_reported_and_consume_goes_on(js: ts.JetStream) -> None:
    _publish(js, 3)
    errors = ErrorLog()
    seen: List[int] = []

    def cb(msg: ts.JetStreamMessage) -> None:
        msg.ack()
        seen.append(msg.data["i"])
        if msg.data["i"] == 1:
            raise RuntimeError("boom")

    cc = js.create_consumer("T").consume(cb, error_handler=errors)
    err = errors.wait(ts.Error, 5)
    assert "boom" in str(err)
    wait_until(lambda: len(seen) == 3, 5)
    cc.stop()


def test_consume_drain_delivers_what_arrived(js: ts.JetStream) -> None:
    _publish(js, 200)
    c = js.create_consumer("T", durable="d")
    got = Collector()
    gate = threading.Event()

    def slow(msg: ts.JetStreamMessage) -> None:
        gate.wait(5)
        got(msg)

    cc = c.consume(slow, max_messages=50)
    wait_until(lambda: c.info().num_ack_pending >= 50, 5, "first batch delivered")
    threading.Timer(0.2, gate.set).start()
    cc.drain(timeout=10)
    assert cc.closed.is_set()
    assert len(got.seqs) >= 50 and got.seqs == list(range(1, len(got.seqs) + 1))


def test_consume_ends_when_consumer_deleted(js: ts.JetStream, jsbus: ts.MessageBus) -> None:
    c = js.create_consumer("T", durable="del")
    errors = ErrorLog()
    cc = c.consume(lambda m: m.ack(), error_handler=errors, expires=2, heartbeat=0.5)
    wait_until(lambda: c.info().num_waiting >= 1, 5, "the pull request at the server")
    js.delete_consumer("T", "del")
    assert cc.join(5)
    assert isinstance(cc.error, ts.ConsumerDeletedError)
    errors.wait(ts.ConsumerDeletedError, 1)
    assert jsbus.subscriptions == []  # its pull inbox is gone with it


def test_consume_missing_consumer_reported_and_retried(js: ts.JetStream) -> None:
    """A consumer that does not exist (yet): 503s are reported and the pull retried with a
    growing wait; once it exists, messages flow."""
    c = js.create_consumer("T", durable="later")
    js.delete_consumer("T", "later")
    errors = ErrorLog()
    got = Collector()
    cc = c.consume(got, error_handler=errors)
    errors.wait(ts.ConsumerNotFoundError, 5)
    js.create_consumer("T", durable="later")
    js.publish("t.a", {"i": 0})
    got.wait_unique(1, 10)
    cc.stop()


def test_consume_bus_close_ends_it_and_no_thread_outlives(fresh_js_server: NatsServer) -> None:
    b = fast_bus(fresh_js_server.url)
    js = b.jetstream()
    js.create_stream("T", subjects=["t.>"])
    c = js.create_consumer("T")
    cc = c.consume(lambda m: None)
    it = c.messages()
    b.close()
    assert cc.join(5)
    assert list(it) == []
    assert b.threads == []
    alive = [t.name for t in threading.enumerate() if t.name.startswith("telestion_sync-js")]
    assert alive == []


# --- messages() -------------------------------------------------------------------------------


def test_messages_iterator_and_stop(js: ts.JetStream) -> None:
    _publish(js, 20)
    c = js.create_consumer("T", durable="it")
    it = c.messages(max_messages=7)
    seen = []
    for msg in it:
        msg.ack()
        seen.append(msg.data["i"])
        if len(seen) == 20:
            it.stop()
    assert seen == list(range(20))
    with pytest.raises(ts.SubscriptionClosedError):
        it.next(1)


def test_messages_next_timeout_and_threads(js: ts.JetStream) -> None:
    c = js.create_consumer("T", durable="itn")
    with c.messages() as it:
        start = time.monotonic()
        with pytest.raises(ts.TimeoutError):
            it.next(timeout=0.4)
        assert time.monotonic() - start < 1.5
        _publish(js, 300)
        seen: List[int] = []
        lock = threading.Lock()

        def reader() -> None:
            while True:
                try:
                    m = it.next(timeout=1)
                except ts.TimeoutError:
                    return
                m.ack()
                with lock:
                    seen.append(m.metadata.sequence.stream)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(seen) == list(range(1, 301))


def test_missed_heartbeats_are_reported_and_the_pull_renewed(fresh_js_server: NatsServer) -> None:
    """A link that silently stalls (no heartbeats, no disconnect noticed): after twice the
    heartbeat interval the error handler hears of it and, once traffic flows, messages come."""
    proxy = TCPProxy(fresh_js_server.host, fresh_js_server.port)
    try:
        with ts.connect(proxy.url, ping_interval=60, on_error=lambda e: None) as b:
            js = b.jetstream()
            js.create_stream("T", subjects=["t.>"])
            c = js.create_consumer("T", durable="hb")
            errors = ErrorLog()
            got = Collector()
            cc = c.consume(got, expires=2, heartbeat=0.3, error_handler=errors)
            js.publish("t.a", {"i": 0})
            got.wait_unique(1, 5)
            proxy.stall()
            errors.wait(ts.NoHeartbeatError, 5)
            proxy.resume()
            js.publish("t.a", {"i": 1}, timeout=5)
            got.wait_unique(2, 10)
            cc.stop()
    finally:
        proxy.close()


# --- restarts ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["consume", "messages"])
def test_server_restart_during_consume(fresh_js_server: NatsServer, mode: str) -> None:
    """kill -9 and restart on the same store dir while consuming: every message is processed
    (unacknowledged ones come back after ack_wait), none is skipped."""
    total = 3000
    b = fast_bus(fresh_js_server.url)
    try:
        js = b.jetstream()
        js.create_stream("T", subjects=["t.>"])
        _publish(js, total)
        c = js.create_consumer("T", durable="survivor", ack_wait=1.0)
        collect = Collector()
        reached, restarted = threading.Event(), threading.Event()

        def got(m: ts.JetStreamMessage) -> None:
            collect(m)
            if len(collect.seqs) == 500:  # hold processing here until the server is back
                reached.set()
                assert restarted.wait(30)

        stop = threading.Event()
        if mode == "consume":
            cc = c.consume(got, max_messages=100)
        else:
            it = c.messages(max_messages=100)

            def loop() -> None:
                for m in it:
                    got(m)
                    if stop.is_set():
                        return

            t = threading.Thread(target=loop)
            t.start()
        assert reached.wait(20)
        fresh_js_server.kill()
        fresh_js_server.restart()
        restarted.set()
        collect.wait_unique(total, 40)
        assert set(collect.seqs) == set(range(1, total + 1))
        assert b.stats.reconnects >= 1
        # Acks lost in the crash: those messages come back after ack_wait and are acked now.
        wait_until(lambda: c.info(timeout=2).num_ack_pending == 0, 20, "all acknowledged")
        stop.set()
        if mode == "consume":
            cc.stop()
        else:
            it.stop()
            t.join(5)
    finally:
        b.close()


@pytest.mark.timeout(60)
def test_server_restart_during_ordered_replay(fresh_js_server: NatsServer) -> None:
    total = 5000
    b = fast_bus(fresh_js_server.url)
    try:
        js = b.jetstream()
        js.create_stream("T", subjects=["t.>"])
        _publish(js, total)
        oc = js.ordered_consumer("T")
        seqs: List[int] = []
        restarted = threading.Event()
        for m in oc.messages(max_messages=200):
            seqs.append(m.metadata.sequence.stream)
            if len(seqs) == 1000 and not restarted.is_set():
                fresh_js_server.kill()
                fresh_js_server.restart()
                restarted.set()
            if len(seqs) == total:
                break
        assert seqs == list(range(1, total + 1))  # in order, none twice, none skipped
        assert oc.resets >= 1 and b.stats.reconnects >= 1
        oc.close()
    finally:
        b.close()


# --- ordered consumers ------------------------------------------------------------------------


def test_ordered_fetch_next_consume(js: ts.JetStream) -> None:
    _publish(js, 50, "t.a")
    _publish(js, 50, "t.b", start=50)
    oc = js.ordered_consumer("T", filter_subjects=["t.b"])
    first = oc.fetch(10, 2)
    assert [m.data["i"] for m in first] == list(range(50, 60))
    assert oc.next(2).data["i"] == 60
    got: List[int] = []
    done = threading.Event()

    def cb(m: ts.JetStreamMessage) -> None:
        got.append(m.data["i"])
        if m.data["i"] == 99:
            done.set()

    cc = oc.consume(cb)
    assert done.wait(10)
    with pytest.raises(ts.InvalidArgumentError):
        oc.messages()  # one at a time
    cc.stop()
    cc.join(5)
    assert got == list(range(61, 100))
    with pytest.raises(ts.TimeoutError):
        oc.next(0.3)
    oc.close()


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"deliver_policy": "last"}, [9]),
        ({"opt_start_seq": 8}, [7, 8, 9]),
        ({"deliver_policy": "new"}, []),
    ],
)
def test_ordered_start_options(js: ts.JetStream, kwargs: dict, expected: List[int]) -> None:
    _publish(js, 10)
    oc = js.ordered_consumer("T", **kwargs)
    assert [m.data["i"] for m in oc.fetch(20, 0.5)] == expected
    oc.close()


def test_ordered_resets_when_its_consumer_is_deleted(js: ts.JetStream) -> None:
    _publish(js, 2000)
    oc = js.ordered_consumer("T")
    seqs: List[int] = []
    deleted: Set[str] = set()
    it = oc.messages(max_messages=100, expires=2, heartbeat=0.5)
    for m in it:
        seqs.append(m.metadata.sequence.stream)
        if len(seqs) in (300, 1200) and oc.name not in deleted:
            deleted.add(oc.name)
            js.delete_consumer("T", oc.name)
        if len(seqs) == 2000:
            break
    it.stop()
    assert seqs == list(range(1, 2001))
    assert oc.resets >= 2
    # fetch() after a deletion resets as well.
    js.delete_consumer("T", oc.name)
    _publish(js, 5, start=2000)
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        got.extend(m.metadata.sequence.stream for m in oc.fetch(5, 1))
    assert got == [2001, 2002, 2003, 2004, 2005]
    oc.close()


def test_ordered_consumer_resets_after_reconnect(fresh_js_server: NatsServer) -> None:
    proxy = TCPProxy(fresh_js_server.host, fresh_js_server.port)
    try:
        with ts.connect(proxy.url, reconnect_time_wait=0.1, on_error=lambda e: None) as b:
            js = b.jetstream()
            js.create_stream("T", subjects=["t.>"])
            _publish(js, 500)
            oc = js.ordered_consumer("T")
            seqs = []
            for m in oc.messages(max_messages=50):
                seqs.append(m.metadata.sequence.stream)
                if len(seqs) == 100:
                    proxy.cut()
                if len(seqs) == 500:
                    break
            assert seqs == list(range(1, 501))
            assert oc.resets >= 1
            oc.close()
    finally:
        proxy.close()


def test_history(js: ts.JetStream) -> None:
    js.publish("t.temp", {"c": 1})
    js.publish("t.other", {"c": 0})
    js.publish("t.temp", {"c": 2})
    t_mid = js.get_msg("T", 3).time
    assert t_mid is not None
    js.publish("t.temp", {"c": 3})
    t_last = js.get_msg("T", 4).time
    assert t_last is not None
    assert [m.data["c"] for m in js.history("t.temp")] == [1, 2, 3]
    assert [m.data["c"] for m in js.history("t.temp", start=t_mid)] == [2, 3]
    assert [m.data["c"] for m in js.history("t.temp", end=t_mid)] == [1, 2]
    assert [m.data["c"] for m in js.history("t.temp", start=timedelta(hours=1), stream="T")] == [1, 2, 3]
    assert js.history("t.temp", start=t_last + timedelta(seconds=1)) == []
    assert js.history("t.none") == []
    assert [m.subject for m in js.history("t.*")] == ["t.temp", "t.other", "t.temp", "t.temp"]
    with pytest.raises(ts.StreamNotFoundError):
        js.history("unstored.subject")
    with pytest.raises(ts.InvalidArgumentError, match="start"):
        js.history("t.temp", start=datetime(2020, 1, 1))
    assert all(m.metadata.timestamp.tzinfo is timezone.utc for m in js.history("t.temp"))


def test_consume_stop_while_waiting_ends_its_thread_quietly(js: ts.JetStream) -> None:
    """stop() while the consume thread waits for a message: the thread ends without an
    unhandled SubscriptionClosedError."""
    seen: List[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)  # type: ignore[assignment,misc]
    try:
        for _ in range(5):
            c = js.create_consumer("T")
            cc = c.consume(lambda m: None)
            wait_until(lambda c=c: c.info().num_waiting >= 1, 5, "the pull request at the server")
            cc.stop()
            assert cc.join(5)
    finally:
        threading.excepthook = old_hook
    assert seen == []


def test_a_window_of_large_messages_is_never_dropped_as_a_slow_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """80 messages of 1 MiB (more than a subscription's default 64 MiB of pending bytes) all
    arrive before the reader takes the second: none is dropped, no reset, every one in order
    (the pull window, not the subscription's pending limits, bounds what is buffered). The
    byte window and the server's own limit for a client's backlog are raised: at 64 MiB the
    server cuts off any client (nats-py too) that pulls this much at once, which is why the
    window defaults to 32 MiB (tested below)."""
    monkeypatch.setattr(ts.jetstream.consumer, "DEFAULT_WINDOW_BYTES", 256 * 1024 * 1024)
    errors = ErrorLog()
    with NatsServer(jetstream=True, config="max_pending: 268435456") as server:
        bus = ts.connect(server.url, on_error=errors)
        try:
            js = bus.jetstream(timeout=10)
            js.create_stream("BIG", subjects=["big.>"], storage="memory")
            blob = bytes(1024 * 1024 - 200)
            for i in range(80):
                js.publish_async("big.x", blob, headers={"i": str(i)})
            js.publish_async_complete(30)
            before = bus.stats.in_bytes
            oc = js.ordered_consumer("BIG")
            it = oc.messages(max_messages=100)
            got = [int(next(it).headers["i"])]
            wait_until(lambda: bus.stats.in_bytes - before >= 80 * len(blob), 20, "all 80 MiB to arrive")
            got += [int(it.next(timeout=5).headers["i"]) for _ in range(79)]
            assert got == list(range(80))
            assert oc.resets == 0
            assert not errors.of(ts.SlowConsumerError)
            it.stop()
            oc.close()
        finally:
            bus.close()


def test_messages_threads_racing_for_the_last_sorted_message(js: ts.JetStream) -> None:
    """Threads iterating one messages() iterator take sorted messages without the pump's
    lock: the thread inside the pump that saw one left must not fail (IndexError) when
    another took it first. The interleaving is forced: the pump thread's look at the
    sorted queue lets another thread take the message before it acts on what it saw."""
    _publish(js, 1)
    c = js.create_consumer("T")
    it = c.messages()
    main = threading.current_thread()
    stolen: List[ts.JetStreamMessage] = []

    def take() -> None:
        stolen.append(it.next(5))

    class Racing(collections.deque):  # type: ignore[type-arg]
        armed = True

        def __len__(self) -> int:
            n = collections.deque.__len__(self)
            if n and Racing.armed and threading.current_thread() is main:
                Racing.armed = False
                t = threading.Thread(target=take)
                t.start()
                join_all([t], 10, "the thread taking the last message")
            return n

    it._pump._ready = Racing()
    with pytest.raises(ts.TimeoutError):
        it.next(timeout=1)  # it lost the race for the only message: nothing else comes
    assert [m.data for m in stolen] == [{"i": 0}]
    it.stop()
    with pytest.raises(ts.SubscriptionClosedError):
        it.next(1)


# --- the window in bytes: large messages under the server's default max_pending ----------------

BIG = 1024 * 1024 - 200  # payload of a "1 MiB" message (with its headers and subject within 1 MiB)


class PullWatch:
    """The ``batch`` of every pull request to a stream's consumers, seen by a subscriber on
    ``$JS.API.CONSUMER.MSG.NEXT.<stream>.>`` on another connection."""

    def __init__(self, bus: ts.MessageBus, stream: str) -> None:
        self.batches: List[int] = []
        bus.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>", self._seen)
        bus.flush(5)

    def _seen(self, m: ts.Message) -> None:
        self.batches.append(json.loads(m.payload)["batch"])


@contextlib.contextmanager
def _big_stream() -> Iterator[Tuple[NatsServer, TCPProxy, ts.MessageBus, ts.MessageBus, ErrorLog, PullWatch]]:
    """A server with its default max_pending (64 MiB) and a stream of 80 messages of 1 MiB;
    ``bus`` reads through a proxy that can stall it, ``direct`` publishes and watches."""
    errors = ErrorLog()
    with NatsServer(jetstream=True) as server:
        proxy = TCPProxy(server.host, server.port)
        direct = ts.connect(server.url, name="direct")
        bus = ts.connect(proxy.url, name="reader", on_error=errors)
        try:
            djs = direct.jetstream(timeout=10)
            djs.create_stream("BIG", subjects=["big.>"], storage="memory")
            blob = bytes(BIG)
            for i in range(80):
                djs.publish_async("big.x", blob, headers={"i": str(i)})
            djs.publish_async_complete(30)
            yield server, proxy, direct, bus, errors, PullWatch(direct, "BIG")
        finally:
            bus.close()
            direct.close()
            proxy.close()


def _let_the_window_pile_up(
    server: NatsServer, direct: ts.MessageBus, consumer: str, watch: PullWatch
) -> None:
    """With nothing reaching the client (the proxy stalled toward it): wait until the server
    has sent everything the client asked for (the consumer's delivered count reaches the sum
    of the pull requests, at most the 80 stored), or has cut the client off for it."""
    djs = direct.jetstream()
    wait_until(lambda: bool(watch.batches), 10, "a pull request")

    def sent() -> bool:
        if "Slow Consumer" in server.read_log():
            return True
        delivered = djs.consumer_info("BIG", consumer, timeout=5).delivered.consumer_seq
        return delivered >= min(80, sum(watch.batches))

    wait_until(sent, 20, "the server to send what was requested")


@pytest.mark.timeout(120)
def test_ordered_messages_of_large_messages_stay_within_the_servers_max_pending() -> None:
    """80 messages of 1 MiB through an ordered consumer's messages() (default window 4000
    messages) with the server's default max_pending of 64 MiB, and a client that reads
    nothing until the server has sent all it asked for: the byte window (32 MiB) keeps the
    backlog under the limit. No slow consumer cut, no reconnect, no reset, all 80 in order."""
    with _big_stream() as (server, proxy, direct, bus, errors, watch):
        js = bus.jetstream(timeout=10)
        oc = js.ordered_consumer("BIG")
        it = oc.messages()
        proxy.stall("down")  # what the pump asks for piles up at the server
        first: List[ts.JetStreamMessage] = []
        t = threading.Thread(target=lambda: first.append(it.next(timeout=60)))
        t.start()
        _let_the_window_pile_up(server, direct, oc.name, watch)
        proxy.resume()
        join_all([t], 60, "the reader of the first message")
        got = [int(first[0].headers["i"])]
        got += [int(it.next(timeout=10).headers["i"]) for _ in range(79)]
        assert got == list(range(80))
        assert "Slow Consumer" not in server.read_log()
        assert bus.stats.reconnects == 0
        assert not errors.of(ts.SlowConsumerError)
        assert oc.resets == 0
        assert watch.batches[0] == DEFAULT_WINDOW_BYTES // bus.max_payload == 32
        assert max(watch.batches) <= 32
        it.stop()
        oc.close()


@pytest.mark.timeout(120)
def test_consume_of_large_messages_stays_within_the_servers_max_pending() -> None:
    """The same for consume() on a durable consumer (default window 500), acknowledging each:
    all 80 once, in order, all acknowledged, no slow consumer cut, no reconnect."""
    with _big_stream() as (server, proxy, direct, bus, errors, watch):
        js = bus.jetstream(timeout=10)
        c = js.create_consumer("BIG", durable="big")
        got = Collector()
        proxy.stall("down")
        cc = c.consume(got, error_handler=errors)
        _let_the_window_pile_up(server, direct, "big", watch)
        proxy.resume()
        got.wait_unique(80, 60)
        cc.stop()
        assert cc.join(5)
        assert got.seqs == list(range(1, 81))
        assert "Slow Consumer" not in server.read_log()
        assert bus.stats.reconnects == 0
        assert not errors.errors
        assert watch.batches[0] == 32 and max(watch.batches) <= 32
        wait_until(lambda: c.info().num_ack_pending == 0, 10, "all acknowledged")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["consumer", "ordered"])
def test_small_messages_get_the_full_window_from_the_second_pull(
    fresh_js_server: NatsServer, jsbus: ts.MessageBus, js: ts.JetStream, kind: str
) -> None:
    """5000 messages of 16 B through messages(): the first pull asks for what 32 MiB holds at
    the largest possible size (32), the second, once those arrived, for the full window."""
    with ts.connect(fresh_js_server.url, name="watcher") as other:
        watch = PullWatch(other, "T")
        if kind == "consumer":
            puller: ts.Consumer | ts.OrderedConsumer = js.create_consumer("T", durable="small")
            window = 500
        else:
            puller = js.ordered_consumer("T")
            window = ORDERED_MAX_MESSAGES
        it = puller.messages()
        with pytest.raises(ts.TimeoutError):
            it.next(timeout=0.2)  # the stream is empty: the first pull request waits at the server
        wait_until(lambda: len(watch.batches) == 1, 5, "the first pull request")
        first = watch.batches[0]
        assert first == DEFAULT_WINDOW_BYTES // jsbus.max_payload == 32
        before = jsbus.stats.in_msgs
        ojs = other.jetstream()
        for i in range(5000):
            ojs.publish_async("t.a", b"%016d" % i)
        ojs.publish_async_complete(20)
        # All of the first pull's messages arrived before the pump sorts any: it sees them in
        # one batch, so its next pull is exactly the full window.
        wait_until(lambda: jsbus.stats.in_msgs - before >= first, 10, "the first pull's messages")
        seen = []
        for _ in range(5000):
            m = it.next(timeout=10)
            if kind == "consumer":
                m.ack()
            seen.append(int(m.payload))
        assert seen == list(range(5000))
        wait_until(lambda: len(watch.batches) >= 2, 5, "the second pull request")
        assert watch.batches[1] == window
        assert max(watch.batches) == window
        it.stop()


def test_ordered_messages_stopped_then_fetch_loses_nothing(js: ts.JetStream) -> None:
    """Stopping an ordered consumer's messages() drops what was sorted but not handed out and
    leaves its pull requests with the server: the next fetch starts over from the last
    message handed out, so none is lost or repeated."""
    _publish(js, 100)
    oc = js.ordered_consumer("T")
    it = oc.messages()
    first = [it.next(timeout=5).data["i"] for _ in range(10)]
    it.stop()
    rest: List[int] = []
    deadline = time.monotonic() + 20
    while len(rest) < 90 and time.monotonic() < deadline:
        rest += [m.data["i"] for m in oc.fetch(100, timeout=2)]
    assert first + rest == list(range(100))
    it2 = oc.messages()  # and a new iterator after a stopped one, with nothing left: none
    with pytest.raises(ts.TimeoutError):
        it2.next(timeout=1)
    it2.stop()
    oc.close()
