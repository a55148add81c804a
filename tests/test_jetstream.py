"""JetStream: streams, acknowledged publishing, consumers, fetch/next and acknowledgements,
against a real nats-server with JetStream (store in a temp dir)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, List

import pytest

import telestion_sync as ts
from telestion_sync.jetstream.message import parse_metadata
from telestion_sync.server import NatsServer

from .conftest import fast_bus, join_all


@pytest.fixture
def stream(js: ts.JetStream) -> str:
    js.create_stream("T", subjects=["t.>"])
    return "T"


# --- streams ----------------------------------------------------------------------------------


def test_create_stream_returns_config_and_state(js: ts.JetStream) -> None:
    info = js.create_stream(
        "TELEMETRY",
        subjects=["telemetry.>"],
        max_age=timedelta(hours=1),
        max_msgs=1000,
        max_bytes=1 << 20,
        max_msgs_per_subject=10,
        storage="memory",
        discard="new",
        duplicate_window=30,
        description="frames",
        allow_direct=True,
        retention="limits",
    )
    cfg = info.config
    assert cfg.name == "TELEMETRY" and cfg.subjects == ["telemetry.>"]
    assert cfg.max_age == 3600.0 and cfg.duplicate_window == 30.0
    assert (cfg.max_msgs, cfg.max_bytes, cfg.max_msgs_per_subject) == (1000, 1 << 20, 10)
    assert (cfg.storage, cfg.discard, cfg.retention, cfg.description) == ("memory", "new", "limits", "frames")
    assert cfg.allow_direct is True and cfg.replicas == 1
    assert info.state.messages == 0 and info.state.last_seq == 0
    assert info.created is not None and info.created.tzinfo is not None
    # Creating it again with the same configuration is idempotent; with another it fails.
    assert js.create_stream(cfg).config.max_msgs == 1000
    with pytest.raises(ts.StreamNameInUseError) as exc:
        js.create_stream("TELEMETRY", subjects=["other.>"])
    assert exc.value.err_code == 10058 and exc.value.code == 400


def test_stream_config_keeps_unknown_server_fields(js: ts.JetStream) -> None:
    info = js.create_stream("K", subjects=["k.>"])
    assert "consumer_limits" in info.config.extra  # a server-side field not modelled
    info.config.max_msgs = 5
    updated = js.update_stream(info.config)
    assert updated.config.max_msgs == 5
    assert updated.config.extra == info.config.extra


def test_update_and_create_or_update(js: ts.JetStream) -> None:
    with pytest.raises(ts.StreamNotFoundError) as exc:
        js.update_stream("NOPE", subjects=["nope"])
    assert exc.value.err_code == 10059
    js.create_or_update_stream("U", subjects=["u.>"], max_msgs=3)
    assert js.stream_info("U").config.max_msgs == 3
    js.create_or_update_stream("U", subjects=["u.>"], max_msgs=7)
    assert js.stream_info("U").config.max_msgs == 7


def test_stream_info_state_names_list_delete(js: ts.JetStream) -> None:
    js.create_stream("A1", subjects=["a1.*"])
    js.create_stream("B1", subjects=["b1.*"])
    for i in range(5):
        js.publish("a1.x", b"%d" % i)
    js.publish("a1.y", b"y")
    info = js.stream_info("A1", subjects_filter=">")
    assert info.state.messages == 6 and info.state.first_seq == 1 and info.state.last_seq == 6
    assert info.state.subjects == {"a1.x": 5, "a1.y": 1}
    assert info.state.last_ts is not None and info.state.last_ts.tzinfo is timezone.utc
    assert sorted(js.stream_names()) == ["A1", "B1"]
    assert js.stream_names("b1.z") == ["B1"]
    assert js.stream_names("nothing.here") == []
    assert sorted(s.config.name for s in js.streams()) == ["A1", "B1"]
    js.delete_stream("B1")
    assert js.stream_names() == ["A1"]
    with pytest.raises(ts.StreamNotFoundError):
        js.delete_stream("B1")
    with pytest.raises(ts.StreamNotFoundError):
        js.stream_info("B1")


def test_many_streams_are_paged(js: ts.JetStream) -> None:
    for i in range(260):  # the API pages names by 1024 and infos by 256
        js.create_stream(f"P{i}", subjects=[f"p{i}"], storage="memory")
    assert len(js.stream_names()) == 260
    assert len(js.streams()) == 260


def test_purge_variants(js: ts.JetStream) -> None:
    js.create_stream("PG", subjects=["pg.*"])
    for i in range(10):
        js.publish("pg.a" if i % 2 else "pg.b", b"%d" % i)
    assert js.purge_stream("PG", subject="pg.a") == 5
    assert js.stream_info("PG").state.messages == 5
    assert js.purge_stream("PG", keep=2) == 3
    assert js.stream_info("PG").state.messages == 2
    assert js.purge_stream("PG", seq=9) == 1  # everything below seq 9 (seq 7)
    assert js.stream_info("PG").state.first_seq == 9
    assert js.purge_stream("PG") == 1
    assert js.stream_info("PG").state.messages == 0
    with pytest.raises(ts.InvalidArgumentError, match="keep or seq"):
        js.purge_stream("PG", keep=1, seq=2)
    with pytest.raises(ts.StreamNotFoundError):
        js.purge_stream("NOPE")


@pytest.mark.parametrize("direct", [False, True])
def test_get_msg_and_last_for_subject(js: ts.JetStream, direct: bool) -> None:
    js.create_stream("G", subjects=["g.*"], allow_direct=direct)
    js.publish("g.a", {"n": 1}, headers={"X-Trace": "abc"})
    js.publish("g.b", b"raw")
    js.publish("g.a", {"n": 2}, codec="cbor")
    m = js.get_msg("G", 1)
    assert (m.subject, m.seq, m.data, m.headers) == ("g.a", 1, {"n": 1}, {"X-Trace": "abc"})
    assert m.time is not None and m.time.tzinfo is timezone.utc
    last = js.get_last_msg_for_subject("G", "g.a")
    assert (last.seq, last.data) == (3, {"n": 2})
    assert js.get_last_msg_for_subject("G", "g.b").payload == b"raw"
    with pytest.raises(ts.MessageNotFoundError) as exc:
        js.get_msg("G", 99)
    assert exc.value.code == 404
    with pytest.raises(ts.MessageNotFoundError):
        js.get_last_msg_for_subject("G", "g.none")
    # The API's STREAM.MSG.GET works for every stream.
    assert js.get_msg("G", 2, direct=False).payload == b"raw"
    if not direct:
        with pytest.raises(ts.StreamNotFoundError):  # nobody answers a direct get
            js.get_msg("G", 2, direct=True)
    with pytest.raises(ts.StreamNotFoundError):
        js.get_msg("NOPE", 1)


def test_delete_msg(js: ts.JetStream, stream: str) -> None:
    for i in range(3):
        js.publish("t.x", b"%d" % i)
    js.delete_msg(stream, 2)
    with pytest.raises(ts.MessageNotFoundError):
        js.get_msg(stream, 2)
    assert js.stream_info(stream).state.messages == 2


def test_mirror_and_sources(js: ts.JetStream) -> None:
    js.create_stream("ORIG", subjects=["orig.*"])
    js.create_stream("ORIG2", subjects=["orig2.*"])
    js.create_stream("MIR", mirror=ts.StreamSource(name="ORIG"))
    js.create_stream("AGG", sources=[ts.StreamSource(name="ORIG"), ts.StreamSource(name="ORIG2")])
    for i in range(3):
        js.publish("orig.a", b"%d" % i)
    js.publish("orig2.a", b"x")
    deadline = time.monotonic() + 10
    while js.stream_info("MIR").state.messages < 3 or js.stream_info("AGG").state.messages < 4:
        assert time.monotonic() < deadline, "mirror/sources did not catch up"
        time.sleep(0.05)
    info = js.stream_info("MIR")
    assert info.config.mirror is not None and info.config.mirror.name == "ORIG"
    assert info.mirror is not None and info.mirror.name == "ORIG"
    assert sorted(s.name for s in js.stream_info("AGG").config.sources or []) == ["ORIG", "ORIG2"]


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "a>", "a b", "a\tb", "a/b", None, 5])
def test_bad_stream_names_refused_at_once(js: ts.JetStream, bad: object) -> None:
    with pytest.raises(ts.InvalidArgumentError, match="name|stream"):
        js.create_stream(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        js.stream_info(bad)  # type: ignore[arg-type]
    with pytest.raises(ts.Error):
        js.create_consumer(bad, durable="x")  # type: ignore[arg-type]


def test_bad_stream_options_refused(js: ts.JetStream) -> None:
    with pytest.raises(ts.InvalidArgumentError, match="storage"):
        js.create_stream("X", storage="disk")
    with pytest.raises(ts.InvalidArgumentError, match="max_age"):
        js.create_stream("X", max_age=-1)
    with pytest.raises(ts.InvalidArgumentError, match="unknown stream option"):
        js.create_stream("X", subject=["x"])
    with pytest.raises(ts.InvalidArgumentError, match="subjects"):
        js.create_stream("X", subjects="x.>")
    assert js.stream_names() == []


def test_jetstream_not_enabled(server: NatsServer) -> None:
    with ts.connect(server.url) as b:
        js = b.jetstream(timeout=2)
        with pytest.raises(ts.JetStreamNotEnabledError) as exc:
            js.stream_names()
        assert isinstance(exc.value, ts.JetStreamError) and exc.value.code == 503


def test_domain_and_api_prefix(tmp_path: object) -> None:
    conf = f'jetstream {{ store_dir: "{tmp_path}", domain: "hub" }}'
    with NatsServer(config=conf) as srv, ts.connect(srv.url) as b:
        js = b.jetstream(domain="hub")
        assert js.api_prefix == "$JS.hub.API"
        js.create_stream("D", subjects=["d.>"])
        ack = js.publish("d.x", b"1")
        assert ack.domain == "hub" and ack.seq == 1
        msg = js.create_consumer("D", durable="c").next(2)
        assert msg.metadata.stream == "D"
        msg.ack_sync()
        assert b.jetstream(api_prefix="$JS.hub.API.").stream_names() == ["D"]
        assert b.jetstream().stream_names() == ["D"]  # the local domain answers $JS.API too
        with pytest.raises(ts.JetStreamNotEnabledError):
            b.jetstream(domain="elsewhere", timeout=1).stream_names()
        with pytest.raises(ts.InvalidArgumentError):
            b.jetstream(domain="hub", api_prefix="$JS.API")
        with pytest.raises(ts.InvalidArgumentError):
            b.jetstream(domain="a.b")


# --- publishing -------------------------------------------------------------------------------


def test_publish_ack_dedup_and_codecs(js: ts.JetStream, stream: str) -> None:
    a1 = js.publish("t.a", {"celsius": 21.5}, msg_id="m-1")
    assert a1 == ts.PubAck(stream, 1, False, None)
    again = js.publish("t.a", {"celsius": 99}, msg_id="m-1")
    assert again.duplicate and again.seq == 1
    js.publish("t.b", {"img": b"\x00\x01"}, codec="cbor")
    assert js.get_msg(stream, 2).data == {"img": b"\x00\x01"}
    assert js.stream_info(stream).state.messages == 2


def test_publish_preconditions(js: ts.JetStream, stream: str) -> None:
    js.publish("t.a", b"1")
    js.publish("t.b", b"2", msg_id="id-2")
    assert js.publish("t.a", b"3", expected_last_seq=2).seq == 3
    with pytest.raises(ts.WrongLastSequenceError) as exc:
        js.publish("t.a", b"x", expected_last_seq=2)
    assert exc.value.err_code == 10071
    assert js.publish("t.a", b"4", expected_last_subject_seq=3).seq == 4
    with pytest.raises(ts.WrongLastSequenceError):
        js.publish("t.a", b"x", expected_last_subject_seq=3)
    assert js.publish("t.new", b"first", expected_last_subject_seq=0).seq == 5
    with pytest.raises(ts.StreamMismatchError):
        js.publish("t.a", b"x", expected_stream="OTHER")
    assert js.publish("t.a", b"6", expected_stream=stream).seq == 6
    with pytest.raises(ts.WrongLastMsgIdError):
        js.publish("t.a", b"x", expected_last_msg_id="nope")
    assert js.stream_info(stream).state.messages == 6
    with pytest.raises(ts.InvalidArgumentError, match="expected_last_seq"):
        js.publish("t.a", b"x", expected_last_seq=-1)


def test_publish_without_stream_is_no_responders(js: ts.JetStream) -> None:
    start = time.monotonic()
    with pytest.raises(ts.NoRespondersError):
        js.publish("nostream.x", b"x", retry_attempts=2, retry_wait=0.1)
    assert 0.15 < time.monotonic() - start < 2  # retried twice, 0.1 s apart
    with pytest.raises(ts.NoRespondersError):
        js.publish("nostream.x", b"x", retry_attempts=0)


def test_publish_retries_while_stream_appears(js: ts.JetStream, jsbus: ts.MessageBus) -> None:
    """No responders while the stream comes up (a leader being elected): the publish retries."""
    later = threading.Timer(0.3, lambda: jsbus.jetstream().create_stream("LATE", subjects=["late"]))
    later.start()
    ack = js.publish("late", b"x", retry_attempts=20, retry_wait=0.1, timeout=5)
    later.join(5)
    assert ack.stream == "LATE" and ack.seq == 1


def test_publish_async_and_complete(js: ts.JetStream, stream: str) -> None:
    futs = [js.publish_async("t.a", b"%d" % i, msg_id=f"a{i}") for i in range(2000)]
    js.publish_async_complete(timeout=10)
    acks = [f.result(0) for f in futs]
    assert [a.seq for a in acks] == list(range(1, 2001))
    assert js.publish_async_pending == 0
    dup = js.publish_async("t.a", b"again", msg_id="a0").result(5)
    assert dup.duplicate and dup.seq == 1
    bad = js.publish_async("t.a", b"x", expected_last_seq=1)
    with pytest.raises(ts.WrongLastSequenceError):
        bad.result(5)
    nobody = js.publish_async("nostream.a", b"x")
    with pytest.raises(ts.NoRespondersError):
        nobody.result(5)


def test_publish_async_window_blocks_and_complete_times_out(jsbus: ts.MessageBus) -> None:
    """Without a stream behind the subject the acks never come (the reply goes nowhere):
    the window fills, publish_async blocks then times out, and complete names the count."""
    js = ts.JetStream(jsbus, publish_async_max_pending=5, timeout=0.5)
    # No stream, and a subscriber that swallows the publishes: no ack, no 503.
    sink = jsbus.subscribe("void.>")
    futs = [js.publish_async("void.x", b"x", timeout=30) for _ in range(5)]
    start = time.monotonic()
    with pytest.raises(ts.TimeoutError, match="5 acks outstanding"):
        js.publish_async("void.x", b"x", timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2
    with pytest.raises(ts.TimeoutError, match="5 publish acknowledgements still outstanding"):
        js.publish_async_complete(timeout=0.2)
    assert not any(f.done() for f in futs)
    sink.unsubscribe()
    jsbus.close()
    for f in futs:
        with pytest.raises(ts.ConnectionClosedError):
            f.result(5)


def test_publish_async_ack_timeout(jsbus: ts.MessageBus) -> None:
    js = jsbus.jetstream()
    sink = jsbus.subscribe("void2.>")
    fut = js.publish_async("void2.x", b"x", timeout=0.3)
    with pytest.raises(ts.TimeoutError):
        fut.result(5)
    js.publish_async_complete(1)
    sink.unsubscribe()


# --- consumers --------------------------------------------------------------------------------


def test_consumer_crud(js: ts.JetStream, stream: str) -> None:
    c = js.create_consumer(
        stream,
        durable="ground",
        filter_subjects=["t.a"],
        ack_wait=10,
        max_deliver=5,
        backoff=[10, 20],
        max_ack_pending=100,
        description="d",
        headers_only=False,
        inactive_threshold=timedelta(minutes=1),
    )
    info = c.info()
    assert info.name == "ground" and info.stream_name == stream
    cfg = info.config
    assert cfg.durable_name == "ground" and cfg.ack_policy == "explicit"
    assert cfg.filter_subjects == ["t.a"] and cfg.ack_wait == 10.0 and cfg.backoff == [10.0, 20.0]
    assert cfg.max_deliver == 5 and cfg.max_ack_pending == 100 and cfg.inactive_threshold == 60.0
    assert c.cached_info is info
    # Same config again: fine; different: ConsumerExistsError.
    js.create_consumer(stream, cfg)
    with pytest.raises(ts.ConsumerExistsError):
        js.create_consumer(stream, durable="ground", filter_subjects=["t.b"])
    updated = js.update_consumer(
        stream,
        durable="ground",
        filter_subjects=["t.b"],
        ack_wait=10,
        max_deliver=5,
        backoff=[10, 20],
        max_ack_pending=100,
    )
    assert updated.cached_info is not None and updated.cached_info.config.filter_subjects == ["t.b"]
    with pytest.raises(ts.ConsumerNotFoundError):
        js.update_consumer(stream, durable="absent")
    js.create_or_update_consumer(stream, durable="x2")
    js.create_or_update_consumer(stream, durable="x2", description="now with text")
    assert js.consumer_info(stream, "x2").config.description == "now with text"
    eph = js.create_consumer(stream)  # ephemeral, named by us
    assert sorted(js.consumer_names(stream)) == sorted(["ground", "x2", eph.name])
    assert len(js.consumers(stream)) == 3
    assert js.consumer(stream, "ground").name == "ground"
    js.delete_consumer(stream, "ground")
    with pytest.raises(ts.ConsumerNotFoundError) as exc:
        js.consumer(stream, "ground")
    assert exc.value.err_code == 10014
    with pytest.raises(ts.ConsumerNotFoundError):
        js.delete_consumer(stream, "ground")
    with pytest.raises(ts.StreamNotFoundError):
        js.create_consumer("NOPE", durable="x")


def test_consumer_bad_input(js: ts.JetStream, stream: str) -> None:
    with pytest.raises(ts.InvalidArgumentError, match="deliver_policy"):
        js.create_consumer(stream, deliver_policy="sometimes")
    with pytest.raises(ts.InvalidArgumentError, match="durable"):
        js.create_consumer(stream, durable="a.b")
    with pytest.raises(ts.InvalidArgumentError, match="opt_start_seq"):
        js.create_consumer(stream, deliver_policy="by_start_sequence")
    with pytest.raises(ts.InvalidArgumentError, match="opt_start_time"):
        js.create_consumer(stream, deliver_policy="by_start_time")
    with pytest.raises(ts.InvalidArgumentError, match="aware"):
        js.create_consumer(stream, opt_start_time=datetime(2020, 1, 1))
    with pytest.raises(ts.InvalidArgumentError, match="unknown consumer option"):
        js.create_consumer(stream, filter="t.a")
    c = js.create_consumer(stream, durable="ok")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ts.InvalidArgumentError, match="batch"):
            c.fetch(bad)  # type: ignore[arg-type]
    with pytest.raises(ts.InvalidArgumentError, match="timeout"):
        c.fetch(1, timeout=-1)
    with pytest.raises(ts.InvalidArgumentError, match="max_messages"):
        c.consume(lambda m: None, max_messages=0)
    with pytest.raises(ts.InvalidArgumentError, match="heartbeat"):
        c.messages(expires=10, heartbeat=6)
    assert js.consumer_names(stream) == ["ok"]


def _publish(js: ts.JetStream, subject: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        js.publish_async(subject, {"i": i})
    js.publish_async_complete(10)


@pytest.mark.parametrize(
    "policy, extra, expected",
    [
        ("all", {}, [0, 1, 2, 3, 4, 5]),
        ("last", {}, [5]),
        ("new", {}, []),
        ("by_start_sequence", {"opt_start_seq": 4}, [3, 4, 5]),
        ("last_per_subject", {"filter_subjects": ["t.>"]}, [4, 5]),
    ],
)
def test_deliver_policies(
    js: ts.JetStream, stream: str, policy: str, extra: dict, expected: List[int]
) -> None:
    for i in range(6):
        js.publish("t.a" if i % 2 == 0 else "t.b", {"i": i})
    c = js.create_consumer(stream, deliver_policy=policy, **extra)
    got = [m.data["i"] for m in c.fetch(10, timeout=0.5)]
    assert got == expected
    if policy == "new":
        js.publish("t.a", {"i": 6})
        assert [m.data["i"] for m in c.fetch(10, timeout=1)] == [6]


def test_deliver_by_start_time(js: ts.JetStream, stream: str) -> None:
    _publish(js, "t.a", 3)
    mid = js.get_msg(stream, 3).time
    assert mid is not None
    _publish(js, "t.a", 3, start=3)
    c = js.create_consumer(stream, opt_start_time=mid + timedelta(microseconds=1))
    assert c.cached_info is not None and c.cached_info.config.deliver_policy == "by_start_time"
    assert [m.data["i"] for m in c.fetch(10, 1)] == [3, 4, 5]


def test_filter_subjects(js: ts.JetStream, stream: str) -> None:
    for s in ["t.a", "t.b", "t.c", "t.a", "t.c"]:
        js.publish(s, s.encode())
    c = js.create_consumer(stream, filter_subjects=["t.a", "t.c"])
    assert [m.subject for m in c.fetch(10, 0.5)] == ["t.a", "t.c", "t.a", "t.c"]


def test_fetch_returns_early_with_what_is_ready(js: ts.JetStream, stream: str) -> None:
    _publish(js, "t.a", 3)
    c = js.create_consumer(stream, durable="f")
    start = time.monotonic()
    msgs = c.fetch(100, timeout=5)
    assert len(msgs) == 3 and time.monotonic() - start < 1  # not the full 5 s
    assert [m.metadata.sequence.stream for m in msgs] == [1, 2, 3]
    assert [m.metadata.num_pending for m in msgs] == [2, 1, 0]
    for m in msgs:
        m.ack()
    # Nothing ready: waits, and returns as soon as one arrives.
    later = threading.Timer(0.3, lambda: js.publish("t.a", {"i": 99}))
    later.start()
    start = time.monotonic()
    msgs = c.fetch(100, timeout=5)
    later.join(5)
    assert [m.data for m in msgs] == [{"i": 99}] and 0.2 < time.monotonic() - start < 2
    msgs[0].ack()
    # Nothing at all: an empty list after the timeout, no exception.
    start = time.monotonic()
    assert c.fetch(10, timeout=0.5) == []
    assert 0.4 < time.monotonic() - start < 1.5
    assert c.fetch(10, timeout=0) == []


def test_fetch_batch_limits_and_max_bytes(js: ts.JetStream, stream: str) -> None:
    for _i in range(10):
        js.publish("t.a", b"x" * 100)
    c = js.create_consumer(stream, ack_policy="none")
    assert len(c.fetch(4, 1)) == 4
    got = c.fetch(10, 1, max_bytes=350)  # about three 100-byte messages fit
    assert 1 <= len(got) <= 3
    assert len(got) + len(c.fetch(10, 1)) == 6


def test_next_raises_timeout(js: ts.JetStream, stream: str) -> None:
    c = js.create_consumer(stream, durable="n")
    start = time.monotonic()
    with pytest.raises(ts.TimeoutError):
        c.next(timeout=0.3)
    assert time.monotonic() - start < 1.5
    js.publish("t.a", b"hello")
    m = c.next(2)
    assert m.payload == b"hello" and m.data == b"hello"


def test_fetch_from_deleted_consumer(js: ts.JetStream, stream: str) -> None:
    c = js.create_consumer(stream, durable="gone")
    js.delete_consumer(stream, "gone")
    with pytest.raises(ts.ConsumerNotFoundError):
        c.fetch(1, 1)
    with pytest.raises(ts.ConsumerNotFoundError):
        c.next(1)


def test_fetch_sees_consumer_deleted_while_waiting(js: ts.JetStream, stream: str) -> None:
    c = js.create_consumer(stream, durable="gone2")
    later = threading.Timer(0.3, lambda: js.delete_consumer(stream, "gone2"))
    later.start()
    start = time.monotonic()
    with pytest.raises(ts.ConsumerDeletedError):
        c.fetch(5, timeout=5)
    assert time.monotonic() - start < 3
    later.join(5)


# --- messages and acknowledgements -------------------------------------------------------------


def test_metadata_and_acks(js: ts.JetStream, stream: str) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    js.publish("t.a", {"n": 1}, headers={"X-Id": "7"})
    m = js.create_consumer(stream, durable="meta").next(2)
    md = m.metadata
    assert (md.stream, md.consumer, md.sequence.stream, md.sequence.consumer) == (stream, "meta", 1, 1)
    assert md.num_delivered == 1 and md.num_pending == 0 and md.domain == ""
    assert before < md.timestamp < datetime.now(timezone.utc) + timedelta(seconds=1)
    assert m.headers == {"X-Id": "7"} and m.subject == "t.a" and m.data == {"n": 1}
    m.in_progress()
    m.in_progress()  # may repeat
    m.ack()
    assert m.acked
    for again in (m.ack, m.nak, m.term, lambda: m.ack_sync(1), m.in_progress):
        with pytest.raises(ts.MsgAlreadyAckedError):
            again()


def test_nak_redelivers_and_term_does_not(js: ts.JetStream, stream: str) -> None:
    js.publish("t.a", b"1")
    c = js.create_consumer(stream, durable="nak", ack_wait=30)
    m = c.next(2)
    m.nak()
    again = c.next(2)
    assert again.metadata.sequence.stream == 1 and again.metadata.num_delivered == 2
    start = time.monotonic()
    again.nak(delay=0.5)
    third = c.next(3)
    assert time.monotonic() - start >= 0.4 and third.metadata.num_delivered == 3
    with pytest.raises(ts.InvalidArgumentError, match="reason"):
        third.term("two\nlines")
    assert not third.acked
    third.term(reason="bad frame")
    assert c.fetch(1, 0.5) == []


def test_ack_sync_and_redelivery_after_ack_wait(js: ts.JetStream, stream: str) -> None:
    js.publish("t.a", b"1")
    js.publish("t.a", b"2")
    c = js.create_consumer(stream, durable="aw", ack_wait=0.5)
    first = c.next(2)
    first.ack_sync(timeout=2)
    second = c.next(2)
    assert second.metadata.sequence.stream == 2  # not acked: back after ack_wait
    again = c.next(3)
    assert again.metadata.sequence.stream == 2 and again.metadata.num_delivered == 2
    again.ack_sync()
    info = c.info()
    assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 2


def test_max_deliver_and_backoff(js: ts.JetStream, stream: str) -> None:
    js.publish("t.a", b"1")
    c = js.create_consumer(stream, durable="md", max_deliver=2, backoff=[0.2, 0.2], ack_wait=0.2)
    assert c.next(2).metadata.num_delivered == 1
    assert c.next(3).metadata.num_delivered == 2
    assert c.fetch(1, 1) == []  # max_deliver reached


def test_ack_none_and_detached_messages_not_ackable(js: ts.JetStream, stream: str) -> None:
    js.publish("t.a", b"1")
    with pytest.raises(ts.NotAckableError):
        parse_metadata("_INBOX.abc")
    m = js.create_consumer(stream, ack_policy="none").next(2)
    assert m.metadata.sequence.stream == 1


def test_metadata_v2_token_format() -> None:
    md = parse_metadata("$JS.ACK.hub.ACCHASH.S.C.3.10.7.1700000000123456789.42.rand")
    assert (md.domain, md.stream, md.consumer, md.num_delivered) == ("hub", "S", "C", 3)
    assert (md.sequence.stream, md.sequence.consumer, md.num_pending) == (10, 7, 42)
    assert md.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)
    assert parse_metadata("$JS.ACK._.H.S.C.1.2.3.1700000000000000000.0").domain == ""
    v1 = parse_metadata("$JS.ACK.S.C.1.2.3.1700000000000000000.5")
    assert (v1.stream, v1.sequence.stream, v1.num_pending, v1.domain) == ("S", 2, 5, "")
    with pytest.raises(ts.NotAckableError):
        parse_metadata("$JS.ACK.S.C.x.2.3.4.5")


@pytest.mark.timeout(60)
def test_eight_threads_fetch_each_message_once(js: ts.JetStream, stream: str) -> None:
    total = 4000
    _publish(js, "t.a", total)
    c = js.create_consumer(stream, durable="shared", max_ack_pending=-1)
    seen: List[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            msgs = c.fetch(50, timeout=1.0)
            if not msgs:
                with lock:
                    if len(seen) >= total:
                        return
                continue
            for m in msgs:
                m.ack()
            with lock:
                seen.extend(m.metadata.sequence.stream for m in msgs)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    join_all(threads, 40, "fetching threads")
    assert sorted(seen) == list(range(1, total + 1))  # each once
    assert c.info().num_ack_pending == 0


def test_fetch_on_closed_bus(js: ts.JetStream, jsbus: ts.MessageBus, stream: str) -> None:
    c = js.create_consumer(stream, durable="cl")
    later = threading.Timer(0.2, jsbus.close)
    later.start()
    with pytest.raises(ts.ConnectionClosedError):
        c.fetch(1, timeout=5)
    later.join(5)
    with pytest.raises(ts.ConnectionClosedError):
        js.stream_names()


def test_exported_from_package() -> None:
    for name in [
        "JetStream",
        "JetStreamError",
        "StreamNotFoundError",
        "ConsumerNotFoundError",
        "WrongLastSequenceError",
        "MessageNotFoundError",
        "JetStreamNotEnabledError",
        "PubAck",
    ]:
        assert hasattr(ts, name)
    assert issubclass(ts.JetStreamError, ts.Error)
    assert issubclass(ts.InvalidArgumentError, ValueError) and issubclass(ts.MsgAlreadyAckedError, ts.Error)
    assert isinstance(concurrent.futures.Future(), concurrent.futures.Future)


def test_readme_jetstream_block_runs(js: ts.JetStream, jsbus: ts.MessageBus, capsys: object) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "bus.jetstream()" in b]
    assert len(blocks) == 1
    exec(blocks[0], {"bus": jsbus})  # noqa: S102 - the README's own example
    assert js.stream_info("TELEMETRY").state.messages == 11


def test_fetch_inboxes_are_shared_and_bounded(js: ts.JetStream, jsbus: ts.MessageBus, stream: str) -> None:
    js.create_consumer(stream, durable="pool")
    for _ in range(40):  # a new Consumer object each time, as a script in a loop would make
        js.consumer(stream, "pool").fetch(1, timeout=0.01)
    assert len(jsbus.subscriptions) == 1  # one reused reply inbox, not one per object or fetch


def test_parse_pub_ack_plain_fast_path_and_json_fallback() -> None:
    from telestion_sync.jetstream.publish import parse_pub_ack

    def msg(payload: bytes) -> ts.Message:
        return ts.Message("_INBOX.x.1", payload)

    assert parse_pub_ack(msg(b'{"stream":"S","seq":7}'), "s") == ts.PubAck("S", 7)
    assert parse_pub_ack(msg(b'{"stream":"S","seq":7,"duplicate": true}'), "s") == ts.PubAck("S", 7, True)
    hub = parse_pub_ack(msg(b'{"stream":"S","seq":7,"domain":"hub"}'), "s")
    assert hub == ts.PubAck("S", 7, False, "hub")
    assert parse_pub_ack(msg(b'{"stream":"S\\u003cx","seq":1}'), "s").stream == "S<x"
    with pytest.raises(ts.JetStreamError):
        parse_pub_ack(msg(b'{"stream":"S","seq":7'), "s")


def test_publish_async_plain_acks_resolve_in_order(js: ts.JetStream, stream: str) -> None:
    futs = [js.publish_async("t.a", b"%d" % i) for i in range(500)]
    js.publish_async_complete(timeout=10)
    acks = [f.result(0) for f in futs]
    assert acks == [ts.PubAck(stream, i) for i in range(1, 501)]


def test_publish_async_futures_behave_as_futures(js: ts.JetStream, stream: str) -> None:
    """The lean futures (their condition made on first need) wake waiters, run callbacks
    added before and after the ack, and work with concurrent.futures.wait/as_completed."""
    sink = js.bus.subscribe("void3.>")  # swallows publishes: their acks never come
    waited = js.publish_async("void3.x", b"x", timeout=1.0)
    got: List[BaseException] = []
    waiter = threading.Thread(target=lambda: got.append(waited.exception(timeout=10)))  # type: ignore[arg-type]
    waiter.start()
    join_all([waiter], 15, "the waiter on an unacknowledged future")
    assert isinstance(got[0], ts.TimeoutError)  # the sweeper failed it and woke the waiter

    calls: List[concurrent.futures.Future] = []  # type: ignore[type-arg]
    before = js.publish_async("t.a", b"1")
    before.add_done_callback(calls.append)
    futs = [before] + [js.publish_async("t.a", b"%d" % i) for i in range(2, 300)]
    done, not_done = concurrent.futures.wait(futs, timeout=10)
    assert len(done) == 299 and not not_done
    assert calls == [before]
    after: List[concurrent.futures.Future] = []  # type: ignore[type-arg]
    before.add_done_callback(after.append)  # already done: called at once
    assert after == [before]
    seqs = sorted(f.result().seq for f in concurrent.futures.as_completed(futs, timeout=5))
    assert seqs == list(range(1, 300))
    cancelled = js.publish_async("void3.y", b"x", timeout=0.3)
    assert cancelled.cancel() and cancelled.cancelled()
    js.publish_async_complete(5)  # its ack timeout is ignored: it stays cancelled
    assert cancelled.cancelled()
    sink.unsubscribe()


def test_publish_async_complete_returns_with_every_future_settled(
    js: ts.JetStream, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack left the table only once its future was settled: publish_async_complete()
    cannot return while the reader is still parsing the last ack (a slow parse widens that)."""
    from telestion_sync.jetstream import publish as publish_mod

    real = publish_mod.parse_pub_ack

    def slow_parse(msg: Any, subject: str) -> ts.PubAck:
        time.sleep(0.3)  # widens the window between taking the ack and settling its future
        return real(msg, subject)

    monkeypatch.setattr(publish_mod, "parse_pub_ack", slow_parse)
    futs = [js.publish_async("t.a", b"%d" % i) for i in range(3)]
    js.publish_async_complete(10)
    assert all(f.done() for f in futs)
    assert [f.result(0).seq for f in futs] == [1, 2, 3]


def test_publish_async_sweeper_does_not_outlive_bus_close(js_server: NatsServer) -> None:
    b = fast_bus(js_server.url)
    js = b.jetstream()
    with pytest.raises(ts.NoRespondersError):  # an ack (a 503) came: the sweeper is running
        js.publish_async("nostream.x", b"x").result(5)
    assert [t for t in threading.enumerate() if t.name == "telestion_sync-js-ack-timeouts"]
    b.close()
    alive = [t.name for t in threading.enumerate() if t.name.startswith("telestion_sync-js")]
    assert alive == []


def test_publish_async_sweeper_ending_while_a_publish_comes(js: ts.JetStream, stream: str) -> None:
    """The idle sweeper decides to end just as a publish adds its entry and sees the sweeper
    still running: that publish's ack timeout must still fire (a sweeper keeps running or a
    new one starts). The interleaving is forced: the sweeper's last look at the table lets a
    publish run to completion before it acts on what it saw."""
    pub = js._publisher
    pub._idle_exit = 0.0  # the sweeper ends at the first look that finds nothing outstanding
    sink = js.bus.subscribe("void5.>")  # swallows the publish: its ack never comes
    js.bus.flush()
    raced: List[concurrent.futures.Future] = []  # type: ignore[type-arg]
    fired = threading.Event()
    sweeper_name = "telestion_sync-js-ack-timeouts"

    def racing_publish() -> None:
        raced.append(js.publish_async("void5.x", b"x", timeout=0.5))

    class Racing(dict):  # type: ignore[type-arg]
        armed = True
        empty_looks = 0

        def __len__(self) -> int:
            n = dict.__len__(self)
            if not Racing.armed or threading.current_thread().name != sweeper_name:
                return n
            Racing.empty_looks = Racing.empty_looks + 1 if n == 0 else 0
            if Racing.empty_looks == 2:  # the loop's look, then the one before it ends
                Racing.armed = False
                t = threading.Thread(target=racing_publish)
                t.start()
                join_all([t], 5, "the racing publish")
                fired.set()
            return n

    pub._pending = Racing()
    assert js.publish_async("t.a", b"x").result(5).seq == 1
    assert fired.wait(5)
    assert isinstance(raced[0].exception(timeout=5), ts.TimeoutError)
    sink.unsubscribe()


def test_pub_ack_futures_settled_while_threads_start_waiting() -> None:
    """Settling races a thread starting to wait (result with a timeout, a done-callback,
    concurrent.futures.wait): each sees the result exactly once, none waits out its timeout."""
    from telestion_sync.jetstream.publish import PubAckFuture

    ack = ts.PubAck("S", 1)
    for _ in range(200):
        f = PubAckFuture("s", 0.0)
        got: List[Any] = []
        calls: List[Any] = []
        go = threading.Barrier(4)

        def waiter(f: PubAckFuture = f, got: List[Any] = got, go: threading.Barrier = go) -> None:
            go.wait(5)
            got.append(f.result(5))

        def callbacker(f: PubAckFuture = f, calls: List[Any] = calls, go: threading.Barrier = go) -> None:
            go.wait(5)
            f.add_done_callback(calls.append)

        def waits(f: PubAckFuture = f, got: List[Any] = got, go: threading.Barrier = go) -> None:
            go.wait(5)
            done, _ = concurrent.futures.wait([f], timeout=5, return_when=concurrent.futures.FIRST_COMPLETED)
            got.append(done == {f})

        threads = [threading.Thread(target=t) for t in (waiter, callbacker, waits)]
        for t in threads:
            t.start()
        go.wait(5)
        f.settle(ack, None)
        join_all(threads, 10, "a thread waiting on a settled future")
        assert sorted(map(repr, got)) == sorted([repr(ack), "True"])
        assert calls == [f]
        f.settle(None, ts.TimeoutError("late"))  # a second settle (a late timeout) is ignored
        assert f.result(0) == ack and f.exception(0) is None
