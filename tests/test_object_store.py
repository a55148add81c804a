"""Object Store: stores, chunked puts and streamed gets with digests, bounded memory,
interrupted puts, corrupted chunks, links, watch and interop with nats-py."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any, List

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer


@pytest.fixture
def obs(js: ts.JetStream) -> ts.ObjectStore:
    return js.create_object_store("files")


def _digest(data: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Pattern(io.RawIOBase):
    """``size`` bytes of a repeating pattern, generated as read (never all in memory)."""

    def __init__(self, size: int, fail_at: int = -1) -> None:
        self.size, self.pos, self.fail_at = size, 0, fail_at
        self.sha = hashlib.sha256()
        self._block = bytes(range(256)) * 4096  # 1 MiB

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if 0 <= self.fail_at <= self.pos:
            raise OSError("the source broke")
        n = min(len(b), self.size - self.pos, len(self._block) - self.pos % len(self._block))
        off = self.pos % len(self._block)
        b[:n] = self._block[off : off + n]
        self.sha.update(self._block[off : off + n])
        self.pos += n
        return n


# --- stores -----------------------------------------------------------------------------------


def test_create_store_status_names_delete(js: ts.JetStream) -> None:
    obs = js.create_object_store(
        "imgs", description="pass images", max_bytes=1 << 30, storage="memory", ttl=3600
    )
    st = obs.status()
    assert (st.bucket, st.description, st.ttl, st.storage, st.replicas) == (
        "imgs",
        "pass images",
        3600.0,
        "memory",
        1,
    )
    assert (st.sealed, st.size, st.compressed, st.backing_store) == (False, 0, False, "JetStream")
    cfg = js.stream_info("OBJ_imgs").config
    assert cfg.subjects == ["$O.imgs.C.>", "$O.imgs.M.>"]
    assert cfg.allow_rollup_hdrs and cfg.allow_direct and cfg.discard == "new"
    js.create_object_store("other", compression=True)
    js.create_key_value("notobs")
    assert js.object_store_names() == ["imgs", "other"]
    assert [(s.bucket, s.compressed) for s in js.object_stores()] == [("imgs", False), ("other", True)]
    assert js.object_store("other").bucket == "other"
    js.delete_object_store("other")
    with pytest.raises(ts.BucketNotFoundError):
        js.object_store("other")
    with pytest.raises(ts.BucketNotFoundError):
        js.delete_object_store("other")
    with pytest.raises(ts.InvalidArgumentError):
        js.create_object_store("bad.name")


# --- put and get ------------------------------------------------------------------------------


def test_put_sources_and_get(obs: ts.ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    info = obs.put("a.bin", data, description="random", headers={"X-Pass": "42"}, metadata={"sat": "one"})
    assert (info.name, info.bucket, info.size, info.chunks) == ("a.bin", "files", 300_000, 3)
    assert info.digest == _digest(data) and len(info.nuid) == 22 and not info.deleted
    assert info.modified is not None and info.modified.tzinfo is not None
    got = obs.info("a.bin")
    assert (got.description, got.headers, got.metadata, got.digest) == (
        "random",
        {"X-Pass": "42"},
        {"sat": "one"},
        info.digest,
    )
    assert got.modified is not None and got.max_chunk_size == 128 * 1024
    assert obs.get_bytes("a.bin") == data
    # str (UTF-8), a path, a file object, a custom chunk size, an empty object.
    assert obs.put("t.txt", "grüße").size == len("grüße".encode())
    assert obs.get_bytes("t.txt") == "grüße".encode()
    p = tmp_path / "plan.json"
    p.write_bytes(b'{"plan": 1}' * 1000)
    assert obs.put("plan", p).digest == _digest(p.read_bytes())
    with open(p, "rb") as f:
        i2 = obs.put("plan2", f, chunk_size=1000)
    assert i2.chunks == 11 and obs.get_bytes("plan2") == p.read_bytes()
    empty = obs.put("empty", b"")
    assert (empty.size, empty.chunks, empty.digest) == (0, 0, _digest(b""))
    assert obs.get_bytes("empty") == b""
    with pytest.raises(ts.InvalidArgumentError):
        obs.put("x", 123)
    with pytest.raises(ts.InvalidArgumentError):
        obs.put("", b"x")
    with pytest.raises(ts.ObjectNotFoundError):
        obs.get("missing")
    with pytest.raises(ts.ObjectNotFoundError):
        obs.info("missing")


def test_streamed_reader(obs: ts.ObjectStore, tmp_path: Path) -> None:
    data = b"line one\nline two\n" + os.urandom(200_000)
    obs.put("s", data, chunk_size=50_000)
    with obs.get("s") as r:
        assert r.info.size == len(data) and r.name == "s"
        assert r.read(5) == b"line "
        buf = bytearray(4)
        assert r.readinto(buf) == 4 and bytes(buf) == b"one\n"
        assert r.readline() == b"line two\n"
        rest = r.read()
        assert rest == data[18:]
        assert r.read(10) == b""
    assert r.closed
    with obs.get("s") as r:
        assert b"".join(r.iter_chunks()) == data
    with obs.get("s") as r:
        assert next(iter(r)) == b"line one\n"
        with obs.get("s") as r2:  # two readers of one store at once
            assert r2.read() == data
    out = tmp_path / "out.bin"
    assert obs.get_file("s", out).digest == _digest(data)
    assert out.read_bytes() == data


def test_replace_delete_list(js: ts.JetStream, obs: ts.ObjectStore) -> None:
    assert obs.list() == []  # an empty store: an empty list
    obs.put("a", b"1" * 1000)
    first = obs.put("b", b"2" * 300_000)
    second = obs.put("b", b"3" * 10)  # replaces: the old chunks are purged
    assert first.nuid != second.nuid
    assert obs.get_bytes("b") == b"3" * 10
    assert js.stream_info("OBJ_files", subjects_filter="$O.files.C.>").state.subjects == {
        f"$O.files.C.{obs.info('a').nuid}": 1,
        f"$O.files.C.{second.nuid}": 1,
    }
    assert sorted(i.name for i in obs.list()) == ["a", "b"]
    obs.delete("a")
    assert [i.name for i in obs.list()] == ["b"]
    listed = obs.list(show_deleted=True)
    assert sorted((i.name, i.deleted) for i in listed) == [("a", True), ("b", False)]
    with pytest.raises(ts.ObjectNotFoundError):
        obs.get_bytes("a")
    deleted = obs.info("a", show_deleted=True)
    assert deleted.deleted and (deleted.size, deleted.chunks, deleted.digest) == (0, 0, "")
    assert js.stream_info("OBJ_files", subjects_filter="$O.files.C.>").state.subjects == {
        f"$O.files.C.{second.nuid}": 1
    }
    with pytest.raises(ts.ObjectNotFoundError):
        obs.delete("never")
    # Putting a deleted name again brings it back.
    obs.put("a", b"back")
    assert obs.get_bytes("a") == b"back"


def test_interrupted_put_leaves_nothing(js: ts.JetStream, obs: ts.ObjectStore) -> None:
    src = Pattern(2_000_000, fail_at=700_000)
    with pytest.raises(OSError, match="the source broke"):
        obs.put("broken", src)
    with pytest.raises(ts.ObjectNotFoundError):
        obs.info("broken")
    assert obs.list() == []
    assert js.stream_info("OBJ_files").state.messages == 0  # chunks purged
    # An interrupted replacement keeps the old object intact.
    obs.put("keep", b"old")
    with pytest.raises(OSError):
        obs.put("keep", Pattern(1_000_000, fail_at=300_000))
    assert obs.get_bytes("keep") == b"old"
    assert js.stream_info("OBJ_files").state.messages == 2


def test_corrupted_chunk_is_detected(js: ts.JetStream, jsbus: ts.MessageBus, obs: ts.ObjectStore) -> None:
    data = os.urandom(3 * 1000)
    info = obs.put("c", data, chunk_size=1000)
    subject = f"$O.files.C.{info.nuid}"
    # Rewrite the chunks, the middle one with a flipped byte.
    js.purge_stream("OBJ_files", subject=subject)
    bad = bytearray(data[1000:2000])
    bad[10] ^= 0xFF
    for chunk in (data[:1000], bytes(bad), data[2000:]):
        js.publish(subject, chunk)
    with pytest.raises(ts.DigestMismatchError) as exc:
        obs.get_bytes("c")
    assert info.digest in str(exc.value) and isinstance(exc.value, ts.JetStreamError)
    # Streamed: at the latest when the last byte is read.
    with obs.get("c") as r:
        assert r.read(1000) == data[:1000]
        with pytest.raises(ts.DigestMismatchError):
            while r.read(500):
                pass
    # A missing chunk (size mismatch) as well.
    js.purge_stream("OBJ_files", subject=subject)
    js.publish(subject, data[:1000])
    with pytest.raises(ts.DigestMismatchError):
        obs.get_bytes("c")


def _memory_roundtrip(obs: ts.ObjectStore, size: int, limit: int) -> None:
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        src = Pattern(size)
        info = obs.put("big", src)
        assert (
            info.size == size
            and info.digest == "SHA-256=" + base64.urlsafe_b64encode(src.sha.digest()).decode()
        )
        sha = hashlib.sha256()
        n = 0
        with obs.get("big") as r:
            for chunk in r.iter_chunks():
                sha.update(chunk)
                n += len(chunk)
        assert n == size and sha.digest() == src.sha.digest()
    finally:
        stop.set()
        t.join(2)
    growth = peak[0] - base
    assert growth < limit, f"RSS grew by {growth / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB object"


@pytest.mark.timeout(120)
def test_object_memory_bounded_256mib(js: ts.JetStream) -> None:
    """A 256 MiB object put and got (about 2 s here, so in the default run) with RSS growth
    far below its size."""
    obs = js.create_object_store("huge")
    _memory_roundtrip(obs, 256 * 2**20, 40 * 2**20)


# --- metadata, links, seal, watch -------------------------------------------------------------


def test_update_meta_and_rename(js: ts.JetStream, obs: ts.ObjectStore) -> None:
    obs.put("old", b"payload", description="d1", metadata={"a": "1"})
    obs.put("taken", b"x")
    info = obs.update_meta("old", description="d2", headers={"H": ["1", "2"]})
    assert (info.description, info.metadata, info.headers) == ("d2", {"a": "1"}, {"H": "1, 2"})
    assert obs.info("old").description == "d2"
    with pytest.raises(ts.JetStreamError, match="exists"):
        obs.update_meta("old", new_name="taken")
    obs.update_meta("old", new_name="new")
    with pytest.raises(ts.ObjectNotFoundError):
        obs.info("old")
    assert obs.get_bytes("new") == b"payload"
    assert sorted(i.name for i in obs.list()) == ["new", "taken"]
    with pytest.raises(ts.ObjectNotFoundError):
        obs.update_meta("old", description="x")


def test_links_and_seal(js: ts.JetStream, obs: ts.ObjectStore) -> None:
    other = js.create_object_store("other")
    target = other.put("t", b"linked bytes")
    link = obs.add_link("l", target)
    assert link.link == ts.ObjectLink("other", "t") and link.is_link
    assert obs.get_bytes("l") == b"linked bytes"
    local = obs.put("local", b"here")
    obs.add_link("l2", local)
    assert obs.get_bytes("l2") == b"here"
    with pytest.raises(ts.InvalidArgumentError):
        obs.add_link("l3", obs.info("l"))  # no links to links
    with pytest.raises(ts.JetStreamError):
        obs.add_link("local", target)  # a link does not replace an object
    bl = obs.add_bucket_link("all-other", other)
    assert bl.link == ts.ObjectLink("other", None)
    with pytest.raises(ts.InvalidArgumentError):
        obs.get("all-other")
    st = other.seal()
    assert st.sealed and other.status().sealed
    with pytest.raises(ts.JetStreamError):
        other.put("more", b"x")


def test_watch(obs: ts.ObjectStore) -> None:
    obs.put("a", b"1")
    with obs.watch() as w:
        first = w.next(5)
        assert first is not None and first.name == "a"
        assert w.next(5) is None
        obs.put("b", b"22")
        e = w.next(5)
        assert e is not None and (e.name, e.size) == ("b", 2)
        obs.delete("a")
        e = w.next(5)
        assert e is not None and (e.name, e.deleted) == ("a", True)
    with obs.watch(updates_only=True, ignore_deletes=True) as w:
        obs.delete("b")
        obs.put("c", b"333")
        e = w.next(5)
        assert e is not None and e.name == "c"


# --- interop with nats-py ---------------------------------------------------------------------


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_nats_py_puts_we_get_and_watch(js_server: NatsServer, js: ts.JetStream) -> None:
    import nats

    data = os.urandom(400_000)

    async def put() -> Any:
        nc = await nats.connect(js_server.url)
        pjs = nc.jetstream()
        pobs = await pjs.create_object_store("pystore")
        info = await pobs.put("img.png", data)
        await pobs.put("note", b"hello")
        await nc.close()
        return info

    pinfo = _run(put())
    obs = js.object_store("pystore")
    info = obs.info("img.png")
    assert (info.size, info.chunks, info.digest, info.nuid) == (
        len(data),
        pinfo.chunks,
        pinfo.digest,
        pinfo.nuid,
    )
    assert info.digest == _digest(data)
    assert obs.get_bytes("img.png") == data
    assert sorted(i.name for i in obs.list()) == ["img.png", "note"]
    with obs.watch() as w:
        assert sorted(w.next(5).name for _ in range(2)) == ["img.png", "note"]  # type: ignore[union-attr]
        assert w.next(5) is None


def test_we_put_nats_py_gets_and_watches(js_server: NatsServer, js: ts.JetStream) -> None:
    import nats

    data = os.urandom(500_000)
    obs = js.create_object_store("ours")
    info = obs.put("frame.raw", data, description="a frame", metadata={"k": "v"}, headers={"X": "1"})
    obs.put("small", b"s")
    obs.put("gone", b"g")
    obs.delete("gone")

    async def get() -> Any:
        nc = await nats.connect(js_server.url)
        pjs = nc.jetstream()
        pobs = await pjs.object_store("ours")
        res = await pobs.get("frame.raw")
        pinfo = await pobs.get_info("frame.raw")
        names: List[str] = []
        w = await pobs.watch(ignore_deletes=True)
        while True:
            e = await w.updates(timeout=5)
            if e is None:
                break
            names.append(e.name)
        await w.stop()
        await nc.close()
        return res.data, pinfo, names

    got, pinfo, names = _run(get())
    assert got == data
    assert (pinfo.digest, pinfo.size, pinfo.chunks, pinfo.nuid) == (info.digest, len(data), 4, info.nuid)
    assert pinfo.description == "a frame"  # (nats-py's ObjectInfo has no metadata field)
    assert sorted(names) == ["frame.raw", "small"]
