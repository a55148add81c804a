"""Record -> replay -> record again against a real server: byte-exact payloads, headers (repeated
keys apart) and subjects, timing at 1x and 10x; rotation; a SIGKILLed CLI recorder leaves a
readable file; truncated files read with a warning; the record/replay CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import cbor2
import pytest

import telestion_sync as ts
from telestion_sync.recording import RecordedMessage, subject_matches
from telestion_sync.server import NatsServer

from .conftest import wait_until

PAYLOADS = [
    ("tm.temp", b'{"celsius": 21.5}', None),
    ("tm.raw", bytes(range(256)), None),  # binary: base64 in JSON Lines
    ("tm.text", "héllo\nwörld \u2028".encode(), None),
    ("tm.empty", b"", None),
    ("tm.hdr", b"x", {"Trace": ["a, b", "c"], "Content-Type": "text/plain"}),
    ("tm.cbor", cbor2.dumps({"img": b"\x00\x01", "n": 3}), {"Content-Type": "application/cbor"}),
]


def _publish_pass(bus: ts.MessageBus, gaps: List[float]) -> None:
    for i, gap in enumerate(gaps):
        subject, payload, headers = PAYLOADS[i % len(PAYLOADS)]
        bus.publish(subject, payload, headers=headers, reply="reply.to" if i == 2 else None)
        bus.flush()
        time.sleep(gap)


def _key(m: RecordedMessage) -> tuple:
    return (m.subject, m.reply, m.header_items, m.payload)


def _gaps(rec: ts.Recording) -> List[float]:
    t = [m.time_ns for m in rec]
    return [(b - a) / 1e9 for a, b in zip(t, t[1:])]


@pytest.mark.parametrize("ext", ["jsonl", "cbor"])
@pytest.mark.parametrize("speed", [1.0, 10.0])
def test_record_replay_record_again(
    bus: ts.MessageBus, other: ts.MessageBus, tmp_path: Path, ext: str, speed: float
) -> None:
    first = tmp_path / f"first.{ext}"
    gaps = [0.05, 0.15, 0.0, 0.1, 0.2, 0.05, 0.1, 0.0]
    with bus.record(["tm.>"], first) as rec:
        _publish_pass(other, gaps)
        wait_until(lambda: rec.messages + rec.pending >= len(gaps))
    assert (rec.messages, rec.dropped, rec.files) == (len(gaps), 0, [first])
    original = ts.load_recording(first)
    assert len(original) == len(gaps)
    for m, i in zip(original, range(len(gaps))):
        subject, payload, _ = PAYLOADS[i % len(PAYLOADS)]
        assert (m.subject, m.payload) == (subject, payload)
    hdr = next(m for m in original if m.subject == "tm.hdr")
    assert hdr.header_items == [("Trace", "a, b"), ("Trace", "c"), ("Content-Type", "text/plain")]
    assert original[2].reply == "reply.to"
    assert next(m for m in original if m.subject == "tm.cbor").data == {"img": b"\x00\x01", "n": 3}

    second = tmp_path / f"second.{ext}"
    with bus.record("tm.>", second) as rec2:
        summary = ts.replay(other, first, speed=speed)
        wait_until(lambda: rec2.messages + rec2.pending >= len(gaps))
    again = ts.load_recording(second)
    assert [_key(m) for m in again] == [_key(m) for m in original]
    assert summary.count == summary.total == len(gaps) and not summary.interrupted
    tolerance = 0.03
    for want, got in zip(_gaps(original), _gaps(again)):
        assert abs(want / speed - got) < tolerance, (_gaps(original), _gaps(again))
    assert abs(summary.duration - original.duration / speed) < 0.1


def test_replay_fast_and_filtered(bus: ts.MessageBus, other: ts.MessageBus, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with bus.record(">", path) as rec:
        for i in range(200):
            other.publish(f"a.{i % 2}", {"i": i})
        other.flush()
        wait_until(lambda: rec.messages + rec.pending >= 200)
    sub = bus.subscribe("a.1")
    bus.flush()
    start = time.monotonic()
    summary = ts.replay(other, path, speed=None, subjects=["a.1"])
    assert time.monotonic() - start < 2
    assert (summary.count, summary.total) == (100, 100)
    got = [sub.next_msg(2).data["i"] for _ in range(100)]
    assert got == list(range(1, 200, 2))


def test_jsonl_is_readable(bus: ts.MessageBus, other: ts.MessageBus, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with bus.record("r.*", path) as rec:
        other.publish("r.json", {"celsius": 21.5})
        other.publish("r.bin", b"\xff\x00")
        other.flush()
        wait_until(lambda: rec.messages + rec.pending >= 2)
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert lines[0]["subject"] == "r.json" and lines[0]["encoding"] == "utf-8"
    assert json.loads(lines[0]["payload"]) == {"celsius": 21.5}
    assert lines[0]["time"].endswith("Z") and len(lines[0]["time"].split(".")[1]) == 10  # ns + Z
    assert lines[1] == {**lines[1], "encoding": "base64", "payload": "/wA="}


def test_rotation_by_size_and_loading_sets(bus: ts.MessageBus, other: ts.MessageBus, tmp_path: Path) -> None:
    path = tmp_path / "rot.jsonl"
    with bus.record("rot", path, rotate_bytes=1000) as rec:
        for i in range(50):
            other.publish("rot", {"i": i, "pad": "x" * 50})
        other.flush()
        wait_until(lambda: rec.messages + rec.pending >= 50)
    assert len(rec.files) > 3 and not path.exists()
    assert rec.files[0].name == "rot.0001.jsonl"
    assert all(f.stat().st_size <= 1000 for f in rec.files)
    for source in (path, tmp_path, str(tmp_path / "rot.*.jsonl"), rec.files):
        loaded = ts.load_recording(source)
        assert [m.data["i"] for m in loaded] == list(range(50)), source


def test_rotation_by_time(bus: ts.MessageBus, other: ts.MessageBus, tmp_path: Path) -> None:
    path = tmp_path / "t.cbor"
    with bus.record("t", path, rotate_seconds=0.2) as rec:
        for i in range(6):
            other.publish("t", i)
            other.flush()
            time.sleep(0.1)
        wait_until(lambda: rec.messages + rec.pending >= 6)
    assert len(rec.files) >= 2
    assert [m.data for m in ts.load_recording(path)] == list(range(6))


def test_truncated_last_records_are_skipped_with_a_warning(tmp_path: Path) -> None:
    from telestion_sync.recording import encode_cbor, encode_jsonl

    for ext, enc in (("jsonl", encode_jsonl), ("cbor", encode_cbor)):
        path = tmp_path / f"cut.{ext}"
        data = b"".join(enc(1_000_000_000 + i, "s", None, [], b"%d" % i) for i in range(3))
        path.write_bytes(data[:-3])
        with pytest.warns(ts.RecordingWarning, match="truncated last"):
            rec = ts.load_recording(path)
        assert [m.data for m in rec] == [0, 1] and rec.skipped == 1


def test_bad_arguments(bus: ts.MessageBus, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extension"):
        bus.record("x", tmp_path / "x.txt")
    with pytest.raises(ValueError, match="rotate_bytes"):
        bus.record("x", tmp_path / "x.jsonl", rotate_bytes=0)
    with pytest.raises(ValueError, match="flush_interval"):
        bus.record("x", tmp_path / "x.jsonl", flush_interval=-1)
    with pytest.raises(TypeError, match="subjects"):
        bus.record([], tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="speed"):
        ts.replay(bus, tmp_path, speed=0)
    with pytest.raises(FileNotFoundError, match="no recording"):
        ts.load_recording(tmp_path / "missing.jsonl")
    assert bus.subscriptions == []


def test_subject_matches() -> None:
    assert subject_matches("a.*", "a.b") and not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert subject_matches("a", "a") and not subject_matches("a", "b")


def test_recorder_has_no_thread_after_stop(bus: ts.MessageBus, tmp_path: Path) -> None:
    rec = bus.record("q", tmp_path / "q.jsonl")
    assert rec._thread is not None and rec._thread.is_alive()
    rec.stop()
    assert not rec._thread.is_alive() and bus.subscriptions == []
    rec.stop()  # idempotent


def _cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "telestion_sync", *args]


def test_cli_recorder_killed_with_sigkill_leaves_a_readable_file(
    server: NatsServer, other: ts.MessageBus, tmp_path: Path
) -> None:
    path = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(
        _cli("record", "k.>", "-o", str(path), "-s", server.url, "--flush-interval", "0.2"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "recording k.>" in line, line
        for i in range(500):
            other.publish("k.x", {"i": i, "pad": "y" * 200})
        other.flush()
        # flushed on the interval: all 500 lines are with the OS before the kill
        wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") >= 500, 10, "500 lines written")
        for i in range(500, 520):  # and some that may be cut mid-line
            other.publish("k.x", {"i": i, "pad": "y" * 200})
        other.flush()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ts.RecordingWarning)  # a cut last line may or may not be there
        rec = ts.load_recording(path)
    got = [m.data["i"] for m in rec]
    assert got[:500] == list(range(500))


def test_cli_record_sigterm_and_replay(server: NatsServer, other: ts.MessageBus, tmp_path: Path) -> None:
    path = tmp_path / "cli.cbor"
    proc = subprocess.Popen(
        _cli("record", "c.a", "c.b", "-o", str(path), "-s", server.url), stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    assert "recording" in proc.stderr.readline()
    for i in range(10):
        other.publish("c.a" if i % 2 else "c.b", i)
    other.flush()  # the server has routed all 10: the recorder's drain on SIGTERM delivers them
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "recorded 10 messages" in err
    sub = other.subscribe("c.*")
    other.flush()
    done = subprocess.run(
        _cli("replay", str(path), "--fast", "--subject", "c.a", "-s", server.url),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 5 of 5 messages" in done.stderr
    assert [sub.next_msg(2).data for _ in range(5)] == [1, 3, 5, 7, 9]
    env = {**os.environ, "NATS_URL": server.url}
    bad = subprocess.run(_cli("replay", str(path), "--speed", "0"), capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "must be a number > 0" in bad.stderr
