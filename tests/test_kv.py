"""Key-Value store: buckets, keys, revisions, watches (through kill -9 restarts and cluster
failover) and interop with nats-py, against real nats-servers."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any, List, Optional, Tuple

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsCluster, NatsServer

from .conftest import fast_bus, wait_until


@pytest.fixture
def kv(js: ts.JetStream) -> ts.KeyValue:
    return js.create_key_value("cfg", history=10)


def _messages(js: ts.JetStream, bucket: str) -> int:
    return js.stream_info(f"KV_{bucket}").state.messages


# --- buckets ----------------------------------------------------------------------------------


def test_create_bucket_status_and_stream_layout(js: ts.JetStream) -> None:
    kv = js.create_key_value(
        "ground",
        history=5,
        ttl=timedelta(hours=1),
        max_value_size=1024,
        max_bytes=1 << 20,
        storage="memory",
        compression=True,
        description="station state",
    )
    st = kv.status()
    assert (st.bucket, st.values, st.bytes, st.history, st.ttl) == ("ground", 0, 0, 5, 3600.0)
    assert (st.max_value_size, st.max_bytes, st.storage, st.replicas) == (1024, 1 << 20, "memory", 1)
    assert st.compressed is True and st.description == "station state" and st.backing_store == "JetStream"
    cfg = js.stream_info("KV_ground").config
    assert cfg.subjects == ["$KV.ground.>"] and cfg.max_msgs_per_subject == 5
    assert cfg.allow_rollup_hdrs and cfg.deny_delete and cfg.allow_direct and cfg.discard == "new"
    assert cfg.duplicate_window == 120.0 and cfg.compression == "s2"
    # Same settings again: fine; other settings: the stream name is in use.
    js.create_key_value(
        "ground",
        history=5,
        ttl=3600,
        max_value_size=1024,
        max_bytes=1 << 20,
        storage="memory",
        compression=True,
        description="station state",
    )
    with pytest.raises(ts.StreamNameInUseError):
        js.create_key_value("ground", history=2)
    kv.put("a", 1)
    kv.put("b", 2)
    st = kv.status()
    assert st.values == 2 and st.bytes > 0


def test_bucket_lookup_names_list_delete(js: ts.JetStream) -> None:
    with pytest.raises(ts.BucketNotFoundError) as exc:
        js.key_value("nope")
    assert isinstance(exc.value, ts.JetStreamError) and "nope" in str(exc.value)
    js.create_key_value("b1")
    js.create_key_value("b2", history=3)
    js.create_stream("PLAIN", subjects=["plain.>"])
    js.create_object_store("notkv")
    assert js.key_value_names() == ["b1", "b2"]
    assert [(s.bucket, s.history) for s in js.key_values()] == [("b1", 1), ("b2", 3)]
    assert js.key_value("b2").status().history == 3
    js.delete_key_value("b1")
    assert js.key_value_names() == ["b2"]
    with pytest.raises(ts.BucketNotFoundError):
        js.delete_key_value("b1")
    with pytest.raises(ts.BucketNotFoundError):
        js.key_value("b1")


@pytest.mark.parametrize("name", ["", "a.b", "a b", "a*", "a>", "ä", "x/y"])
def test_invalid_bucket_names(js: ts.JetStream, name: str) -> None:
    for call in (js.create_key_value, js.key_value, js.delete_key_value):
        with pytest.raises(ts.InvalidArgumentError) as exc:
            call(name)
        assert isinstance(exc.value, ValueError) and isinstance(exc.value, ts.Error)
    assert js.stream_names() == []


@pytest.mark.parametrize("history", [0, 65, -1, 1.5, True])
def test_history_range(js: ts.JetStream, history: Any) -> None:
    with pytest.raises(ts.InvalidArgumentError, match="history"):
        js.create_key_value("h", history=history)


# --- keys -------------------------------------------------------------------------------------


def test_put_get_entry_fields_and_codecs(js: ts.JetStream, kv: ts.KeyValue) -> None:
    r1 = kv.put("antenna.az", 123.4)
    r2 = kv.put("antenna.el", {"deg": 45})
    r3 = kv.put("raw", b"\x00\xff")
    r4 = kv.put("antenna.az", 124.0)
    assert [r1, r2, r3, r4] == [1, 2, 3, 4]
    e = kv.get("antenna.az")
    assert (e.bucket, e.key, e.value, e.payload, e.revision) == ("cfg", "antenna.az", 124.0, b"124.0", 4)
    assert (e.delta, e.operation) == (0, "PUT")
    assert e.created is not None and e.created.tzinfo is not None
    assert kv.get("antenna.el").value == {"deg": 45}
    assert kv.get("raw").value == b"\x00\xff"
    assert kv.get("antenna.az", revision=1).value == 123.4
    assert kv.get("antenna.az", 1).revision == 1
    # A revision of another key is not this key's.
    with pytest.raises(ts.KeyNotFoundError):
        kv.get("antenna.az", revision=2)
    with pytest.raises(ts.KeyNotFoundError):
        kv.get("antenna.az", revision=99)
    with pytest.raises(ts.KeyNotFoundError) as exc:
        kv.get("missing")
    assert "missing" in str(exc.value) and "cfg" in str(exc.value)
    # CBOR per call and per handle; raw on get.
    kv.put("blob", {"img": b"\x01\x02"}, codec="cbor")
    assert kv.get("blob").value == {"img": b"\x01\x02"}  # auto: by Content-Type
    cb = js.key_value("cfg", codec="cbor")
    cb.put("c2", [1, b"x"])
    assert cb.get("c2").value == [1, b"x"]
    assert kv.get("antenna.el", codec="raw").value == b'{"deg":45}'
    with pytest.raises(ValueError):
        js.key_value("cfg", codec="nonsense")


def test_create_update_with_revisions(kv: ts.KeyValue) -> None:
    r = kv.create("k", "v1")
    assert r == 1
    with pytest.raises(ts.KeyExistsError) as exc:
        kv.create("k", "again")
    assert exc.value.err_code == 10071 and isinstance(exc.value, ts.WrongLastSequenceError)
    r2 = kv.update("k", "v2", last=r)
    assert r2 == 2 and kv.get("k").value == "v2"
    with pytest.raises(ts.WrongLastSequenceError) as exc2:
        kv.update("k", "v3", last=r)
    assert not isinstance(exc2.value, ts.KeyExistsError) and "k" in str(exc2.value)
    assert kv.get("k").revision == 2
    # update(last=0) means "no revision yet": fails on an existing key, works on a new one.
    with pytest.raises(ts.WrongLastSequenceError):
        kv.update("k", "x", last=0)
    assert kv.update("fresh", "x", last=0) == 3
    # create over a deleted and over a purged key works (as in nats.go).
    kv.delete("k")
    assert kv.create("k", "reborn") == 5
    kv.purge("k")
    assert kv.create("k", "again") == 7
    assert kv.get("k").value == "again"


def test_delete_purge_and_their_preconditions(js: ts.JetStream, kv: ts.KeyValue) -> None:
    kv.put("a", 1)
    kv.put("a", 2)
    with pytest.raises(ts.WrongLastSequenceError):
        kv.delete("a", last=1)
    rev = kv.delete("a", last=2)
    assert rev == 3
    with pytest.raises(ts.KeyNotFoundError) as exc:
        kv.get("a")
    assert "deleted" in str(exc.value)
    assert [e.operation for e in kv.history("a")] == ["PUT", "PUT", "DEL"]
    assert kv.get("a", revision=1).value == 1  # older revisions stay after a delete
    with pytest.raises(ts.WrongLastSequenceError):
        kv.purge("a", last=2)
    kv.purge("a", last=3)
    hist = kv.history("a")
    assert [(e.operation, e.revision, e.value) for e in hist] == [("PURGE", 4, None)]
    assert _messages(js, "cfg") == 1
    with pytest.raises(ts.KeyNotFoundError):
        kv.get("a", revision=1)


@pytest.mark.parametrize(
    "key, rule",
    [
        ("", "empty"),
        (".a", "start or end"),
        ("a.", "start or end"),
        ("a..b", "empty token"),
        ("a b", "only letters"),
        ("a*", "only letters"),
        ("a.>", "only letters"),
        ("ä", "only letters"),
        (5, "str"),
    ],
)
def test_invalid_keys_raise_before_sending(js: ts.JetStream, kv: ts.KeyValue, key: Any, rule: str) -> None:
    for call in (
        lambda: kv.put(key, 1),
        lambda: kv.get(key),
        lambda: kv.create(key, 1),
        lambda: kv.update(key, 1, last=1),
        lambda: kv.delete(key),
        lambda: kv.purge(key),
        lambda: kv.history(key),
    ):
        with pytest.raises(ts.InvalidKeyError) as exc:
            call()
        assert isinstance(exc.value, ValueError) and isinstance(exc.value, ts.Error)
        assert repr(key) in str(exc.value) and rule in str(exc.value)
    assert _messages(js, "cfg") == 0


def test_valid_key_characters(kv: ts.KeyValue) -> None:
    key = "A-z_0/9=x.y"
    kv.put(key, 1)
    assert kv.get(key).value == 1
    assert kv.keys() == [key]


def test_keys_filters_history_empty(kv: ts.KeyValue) -> None:
    assert kv.keys() == []  # an empty bucket: an empty list, not an error
    kv.put("sat.a.temp", 1)
    kv.put("sat.a.volt", 2)
    kv.put("sat.b.temp", 3)
    kv.put("gs.mode", "idle")
    kv.put("sat.a.temp", 4)
    kv.delete("sat.a.volt")
    assert kv.keys() == ["gs.mode", "sat.a.temp", "sat.b.temp"]
    assert kv.keys("sat.*.temp") == ["sat.a.temp", "sat.b.temp"]
    assert kv.keys(["gs.>", "sat.b.*"]) == ["gs.mode", "sat.b.temp"]
    assert kv.keys("nothing.>") == []
    with pytest.raises(ts.InvalidKeyError):
        kv.keys("a b")
    hist = kv.history("sat.a.temp")
    assert [(e.revision, e.value, e.operation) for e in hist] == [(1, 1, "PUT"), (5, 4, "PUT")]
    with pytest.raises(ts.KeyNotFoundError):
        kv.history("never")


def test_history_is_bounded_by_bucket_history(js: ts.JetStream) -> None:
    kv = js.create_key_value("h3", history=3)
    for i in range(6):
        kv.put("k", i)
    assert [e.value for e in kv.history("k")] == [3, 4, 5]


def test_purge_deletes(js: ts.JetStream, kv: ts.KeyValue) -> None:
    kv.put("a", 1)
    kv.put("b", 1)
    kv.put("b", 2)
    kv.delete("b")
    kv.put("c", 1)
    kv.purge("c")
    # Recent markers stay (only what is before them goes) ...
    assert kv.purge_deletes() == 2
    assert [e.operation for e in kv.history("b")] == ["DEL"]
    assert _messages(js, "cfg") == 3
    # ... and with older_than <= 0 the markers go too.
    assert kv.purge_deletes(older_than=0) == 2
    assert _messages(js, "cfg") == 1
    assert kv.keys() == ["a"]
    with pytest.raises(ts.KeyNotFoundError):
        kv.history("b")
    with pytest.raises(ts.InvalidArgumentError):
        kv.purge_deletes(older_than="soon")


def test_per_key_ttl(js: ts.JetStream) -> None:
    kv = js.create_key_value("ttl", allow_msg_ttl=True, limit_marker_ttl=5)
    st = kv.status()
    assert st.allow_msg_ttl is True and st.limit_marker_ttl == 5.0
    kv.put("short", "gone soon", ttl=1)
    kv.create("long", "stays", ttl=timedelta(hours=1))
    assert kv.get("short").value == "gone soon"

    def expired() -> bool:
        try:
            kv.get("short")
        except ts.KeyNotFoundError:
            return True
        return False

    wait_until(expired, 10, "the key expired")
    assert kv.get("long").value == "stays"
    assert kv.keys() == ["long"]
    with pytest.raises(ts.InvalidArgumentError):
        kv.put("x", 1, ttl=0.5)


def test_bucket_deleted_under_a_handle(js: ts.JetStream) -> None:
    kv = js.create_key_value("gone")
    kv.put("a", 1)
    js.delete_key_value("gone")
    with pytest.raises(ts.BucketNotFoundError):
        kv.status()
    with pytest.raises(ts.BucketNotFoundError):
        kv.watch()


# --- watch ------------------------------------------------------------------------------------


def _drain_initial(w: ts.KeyWatcher, timeout: float = 5.0) -> List[ts.KeyValueEntry]:
    out = []
    while True:
        e = w.next(timeout)
        if e is None:
            return out
        out.append(e)


def test_watch_initial_marker_then_updates(kv: ts.KeyValue) -> None:
    kv.put("a", 1)
    kv.put("b", 1)
    kv.put("a", 2)
    kv.delete("b")
    with kv.watch() as w:
        initial = _drain_initial(w)
        assert [(e.key, e.revision, e.operation) for e in initial] == [("a", 3, "PUT"), ("b", 4, "DEL")]
        assert initial[-1].delta == 0 and initial[0].delta == 1
        assert w.initial_done.is_set()
        kv.put("c", {"x": 1})
        e = w.next(5)
        assert e is not None and (e.key, e.value, e.revision, e.operation) == ("c", {"x": 1}, 5, "PUT")
        kv.purge("a")
        e = w.next(5)
        assert e is not None and (e.key, e.operation, e.value) == ("a", "PURGE", None)
        with pytest.raises(ts.TimeoutError):
            w.next(0.3)
        assert w.last_revision == 6


def test_watch_empty_bucket_marker_first(kv: ts.KeyValue) -> None:
    with kv.watch("x.>") as w:
        assert w.next(5) is None
        kv.put("y", 1)  # not watched
        kv.put("x.1", 1)
        e = w.next(5)
        assert e is not None and e.key == "x.1" and e.revision == 2


def test_watch_options(kv: ts.KeyValue) -> None:
    kv.put("a", 1)
    kv.put("a", 2)
    kv.put("b", 3)
    kv.delete("b")
    with kv.watch(include_history=True) as w:
        assert [(e.key, e.revision) for e in _drain_initial(w)] == [("a", 1), ("a", 2), ("b", 3), ("b", 4)]
    with kv.watch(ignore_deletes=True) as w:
        assert [(e.key, e.revision) for e in _drain_initial(w)] == [("a", 2)]
        kv.delete("a")
        kv.put("c", 1)
        e = w.next(5)
        assert e is not None and (e.key, e.revision) == ("c", 6)
    with kv.watch(meta_only=True) as w:
        got = _drain_initial(w)
        assert [(e.key, e.payload, e.operation) for e in got] == [
            ("b", b"", "DEL"),
            ("a", b"", "DEL"),
            ("c", b"", "PUT"),
        ]
    with kv.watch(updates_only=True) as w:
        with pytest.raises(ts.TimeoutError):
            w.next(0.3)  # no initial values, and no marker (as nats.go)
        kv.put("d", 1)
        e = w.next(5)
        assert e is not None and (e.key, e.revision) == ("d", 7)
    with kv.watch(["a", "d"]) as w:
        assert [e.key for e in _drain_initial(w)] == ["a", "d"]
    with pytest.raises(ts.InvalidArgumentError):
        kv.watch(include_history=True, updates_only=True)
    with pytest.raises(ts.InvalidKeyError):
        kv.watch("a..b")
    with pytest.raises(ts.InvalidArgumentError):
        kv.watch([])


def test_watch_ignore_deletes_marker_after_trailing_delete(kv: ts.KeyValue) -> None:
    kv.put("a", 1)
    kv.delete("b")
    with kv.watch(ignore_deletes=True) as w:
        assert [e.key for e in _drain_initial(w)] == ["a"]


def test_watch_iteration_and_stop_from_another_thread(kv: ts.KeyValue) -> None:
    for i in range(3):
        kv.put(f"k{i}", i)
    w = kv.watch()
    got: List[Optional[ts.KeyValueEntry]] = []
    three = threading.Event()

    def loop() -> None:
        for e in w:
            got.append(e)
            if len(got) == 5:
                three.set()

    t = threading.Thread(target=loop)
    t.start()
    kv.put("k9", 9)
    assert three.wait(5)
    w.stop()
    t.join(5)
    assert not t.is_alive()
    assert [None if e is None else e.key for e in got] == ["k0", "k1", "k2", None, "k9"]
    with pytest.raises(ts.SubscriptionClosedError):
        w.next(0.1)


def test_watch_callback_and_initial_done(kv: ts.KeyValue) -> None:
    kv.put("a", 1)
    kv.put("b", 2)
    got: List[Tuple[str, Any]] = []
    cond = threading.Condition()
    done = threading.Event()

    def cb(e: ts.KeyValueEntry) -> None:
        with cond:
            got.append((e.key, e.value))
            cond.notify_all()

    def initial() -> None:
        with cond:
            got.append(("--", None))
        done.set()

    w = kv.watch(callback=cb, on_initial_done=initial)
    assert done.wait(5) and w.wait_initial(1)
    kv.put("a", 3)
    with cond:
        assert cond.wait_for(lambda: len(got) == 4, 5)
    assert got == [("a", 1), ("b", 2), ("--", None), ("a", 3)]
    w.stop()
    assert w.join(5)
    with pytest.raises(ts.InvalidArgumentError):
        kv.watch(callback="nope")  # type: ignore[arg-type]


def test_concurrent_watchers_on_one_bucket(kv: ts.KeyValue) -> None:
    kv.put("a", 1)
    watchers = [kv.watch() for _ in range(3)]
    try:
        for w in watchers:
            assert [e.key for e in _drain_initial(w)] == ["a"]
        kv.put("b", 2)
        for w in watchers:
            e = w.next(5)
            assert e is not None and e.key == "b"
    finally:
        for w in watchers:
            w.stop()


def test_watch_thread_ends_when_bus_closes(js_server: NatsServer) -> None:
    b = fast_bus(js_server.url)
    kv = b.jetstream().create_key_value("closing")
    try:
        w = kv.watch(callback=lambda e: None)
        it = kv.watch()
        assert it.next(5) is None
    finally:
        b.jetstream().delete_key_value("closing")
        b.close()
    assert w.join(5)
    assert list(it) == []


def _writer_put(kv: ts.KeyValue, key: str, value: Any, deadline: float) -> int:
    """Put, retrying while the server (or a stream leader) is coming back."""
    while True:
        try:
            return kv.put(key, value, timeout=2)
        except ts.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.timeout(60)
def test_watch_survives_kill_9_restart() -> None:
    """kill -9 and restart on the same store: the watch resumes after the last revision it
    handed out; the updates written right after the restart all arrive, none twice."""
    with NatsServer(jetstream=True) as srv:
        wb, pb = fast_bus(srv.url), fast_bus(srv.url)
        try:
            kv = pb.jetstream().create_key_value("live", history=5)
            for i in range(10):
                kv.put(f"k{i % 3}", i)
            w = wb.jetstream().key_value("live").watch()
            initial = _drain_initial(w)
            assert [e.value for e in initial] == [7, 8, 9]
            for i in range(10, 20):
                kv.put(f"k{i % 3}", i)
            assert [w.next(5).value for _ in range(5)] == [10, 11, 12, 13, 14]  # type: ignore[union-attr]
            srv.kill()
            srv.restart()
            deadline = time.monotonic() + 30
            for i in range(20, 30):
                _writer_put(kv, f"k{i % 3}", i, deadline)
            got = []
            while len(got) < 15:
                e = w.next(20)
                assert e is not None
                got.append((e.value, e.revision))
            assert got == [(i, i + 1) for i in range(15, 30)]
            with pytest.raises(ts.TimeoutError):
                w.next(0.5)
            assert wb.stats.reconnects >= 1
            w.stop()
        finally:
            wb.close()
            pb.close()


@pytest.mark.timeout(90)
def test_watch_survives_failover_to_another_cluster_node() -> None:
    """A replicas=3 bucket; the node the watcher is connected to is killed: the watcher
    reconnects to another node and resumes; every update stored meanwhile arrives, in order,
    none twice (compared with what the stream holds, since a put retried after a lost ack may
    legitimately be stored twice)."""
    with NatsCluster(3, jetstream=True) as cluster:
        wb = fast_bus(cluster.urls)
        victim = cluster.node_for(wb.connected_url)
        other_url = next(u for u in cluster.urls if u != victim.url)
        pb = fast_bus(other_url)
        try:
            js = pb.jetstream(timeout=5)
            deadline = time.monotonic() + 30
            while True:
                try:
                    kv = js.create_key_value("rep", replicas=3)
                    break
                except ts.Error:
                    assert time.monotonic() < deadline, "no JetStream meta leader"
                    time.sleep(0.2)
            for i in range(5):
                _writer_put(kv, f"k.{i}", i, deadline)
            w = wb.jetstream(timeout=10).key_value("rep").watch("k.>")
            assert [e.value for e in _drain_initial(w, 10)] == [0, 1, 2, 3, 4]
            victim.kill()
            for i in range(5, 25):
                _writer_put(kv, f"k.{i}", i, deadline)
            while True:  # what the stream holds (the meta leader may be re-elected after the kill)
                try:
                    msgs = js.history("$KV.rep.>", stream="KV_rep", timeout=5)
                    break
                except ts.Error:
                    assert time.monotonic() < deadline + 30, "stream not readable after the failover"
                    time.sleep(0.2)
            stored = [(m.subject[len("$KV.rep.") :], m.metadata.sequence.stream) for m in msgs]
            expected = [s for s in stored if s[1] > 5]
            assert {int(k[2:]) for k, _ in expected} == set(range(5, 25))
            got = []
            while len(got) < len(expected):
                e = w.next(30)
                assert e is not None
                got.append((e.key, e.revision))
            assert got == expected
            with pytest.raises(ts.TimeoutError):
                w.next(0.5)
            assert wb.connected_url != victim.url
            w.stop()
        finally:
            wb.close()
            pb.close()


# --- interop with nats-py ---------------------------------------------------------------------


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_nats_py_writes_we_read_and_watch(js_server: NatsServer, js: ts.JetStream) -> None:
    import nats

    async def write() -> List[int]:
        nc = await nats.connect(js_server.url)
        pjs = nc.jetstream()
        pkv = await pjs.create_key_value(bucket="pyb", history=5)
        revs = [await pkv.put("sat.temp", b'{"c":21.5}'), await pkv.put("raw", b"\x00\x01\xff")]
        revs.append(await pkv.put("sat.temp", b'{"c":22.0}'))
        await pkv.delete("raw")
        await nc.close()
        return revs

    assert _run(write()) == [1, 2, 3]
    kv = js.key_value("pyb")
    assert kv.status().history == 5
    e = kv.get("sat.temp")
    assert (e.value, e.revision, e.payload) == ({"c": 22.0}, 3, b'{"c":22.0}')
    with pytest.raises(ts.KeyNotFoundError):
        kv.get("raw")
    assert kv.get("raw", revision=2).payload == b"\x00\x01\xff"
    assert [e.operation for e in kv.history("raw")] == ["PUT", "DEL"]
    assert kv.keys() == ["sat.temp"]
    with kv.watch() as w:
        assert [(e.key, e.operation) for e in _drain_initial(w)] == [("sat.temp", "PUT"), ("raw", "DEL")]


def test_we_write_nats_py_reads_and_watches(js_server: NatsServer, js: ts.JetStream) -> None:
    import nats

    kv = js.create_key_value("ours", history=4)
    kv.put("a", {"x": 1})
    kv.put("b", b"\x00\xfe")
    kv.put("a", {"x": 2})
    kv.purge("b")
    kv.create("c", "text")

    async def read() -> Any:
        nc = await nats.connect(js_server.url)
        pjs = nc.jetstream()
        pkv = await pjs.key_value("ours")
        a = await pkv.get("a")
        hist = [(h.revision, h.operation, h.value) for h in await pkv.history("a")]
        keys = sorted(await pkv.keys())
        watched = []
        w = await pkv.watchall()
        async for e in w:
            if e is None:
                break
            watched.append((e.key, e.revision, e.operation, e.value))
        await w.stop()
        st = await pkv.status()
        await nc.close()
        return a.value, a.revision, hist, keys, watched, st.history

    a, rev, hist, keys, watched, history = _run(read())
    assert (a, rev) == (b'{"x":2}', 3)
    assert hist == [(1, None, b'{"x":1}'), (3, None, b'{"x":2}')]
    assert keys == ["a", "c"]
    assert watched == [("a", 3, None, b'{"x":2}'), ("b", 4, "PURGE", b""), ("c", 5, None, b'"text"')]
    assert history == 4


def test_readme_kv_block_runs(js: ts.JetStream, jsbus: ts.MessageBus, capsys: Any) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "create_key_value" in b]
    assert len(blocks) == 1
    exec(blocks[0], {"bus": jsbus})  # noqa: S102 - the README's own example
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "124.0 2 PUT [123.4, 124.0]",
        "now antenna.az 124.0",
        "['antenna.az'] 4",
        "3 SHA-256= 300000 ['pass-0042.bin']",
    ]


def test_watch_entries_carry_revision_time_and_delta_like_get(kv: ts.KeyValue) -> None:
    """A watch reads sequence, time and pending straight from the ack subject; the entry's
    ``created`` (made on first access) is the same as ``get`` reports."""
    kv.put("a", b"1")
    kv.put("b", b"2")
    with kv.watch() as w:
        entries = [w.next(5), w.next(5)]
        assert w.next(5) is None
    for e in entries:
        assert e is not None
        got = kv.get(e.key)
        assert (e.revision, e.created, e.payload) == (got.revision, got.created, got.payload)
        assert e.created is not None and e.created.tzinfo is not None
    assert [e.delta for e in entries if e is not None] == [1, 0]
    e0 = entries[0]
    assert e0 is not None
    e0.created = None
    assert e0.created is None


def test_watch_last_revision_is_the_last_entry_handed_out(js: ts.JetStream) -> None:
    """The watch's ordered consumer sorts messages a batch at a time, ahead of what the watch
    handed out: last_revision is still the revision of the last entry handed out."""
    kv = js.create_key_value("lastrev")
    for i in range(100):
        kv.put(f"k{i}", i)
    with kv.watch() as w:
        assert w.last_revision == 0
        e = w.next(5)
        assert e is not None and e.revision == 1 and w.last_revision == 1
        pump = w._it._pump
        wait_until(lambda: pump.sub.pending + len(pump._ready) == 99, 10, "the other 99 entries to arrive")
        for rev in range(2, 101):
            e = w.next(5)
            assert e is not None and e.revision == rev
            assert w.last_revision == rev
        assert w.next(5) is None  # the initial values are done
        assert w.last_revision == 100
