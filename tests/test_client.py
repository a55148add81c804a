"""The public API against a real nats-server: pub/sub, pull, request/reply, errors, lifecycle."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any, List

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer, free_port

from .conftest import join_all, wait_until

pytestmark = pytest.mark.timeout(30)


def collect(n: int) -> Any:
    """A callback that stores messages and sets ``done`` after ``n`` of them."""
    got: List[ts.Message] = []
    done = threading.Event()

    def cb(msg: ts.Message) -> None:
        got.append(msg)
        if len(got) >= n:
            done.set()

    cb.got = got  # type: ignore[attr-defined]
    cb.done = done  # type: ignore[attr-defined]
    return cb


# --- publish / subscribe --------------------------------------------------------------------


def test_publish_json_bytes_and_cbor_reach_a_callback(bus: ts.MessageBus) -> None:
    cb = collect(3)
    bus.subscribe("telemetry.>", cb)
    bus.flush()
    bus.publish("telemetry.temp", {"celsius": 21.5})
    bus.publish("telemetry.raw", b"\x00\x01\xff")
    bus.publish("telemetry.meta", {"img": b"\x89PNG"}, codec="cbor")
    assert cb.done.wait(5)
    by_subject = {m.subject: m for m in cb.got}
    assert by_subject["telemetry.temp"].data == {"celsius": 21.5}
    assert by_subject["telemetry.temp"].headers == {}
    assert by_subject["telemetry.raw"].data == b"\x00\x01\xff"
    meta = by_subject["telemetry.meta"]
    assert meta.headers["Content-Type"] == "application/cbor"
    assert meta.data == {"img": b"\x89PNG"}


def test_callbacks_run_in_order_on_delivery_threads_never_the_reader(bus: ts.MessageBus) -> None:
    threads = set()
    cb = collect(2000)

    def record(msg: ts.Message) -> None:
        threads.add(threading.current_thread().name)
        cb(msg)

    bus.subscribe("order", record)
    bus.flush()
    for i in range(2000):
        bus.publish("order", str(i).encode())
    assert cb.done.wait(10)
    assert [int(m.payload) for m in cb.got] == list(range(2000))
    assert threads and all(name.startswith("telestion_sync-deliver-") for name in threads)


def test_own_thread_subscription_delivers_on_its_own_thread(bus: ts.MessageBus) -> None:
    threads = set()
    cb = collect(500)

    def record(msg: ts.Message) -> None:
        threads.add(threading.current_thread().name)
        cb(msg)

    sub = bus.subscribe("mine", record, own_thread=True)
    bus.flush()
    for i in range(500):
        bus.publish("mine", str(i).encode())
    assert cb.done.wait(10)
    assert [int(m.payload) for m in cb.got] == list(range(500))
    (name,) = threads
    assert name.startswith("telestion_sync-sub-") and sub._thread is not None and sub._thread.name == name
    sub.unsubscribe()
    join_all([sub._thread])


def test_wildcards_match_tokens(bus: ts.MessageBus) -> None:
    star = bus.subscribe("a.*.c")
    full = bus.subscribe("a.>")
    bus.flush()
    for subject in ("a.b.c", "a.x.c", "a.b.c.d", "a.b"):
        bus.publish(subject, b"")
    bus.flush()
    assert sorted(star.next_msg(1).subject for _ in range(2)) == ["a.b.c", "a.x.c"]
    assert sorted(full.next_msg(1).subject for _ in range(4)) == ["a.b", "a.b.c", "a.b.c.d", "a.x.c"]
    with pytest.raises(ts.TimeoutError):
        star.next_msg(0.05)


def test_queue_group_delivers_each_message_once(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    a = bus.subscribe("work", queue="workers")
    b = other.subscribe("work", queue="workers")
    bus.flush()
    other.flush()
    for i in range(200):
        bus.publish("work", str(i).encode())
    bus.flush()
    other.flush()
    seen: List[int] = []
    for sub in (a, b):
        while True:
            try:
                seen.append(int(sub.next_msg(0.2).payload))
            except ts.TimeoutError:
                break
    assert sorted(seen) == list(range(200))
    assert a.delivered > 0 and b.delivered > 0
    assert a.queue == "workers"


def test_pull_subscription_timeout_and_iteration(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("events.*")
    with pytest.raises(ts.TimeoutError) as info:
        sub.next_msg(timeout=0.05)
    assert isinstance(info.value, TimeoutError)  # the builtin, too
    sub.auto_unsubscribe(3)
    bus.flush()
    for i in range(5):
        bus.publish("events.x", i)
    got = [m.data for m in sub]  # ends after the auto-unsubscribe limit
    assert got == [0, 1, 2]
    assert not sub.is_valid


def test_next_msgs_takes_what_is_queued_in_order(bus: ts.MessageBus, errors: Any) -> None:
    sub = bus.subscribe("batch.*", codec="json")
    with pytest.raises(ts.TimeoutError):
        sub.next_msgs(10, timeout=0.05)
    for i in range(25):
        bus.publish("batch.x", i)
    bus.publish("batch.bad", b"{not json")  # skipped and reported, as next_msg does
    bus.publish("batch.x", 25, immediate=True)
    bus.flush()
    first = sub.next_msgs(10, timeout=5)
    assert [m.data for m in first] == list(range(10))
    rest = sub.next_msgs(100, timeout=5)
    assert [m.data for m in rest] == list(range(10, 26))
    assert sub.delivered == 27 and sub.pending == 0  # the skipped one was taken too, as next_msg counts it
    assert sub.delivered_bytes == sum(len(m.payload) for m in first + rest) + len(b"{not json")
    assert isinstance(errors.wait(ts.DecodeError), ts.DecodeError)
    sub.unsubscribe()
    with pytest.raises(ts.SubscriptionClosedError):
        sub.next_msgs(10, timeout=1)


def test_unsubscribe_stops_delivery(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("u")
    bus.flush()
    bus.publish("u", b"1")
    bus.flush()
    sub.unsubscribe()
    bus.publish("u", b"2")
    bus.flush()
    with pytest.raises(ts.SubscriptionClosedError):
        sub.next_msg(0.1)
    assert sub not in bus.subscriptions
    sub.unsubscribe()  # idempotent


def test_subscription_drain_delivers_pending(bus: ts.MessageBus) -> None:
    release = threading.Event()
    got: List[int] = []

    def slow(msg: ts.Message) -> None:
        release.wait(5)
        got.append(msg.data)

    sub = bus.subscribe("d", slow)
    bus.flush()
    for i in range(50):
        bus.publish("d", i)
    bus.flush()
    release.set()
    sub.drain(timeout=5)
    assert got == list(range(50))
    bus.publish("d", 99)
    bus.flush()
    assert got == list(range(50))


def test_headers_round_trip(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("h")
    bus.flush()
    bus.publish("h", b"x", headers={"Trace-Id": "abc", "Multi": ["1", "2"]})
    msg = sub.next_msg(2)
    assert msg.headers["Trace-Id"] == "abc"
    assert msg.headers["Multi"] == "1, 2"
    assert msg.payload == b"x"


def test_stats_count_both_directions(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("s")
    bus.flush()
    before = bus.stats
    bus.publish("s", b"12345")
    sub.next_msg(2)
    after = bus.stats
    assert after.out_msgs == before.out_msgs + 1
    assert after.out_bytes == before.out_bytes + 5
    assert after.in_msgs == before.in_msgs + 1
    assert after.in_bytes == before.in_bytes + 5
    assert 0 < bus.rtt() < 5


# --- request / reply ------------------------------------------------------------------------


def test_request_reply_with_return_value(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    other.reply("svc.add", lambda msg: msg.data["a"] + msg.data["b"])
    other.flush()
    answer = bus.request("svc.add", {"a": 1, "b": 2}, timeout=2)
    assert isinstance(answer, ts.Message)
    assert answer.data == 3


def test_cbor_request_gets_a_cbor_reply(bus: ts.MessageBus) -> None:
    bus.reply("svc.echo", lambda msg: {"got": msg.data["blob"]})
    answer = bus.request("svc.echo", {"blob": b"\x00\x01"}, codec="cbor", timeout=2)
    assert answer.headers["Content-Type"] == "application/cbor"
    assert answer.data == {"got": b"\x00\x01"}


def test_no_responders_fails_at_once(bus: ts.MessageBus) -> None:
    start = time.monotonic()
    with pytest.raises(ts.NoRespondersError):
        bus.request("nobody.home", timeout=5)
    assert time.monotonic() - start < 2


def test_request_times_out(bus: ts.MessageBus) -> None:
    bus.subscribe("silent")  # a subscriber that never answers
    bus.flush()
    with pytest.raises(ts.TimeoutError):
        bus.request("silent", timeout=0.2)


def test_handler_exception_becomes_service_error(bus: ts.MessageBus, errors: Any) -> None:
    def boom(msg: ts.Message) -> None:
        raise RuntimeError("disk full")

    def teapot(msg: ts.Message) -> None:
        raise ts.ServiceError("I'm a teapot", 418)

    bus.reply("svc.boom", boom)
    bus.reply("svc.teapot", teapot)
    with pytest.raises(ts.ServiceError) as info:
        bus.request("svc.boom", timeout=2)
    assert info.value.code == 500 and "disk full" in info.value.description
    with pytest.raises(ts.ServiceError) as info:
        bus.request("svc.teapot", timeout=2)
    assert info.value.code == 418
    assert "disk full" in str(errors.wait(ts.Error).__cause__)


def test_manual_respond_is_not_answered_twice(bus: ts.MessageBus) -> None:
    def handler(msg: ts.Message) -> None:
        msg.respond(b"manual")

    bus.reply("svc.manual", handler)
    first, second = bus.subscribe(bus.new_inbox()), bus.subscribe(bus.new_inbox())
    bus.publish("svc.manual", b"", reply=first.subject)
    bus.publish("svc.manual", b"", reply=second.subject)
    assert first.next_msg(5).payload == b"manual"
    # Requests are handled in order on one thread and answered over one connection: once the
    # second is answered, any extra answer to the first has arrived too.
    assert second.next_msg(5).payload == b"manual"
    assert first.pending == 0, "answered twice"


def test_request_many_gathers_every_reply(bus: ts.MessageBus, other: ts.MessageBus) -> None:
    for i in range(3):
        other.reply("who", lambda msg, i=i: {"id": i})
    other.flush()
    replies = bus.request_many("who", timeout=5, max_msgs=3)
    assert sorted(r.data["id"] for r in replies) == [0, 1, 2]
    assert len(bus.request_many("who", timeout=5, max_msgs=2)) == 2
    assert bus.request_many("nobody", timeout=0.5) == []


def test_request_from_inside_a_callback(bus: ts.MessageBus) -> None:
    bus.reply("inner", lambda msg: "pong")
    result: List[Any] = []
    done = threading.Event()

    def outer(msg: ts.Message) -> None:
        result.append(bus.request("inner", timeout=2).data)
        done.set()

    bus.subscribe("outer", outer)
    bus.flush()
    bus.publish("outer", b"")
    assert done.wait(5)
    assert result == ["pong"]


def test_many_threads_share_one_bus(bus: ts.MessageBus) -> None:
    bus.reply("echo", lambda msg: msg.data)
    failures: List[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(100):
                bus.publish(f"pub.{t}", {"i": i})
                assert bus.request("echo", [t, i], timeout=5).data == [t, i]
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    join_all(threads, 20)
    assert not failures
    assert bus.stats.out_msgs >= 8 * 200


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a\tb", "a.*", "a.>", ">"])
def test_bad_publish_subjects_are_refused(bus: ts.MessageBus, subject: str) -> None:
    with pytest.raises(ts.BadSubjectError) as info:
        bus.publish(subject, b"x")
    assert isinstance(info.value, ValueError)
    assert repr(subject) in str(info.value) or subject == ""


@pytest.mark.parametrize("subject", ["", "a..b", "a.>.b", "a b"])
def test_bad_subscribe_subjects_are_refused(bus: ts.MessageBus, subject: str) -> None:
    with pytest.raises(ts.BadSubjectError):
        bus.subscribe(subject)


def test_bad_queue_group_names_are_refused(bus: ts.MessageBus) -> None:
    with pytest.raises(ts.BadSubjectError):
        bus.subscribe("ok", queue="bad queue")


def test_payload_over_max_payload_is_refused_and_bus_stays_healthy(bus: ts.MessageBus) -> None:
    limit = bus.max_payload
    with pytest.raises(ts.MaxPayloadError) as info:
        bus.publish("big", b"x" * (limit + 1))
    assert str(limit) in str(info.value) and str(limit + 1) in str(info.value)
    sub = bus.subscribe("big")
    bus.flush()
    bus.publish("big", b"x" * (limit - 100))
    assert len(sub.next_msg(5).payload) == limit - 100


def test_unencodable_data_names_the_type(bus: ts.MessageBus) -> None:
    with pytest.raises(TypeError, match="set"):
        bus.publish("x", {1, 2})
    with pytest.raises(TypeError, match="object"):
        bus.publish("x", object(), codec="cbor")
    with pytest.raises(ValueError):
        bus.publish("x", float("nan"))
    with pytest.raises(ValueError, match="unknown codec"):
        bus.publish("x", 1, codec="yaml")


def test_undecodable_payload_is_reported_not_delivered(bus: ts.MessageBus, errors: Any) -> None:
    cb = collect(1)
    sub = bus.subscribe("j", cb, codec="json")
    bus.flush()
    bus.publish("j", b"\xffnot json")
    bus.publish("j", {"ok": True})
    assert cb.done.wait(5)
    assert [m.data for m in cb.got] == [{"ok": True}]
    err = errors.wait(ts.DecodeError)
    assert err.msg.payload == b"\xffnot json"  # type: ignore[attr-defined]
    assert sub.is_valid


def test_schema_failures_are_decode_errors(bus: ts.MessageBus, errors: Any) -> None:
    def positive(value: Any) -> int:
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{value!r} is not positive")
        return value

    pull = bus.subscribe("n", schema=positive)
    bus.reply("svc.n", lambda msg: msg.data * 2, schema=positive)
    bus.flush()
    bus.publish("n", -1)
    bus.publish("n", 5)
    assert pull.next_msg(2).data == 5
    with pytest.raises(ts.ServiceError) as info:
        bus.request("svc.n", -3, timeout=2)
    assert info.value.code == 400
    assert bus.request("svc.n", 4, timeout=2).data == 8
    assert "not positive" in str(errors.wait(ts.DecodeError))


def test_cbor_header_with_broken_payload_is_a_decode_error(bus: ts.MessageBus, errors: Any) -> None:
    sub = bus.subscribe("c")
    bus.flush()
    bus.publish("c", b"\xff\xff", headers={"Content-Type": "application/cbor"})
    bus.publish("c", b"fine")
    assert sub.next_msg(2).payload == b"fine"
    assert errors.wait(ts.DecodeError).msg.payload == b"\xff\xff"  # type: ignore[attr-defined]


def test_slow_consumer_drops_counts_and_reports(bus: ts.MessageBus, errors: Any) -> None:
    gate = threading.Event()
    healthy = bus.subscribe("other")
    slow = bus.subscribe("flood", lambda m: gate.wait(10), pending_msgs_limit=10)
    bus.flush()
    for _i in range(100):
        bus.publish("flood", b"x")
    bus.flush()
    err = errors.wait(ts.SlowConsumerError)
    assert "flood" in str(err)
    assert slow.dropped >= 89  # one may be in the callback, ten pending
    gate.set()
    bus.publish("other", b"still fine")
    assert healthy.next_msg(2).payload == b"still fine"
    assert bus.is_connected


# --- connecting -----------------------------------------------------------------------------


def test_wrong_password_fails_connect_at_once(auth_server: NatsServer) -> None:
    start = time.monotonic()
    with pytest.raises(ts.AuthenticationError):
        ts.connect(auth_server.url, user="alice", password="wrong", connect_timeout=2)
    with pytest.raises(ts.AuthenticationError):
        ts.connect(auth_server.url)
    assert time.monotonic() - start < 4
    with ts.connect(auth_server.url, user="alice", password="s3cret") as bus:
        bus.flush()


def test_credentials_in_url_are_percent_decoded() -> None:
    with NatsServer(user="bob", password="p@ss:w/rd") as srv:
        url = f"nats://bob:p%40ss%3Aw%2Frd@127.0.0.1:{srv.port}"
        with ts.connect(url) as bus:
            bus.flush()
            assert "p@ss" not in repr(bus) and "p%40ss" not in (bus.connected_url or "")


def test_host_port_without_scheme_and_server_lists(server: NatsServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with ts.connect(f"127.0.0.1:{server.port}") as bus:
        assert bus.connected_url == server.url
    with ts.connect([dead, f"localhost:{server.port}"]) as bus:
        assert bus.is_connected
    with ts.connect(f"{dead},{server.url}") as bus:
        assert bus.is_connected


def test_server_order_is_random_by_default_and_kept_with_randomize_false(server: NatsServer) -> None:
    """nats.go's pool: shuffled unless randomize=False (dead servers refuse at once here)."""
    given = [server.url] + [f"nats://127.0.0.1:{free_port()}" for _ in range(5)]
    with ts.connect(given, randomize=False) as bus:
        assert bus.servers == given
    orders = set()
    for _ in range(10):
        with ts.connect(given) as bus:
            orders.add(tuple(bus.servers))
    assert len(orders) > 1, "ten connections all kept the given order"


def test_unreachable_server_names_the_urls() -> None:
    port = free_port()
    with pytest.raises(ts.NoServersError, match=str(port)):
        ts.connect(f"nats://127.0.0.1:{port}", connect_timeout=1)


def test_permission_violation_is_reported_and_connection_survives(errors: Any) -> None:
    config = """
    authorization {
      users = [
        { user: limited, password: pw,
          permissions: { publish: { deny: ["secret.>"] }, subscribe: { allow: ["public.>", "_INBOX.>"] } } }
      ]
    }
    """
    with NatsServer(config=config) as srv:
        with ts.connect(srv.url, user="limited", password="pw", on_error=errors) as bus:
            sub = bus.subscribe("public.news")
            bus.flush()
            bus.publish("secret.plans", b"x")
            bus.flush(timeout=2)  # must not hang after a denied publish
            err = errors.wait(ts.PermissionViolationError)
            assert err.operation == "publish"  # type: ignore[attr-defined]
            assert err.subject == "secret.plans"  # type: ignore[attr-defined]
            bus.publish("public.news", b"ok")
            assert sub.next_msg(2).payload == b"ok"
            assert bus.is_connected


# --- lifecycle ------------------------------------------------------------------------------


def test_close_is_idempotent_and_stops_every_thread(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    got = threading.Event()
    bus.subscribe("a", lambda m: got.set())
    bus.subscribe("own", lambda m: None, own_thread=True)
    pull = bus.subscribe("b")
    bus.request_many("nobody", timeout=0.1)
    bus.publish("a", b"")
    assert got.wait(5)
    threads = bus.threads
    names = sorted(t.name.split("-")[1] for t in threads)
    # reader, writer, status, a delivery thread, the own-thread subscription's
    assert names == ["deliver", "reader", "status", "sub", "writer"]
    bus.close()
    bus.close()
    assert bus.is_closed and not bus.is_connected
    assert not [t for t in threads if t.is_alive()]
    with pytest.raises(ts.ConnectionClosedError):
        bus.publish("a", b"")
    with pytest.raises(ts.ConnectionClosedError):
        pull.next_msg(0.1)


def test_close_wakes_blocked_calls(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    bus.subscribe("slow")  # never answers
    pull = bus.subscribe("never")
    bus.flush()
    outcomes: List[BaseException] = []

    def blocked_request() -> None:
        try:
            bus.request("slow", timeout=20)
        except BaseException as exc:
            outcomes.append(exc)

    def blocked_pull() -> None:
        try:
            pull.next_msg(timeout=20)
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=blocked_request), threading.Thread(target=blocked_pull)]
    for t in threads:
        t.start()
    wait_until(lambda: bus.stats.pending_requests == 1, what="the request registered")
    bus.close()
    join_all(threads, 5, what="a blocked call")
    assert len(outcomes) == 2
    assert all(isinstance(e, ts.ConnectionClosedError) for e in outcomes)


def test_bus_drain_delivers_pending_then_closes(server: NatsServer) -> None:
    bus = ts.connect(server.url)
    got: List[int] = []
    bus.subscribe("q", lambda m: got.append(m.data))
    bus.flush()
    for i in range(100):
        bus.publish("q", i)
    bus.drain(timeout=5)
    assert got == list(range(100))
    assert bus.is_closed


def test_server_going_away_closes_the_bus_without_reconnects(server: NatsServer, errors: Any) -> None:
    closed = threading.Event()
    bus = ts.connect(server.url, on_error=errors, on_close=closed.set, allow_reconnect=False)
    server.kill()
    assert closed.wait(5)
    errors.wait(ts.Error)
    assert bus.is_closed


SCRIPT = """
import sys, telestion_sync as ts
bus = ts.connect(sys.argv[1])
for i in range(1000):
    bus.publish("exit.test", str(i).encode())
# no close(): the interpreter must still exit, and flush what is buffered
"""


def test_script_that_forgets_close_exits_and_flushes(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("exit.test")
    bus.flush()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, bus.connected_url or ""], timeout=20, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    got = [int(sub.next_msg(5).payload) for _ in range(1000)]
    assert got == list(range(1000))


def test_repr_hides_secrets(auth_server: NatsServer) -> None:
    with ts.connect(f"nats://alice:s3cret@127.0.0.1:{auth_server.port}") as bus:
        text = repr(bus) + bus._repr_html_() + repr(bus.servers) + str(bus.connected_url) + str(bus.stats)
        assert "s3cret" not in text
        sub = bus.subscribe("x")
        bus.flush()
        bus.publish("x", b"hello", headers={"K": "v"})
        msg = sub.next_msg(2)
        assert "hello" in repr(msg) and "x" in repr(sub)


def test_subjects_that_are_not_utf8_are_delivered_and_answerable(server: NatsServer, errors: Any) -> None:
    """NATS subjects are bytes; another client may send ones that are not UTF-8. They must not
    cost the connection: the message arrives (the subject kept byte for byte through
    surrogateescape) and a reply to such a reply subject goes back unchanged."""
    with ts.connect(server.url, on_error=errors) as bus:
        sub = bus.subscribe(">")
        bus.flush()
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.settimeout(10)
            raw.recv(4096)  # INFO
            raw.sendall(
                b'CONNECT {"verbose":false,"headers":true}\r\nSUB answers.> 1\r\n'
                b"PUB bad.\xff\xfe 2\r\nhi\r\n"
                b"HPUB hbad.\xff 12 14\r\nNATS/1.0\r\n\r\nyo\r\n"
                b"PUB asks answers.\xfe 3\r\nask\r\nPING\r\n"
            )
            got = [sub.next_msg(5) for _ in range(3)]
            assert [m.payload for m in got] == [b"hi", b"yo", b"ask"]
            assert got[0].subject.encode("utf-8", "surrogateescape") == b"bad.\xff\xfe"
            assert got[1].subject.encode("utf-8", "surrogateescape") == b"hbad.\xff"
            got[2].respond(b"fine")
            bus.flush()
            raw.sendall(b"PING\r\n")
            seen = b""
            while b"MSG answers.\xfe 1 4\r\nfine" not in seen:
                chunk = raw.recv(4096)
                assert chunk, f"server closed; saw {seen!r}"
                seen += chunk
        assert bus.stats.reconnects == 0 and bus.is_connected
        assert not errors.errors


def test_auto_unsubscribe_counts_delivered_messages_and_keeps_pending_ones(bus: ts.MessageBus) -> None:
    """As nats.go: the limit is on messages delivered; ones already pending within it still
    arrive, the rest do not."""
    sub = bus.subscribe("au")
    for i in range(5):
        bus.publish("au", b"%d" % i)
    bus.flush()
    assert sub.next_msg(5).payload == b"0"
    sub.auto_unsubscribe(3)  # one delivered, four pending: two more
    assert [sub.next_msg(5).payload for _ in range(2)] == [b"1", b"2"]
    with pytest.raises(ts.SubscriptionClosedError):
        sub.next_msg(1)
    later = bus.subscribe("au2")
    for i in range(5):
        bus.publish("au2", b"%d" % i)
    bus.flush()
    later.auto_unsubscribe(3)  # none delivered yet, five pending
    assert [m.payload for m in (later.next_msg(5) for _ in range(3))] == [b"0", b"1", b"2"]
    with pytest.raises(ts.SubscriptionClosedError):
        later.next_msg(1)


def test_close_does_not_deliver_what_is_pending_to_callbacks(server: NatsServer) -> None:
    """As nats.go: close() drops messages a callback has not got yet, so it returns once the
    callbacks running now return (drain() is the way to deliver everything first)."""
    bus = ts.connect(server.url)
    calls: List[int] = []
    started = threading.Event()

    def slow(msg: ts.Message) -> None:
        started.set()
        calls.append(1)
        time.sleep(0.2)  # a slow callback (its running time, not a wait for anything)

    subs = [bus.subscribe(f"pend.{i}", slow) for i in range(3)]
    for i in range(3):
        for _ in range(20):
            bus.publish(f"pend.{i}", b"x")
    bus.flush()
    assert started.wait(5)
    t0 = time.monotonic()
    bus.close()
    assert time.monotonic() - t0 < 1.5, "close() kept delivering pending messages"
    assert all(s.wait_finished(0) for s in subs), "a callback thread is still delivering"
    assert len(calls) <= 6  # at most the callbacks already running, once or twice each


def test_drain_that_times_out_is_reported_and_stops_the_callbacks(server: NatsServer, errors: Any) -> None:
    bus = ts.connect(server.url, on_error=errors)
    calls: List[int] = []

    def slow(msg: ts.Message) -> None:
        calls.append(1)
        time.sleep(0.1)  # a slow callback: 50 of them outlast the drain's 0.5 s

    sub = bus.subscribe("slowdrain", slow)
    for _ in range(50):
        bus.publish("slowdrain", b"x")
    bus.flush()
    bus.drain(timeout=0.5)
    err = errors.wait(ts.TimeoutError)
    assert "slowdrain" in str(err)
    assert sub.wait_finished(2)
    assert len(calls) < 50
    count = len(calls)
    time.sleep(0.3)  # would cover three more callbacks, had they gone on
    assert len(calls) == count


def test_next_msgs_honours_the_auto_unsubscribe_limit(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("lim.x", max_msgs=3)
    bus.flush()
    for i in range(6):
        bus.publish("lim.x", b"%d" % i)
    bus.flush()
    got = sub.next_msgs(100, timeout=5)
    assert [m.payload for m in got] == [b"0", b"1", b"2"]
    assert sub.delivered == 3
    with pytest.raises(ts.SubscriptionClosedError):
        sub.next_msgs(100, timeout=1)
    with pytest.raises(ValueError):
        sub.next_msgs(0, timeout=1)
