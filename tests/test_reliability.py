"""Fault tests against real servers: kill -9 and restart, cluster failover, stalled links,
lame duck mode, reconnect buffer limits, slow consumers, many threads during a restart."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Set

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsCluster, NatsServer

from .conftest import join_all, wait_until
from .proxy import TCPProxy

pytestmark = pytest.mark.timeout(60)

FAST = dict(reconnect_time_wait=0.05, reconnect_jitter=0.01, max_reconnect_attempts=-1)


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster(3) as c:
        yield c


class Numbers:
    """A callback that records numbered payloads and wakes waiters when a number arrives."""

    def __init__(self) -> None:
        self.got: List[int] = []
        self._cond = threading.Condition()

    def __call__(self, msg: ts.Message) -> None:
        with self._cond:
            self.got.append(int(msg.payload))
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: n in self.got, timeout), (
                f"{n} not received within {timeout} s; last {self.got[-5:]}"
            )


def assert_exact(got: List[int], required: Set[int], label: str) -> None:
    assert len(got) == len(set(got)), f"{label}: duplicates"
    assert got == sorted(got), f"{label}: reordered"
    missing = required - set(got)
    assert not missing, f"{label}: {len(missing)} missing, e.g. {sorted(missing)[:10]}"


def test_kill_and_restart_loses_nothing_that_was_buffered(server: NatsServer, errors: Any) -> None:
    """10,000 numbered messages at a steady pace; the server is killed -9 and restarted on the
    same port. Everything the server confirmed before the kill and everything published from
    the moment the client saw the outage arrives, once, in order, at a subscriber on the same
    bus and at one on a second bus (from its resubscription on). Only messages in flight when
    the server died (between the kill and the client noticing) may be missing."""
    reconnected = threading.Event()
    pub = ts.connect(server.url, on_error=errors, **FAST)
    other = ts.connect(server.url, on_reconnect=reconnected.set, **FAST)
    mine, theirs = Numbers(), Numbers()
    pub.subscribe("soak", mine)
    other.subscribe("soak", theirs)
    pub.flush()
    other.flush()
    first_buffered = None
    other_from = None
    restarted = False
    for i in range(10_000):
        if i == 3_000:
            pub.flush()  # 0..2999 reached both subscribers
            other.flush()
            server.kill()
        if not restarted and i >= 3_500 and first_buffered is not None:
            server.restart()  # once the client has seen the outage, however slow the machine
            restarted = True
        if first_buffered is None and pub.status is not ts.State.CONNECTED:
            first_buffered = i
        if other_from is None and reconnected.is_set():
            other.flush(timeout=10)  # its SUB is on the new server from here on
            other_from = i
        pub.publish("soak", str(i).encode())
        if i % 20 == 0:
            time.sleep(0.002)  # a steady pace, about 10k msg/s
    mine.wait_for(9_999)
    theirs.wait_for(9_999)
    assert first_buffered is not None and first_buffered >= 3_000
    assert other_from is not None
    assert_exact(mine.got, set(range(3_000)) | set(range(first_buffered, 10_000)), "same bus")
    assert_exact(theirs.got, set(range(3_000)) | set(range(other_from, 10_000)), "second bus")
    assert pub.stats.reconnects == 1
    pub.close()
    other.close()


def test_queue_groups_and_auto_unsubscribe_limits_survive_a_restart(server: NatsServer) -> None:
    """After a restart the client re-subscribes with its queue groups (the group still splits
    the work, nothing is delivered twice) and with what is left of auto-unsubscribe limits."""
    reconnected = threading.Event()
    bus = ts.connect(server.url, on_reconnect=reconnected.set, **FAST)
    try:
        workers = [bus.subscribe("jobs", queue="w") for _ in range(2)]
        limited = bus.subscribe("limited")
        limited.auto_unsubscribe(5)
        bus.publish("limited", b"1")
        bus.publish("limited", b"2")
        bus.flush()
        server.kill()
        server.restart()
        assert reconnected.wait(10)
        for i in range(200):
            bus.publish("jobs", b"%d" % i)
        for i in range(3, 10):
            bus.publish("limited", b"%d" % i)
        bus.flush()
        jobs = []
        for w in workers:
            while w.pending:
                jobs.append(int(w.next_msg(1).payload))
        assert sorted(jobs) == list(range(200)), "each job exactly once across the group"
        assert all(w.delivered > 0 for w in workers), "the group did not split the work"
        got = [int(limited.next_msg(1).payload) for _ in range(5)]
        assert got == [1, 2, 3, 4, 5]  # three more after the restart, then the limit
        with pytest.raises(ts.SubscriptionClosedError):
            limited.next_msg(0.5)
    finally:
        bus.close()


def test_reconnect_wait_strategy_paces_the_rounds(server: NatsServer) -> None:
    """``reconnect_wait=`` (any tenacity wait strategy or callable) is asked before each round,
    with the round number as the attempt number (for exponential backoff)."""
    rounds: List[int] = []

    def wait(state: Any) -> float:
        rounds.append(state.attempt_number)
        return 0.02

    bus = ts.connect(server.url, reconnect_wait=wait, max_reconnect_attempts=-1)
    try:
        server.kill()
        wait_until(lambda: len(rounds) >= 4, what="four reconnect rounds")
        server.restart()
        assert bus.wait_connected(10)
        assert rounds[:4] == [1, 2, 3, 4], rounds
    finally:
        bus.close()


def test_cluster_failover_with_one_url(cluster: NatsCluster) -> None:
    seen_servers: List[List[str]] = []
    reconnected = threading.Event()
    bus = ts.connect(
        cluster.urls[0],
        on_discovered_servers=seen_servers.append,
        on_reconnect=reconnected.set,
        **FAST,
    )
    helper = ts.connect(cluster.urls[1], **FAST)
    try:
        assert sorted(bus.discovered_servers) == sorted(cluster.urls[1:])
        got = Numbers()
        bus.subscribe("fo", got)
        helper.reply("fo.echo", lambda msg: msg.data)
        helper.flush()
        bus.flush()
        victim = cluster.node_for(bus.connected_url)
        if victim is cluster.nodes[1]:  # keep the responder's node alive
            helper.close()
            helper = ts.connect(cluster.urls[2], **FAST)
            helper.reply("fo.echo", lambda msg: msg.data)
            helper.flush()
        outcomes: List[Any] = []

        def requester() -> None:
            for i in range(200):
                try:
                    outcomes.append(bus.request("fo.echo", i, timeout=2).data)
                except (ts.TimeoutError, ts.NoRespondersError) as exc:
                    outcomes.append(exc)

        t = threading.Thread(target=requester)
        t.start()
        start = time.monotonic()
        victim.kill()
        assert reconnected.wait(2), "no failover within 2 s"
        failover = time.monotonic() - start
        t.join(30)
        assert not t.is_alive(), "a request hung"
        assert len(outcomes) == 200
        assert bus.connected_url != victim.url
        bus.flush()
        cluster.wait_routes()
        bus.publish("fo", b"1")
        got.wait_for(1, timeout=5)
        assert bus.request("fo.echo", "after", timeout=2).data == "after"
        assert failover < 2
        assert seen_servers
    finally:
        bus.close()
        helper.close()


def test_stalled_link_is_detected_and_replaced() -> None:
    with NatsServer() as srv:
        proxy = TCPProxy(srv.host, srv.port)
        disconnected = threading.Event()
        reconnected = threading.Event()
        try:
            bus = ts.connect(
                [proxy.url, srv.url],
                randomize=False,
                ping_interval=0.2,
                max_outstanding_pings=2,
                on_disconnect=disconnected.set,
                on_reconnect=reconnected.set,
                **FAST,
            )
            assert bus.connected_url == proxy.url
            sub = bus.subscribe("stall")
            bus.flush()
            proxy.stall()
            start = time.monotonic()
            assert disconnected.wait(5)
            detected = time.monotonic() - start
            assert reconnected.wait(5)
            assert bus.connected_url == srv.url
            # ping_interval * (max_outstanding_pings + 1), plus scheduling slack
            assert detected < 0.2 * 3 + 1.0  # (a dead socket would take minutes)
            bus.publish("stall", b"through the other route")
            assert sub.next_msg(5).payload == b"through the other route"
            bus.close()
        finally:
            proxy.close()


def test_discovered_servers_get_the_credentials_of_the_url() -> None:
    """Credentials given only in the URL are used for the servers the cluster announces too
    (nats.go does the same), so failover to a discovered node logs in."""
    with NatsCluster(3, config='authorization { user: "op", password: "p@ss" }') as cluster:
        first = cluster.nodes[0]
        reconnected = threading.Event()
        bus = ts.connect(
            f"nats://op:p%40ss@127.0.0.1:{first.port}", on_reconnect=reconnected.set, **FAST
        )
        try:
            wait_until(lambda: len(bus.discovered_servers) == 2, what="the other nodes announced")
            sub = bus.subscribe("creds")
            first.kill()
            assert reconnected.wait(10)
            assert bus.connected_url != first.url
            bus.publish("creds", b"logged in")
            assert sub.next_msg(5).payload == b"logged in"
        finally:
            bus.close()


def test_ignore_discovered_servers_keeps_the_pool_to_the_given_urls(cluster: NatsCluster) -> None:
    with ts.connect(cluster.urls[0], ignore_discovered_servers=True) as bus:
        bus.flush()
        assert bus.discovered_servers == []
        assert bus.servers == [cluster.urls[0]]


def test_lame_duck_mode_moves_the_client_without_losing_a_message(cluster: NatsCluster) -> None:
    """A publisher streams numbered messages while its server enters lame duck mode: the client
    moves to another node, and a subscriber on a third connection gets every message once
    (what was sent to the lame duck is processed there before the client leaves it)."""
    lame = threading.Event()
    reconnected = threading.Event()
    bus = ts.connect(cluster.urls, on_lame_duck=lame.set, on_reconnect=reconnected.set, **FAST)
    node = cluster.node_for(bus.connected_url)
    watcher_url = next(u for u in cluster.urls if u != node.url)
    watcher = ts.connect(watcher_url, ignore_discovered_servers=True, **FAST)
    try:
        got = Numbers()
        watcher.subscribe("ldm", got)
        own = bus.subscribe("ldm.own")
        watcher.flush()
        cluster.wait_routes()
        wait_until(lambda: bus.publish("ldm", b"-1") or -1 in got.got, what="interest on every node")
        published = [0]
        pad = b" " * 4000  # int() ignores it

        def stream() -> None:  # a fast steady stream that keeps going until after the move
            i = after = 0
            while after < 2000 and i < 1_000_000:
                bus.publish("ldm", b"%d" % i + pad)  # big enough to keep sends in flight
                i += 1
                after += reconnected.is_set()
                if i % 50 == 0:
                    time.sleep(0.0005)
            published[0] = i

        t = threading.Thread(target=stream)
        t.start()
        wait_until(lambda: bus.stats.out_msgs > 5_000, what="the stream under way")
        node.signal("ldm")
        assert lame.wait(10)
        assert reconnected.wait(10)
        t.join(30)
        assert not t.is_alive()
        n = published[0]
        assert bus.connected_url != node.url
        bus.flush()
        got.wait_for(n - 1)
        numbers = [x for x in got.got if x >= 0]
        assert len(numbers) == len(set(numbers)), "duplicates"
        missing = set(range(n)) - set(numbers)
        assert not missing, f"{len(missing)} lost in the move, e.g. {sorted(missing)[:10]}"
        bus.publish("ldm.own", b"moved")  # the bus's own subscription moved too
        assert own.next_msg(5).payload == b"moved"
    finally:
        bus.close()
        watcher.close()
        for node_ in cluster.nodes:  # a lame duck sits out SIGTERM for 30 s at least
            node_.kill()


def test_close_during_a_lame_duck_move_is_prompt_and_leaves_no_thread() -> None:
    """close() racing the hand-off from a lame-duck server: it returns promptly, the messages
    queued before the move still reach the old server, and no thread (old link, drain,
    reconnect, a link a concurrent reconnect just made) outlives it."""
    for _ in range(3):
        close_during_a_move()


def close_during_a_move() -> None:
    with NatsCluster(2) as cluster:
        lame, other = cluster.nodes
        told = threading.Event()
        bus = ts.connect([lame.url, other.url], randomize=False, on_lame_duck=told.set, **FAST)
        watcher = ts.connect(other.url, ignore_discovered_servers=True)
        try:
            got = Numbers()
            watcher.subscribe("cl", got)
            watcher.flush()
            wait_until(lambda: bus.publish("cl", b"-1") or -1 in got.got, what="interest")
            for i in range(2000):
                bus.publish("cl", b"%d" % i)
            lame.signal("ldm")
            assert told.wait(10)  # the hand-off is under way or just done
            started = time.monotonic()
            bus.close()
            assert time.monotonic() - started < 5
            wait_until(lambda: not bus.threads, timeout=5, what="every thread ended")
            got.wait_for(1999, timeout=10)  # queued before the move: sent to the lame duck
            assert sorted(x for x in got.got if x >= 0) == list(range(2000))
        finally:
            bus.close()
            watcher.close()
            for node in cluster.nodes:
                node.kill()


def test_reconnect_buffer_overflow_raises_and_keeps_what_fit(server: NatsServer) -> None:
    disconnected = threading.Event()
    bus = ts.connect(server.url, reconnect_buf_size=20_000, on_disconnect=disconnected.set, **FAST)
    sub = bus.subscribe("buf")
    bus.flush()
    server.kill()
    assert disconnected.wait(5)
    accepted = 0
    with pytest.raises(ts.OutboundBufferFullError, match="reconnect buffer"):
        for i in range(10_000):
            bus.publish("buf", b"%05d" % i)
            accepted += 1
    assert 100 < accepted < 10_000
    server.restart()
    assert bus.wait_connected(10)
    got = [int(sub.next_msg(5).payload) for _ in range(accepted)]
    assert got == list(range(accepted))
    with pytest.raises(ts.TimeoutError):
        sub.next_msg(0.2)
    bus.close()


def test_slow_consumer_drops_then_resumes(server: NatsServer, errors: Any) -> None:
    bus = ts.connect(server.url, on_error=errors)
    try:
        delivered: List[int] = []
        resumed = threading.Event()

        def slow(msg: ts.Message) -> None:
            time.sleep(0.01)  # a slow consumer: 10,000 messages overflow its 50 pending
            delivered.append(int(msg.payload))
            if msg.payload == b"99999":
                resumed.set()

        sub = bus.subscribe("flood", slow, pending_msgs_limit=50)
        healthy = bus.subscribe("healthy")
        bus.flush()
        for i in range(10_000):
            bus.publish("flood", str(i).encode())
        bus.flush()
        err = errors.wait(ts.SlowConsumerError)
        assert err.subject == "flood"  # type: ignore[attr-defined]
        assert sub.dropped > 9_000
        bus.publish("healthy", b"ok")
        assert healthy.next_msg(2).payload == b"ok"
        # once the queue has room again, delivery resumes
        wait_until(lambda: sub.pending == 0, timeout=20, what="the pending queue drained")
        assert sub.dropped + sub.delivered == 10_000  # every message delivered or counted
        bus.publish("flood", b"99999")
        assert resumed.wait(5)
        assert delivered == sorted(delivered)
        assert bus.is_connected
    finally:
        bus.close()


def test_many_threads_through_a_restart(server: NatsServer) -> None:
    bus = ts.connect(server.url, **FAST)
    responder = ts.connect(server.url, **FAST)
    responder.reply("mt.echo", lambda msg: msg.data)
    responder.flush()
    outcomes: Dict[str, int] = {}
    lock = threading.Lock()
    documented = (ts.TimeoutError, ts.NoRespondersError, ts.OutboundBufferFullError)

    def work(t: int) -> None:
        for i in range(1000):
            try:
                if i % 2:
                    bus.publish(f"mt.{t}", {"i": i})
                    kind = "published"
                else:
                    assert bus.request("mt.echo", [t, i], timeout=1).data == [t, i]
                    kind = "replied"
            except documented as exc:
                kind = type(exc).__name__
            with lock:
                outcomes[kind] = outcomes.get(kind, 0) + 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    wait_until(lambda: sum(outcomes.values()) >= 400, what="traffic before the kill")
    server.kill()
    time.sleep(0.3)  # the outage lasts this long (the threads keep calling through it)
    server.restart()
    join_all(threads, 45, what="a thread (deadlock?)")
    assert sum(outcomes.values()) == 8000, outcomes
    assert outcomes.get("published", 0) == 4000
    assert outcomes.get("replied", 0) > 0
    bus.close()
    responder.close()


def test_max_reconnect_attempts_closes_and_fails_blocked_calls(server: NatsServer) -> None:
    closed = threading.Event()
    bus = ts.connect(
        server.url, max_reconnect_attempts=2, reconnect_time_wait=0.05, on_close=closed.set
    )
    sub = bus.subscribe("never")
    bus.flush()
    failures: List[BaseException] = []
    disconnected = threading.Event()

    def blocked(call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:
            failures.append(exc)

    calls = [
        lambda: sub.next_msg(timeout=30),
        lambda: (disconnected.wait(10), bus.flush(timeout=30)),  # waits for a reconnect
        lambda: (disconnected.wait(10), bus.request("nobody", timeout=30)),
    ]
    threads = [threading.Thread(target=blocked, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    server.kill()
    wait_until(lambda: bus.status is not ts.State.CONNECTED, what="the outage noticed")
    disconnected.set()
    assert closed.wait(10)
    join_all(threads, 5, what="a blocked call")
    assert bus.is_closed
    assert len(failures) == 3, failures
    for exc in failures:
        assert isinstance(exc, ts.ConnectionClosedError), exc
        assert isinstance(exc.__cause__, ts.NoServersError), (exc, exc.__cause__)
        assert "gave up reconnecting" in str(exc)
    with pytest.raises(ts.ConnectionClosedError) as info:
        bus.publish("x", b"")
    assert isinstance(info.value.__cause__, ts.NoServersError)


def test_close_during_reconnect_is_prompt(server: NatsServer) -> None:
    disconnected = threading.Event()
    bus = ts.connect(
        server.url, reconnect_time_wait=30, max_reconnect_attempts=-1, on_disconnect=disconnected.set
    )
    server.kill()
    assert disconnected.wait(5)
    assert bus.status is ts.State.RECONNECTING
    threads = bus.threads
    start = time.monotonic()
    bus.close()
    assert time.monotonic() - start < 2
    assert not [t for t in threads if t.is_alive()]


def test_retry_on_failed_connect_buffers_until_the_server_starts() -> None:
    srv = NatsServer()  # not started yet
    bus = ts.connect(srv.url, retry_on_failed_connect=True, **FAST)
    try:
        assert bus.status is ts.State.RECONNECTING
        sub = bus.subscribe("late")
        bus.publish("late", b"buffered")
        srv.start()
        assert bus.wait_connected(10)
        assert sub.next_msg(5).payload == b"buffered"
    finally:
        bus.close()
        srv.stop()


def test_first_connect_fails_fast_by_default() -> None:
    srv = NatsServer()  # never started
    start = time.monotonic()
    with pytest.raises(ts.NoServersError):
        ts.connect(srv.url, connect_timeout=1)
    assert time.monotonic() - start < 3


def test_status_callbacks_run_on_the_status_thread(server: NatsServer) -> None:
    names: List[str] = []
    done = threading.Event()

    def record() -> None:
        names.append(threading.current_thread().name)
        if len(names) == 2:
            done.set()

    bus = ts.connect(server.url, on_disconnect=record, on_reconnect=record, **FAST)
    server.kill()
    server.restart()
    assert done.wait(10)
    assert names == ["telestion_sync-status"] * 2
    bus.close()


def test_requests_while_disconnected_wait_for_the_reconnect(server: NatsServer) -> None:
    """A request made during an outage is sent after the reconnect, behind the replayed
    subscriptions, and gets its reply within its own timeout."""
    disconnected = threading.Event()
    bus = ts.connect(server.url, on_disconnect=disconnected.set, **FAST)
    bus.reply("wait.echo", lambda msg: msg.data)
    assert bus.request("wait.echo", 0, timeout=2).data == 0
    server.kill()
    assert disconnected.wait(5)
    result: List[Any] = []
    t = threading.Thread(target=lambda: result.append(bus.request("wait.echo", 1, timeout=10)))
    t.start()
    wait_until(lambda: bus.stats.pending_requests == 1, what="the request registered")
    server.restart()
    t.join(15)
    assert result and result[0].data == 1
    bus.close()


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_ctrl_c_interrupts_a_blocking_call_and_leaves_the_bus_usable(bus: ts.MessageBus) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    bus.subscribe("nobody.answers")  # so the request waits instead of failing
    bus.reply("alive", lambda msg: "yes")
    bus.flush()
    timer = threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        bus.request("nobody.answers", timeout=20)
    assert time.monotonic() - start < 5
    timer.join(5)
    assert bus.request("alive", timeout=2).data == "yes"
    assert bus.stats.pending_requests == 0


def test_status_listeners_see_disconnect_reconnect_and_close(server: NatsServer) -> None:
    seen: List[ts.State] = []
    closed = threading.Event()

    def listener(state: ts.State) -> None:
        seen.append(state)
        if state is ts.State.CLOSED:
            closed.set()

    removed: List[ts.State] = []
    bus = ts.connect(server.url, **FAST)
    bus.add_status_listener(listener)
    remove = bus.add_status_listener(removed.append)
    remove()
    server.kill()
    server.restart()
    wait_until(lambda: ts.State.CONNECTED in seen, what="the reconnect reaching the listener")
    bus.close()
    assert closed.wait(5)
    assert seen == [ts.State.RECONNECTING, ts.State.CONNECTED, ts.State.CLOSED]
    assert removed == []
    with pytest.raises(TypeError, match="listener must be callable"):
        bus.add_status_listener("nope")  # type: ignore[arg-type]
