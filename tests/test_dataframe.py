"""to_dataframe() on recordings of JSON, CBOR and binary messages and on a JetStream history;
a clear error naming the extra when pandas is missing; the progress helper."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer

from .conftest import wait_until

pd = pytest.importorskip("pandas")


def test_recording_to_dataframe(bus: ts.MessageBus, other: ts.MessageBus, tmp_path: Path) -> None:
    path = tmp_path / "df.cbor"
    with bus.record("df.>", path) as rec:
        other.publish("df.json", {"celsius": 21.5, "pos": {"lat": 52.1, "lon": 11.6}, "subject": "x"})
        other.publish("df.cbor", {"celsius": 22.0, "img": b"\x00\x01"}, codec="cbor")
        other.publish("df.bin", b"\xff\xfe\x00")
        other.publish("df.scalar", 42)
        other.flush()
        wait_until(lambda: rec.messages + rec.pending >= 4)
    df = ts.load_recording(path).to_dataframe()
    assert isinstance(df.index, pd.DatetimeIndex) and str(df.index.tz) == "UTC"
    assert df.index.name == "time" and df.index.is_monotonic_increasing
    assert list(df["subject"]) == ["df.json", "df.cbor", "df.bin", "df.scalar"]
    assert df["celsius"].iloc[0] == 21.5 and df["celsius"].iloc[1] == 22.0
    assert df["pos.lat"].iloc[0] == 52.1 and df["pos.lon"].iloc[0] == 11.6
    assert df["data.subject"].iloc[0] == "x"  # a field named like a fixed column
    assert df["img"].iloc[1] == b"\x00\x01"
    assert df["payload"].iloc[2] == b"\xff\xfe\x00"
    assert df["value"].iloc[3] == 42
    assert (df.index[1] - df.index[0]).total_seconds() >= 0
    # Nanoseconds survive into the index.
    first = ts.load_recording(path)[0]
    assert df.index[0].value == first.time_ns


def test_empty_and_filtered(tmp_path: Path) -> None:
    df = ts.to_dataframe([])
    assert len(df) == 0 and "subject" in df.columns





def test_history_to_dataframe(fresh_js_server: NatsServer) -> None:
    with ts.connect(fresh_js_server.url) as bus:
        js = bus.jetstream()
        js.create_stream("H", subjects=["h.>"])
        for i in range(5):
            js.publish("h.temp", {"v": i})
        js.publish("h.raw", b"\x00")
        hist = js.history("h.>")
        df = hist.to_dataframe()
        assert list(df["v"].iloc[:5]) == [0, 1, 2, 3, 4] and df["payload"].iloc[5] == b"\x00"
        assert str(df.index.tz) == "UTC" and not df.index.hasnans
        df2 = ts.history_dataframe(js, "h.temp")
        assert len(df2) == 5 and set(df2["subject"]) == {"h.temp"}


def test_missing_pandas_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ts.MissingExtraError, match=r"pip install 'telestion-sync\[pandas\]'") as info:
        ts.to_dataframe([])
    assert isinstance(info.value, ImportError) and isinstance(info.value, ts.Error)


def test_progress_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with ts.Progress(10, desc="copy", unit="B", stream=out, min_interval=0) as p:
        for _ in range(10):
            p.update(1)
    text = out.getvalue()
    assert "\r[" in text and "copy 10 B of 10 B 100%" in text and text.endswith("\n")
    quiet = io.StringIO()
    with ts.Progress(10, stream=quiet) as p:  # not a terminal: nothing drawn
        p.update(5)
    assert quiet.getvalue() == ""


def test_rich_html(fresh_js_server: NatsServer) -> None:
    with ts.connect(fresh_js_server.url) as bus:
        sub = bus.subscribe("html.x")
        assert "<b>Subscription" in sub._repr_html_() and "html.x" in sub._repr_html_()
        js = bus.jetstream()
        info = js.create_stream("HT", subjects=["ht.>"])
        assert "config.name" in info._repr_html_() and "HT" in info._repr_html_()
        ack = js.publish("ht.a", {"a": "<b>"})
        assert "<b>PubAck</b>" in ack._repr_html_()
        msg = js.get_msg("HT", ack.seq)
        assert "&lt;b&gt;" in msg._repr_html_()  # escaped
        assert "data" in ts.Message("a", b"{}")._repr_html_()
