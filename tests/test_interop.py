"""Interop: telestion_sync and nats-py (the official asyncio client) on the same real nats-server.

nats-py runs in its own event loop on a background thread (the ``aio`` fixture); the test thread
drives it with ``aio.run(coro)``, so a blocking telestion_sync call (``request()``,
``next_msg()``) can wait while a nats-py responder answers on the loop thread. Every test starts
from a fresh server, bus and loop; the fixture closes the nats-py connection, ends the loop with
``asyncio.run`` semantics (leftover tasks cancelled) and checks its thread is gone.

Synchronisation is by round trips only: ``bus.flush()`` (PING/PONG) after subscribing and after
publishing, ``next_msg(timeout)`` and ``threading.Event``. Never sleeps.

nats-py 2.16's ``await nc.flush()`` is NOT a barrier: ``Client._send_ping`` writes the PING straight
to the transport while SUB/PUB commands still wait in ``_pending`` for the flusher task, so the PONG
can come back before the server has seen them (measured: ~4% of ``subscribe(); flush()`` pairs under
load lose the next message from another connection; nats-py alone shows it too). The harness
therefore uses :meth:`AsyncNats.sync`: a message published to nats-py's own fresh inbox goes
through the same ordered pending queue, so its arrival proves the server processed everything that
nats-py queued before it.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Coroutine, Dict, Iterator, List, Optional, TypeVar

import cbor2
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsPy
from nats.aio.msg import Msg as NatsPyMsg
from nats.aio.subscription import Subscription as NatsPySub

import telestion_sync as ts
from telestion_sync.server import NatsServer

from .conftest import ErrorLog

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")

CT = "Content-Type"
CBOR_CT = "application/cbor"
ERR_HDR = "Nats-Service-Error"
ERR_CODE_HDR = "Nats-Service-Error-Code"

WAIT = 5.0  # generous upper bound for anything that should arrive at once on loopback


class AsyncNats:
    """A nats-py client on a private event loop running on a background thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors: List[BaseException] = []
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="nats-py-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(WAIT):
            raise RuntimeError("the nats-py event loop did not start")
        try:
            self.nc: NatsPy = self.run(self._connect())
        except BaseException:
            self._stop_loop()
            raise

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()

    async def _connect(self) -> NatsPy:
        async def on_error(exc: Exception) -> None:
            self.errors.append(exc)

        return await nats.connect(
            self.url,
            name="nats-py",
            allow_reconnect=False,
            connect_timeout=WAIT,
            error_cb=on_error,
        )

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the loop thread and return its result (blocking this thread)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # --- conveniences (each blocks until done) ------------------------------------------------

    async def barrier(self) -> None:
        """Return once the server has processed every command nats-py queued so far.

        (``await nc.flush()`` does not guarantee that in nats-py 2.16: see the module docstring.)
        """
        nc = self.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(inbox, b"")  # queued behind everything before it, SUB included
        await sub.next_msg(timeout=WAIT)
        await sub.unsubscribe()

    def sync(self) -> None:
        self.run(self.barrier())

    def publish(self, subject: str, payload: bytes = b"", **kw: Any) -> None:
        async def go() -> None:
            await self.nc.publish(subject, payload, **kw)
            await self.barrier()

        self.run(go())

    def subscribe(self, subject: str, **kw: Any) -> NatsPySub:
        async def go() -> NatsPySub:
            sub = await self.nc.subscribe(subject, **kw)
            await self.barrier()
            return sub

        return self.run(go())

    def next_msg(self, sub: NatsPySub, timeout: float = WAIT) -> NatsPyMsg:
        return self.run(sub.next_msg(timeout=timeout), timeout + 5.0)

    def request(self, subject: str, payload: bytes = b"", timeout: float = WAIT, **kw: Any) -> NatsPyMsg:
        return self.run(self.nc.request(subject, payload, timeout=timeout, **kw), timeout + 5.0)

    def responder(
        self, subject: str, handler: Callable[[NatsPyMsg], Awaitable[None]], **kw: Any
    ) -> NatsPySub:
        """Subscribe an async callback (it runs on the loop thread); return once it is live."""
        return self.subscribe(subject, cb=handler, **kw)

    def _stop_loop(self) -> None:
        """End the loop (``asyncio.run`` cancels what is left) and join its thread."""
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the nats-py loop thread did not end"

    def close(self) -> None:
        try:
            if not self.nc.is_closed:
                self.run(self.nc.close())
        finally:
            self._stop_loop()


@pytest.fixture
def aio(server: NatsServer) -> Iterator[AsyncNats]:
    """A connected nats-py client on its own loop thread; closed and joined afterwards."""
    client = AsyncNats(server.url)
    try:
        yield client
    finally:
        client.close()
    assert client.errors == [], f"nats-py reported errors: {client.errors!r}"


def assert_no_bus_errors(bus: ts.MessageBus, errors: ErrorLog) -> None:
    """A flush round trip, then no error may have been reported by the telestion_sync bus."""
    bus.flush()
    assert errors.errors == []
    assert bus.stats.errors == 0


# ============================================================================================
# JSON
# ============================================================================================

SAMPLE = {
    "celsius": 21.5,
    "ok": True,
    "none": None,
    "list": [1, 2.5, "drei", {"nested": []}],
    "text": "Grüße, 温度 °C ✓",
    "big": 2**53,
    "neg": -7,
}


def test_json_dict_from_telestion_to_natspy(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    sub = aio.subscribe("telemetry.temp")
    bus.publish("telemetry.temp", SAMPLE)
    bus.publish("telemetry.temp", [1, "two"], codec="json")
    bus.publish("telemetry.temp", "just a string")
    bus.flush()

    m = aio.next_msg(sub)
    assert json.loads(m.data) == SAMPLE
    assert m.data.decode("utf-8")  # plain UTF-8 JSON, as TypeScript's JSONCodec expects
    assert not m.headers  # JSON carries no header at all (not even Content-Type)
    assert m.subject == "telemetry.temp"
    m2 = aio.next_msg(sub)
    assert json.loads(m2.data) == [1, "two"] and not m2.headers
    m3 = aio.next_msg(sub)
    assert json.loads(m3.data) == "just a string" and not m3.headers
    assert_no_bus_errors(bus, errors)


def test_json_bytes_from_natspy_decode_automatically(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    sub = bus.subscribe("telemetry.>")
    bus.flush()
    aio.publish("telemetry.temp", json.dumps(SAMPLE).encode())
    aio.publish("telemetry.list", json.dumps([1, 2, 3]).encode())
    aio.publish("telemetry.explicit", json.dumps({"a": 1}).encode(), headers={CT: "application/json"})

    m = sub.next_msg(WAIT)
    assert m.subject == "telemetry.temp"
    assert m.data == SAMPLE
    assert m.json() == SAMPLE
    assert m.headers == {}
    assert sub.next_msg(WAIT).data == [1, 2, 3]
    m3 = sub.next_msg(WAIT)
    assert m3.data == {"a": 1} and m3.headers[CT] == "application/json"
    assert_no_bus_errors(bus, errors)


def test_json_from_natspy_to_a_callback_subscription(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    got: List[Any] = []
    done = threading.Event()

    def on_msg(msg: ts.Message) -> None:
        got.append(msg.data)
        if len(got) == 3:
            done.set()

    bus.subscribe("events.*", on_msg)
    bus.flush()
    for i in range(3):
        aio.publish(f"events.e{i}", json.dumps({"i": i}).encode())
    assert done.wait(WAIT)
    assert got == [{"i": 0}, {"i": 1}, {"i": 2}]  # in order
    assert_no_bus_errors(bus, errors)


# ============================================================================================
# CBOR
# ============================================================================================

CBOR_SAMPLE = {
    "img": b"\x00\x01\x02\xff\xfe" * 10,
    "n": 42,
    "f": 1.5,
    "s": "täst",
    "nested": {"raw": b"", "list": [b"\x80", None, True]},
}


def test_cbor_from_telestion_to_natspy(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    sub = aio.subscribe("camera.meta")
    bus.publish("camera.meta", CBOR_SAMPLE, codec="cbor")
    bus.publish("camera.meta", b"\x01\x02", codec="cbor")  # bytes with codec=cbor: a CBOR byte string
    bus.flush()

    m = aio.next_msg(sub)
    assert m.headers is not None and m.headers.get(CT) == CBOR_CT
    assert cbor2.loads(m.data) == CBOR_SAMPLE
    m2 = aio.next_msg(sub)
    assert m2.headers is not None and m2.headers.get(CT) == CBOR_CT
    assert cbor2.loads(m2.data) == b"\x01\x02"
    assert_no_bus_errors(bus, errors)


def test_cbor_from_natspy_decodes_by_header(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    sub = bus.subscribe("camera.meta")
    bus.flush()
    aio.publish("camera.meta", cbor2.dumps(CBOR_SAMPLE), headers={CT: CBOR_CT})
    # A media type with a parameter and different case still means CBOR.
    aio.publish("camera.meta", cbor2.dumps([1, b"x"]), headers={CT: "Application/CBOR; x=1"})

    m = sub.next_msg(WAIT)
    assert m.headers[CT] == CBOR_CT
    assert m.data == CBOR_SAMPLE
    assert m.cbor() == CBOR_SAMPLE
    assert m.payload == cbor2.dumps(CBOR_SAMPLE)
    assert sub.next_msg(WAIT).data == [1, b"x"]
    assert_no_bus_errors(bus, errors)


def test_invalid_cbor_from_natspy_is_reported_not_fatal(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    sub = bus.subscribe("camera.meta")
    bus.flush()
    aio.publish("camera.meta", b"\xff\xff\xff", headers={CT: CBOR_CT})  # not CBOR
    aio.publish("camera.meta", cbor2.dumps({"ok": 1}), headers={CT: CBOR_CT})
    # The bad one is skipped and reported; the subscription lives on.
    assert sub.next_msg(WAIT).data == {"ok": 1}
    err = errors.wait(ts.DecodeError)
    assert isinstance(err, ts.DecodeError) and err.msg.payload == b"\xff\xff\xff"


# ============================================================================================
# Raw bytes
# ============================================================================================

RAW_PAYLOADS = [
    b"\x00\x01\x02\x03",
    b"\xff\xfe\xfd\x80\x81",  # not UTF-8
    bytes(range(256)),
    b"\xc3\x28",  # invalid UTF-8 sequence
    b"{not json",  # starts like JSON, is not
    b"\r\nPUB x 1\r\n",  # protocol-looking bytes inside a payload
    b"",
]


def test_raw_bytes_from_telestion_to_natspy(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    sub = aio.subscribe("camera.raw")
    for p in RAW_PAYLOADS:
        bus.publish("camera.raw", p)
    bus.publish("camera.raw")  # default payload: empty
    bus.publish("camera.raw", bytearray(b"\x10\x20"))
    bus.publish("camera.raw", memoryview(b"\x30\x40"))
    bus.publish("camera.raw", b"\x00\xff", codec="raw")
    bus.flush()

    expected = [*RAW_PAYLOADS, b"", b"\x10\x20", b"\x30\x40", b"\x00\xff"]
    for want in expected:
        m = aio.next_msg(sub)
        assert m.data == want
        assert not m.headers  # raw bytes go out without a header
    assert_no_bus_errors(bus, errors)


def test_raw_bytes_from_natspy_to_telestion(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    auto = bus.subscribe("camera.raw")
    raw = bus.subscribe("camera.raw", codec="raw")
    bus.flush()
    for p in RAW_PAYLOADS:
        aio.publish("camera.raw", p)

    for want in RAW_PAYLOADS:
        m = auto.next_msg(WAIT)
        assert m.payload == want
        assert m.data == want  # none of these is JSON: auto mode gives the bytes back
        assert m.headers == {}
        r = raw.next_msg(WAIT)
        assert r.payload == want and r.data == want
    assert_no_bus_errors(bus, errors)


def test_empty_payload_with_headers_both_ways(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    py_sub = aio.subscribe("empty.to_py")
    ts_sub = bus.subscribe("empty.to_ts")
    bus.flush()

    bus.publish("empty.to_py", b"", headers={"X-Kind": "marker"})
    bus.flush()
    m = aio.next_msg(py_sub)
    assert m.data == b"" and m.headers == {"X-Kind": "marker"}

    aio.publish("empty.to_ts", b"", headers={"X-Kind": "marker"})
    t = ts_sub.next_msg(WAIT)
    assert t.payload == b"" and t.data == b"" and t.headers == {"X-Kind": "marker"}
    assert_no_bus_errors(bus, errors)


def test_binary_that_is_utf16_json_stays_bytes_in_auto_mode(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    sub = bus.subscribe("camera.raw")
    bus.flush()
    samples = [struct.pack("<H", 0x31), b"1\x00\x00\x00", b"[\x00]\x00", b'"\x00a\x00"\x00']
    for p in samples:
        aio.publish("camera.raw", p)
    got = [sub.next_msg(WAIT).data for _ in samples]
    # None of these is UTF-8 JSON (RFC 8259 §8.1: JSON exchanged between systems is UTF-8),
    # so auto mode must hand back the bytes unchanged. (Regression: json.loads(bytes) detects
    # UTF-16/32 and used to turn b"1\x00", a little-endian uint16, into the int 1.)
    assert got == samples
    # An explicit JSON subscription refuses them (reported as DecodeError, the sub lives on).
    strict = bus.subscribe("camera.json", codec="json")
    bus.flush()
    aio.publish("camera.json", b"1\x00")
    aio.publish("camera.json", b"1")
    assert strict.next_msg(WAIT).data == 1
    err = errors.wait(ts.DecodeError)
    assert isinstance(err, ts.DecodeError) and err.msg.payload == b"1\x00"


# ============================================================================================
# Headers
# ============================================================================================

HEADERS = {
    "X-Trace-Id": "abc-123",
    "X-Camera": "front",
    "X-Unicode": "Grüße ✓",
    "X-Spaces": "a value with spaces",
    "X-Colon": "a:b:c",
    "lowercase-key": "v",
}


def test_headers_from_telestion_to_natspy(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    sub = aio.subscribe("hdr.test")
    bus.publish("hdr.test", b"payload", headers=HEADERS)
    bus.publish("hdr.test", {"a": 1}, headers={"X-One": "1"})  # JSON + user headers
    bus.publish("hdr.test", {"a": 1}, headers={"X-One": "1"}, codec="cbor")  # CBOR + user headers
    bus.flush()

    m = aio.next_msg(sub)
    assert m.data == b"payload"
    assert m.headers == HEADERS
    m2 = aio.next_msg(sub)
    assert json.loads(m2.data) == {"a": 1} and m2.headers == {"X-One": "1"}
    m3 = aio.next_msg(sub)
    assert cbor2.loads(m3.data) == {"a": 1}
    assert m3.headers == {"X-One": "1", CT: CBOR_CT}
    assert_no_bus_errors(bus, errors)


def test_headers_from_natspy_to_telestion(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    sub = bus.subscribe("hdr.test")
    bus.flush()
    aio.publish("hdr.test", b"payload", headers=HEADERS)
    aio.publish("hdr.test", json.dumps({"a": 1}).encode(), headers={"X-One": "1"})

    m = sub.next_msg(WAIT)
    assert m.payload == b"payload"
    assert m.headers == HEADERS
    assert m.status is None
    m2 = sub.next_msg(WAIT)
    assert m2.headers == {"X-One": "1"}
    assert m2.data == {"a": 1}  # a non-Content-Type header does not change auto decoding
    assert_no_bus_errors(bus, errors)


MANY_HEADERS = {f"X-Key-{i}": f"value {i}" for i in range(300)}
BIG_HEADER = {"X-Big": "h" * 200_000, "X-Small": "s"}


def test_many_and_big_headers_both_ways(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    py_sub = aio.subscribe("hdr.to_py")
    ts_sub = bus.subscribe("hdr.to_ts")
    bus.flush()

    bus.publish("hdr.to_py", b"1", headers=MANY_HEADERS)
    bus.publish("hdr.to_py", b"2", headers=BIG_HEADER)
    bus.flush()
    assert aio.next_msg(py_sub).headers == MANY_HEADERS
    assert aio.next_msg(py_sub).headers == BIG_HEADER

    aio.publish("hdr.to_ts", b"1", headers=MANY_HEADERS)
    aio.publish("hdr.to_ts", b"2", headers=BIG_HEADER)
    m1, m2 = ts_sub.next_msg(WAIT), ts_sub.next_msg(WAIT)
    assert (m1.payload, m1.headers) == (b"1", MANY_HEADERS)
    assert (m2.payload, m2.headers) == (b"2", BIG_HEADER)
    assert_no_bus_errors(bus, errors)


def test_long_and_unusual_subjects_both_ways(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    long_tail = ".".join(f"t{i}" for i in range(500))  # ~2.9 KB subject, below max_control_line
    tails = [long_tail, "sensor.temp-°C", "a_b.c-d.$e", "x" * 1000]
    py_sub = aio.subscribe("to_py.>")
    ts_sub = bus.subscribe("to_ts.>")
    bus.flush()
    for t in tails:
        bus.publish(f"to_py.{t}", {"t": t})
    bus.flush()
    for t in tails:
        m = aio.next_msg(py_sub)
        assert m.subject == f"to_py.{t}" and json.loads(m.data) == {"t": t}
    for t in tails:
        aio.publish(f"to_ts.{t}", json.dumps({"t": t}).encode())
        m2 = ts_sub.next_msg(WAIT)
        assert m2.subject == f"to_ts.{t}" and m2.data == {"t": t}
    assert_no_bus_errors(bus, errors)


# ============================================================================================
# Request / reply
# ============================================================================================


def test_natspy_requests_telestion_replies(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    seen_headers: List[Dict[str, str]] = []

    def add(msg: ts.Message) -> Any:
        seen_headers.append(dict(msg.headers))
        return msg.data["a"] + msg.data["b"]

    bus.reply("svc.add", add)
    bus.reply("svc.echo_bytes", lambda msg: msg.payload[::-1])
    bus.flush()

    r = aio.request("svc.add", json.dumps({"a": 1, "b": 2}).encode())
    assert json.loads(r.data) == 3
    assert not r.headers  # a JSON reply carries no header

    r2 = aio.request("svc.add", json.dumps({"a": 40, "b": 2}).encode(), headers={"X-Req": "yes"})
    assert json.loads(r2.data) == 42
    assert seen_headers == [{}, {"X-Req": "yes"}]

    r3 = aio.request("svc.echo_bytes", b"\x00\x01\xff")
    assert r3.data == b"\xff\x01\x00" and not r3.headers  # bytes are answered raw

    # A CBOR request gets a CBOR reply in auto mode.
    r4 = aio.request("svc.add", cbor2.dumps({"a": 5, "b": 6}), headers={CT: CBOR_CT})
    assert r4.headers is not None and r4.headers.get(CT) == CBOR_CT
    assert cbor2.loads(r4.data) == 11
    assert_no_bus_errors(bus, errors)


def test_natspy_requests_many_concurrently(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    bus.reply("svc.double", lambda msg: {"x": msg.data["x"] * 2})
    bus.flush()

    async def many() -> List[Any]:
        replies = await asyncio.gather(
            *(aio.nc.request("svc.double", json.dumps({"x": i}).encode(), timeout=WAIT) for i in range(50))
        )
        return [json.loads(r.data) for r in replies]

    assert aio.run(many()) == [{"x": 2 * i} for i in range(50)]
    assert_no_bus_errors(bus, errors)


def test_telestion_requests_natspy_responds(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    async def add(msg: NatsPyMsg) -> None:
        req = json.loads(msg.data)
        await aio.nc.publish(msg.reply, json.dumps(req["a"] + req["b"]).encode())

    async def cbor_echo(msg: NatsPyMsg) -> None:
        seen = (msg.headers or {}).get("X-Req", "")
        await aio.nc.publish(msg.reply, msg.data, headers={CT: CBOR_CT, "X-Seen": seen})

    aio.responder("svc.add", add)
    aio.responder("svc.cbor", cbor_echo)

    answer = bus.request("svc.add", {"a": 1, "b": 2}, timeout=WAIT)
    assert isinstance(answer, ts.Message)
    assert answer.data == 3

    answer2 = bus.request("svc.cbor", CBOR_SAMPLE, codec="cbor", headers={"X-Req": "r1"}, timeout=WAIT)
    assert answer2.data == CBOR_SAMPLE
    assert answer2.headers == {CT: CBOR_CT, "X-Seen": "r1"}

    # Many sequential requests reuse the one response subscription.
    for i in range(20):
        assert bus.request("svc.add", {"a": i, "b": 1}, timeout=WAIT).data == i + 1
    assert_no_bus_errors(bus, errors)


def test_telestion_requests_from_many_threads(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    async def echo(msg: NatsPyMsg) -> None:
        await aio.nc.publish(msg.reply, msg.data)

    aio.responder("svc.echo", echo)

    def worker(n: int) -> List[Any]:
        return [bus.request("svc.echo", {"n": n, "i": i}, timeout=WAIT).data for i in range(10)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(worker, n) for n in range(8)]
        results = [f.result(timeout=20) for f in futures]  # re-raises what a worker raised
    assert results == [[{"n": n, "i": i} for i in range(10)] for n in range(8)]
    assert_no_bus_errors(bus, errors)


def test_telestion_handler_error_reaches_natspy_as_micro_error(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    def broken(msg: ts.Message) -> Any:
        raise RuntimeError("sensor offline\r\nsecond line")

    def not_found(msg: ts.Message) -> Any:
        raise ts.ServiceError("no such channel", 404)

    bus.reply("svc.broken", broken)
    bus.reply("svc.lookup", not_found)
    bus.flush()

    r = aio.request("svc.broken", b"{}")
    assert r.headers is not None
    assert r.headers.get(ERR_CODE_HDR) == "500"
    assert "sensor offline" in r.headers.get(ERR_HDR, "")
    assert "\r" not in r.headers[ERR_HDR] and "\n" not in r.headers[ERR_HDR]
    assert r.data == b""

    r2 = aio.request("svc.lookup", b"{}")
    assert r2.headers is not None
    assert r2.headers.get(ERR_HDR) == "no such channel"
    assert r2.headers.get(ERR_CODE_HDR) == "404"

    # The raising handler is reported on the bus, and its subscription keeps serving.
    err = errors.wait(ts.Error)
    assert isinstance(err.__cause__, RuntimeError)
    r3 = aio.request("svc.broken", b"{}")
    assert r3.headers is not None and r3.headers.get(ERR_CODE_HDR) == "500"


def test_bad_request_payload_gets_400(bus: ts.MessageBus, aio: AsyncNats) -> None:
    bus.reply("svc.cbor_only", lambda msg: msg.data, codec="cbor")
    bus.flush()
    r = aio.request("svc.cbor_only", b"\xff\xff")  # not CBOR
    assert r.headers is not None and r.headers.get(ERR_CODE_HDR) == "400"
    assert r.headers.get(ERR_HDR)


def test_natspy_micro_error_raises_service_error(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    async def failing(msg: NatsPyMsg) -> None:
        await aio.nc.publish(msg.reply, b"", headers={ERR_HDR: "disk full", ERR_CODE_HDR: "507"})

    async def failing_no_code(msg: NatsPyMsg) -> None:
        await aio.nc.publish(msg.reply, b"", headers={ERR_HDR: "something broke"})

    aio.responder("svc.store", failing)
    aio.responder("svc.other", failing_no_code)

    with pytest.raises(ts.ServiceError) as info:
        bus.request("svc.store", {"file": "x"}, timeout=WAIT)
    assert info.value.code == 507
    assert info.value.description == "disk full"
    assert isinstance(info.value.message, ts.Message)
    assert info.value.message.service_error == "disk full"

    with pytest.raises(ts.ServiceError) as info2:
        bus.request("svc.other", timeout=WAIT)
    assert info2.value.code == 500
    assert info2.value.description == "something broke"
    assert_no_bus_errors(bus, errors)


def test_no_responders(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    start = time.monotonic()
    with pytest.raises(ts.NoRespondersError) as info:
        bus.request("svc.nobody", {"x": 1}, timeout=10.0)
    assert time.monotonic() - start < 2.0  # the server's 503 answers at once, not the timeout
    assert info.value.subject == "svc.nobody"

    # ... and the same the other way round: nats-py sees no responders for a subject that a
    # telestion_sync subscription has left.
    sub = bus.reply("svc.gone", lambda msg: 1)
    bus.flush()
    assert json.loads(aio.request("svc.gone").data) == 1
    sub.unsubscribe()
    bus.flush()
    with pytest.raises(nats.errors.NoRespondersError):
        aio.request("svc.gone")
    assert_no_bus_errors(bus, errors)


def test_request_many_collects_natspy_and_telestion_replies(
    bus: ts.MessageBus, other: ts.MessageBus, aio: AsyncNats
) -> None:
    async def health(msg: NatsPyMsg) -> None:
        await aio.nc.publish(msg.reply, json.dumps({"name": "py"}).encode())

    aio.responder("__telestion__.health", health)
    other.reply("__telestion__.health", lambda msg: {"name": "ts"})
    other.flush()
    replies = bus.request_many("__telestion__.health", timeout=2.0, max_msgs=2)
    assert sorted(r.data["name"] for r in replies) == ["py", "ts"]


def test_handler_responding_itself_with_headers(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    def handler(msg: ts.Message) -> Any:
        msg.respond({"ok": True}, headers={"X-Handled-By": "telestion_sync"})
        return "ignored: already answered"

    bus.reply("svc.manual", handler)
    bus.flush()
    inbox_sub = aio.subscribe("manual.inbox")
    aio.publish("svc.manual", b"{}", reply="manual.inbox")  # a plain (non-muxed) reply subject
    m = aio.next_msg(inbox_sub)
    assert json.loads(m.data) == {"ok": True}
    assert m.headers == {"X-Handled-By": "telestion_sync"}
    # Answered exactly once: a flush on both sides, then nothing else is pending.
    bus.flush()
    aio.sync()
    assert inbox_sub.pending_msgs == 0
    assert_no_bus_errors(bus, errors)


@pytest.mark.parametrize("ctype", ["application/cbor; charset=binary", "Application/CBOR"])
def test_cbor_request_with_content_type_variant_gets_cbor_reply(
    bus: ts.MessageBus, aio: AsyncNats, ctype: str
) -> None:
    bus.reply("svc.add", lambda msg: msg.data["a"] + msg.data["b"])
    bus.flush()
    r = aio.request("svc.add", cbor2.dumps({"a": 1, "b": 2}), headers={CT: ctype})
    assert r.headers is not None and r.headers.get(CT) == CBOR_CT
    assert cbor2.loads(r.data) == 3


def test_late_natspy_reply_after_timeout_is_dropped(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    held: List[NatsPyMsg] = []
    arrived = threading.Event()

    async def slow(msg: NatsPyMsg) -> None:
        held.append(msg)  # answered later, by the test, after the request timed out
        arrived.set()

    async def echo(msg: NatsPyMsg) -> None:
        await aio.nc.publish(msg.reply, msg.data)

    aio.responder("svc.slow", slow)
    aio.responder("svc.echo", echo)
    start = time.monotonic()
    with pytest.raises(ts.TimeoutError):
        bus.request("svc.slow", {"n": 1}, timeout=0.3)
    assert time.monotonic() - start < 3.0
    assert arrived.wait(WAIT)

    async def answer_late() -> None:
        await aio.nc.publish(held[0].reply, b'"late"')
        await aio.barrier()

    aio.run(answer_late())
    bus.flush()  # the late reply has reached the bus and must be ignored quietly
    assert bus.request("svc.echo", {"n": 2}, timeout=WAIT).data == {"n": 2}
    assert_no_bus_errors(bus, errors)


def test_reply_queue_group_mixed_responders(
    server: NatsServer, bus: ts.MessageBus, other: ts.MessageBus, aio: AsyncNats
) -> None:
    n = 200
    bus.reply("svc.who", lambda msg: {"by": "ts-a", "i": msg.data["i"]}, queue="svc")
    other.reply("svc.who", lambda msg: {"by": "ts-b", "i": msg.data["i"]}, queue="svc")

    async def py(msg: NatsPyMsg) -> None:
        req = json.loads(msg.data)
        await aio.nc.publish(msg.reply, json.dumps({"by": "py", "i": req["i"]}).encode())

    aio.responder("svc.who", py, queue="svc")
    bus.flush()
    other.flush()

    caller = ts.connect(server.url, name="caller")
    try:
        answers = [caller.request("svc.who", {"i": i}, timeout=WAIT).data for i in range(n)]
    finally:
        caller.close()
    assert [a["i"] for a in answers] == list(range(n))
    assert {a["by"] for a in answers} == {"ts-a", "ts-b", "py"}


# ============================================================================================
# Queue groups across both clients
# ============================================================================================


def test_queue_group_spans_both_clients(bus: ts.MessageBus, other: ts.MessageBus, aio: AsyncNats) -> None:
    n = 300
    ts_a = bus.subscribe("work.items", queue="workers")
    ts_b = other.subscribe("work.items", queue="workers")
    py_sub = aio.subscribe("work.items", queue="workers")
    bus.flush()
    other.flush()

    # Half the jobs from each client.
    for i in range(0, n, 2):
        bus.publish("work.items", {"i": i})
    bus.flush()

    async def pub_odd() -> None:
        for i in range(1, n, 2):
            await aio.nc.publish("work.items", json.dumps({"i": i}).encode())
        await aio.barrier()

    aio.run(pub_odd())

    # After a PING/PONG on each member's connection every message routed to it has been read.
    bus.flush()
    other.flush()
    aio.sync()
    got_a = [ts_a.next_msg(WAIT).data["i"] for _ in range(ts_a.pending)]
    got_b = [ts_b.next_msg(WAIT).data["i"] for _ in range(ts_b.pending)]
    got_py = [json.loads(aio.next_msg(py_sub).data)["i"] for _ in range(py_sub.pending_msgs)]

    everything = got_a + got_b + got_py
    assert len(everything) == n, (len(got_a), len(got_b), len(got_py))
    assert sorted(everything) == list(range(n))  # each delivered exactly once overall
    assert got_a and got_b and got_py  # the group really spans all three members
    assert ts_a.pending == ts_b.pending == py_sub.pending_msgs == 0
    assert ts_a.dropped == ts_b.dropped == 0


def test_queue_group_with_callbacks(
    server: NatsServer, bus: ts.MessageBus, other: ts.MessageBus, aio: AsyncNats
) -> None:
    n = 300
    lock = threading.Lock()
    seen: Dict[str, List[int]] = {"a": [], "b": [], "py": []}
    done = threading.Event()

    def record(who: str, i: int) -> None:
        with lock:
            seen[who].append(i)
            if sum(len(v) for v in seen.values()) >= n:
                done.set()

    async def on_py(msg: NatsPyMsg) -> None:
        record("py", json.loads(msg.data)["i"])

    bus.subscribe("jobs", lambda m: record("a", m.data["i"]), queue="workers")
    other.subscribe("jobs", lambda m: record("b", m.data["i"]), queue="workers")
    aio.responder("jobs", on_py, queue="workers")
    bus.flush()
    other.flush()

    publisher = ts.connect(server.url, name="publisher")
    try:
        for i in range(n):
            publisher.publish("jobs", {"i": i})
        publisher.flush()
    finally:
        publisher.close()
    assert done.wait(10.0), {k: len(v) for k, v in seen.items()}
    with lock:
        everything = seen["a"] + seen["b"] + seen["py"]
    assert sorted(everything) == list(range(n))
    assert all(seen.values())


# ============================================================================================
# Large payloads
# ============================================================================================

BIG = 512 * 1024


def test_large_payload_telestion_to_natspy(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    raw = os.urandom(BIG)
    structured = {"blob": os.urandom(BIG), "n": 1}
    sub = aio.subscribe("big.>")
    bus.publish("big.raw", raw)
    bus.publish("big.cbor", structured, codec="cbor")
    bus.publish("big.json", {"text": "x" * BIG})
    bus.flush()

    m = aio.next_msg(sub)
    assert m.subject == "big.raw" and len(m.data) == BIG and m.data == raw
    m2 = aio.next_msg(sub)
    assert m2.headers is not None and m2.headers.get(CT) == CBOR_CT
    assert cbor2.loads(m2.data) == structured
    m3 = aio.next_msg(sub)
    assert json.loads(m3.data) == {"text": "x" * BIG}
    assert_no_bus_errors(bus, errors)


def test_large_payload_natspy_to_telestion(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    raw = os.urandom(BIG)
    structured = {"blob": os.urandom(BIG), "n": 1}
    sub = bus.subscribe("big.>")
    bus.flush()
    aio.publish("big.raw", raw)
    aio.publish("big.cbor", cbor2.dumps(structured), headers={CT: CBOR_CT, "X-Big": "1"})
    aio.publish("big.json", json.dumps({"text": "y" * BIG}).encode())

    m = sub.next_msg(WAIT)
    assert m.subject == "big.raw" and m.payload == raw and m.data == raw
    m2 = sub.next_msg(WAIT)
    assert m2.data == structured and m2.headers == {CT: CBOR_CT, "X-Big": "1"}
    m3 = sub.next_msg(WAIT)
    assert m3.data == {"text": "y" * BIG}
    assert_no_bus_errors(bus, errors)


def test_large_request_and_reply_both_ways(bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog) -> None:
    blob = os.urandom(BIG)

    async def reverse(msg: NatsPyMsg) -> None:
        await aio.nc.publish(msg.reply, msg.data[::-1])

    aio.responder("py.reverse", reverse)
    bus.reply("ts.reverse", lambda msg: msg.payload[::-1])
    bus.flush()

    assert bus.request("py.reverse", blob, timeout=WAIT).payload == blob[::-1]
    assert aio.request("ts.reverse", blob).data == blob[::-1]
    assert_no_bus_errors(bus, errors)


def test_payload_of_exactly_max_payload_both_ways(
    bus: ts.MessageBus, aio: AsyncNats, errors: ErrorLog
) -> None:
    limit = bus.max_payload
    assert limit == aio.nc.max_payload
    blob = os.urandom(limit)
    py_sub = aio.subscribe("edge.to_py")
    ts_sub = bus.subscribe("edge.to_ts")
    bus.flush()

    bus.publish("edge.to_py", blob)
    bus.flush()
    assert aio.next_msg(py_sub).data == blob

    aio.publish("edge.to_ts", blob)
    assert ts_sub.next_msg(WAIT).payload == blob

    with pytest.raises(ts.MaxPayloadError):
        bus.publish("edge.to_py", blob + b"x")
    assert_no_bus_errors(bus, errors)
