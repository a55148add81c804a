#!/usr/bin/env python3
"""Benchmark telestion_sync against nats-py (native asyncio) and pynats2 on one nats-server.

One run starts one nats-server (``telestion_sync.server.NatsServer``) and one echo responder
process, then runs every (round, test, client) measurement in a fresh subprocess of this script
(``--role worker``), interleaving the clients test by test (their order rotates each round).
Each worker prints one JSON line. At the end a markdown report gives medians, per-round ratios
against nats-py and PASS/FAIL for the targets.

    python scripts/bench.py                  # 3 rounds, full counts
    python scripts/bench.py --quick          # small counts, smoke run (< 60 s)
    python scripts/bench.py --only publish,request --clients telestion_sync,nats-py --rounds 5

Tests (payloads are raw bytes for every client; nothing is encoded or decoded):

- ``publish``   N x 16 B publishes, including the final flush (msg/s)
- ``pubsub``    one connection subscribes with a counting callback and publishes N x 16 B; timed
                until the callback has seen all N (msg/s)
- ``request``   sequential requests (16 B) to the echo responder: requests/s, p50 and p99 latency
- ``rtt1m``     a request with a 1 MiB payload echoed back by the responder (median time)
- ``churn``     N subscribe + unsubscribe (pull subscriptions where the client has them),
                including a final flush (total time)
- ``churn_cb``  the same with a callback per subscription
- ``subs10k``   N (10,000) callback subscriptions on one connection (one subject each):
                the time to subscribe them all (with a flush at its default timeout), then the
                time until 10 messages to each (published by a second connection) have all
                reached their callbacks, the RSS afterwards and the most threads seen
- ``memory``    a pull subscription (nobody consuming) holding 100k pending 16 B messages: the
                process RSS (VmRSS); target for telestion_sync < 100 MB
- ``ws_publish``, ``ws_pubsub``, ``ws_request``: ``publish``, ``pubsub`` and ``request`` over
                the same server's WebSocket port (ws://, no compression); nats-py connects with
                its aiohttp WebSocket transport, pynats2 has none (n/a)

The responder is one process for all clients (nats-py asyncio by default, ``--responder``), so
every client is measured against the same counterpart.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

CLIENTS = ["telestion_sync", "nats-py", "pynats2"]
TESTS = ["publish", "pubsub", "request", "rtt1m", "churn", "churn_cb", "subs10k", "memory"]
#: The WebSocket rows: the same measurement as the TCP test named, over the server's ws:// port.
WS_TESTS = {"ws_publish": "publish", "ws_pubsub": "pubsub", "ws_request": "request"}
TESTS += list(WS_TESTS)
BASELINE = "nats-py"
ECHO_SUBJECT = "bench.echo"
MIB = 1024 * 1024

#: Per-test parameters: n = messages/requests/iterations, size = payload bytes, warmup = untimed
#: iterations first.
FULL: Dict[str, Dict[str, int]] = {
    "publish": {"n": 200_000, "size": 16, "warmup": 0},
    "pubsub": {"n": 200_000, "size": 16, "warmup": 0},
    "request": {"n": 5_000, "size": 16, "warmup": 200},
    "rtt1m": {"n": 40, "size": MIB, "warmup": 3},
    "churn": {"n": 1_000, "size": 0, "warmup": 0},
    "churn_cb": {"n": 1_000, "size": 0, "warmup": 0},
    "subs10k": {"n": 10_000, "size": 16, "warmup": 10},  # warmup: messages per subscription
    "memory": {"n": 100_000, "size": 16, "warmup": 0},
}
FULL.update({ws: dict(FULL[tcp]) for ws, tcp in WS_TESTS.items()})
#: --quick: FULL with smaller counts (memory keeps its 100k: that is what it measures).
_QUICK_COUNTS: Dict[str, Dict[str, int]] = {
    "publish": {"n": 20_000},
    "pubsub": {"n": 20_000},
    "request": {"n": 300, "warmup": 30},
    "rtt1m": {"n": 8, "warmup": 1},
    "churn": {"n": 200},
    "churn_cb": {"n": 200},
    "subs10k": {"n": 2_000},
}
_QUICK_COUNTS.update({ws: _QUICK_COUNTS[tcp] for ws, tcp in WS_TESTS.items()})
QUICK: Dict[str, Dict[str, int]] = {t: {**p, **_QUICK_COUNTS.get(t, {})} for t, p in FULL.items()}

#: What each client cannot do sensibly (shown as n/a).
UNSUPPORTED = {("pynats2", "memory")}  # pynats2 has no pull subscriptions: nothing to hold
UNSUPPORTED.add(("pynats2", "subs10k"))  # one blocking reader loop: not comparable
UNSUPPORTED |= {("pynats2", ws) for ws in WS_TESTS}  # pynats2 has no WebSocket transport


# --------------------------------------------------------------------------------------------
# helpers shared by the roles


def rss_mb() -> Tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB, from /proc/self/status (0.0 where unavailable)."""
    rss = hwm = 0.0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def latency_result(test: str, lat: List[float], total: float) -> Dict[str, Any]:
    """Sequential request results: rate and percentiles, or for ``rtt1m`` the median time."""
    lat.sort()
    if test == "rtt1m":
        return {"ms": statistics.median(lat) * 1000, "max_ms": lat[-1] * 1000, "secs": total}
    return {
        "rps": len(lat) / total,
        "p50_us": percentile(lat, 50) * 1e6,
        "p99_us": percentile(lat, 99) * 1e6,
        "secs": total,
    }


def import_pynats2() -> Any:
    """The pynats2 NATSClient class (module ``pynats2``; some releases call it ``pynats``)."""
    import importlib

    try:
        module = importlib.import_module("pynats2")
    except ImportError as exc:
        try:
            module = importlib.import_module("pynats")
        except ImportError:
            raise exc from None
    return module.NATSClient


# --------------------------------------------------------------------------------------------
# worker: telestion_sync


def ts_worker(test: str, url: str, n: int, size: int, warmup: int) -> Dict[str, Any]:
    import telestion_sync as ts

    errors: List[str] = []

    def on_error(err: BaseException) -> None:
        errors.append(f"{type(err).__name__}: {err}")

    payload = b"x" * size
    bus = ts.connect(url, name=f"bench-{test}", on_error=on_error)
    out: Dict[str, Any] = {}
    try:
        if test == "publish":
            pub = bus.publish
            subj = "bench.pub"
            t0 = time.perf_counter()
            for _ in range(n):
                pub(subj, payload)
            bus.flush(60)
            dt = time.perf_counter() - t0
            out = {"rate": n / dt, "secs": dt}
        elif test == "pubsub":
            done = threading.Event()
            count = 0

            def cb(msg: Any) -> None:
                nonlocal count
                count += 1
                if count >= n:
                    done.set()

            bus.subscribe("bench.ps", cb)
            bus.flush(10)
            pub = bus.publish
            t0 = time.perf_counter()
            for _ in range(n):
                pub("bench.ps", payload)
            if not done.wait(60):
                raise RuntimeError(f"received {count} of {n} messages")
            dt = time.perf_counter() - t0
            out = {"rate": n / dt, "secs": dt}
        elif test in ("request", "rtt1m"):
            req = bus.request
            for _ in range(warmup):
                req(ECHO_SUBJECT, payload, timeout=10)
            lat: List[float] = []
            pc = time.perf_counter
            t0 = pc()
            for _ in range(n):
                t = pc()
                reply = req(ECHO_SUBJECT, payload, timeout=10)
                lat.append(pc() - t)
                if len(reply.payload) != size:
                    raise RuntimeError(f"echo has {len(reply.payload)} bytes, sent {size}")
            out = latency_result(test, lat, pc() - t0)
        elif test in ("churn", "churn_cb"):

            def noop(msg: Any) -> None:
                pass

            cb_arg: Optional[Callable[[Any], None]] = noop if test == "churn_cb" else None
            subscribe = bus.subscribe
            t0 = time.perf_counter()
            for i in range(n):
                s = subscribe(f"bench.churn.{i}", cb_arg)
                s.unsubscribe()
            bus.flush(30)
            dt = time.perf_counter() - t0
            out = {"ms": dt * 1000, "threads_left": threading.active_count()}
        elif test == "subs10k":
            per = warmup  # messages per subscription
            count = 0
            lock = threading.Lock()
            done = threading.Event()
            total = n * per

            def counted(msg: Any) -> None:
                nonlocal count
                with lock:
                    count += 1
                    if count == total:
                        done.set()

            gc.collect()
            base, _ = rss_mb()
            t0 = time.perf_counter()
            for i in range(n):
                bus.subscribe(f"bench.many.{i}", counted)
            bus.flush()  # its default timeout must be enough right after subscribing
            sub_s = time.perf_counter() - t0
            pub_bus = ts.connect(url, name="bench-many-pub")
            most = threading.active_count()
            t0 = time.perf_counter()
            for _ in range(per):
                for i in range(n):
                    pub_bus.publish(f"bench.many.{i}", payload)
            pub_bus.flush(60)
            while not done.wait(0.02):
                most = max(most, threading.active_count())
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError(f"received {count} of {total} messages")
            deliver_s = time.perf_counter() - t0
            most = max(most, threading.active_count())
            pub_bus.close()
            gc.collect()
            rss, _ = rss_mb()
            out = {
                "sub_s": sub_s,
                "deliver_s": deliver_s,
                "rss_mb": rss,
                "delta_mb": rss - base,
                "threads": most,
            }
        elif test == "memory":
            sub = bus.subscribe("bench.mem")
            bus.flush(10)
            gc.collect()
            base, _ = rss_mb()
            pub_bus = ts.connect(url, name="bench-mem-pub")
            for _ in range(n):
                pub_bus.publish("bench.mem", payload)
            pub_bus.flush(30)
            pub_bus.close()
            t_wait = time.monotonic()
            while sub.pending < n and time.monotonic() < t_wait + 30:
                time.sleep(0.01)
            waited = time.monotonic() - t_wait
            if sub.pending < n:
                raise RuntimeError(
                    f"only {sub.pending} of {n} messages pending after {waited:.1f} s "
                    f"(dropped {sub.dropped}, errors {errors})"
                )
            gc.collect()
            rss, hwm = rss_mb()
            out = {
                "rss_mb": rss,
                "base_mb": base,
                "delta_mb": rss - base,
                "hwm_mb": hwm,
                "pending": sub.pending,
                "dropped": sub.dropped,
                "wait_s": waited,
            }
        else:
            raise ValueError(f"unknown test {test}")
    finally:
        bus.close()
    if errors:
        out["errors"] = errors[:3] + ([f"... {len(errors)} in all"] if len(errors) > 3 else [])
    return out


# --------------------------------------------------------------------------------------------
# worker: nats-py (native asyncio)


async def natspy_worker(test: str, url: str, n: int, size: int, warmup: int) -> Dict[str, Any]:
    import nats

    payload = b"x" * size
    nc = await nats.connect(url, name=f"bench-{test}")
    out: Dict[str, Any] = {}
    try:
        if test == "publish":
            pub = nc.publish
            t0 = time.perf_counter()
            for _ in range(n):
                await pub("bench.pub", payload)
            await nc.flush(60)
            dt = time.perf_counter() - t0
            out = {"rate": n / dt, "secs": dt}
        elif test == "pubsub":
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            count = 0

            async def cb(msg: Any) -> None:
                nonlocal count
                count += 1
                if count >= n and not done.done():
                    done.set_result(None)

            await nc.subscribe("bench.ps", cb=cb)
            await nc.flush(10)
            pub = nc.publish
            t0 = time.perf_counter()
            for _ in range(n):
                await pub("bench.ps", payload)
            try:
                await asyncio.wait_for(done, 60)
            except asyncio.TimeoutError:
                raise RuntimeError(f"received {count} of {n} messages") from None
            dt = time.perf_counter() - t0
            out = {"rate": n / dt, "secs": dt}
        elif test in ("request", "rtt1m"):
            req = nc.request
            for _ in range(warmup):
                await req(ECHO_SUBJECT, payload, timeout=10)
            lat: List[float] = []
            pc = time.perf_counter
            t0 = pc()
            for _ in range(n):
                t = pc()
                reply = await req(ECHO_SUBJECT, payload, timeout=10)
                lat.append(pc() - t)
                if len(reply.data) != size:
                    raise RuntimeError(f"echo has {len(reply.data)} bytes, sent {size}")
            out = latency_result(test, lat, pc() - t0)
        elif test in ("churn", "churn_cb"):

            async def noop(msg: Any) -> None:
                pass

            cb_arg = noop if test == "churn_cb" else None
            t0 = time.perf_counter()
            for i in range(n):
                s = await nc.subscribe(f"bench.churn.{i}", cb=cb_arg)
                await s.unsubscribe()
            await nc.flush(30)
            dt = time.perf_counter() - t0
            out = {"ms": dt * 1000}
        elif test == "subs10k":
            per = warmup
            total = n * per
            got = 0
            all_in = asyncio.Event()

            async def counted(msg: Any) -> None:
                nonlocal got
                got += 1
                if got == total:
                    all_in.set()

            gc.collect()
            base, _ = rss_mb()
            t0 = time.perf_counter()
            for i in range(n):
                await nc.subscribe(f"bench.many.{i}", cb=counted)
            await nc.flush()
            sub_s = time.perf_counter() - t0
            pnc = await nats.connect(url, name="bench-many-pub")
            t0 = time.perf_counter()
            for _ in range(per):
                for i in range(n):
                    await pnc.publish(f"bench.many.{i}", payload)
            await pnc.flush(60)
            await asyncio.wait_for(all_in.wait(), 120)
            deliver_s = time.perf_counter() - t0
            await pnc.close()
            gc.collect()
            rss, _ = rss_mb()
            out = {
                "sub_s": sub_s,
                "deliver_s": deliver_s,
                "rss_mb": rss,
                "delta_mb": rss - base,
                "threads": threading.active_count(),
            }
        elif test == "memory":
            sub = await nc.subscribe("bench.mem", pending_msgs_limit=2 * n)
            await nc.flush(10)
            gc.collect()
            base, _ = rss_mb()
            pnc = await nats.connect(url, name="bench-mem-pub")
            for _ in range(n):
                await pnc.publish("bench.mem", payload)
            await pnc.flush(30)
            await pnc.close()
            deadline = time.monotonic() + 30
            while sub.pending_msgs < n and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if sub.pending_msgs < n:
                raise RuntimeError(f"only {sub.pending_msgs} of {n} messages pending after 30 s")
            gc.collect()
            rss, hwm = rss_mb()
            out = {
                "rss_mb": rss,
                "base_mb": base,
                "delta_mb": rss - base,
                "hwm_mb": hwm,
                "pending": sub.pending_msgs,
            }
        else:
            raise ValueError(f"unknown test {test}")
    finally:
        await nc.close()
    return out


# --------------------------------------------------------------------------------------------
# worker: pynats2 (thread-based, 2019)


def pynats2_worker(test: str, url: str, n: int, size: int, warmup: int) -> Dict[str, Any]:
    NATSClient = import_pynats2()
    payload = b"x" * size
    nc = NATSClient(url, name=f"bench-{test}")
    nc.connect()

    # pynats2 has no flush: a marker message on a subscription of our own comes back only after
    # the server processed everything sent before it (subscribing restarts pynats2's reader
    # thread, so this subscription is made before the clock starts).
    marker = threading.Event()
    flush_subject = f"bench.flush.{os.getpid()}"

    def on_marker(msg: Any) -> None:
        marker.set()

    def flush(timeout: float) -> None:
        marker.clear()
        nc.publish(flush_subject, payload=b"")
        if not marker.wait(timeout):
            raise RuntimeError("pynats2 flush marker did not come back")

    out: Dict[str, Any] = {}
    try:
        if test in ("publish", "churn", "churn_cb"):
            nc.subscribe(flush_subject, callback=on_marker)
            flush(10)
        if test == "publish":
            pub = nc.publish
            t0 = time.perf_counter()
            for _ in range(n):
                pub("bench.pub", payload=payload)
            flush(60)
            dt = time.perf_counter() - t0
            out = {"rate": n / dt, "secs": dt}
        elif test == "pubsub":
            done = threading.Event()
            lock = threading.Lock()
            count = 0

            def cb(msg: Any) -> None:  # called on a pool of 3 threads: count under a lock
                nonlocal count
                with lock:
                    count += 1
                    if count >= n:
                        done.set()

            nc.subscribe("bench.ps", callback=cb)
            pub = nc.publish
            t0 = time.perf_counter()
            for _ in range(n):
                pub("bench.ps", payload=payload)
            if not done.wait(120):
                raise RuntimeError(f"received {count} of {n} messages")
            dt = time.perf_counter() - t0
            out = {"rate": n / dt, "secs": dt}
        elif test in ("request", "rtt1m"):
            req = nc.request
            for _ in range(warmup):
                req(ECHO_SUBJECT, payload=payload, timeout=10)
            lat: List[float] = []
            pc = time.perf_counter
            t0 = pc()
            for _ in range(n):
                t = pc()
                reply = req(ECHO_SUBJECT, payload=payload, timeout=10)
                lat.append(pc() - t)
                if len(reply.payload) != size:
                    raise RuntimeError(f"echo has {len(reply.payload)} bytes, sent {size}")
            out = latency_result(test, lat, pc() - t0)
        elif test in ("churn", "churn_cb"):

            def noop(msg: Any) -> None:
                pass

            t0 = time.perf_counter()
            for i in range(n):  # pynats2 needs a callback: churn and churn_cb are the same
                s = nc.subscribe(f"bench.churn.{i}", callback=noop)
                nc.unsubscribe(s)
            flush(30)
            dt = time.perf_counter() - t0
            out = {"ms": dt * 1000}
        else:
            raise ValueError(f"pynats2 cannot run {test}")
    finally:
        closer = threading.Thread(target=nc.close, daemon=True)
        closer.start()
        closer.join(10)
    return out


def run_worker(args: argparse.Namespace) -> int:
    test = WS_TESTS.get(args.test, args.test)  # a ws_ test: the same code, a ws:// URL
    try:
        if args.client == "telestion_sync":
            res = ts_worker(test, args.url, args.n, args.size, args.warmup)
        elif args.client == "nats-py":
            res = asyncio.run(natspy_worker(test, args.url, args.n, args.size, args.warmup))
        elif args.client == "pynats2":
            res = pynats2_worker(test, args.url, args.n, args.size, args.warmup)
        else:
            raise ValueError(f"unknown client {args.client}")
        res["ok"] = True
    except Exception as exc:
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    # pynats2 leaves non-daemon threads behind; never let a leftover thread keep us alive.
    os._exit(0)


# --------------------------------------------------------------------------------------------
# responder: echoes every request on ECHO_SUBJECT


async def natspy_responder(url: str) -> None:
    import nats

    nc = await nats.connect(url, name="bench-responder")
    publish = nc.publish

    async def echo(msg: Any) -> None:
        await publish(msg.reply, msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=echo, pending_bytes_limit=256 * MIB)
    await nc.flush(10)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await nc.close()


def ts_responder(url: str) -> None:
    import telestion_sync as ts

    bus = ts.connect(url, name="bench-responder")
    bus.reply(ECHO_SUBJECT, lambda msg: msg.payload, codec="raw")
    bus.flush(10)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("READY", flush=True)
    while not stop.wait(0.5):
        pass
    bus.close()


def run_responder(args: argparse.Namespace) -> int:
    if args.responder == "nats-py":
        asyncio.run(natspy_responder(args.url))
    else:
        ts_responder(args.url)
    return 0


# --------------------------------------------------------------------------------------------
# driver


class Metric:
    """One reported number: which test/key, how to show it, and its target ratio vs a baseline."""

    def __init__(
        self,
        test: str,
        key: str,
        label: str,
        fmt: str,
        higher_better: bool,
        target: Optional[float] = None,
        baseline: str = BASELINE,
    ) -> None:
        self.test = test
        self.key = key
        self.label = label
        self.fmt = fmt
        self.higher_better = higher_better
        self.target = target
        self.baseline = baseline

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op = ">=" if self.higher_better else "<="
        return f"{op} {self.target:g}x {self.baseline}"

    def passes(self, ratio: float) -> bool:
        assert self.target is not None
        return ratio >= self.target if self.higher_better else ratio <= self.target


METRICS = [
    Metric("publish", "rate", "publish msg/s (16 B, incl. flush)", "{:,.0f}", True, 1.5),
    Metric("pubsub", "rate", "pub->sub msg/s (16 B, one process)", "{:,.0f}", True, 1.5),
    Metric("request", "rps", "sequential requests/s (16 B)", "{:,.0f}", True, 1.1),
    Metric("request", "p50_us", "request p50 latency us", "{:,.0f}", False, 0.9),
    Metric("request", "p99_us", "request p99 latency us", "{:,.0f}", False),
    Metric("rtt1m", "ms", "1 MiB request round trip ms (median)", "{:,.2f}", False, 1.0),
    Metric("churn", "ms", "subscribe+unsubscribe x N ms (pull)", "{:,.1f}", False, 1.0),
    Metric("churn_cb", "ms", "subscribe+unsubscribe x N ms (callback)", "{:,.1f}", False, 1.0),
    Metric("subs10k", "sub_s", "10,000 callback subscriptions: subscribe s", "{:,.3f}", False, 1.0),
    Metric("subs10k", "deliver_s", "10,000 subscriptions: deliver 100k msgs s", "{:,.3f}", False, 1.0),
    Metric("subs10k", "rss_mb", "10,000 subscriptions: RSS MB", "{:,.1f}", False, 1.2),
    Metric("subs10k", "threads", "10,000 subscriptions: threads (most seen)", "{:,.0f}", False),
    Metric("memory", "rss_mb", "RSS MB, 100k pending 16 B msgs", "{:,.1f}", False),
    Metric("memory", "delta_mb", "RSS growth MB while holding them", "{:,.1f}", False),
    Metric("ws_publish", "rate", "ws:// publish msg/s (16 B, incl. flush)", "{:,.0f}", True, 1.5),
    Metric("ws_pubsub", "rate", "ws:// pub->sub msg/s (16 B, one process)", "{:,.0f}", True, 1.5),
    Metric("ws_request", "rps", "ws:// sequential requests/s (16 B)", "{:,.0f}", True, 1.2),
    Metric("ws_request", "p50_us", "ws:// request p50 latency us", "{:,.0f}", False),
]
#: Extra targets against another baseline (the "ratio" is telestion_sync / baseline).
EXTRA_TARGETS = [
    Metric("publish", "rate", "publish msg/s", "{:,.0f}", True, 10.0, baseline="pynats2"),
]
MEMORY_LIMIT_MB = 100.0

Results = Dict[str, Dict[str, List[Optional[Dict[str, Any]]]]]  # test -> client -> per round


def client_available(client: str) -> Tuple[bool, str]:
    try:
        if client == "telestion_sync":
            import telestion_sync  # noqa: F401
        elif client == "nats-py":
            import nats  # noqa: F401
        elif client == "pynats2":
            import_pynats2()
        return True, ""
    except Exception as exc:  # pynats2 imports pkg_resources, gone from setuptools >= 81
        return False, f"{type(exc).__name__}: {exc}"


def client_version(client: str) -> str:
    from importlib import metadata

    dist = {"telestion_sync": "telestion_sync", "nats-py": "nats-py", "pynats2": "pynats2"}[client]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def start_responder(url: str, kind: str, timeout: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "responder", "--url", url]
    cmd += ["--responder", kind]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    line: List[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    if not line or line[0].strip() != "READY":
        stop_process(proc)
        raise RuntimeError(f"the {kind} responder did not start within {timeout} s")
    return proc


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def run_one(client: str, test: str, url: str, params: Dict[str, int], timeout: float) -> Dict[str, Any]:
    extra = ["--size", str(params["size"]), "--warmup", str(params["warmup"])]
    return run_worker_process("worker", client, test, url, params["n"], extra, timeout)


def run_worker_process(
    role: str, client: str, test: str, url: str, n: int, extra: Sequence[str], timeout: float
) -> Dict[str, Any]:
    """One measurement in a fresh process of this script (``--role``): its JSON result line,
    or ``ok: False`` with why (a timeout, a crash)."""
    cmd = [
        sys.executable, os.path.abspath(__file__), "--role", role, "--client", client,
        "--test", test, "--url", url, "--n", str(n), *extra,
    ]  # fmt: skip
    note = ""
    try:
        cp = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        stdout, stderr = cp.stdout, cp.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        note = f"worker killed after the {timeout:g} s timeout"
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            res: Dict[str, Any] = json.loads(line)
            if note:
                res["note"] = note
            return res
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "error": note or f"no result ({tail})"}


def summary(test: str, res: Dict[str, Any]) -> str:
    if not res.get("ok"):
        return "ERROR " + str(res.get("error"))
    keys = [m.key for m in METRICS if m.test == test]
    fmts = {m.key: m.fmt for m in METRICS if m.test == test}
    text = "  ".join(f"{k}={fmts[k].format(res[k])}" for k in keys if k in res)
    if res.get("errors"):
        text += f"  errors={res['errors']}"
    if res.get("note"):
        text += f"  ({res['note']})"
    return text


def values(results: Results, test: str, client: str, key: str) -> List[Optional[float]]:
    out: List[Optional[float]] = []
    for r in results.get(test, {}).get(client, []):
        out.append(float(r[key]) if r and r.get("ok") and key in r else None)
    return out


def median(vals: Sequence[Optional[float]]) -> Optional[float]:
    got = [v for v in vals if v is not None]
    return statistics.median(got) if got else None


def ratios(results: Results, m: Metric, client: str) -> List[Optional[float]]:
    a = values(results, m.test, client, m.key)
    b = values(results, m.test, m.baseline, m.key)
    return [x / y if x is not None and y else None for x, y in zip(a, b)]


def fmt_ratio(r: Optional[float]) -> str:
    return "n/a" if r is None else f"{r:.2f}"


def cell(m: Metric, client: str, results: Results, clients: Sequence[str]) -> str:
    if client not in clients:
        return "unavailable"
    if (client, m.test) in UNSUPPORTED:
        return "n/a"
    vals = values(results, m.test, client, m.key)
    med = median(vals)
    if med is None:
        return "error" if vals else "-"
    return m.fmt.format(med)


def report(
    results: Results,
    clients: Sequence[str],
    tests: Sequence[str],
    rounds: int,
    command: str,
    env_lines: Sequence[str],
    unavailable: Dict[str, str],
) -> Tuple[str, List[str]]:
    """The markdown report and the list of missed targets."""
    lines: List[str] = ["", "## Benchmark results", "", f"Command: `{command}`", ""]
    lines += [f"- {e}" for e in env_lines]
    for c, why in unavailable.items():
        lines.append(f"- {c}: unavailable ({why}), skipped")
    lines += ["", f"Medians of {rounds} round(s). Ratios are telestion_sync / baseline per round "
              "(rates: higher is better; times and latencies: lower is better).", ""]  # fmt: skip
    head = ["metric", *CLIENTS, "ts/baseline per round", "median ratio", "target", "result"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    misses: List[str] = []
    ts_ok = "telestion_sync" in clients
    for m in METRICS + EXTRA_TARGETS:
        if m.test not in tests:
            continue
        extra = m in EXTRA_TARGETS
        label = f"publish vs pynats2 ({m.label})" if extra else m.label
        row = [label] + (["", "", ""] if extra else [cell(m, c, results, clients) for c in CLIENTS])
        if ts_ok and m.baseline in clients and (m.baseline, m.test) not in UNSUPPORTED:
            per = ratios(results, m, "telestion_sync")
            med = median(per)
            row.append(", ".join(fmt_ratio(r) for r in per))
            row.append(fmt_ratio(med))
        else:
            med = None
            row += ["n/a", "n/a"]
        row.append(m.target_text())
        result = ""
        if m.target is not None:
            if med is None:
                result = "n/a"
            elif m.passes(med):
                result = "PASS"
            else:
                result = "FAIL"
                misses.append(f"{label}: median ratio {med:.2f}, target {m.target_text()}")
        if m.test == "memory" and m.key == "rss_mb" and ts_ok:
            rss = median(values(results, "memory", "telestion_sync", "rss_mb"))
            if rss is not None:
                ok = rss < MEMORY_LIMIT_MB
                row[-1] = f"telestion_sync < {MEMORY_LIMIT_MB:g} MB"
                result = "PASS" if ok else "FAIL"
                if not ok:
                    misses.append(f"memory: telestion_sync RSS {rss:.1f} MB, target < {MEMORY_LIMIT_MB:g} MB")
        row.append(result)
        lines.append("| " + " | ".join(row) + " |")
    # pynats2 vs nats-py, for context (no targets)
    if "pynats2" in clients and BASELINE in clients:
        lines += ["", "pynats2 / nats-py per round (context, no targets):", ""]
        lines.append("| metric | per round | median |")
        lines.append("|---|---|---|")
        for m in METRICS:
            if m.test not in tests or ("pynats2", m.test) in UNSUPPORTED:
                continue
            per = ratios(results, m, "pynats2")
            lines.append(f"| {m.label} | {', '.join(fmt_ratio(r) for r in per)} | {fmt_ratio(median(per))} |")
    # every raw number
    lines += ["", "All rounds (raw values):", ""]
    lines.append("| metric | client | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |")
    lines.append("|---|---|" + "---|" * rounds)
    for m in METRICS:
        if m.test not in tests:
            continue
        for c in clients:
            if (c, m.test) in UNSUPPORTED:
                continue
            vals = values(results, m.test, c, m.key)
            shown = [("error" if v is None else m.fmt.format(v)) for v in vals]
            lines.append(f"| {m.label} | {c} | " + " | ".join(shown) + " |")
    problems = []
    for test in tests:
        for c in clients:
            for i, r in enumerate(results.get(test, {}).get(c, [])):
                if r is None:
                    continue
                if not r.get("ok"):
                    problems.append(f"round {i + 1} {test} {c}: {r.get('error')}")
                elif r.get("errors") or r.get("note"):
                    problems.append(
                        f"round {i + 1} {test} {c}: {r.get('errors') or ''} {r.get('note') or ''}"
                    )
    if problems:
        lines += ["", "Problems:", ""] + [f"- {p}" for p in problems]
    lines += ["", "Targets missed: " + ("none" if not misses else str(len(misses)))]
    lines += [f"- {x}" for x in misses]
    return "\n".join(lines), misses


def run_driver(args: argparse.Namespace) -> int:
    from telestion_sync.server import NatsServer, free_port, nats_server_binary

    started = time.monotonic()
    params = QUICK if args.quick else FULL
    rounds = args.rounds
    tests = TESTS if not args.only else [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        print(f"unknown test(s) {unknown}; choose from {TESTS}", file=sys.stderr)
        return 2
    wanted = CLIENTS if not args.clients else [c.strip() for c in args.clients.split(",") if c.strip()]
    bad = [c for c in wanted if c not in CLIENTS]
    if bad:
        print(f"unknown client(s) {bad}; choose from {CLIENTS}", file=sys.stderr)
        return 2
    clients: List[str] = []
    unavailable: Dict[str, str] = {}
    for c in wanted:
        ok, why = client_available(c)
        if ok:
            clients.append(c)
        else:
            unavailable[c] = why
            print(f"{c} is unavailable ({why}); skipping it", flush=True)
    if not clients:
        print("no client available", file=sys.stderr)
        return 1
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(__file__), *sys.argv[1:]])
    try:
        server_version = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:
        server_version = f"nats-server version unknown ({exc})"
    env_lines = [
        f"{server_version} on loopback; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPUs; {platform.machine()} {platform.system()}",
        "clients: " + ", ".join(f"{c} {client_version(c)}" for c in clients),
        f"responder: ONE {args.responder} echo process shared by all clients (subject {ECHO_SUBJECT}; "
        "over TCP, for the ws_ tests too)",
        "counts: " + "; ".join(f"{t} n={params[t]['n']:,} size={params[t]['size']:,} B" for t in tests),
        f"each measurement in its own subprocess (timeout {args.timeout:g} s); clients interleaved "
        "per test, order rotated each round",
        f"interpreter: {sys.executable}",
    ]
    if args.quick:
        env_lines.append("QUICK mode: counts are too small for the targets to mean much (smoke run)")

    results: Results = {t: {c: [] for c in clients} for t in tests}
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    responder: Optional[subprocess.Popen[str]] = None
    try:
        with NatsServer(websocket_port=free_port()) as server:
            print(f"nats-server at {server.url}; {' '.join(env_lines[:1])}", flush=True)
            try:
                if any(WS_TESTS.get(t, t) in ("request", "rtt1m") for t in tests):
                    responder = start_responder(server.url, args.responder, 20)
                for rnd in range(rounds):
                    order = clients[rnd % len(clients) :] + clients[: rnd % len(clients)]
                    for test in tests:
                        for c in order:
                            if (c, test) in UNSUPPORTED:
                                results[test][c].append(None)
                                continue
                            t0 = time.monotonic()
                            url = server.websocket_url if test in WS_TESTS else server.url
                            res = run_one(c, test, url or server.url, params[test], args.timeout)
                            results[test][c].append(res)
                            took = time.monotonic() - t0
                            print(
                                f"[round {rnd + 1}/{rounds} {took:5.1f} s] {test:<8} {c:<14} "
                                f"{summary(test, res)}",
                                flush=True,
                            )
                    if responder is not None and responder.poll() is not None:
                        print("the responder died; restarting it", flush=True)
                        responder = start_responder(server.url, args.responder, 20)
            finally:
                if responder is not None:  # before the server, so it does not see it vanish
                    stop_process(responder)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    elapsed = time.monotonic() - started
    env_lines.append(f"wall time {elapsed:.0f} s")
    text, _ = report(results, clients, tests, rounds, command, env_lines, unavailable)
    print(text)
    return 0


# --------------------------------------------------------------------------------------------
# JetStream (--jetstream): telestion_sync's JetStream against nats-py's JetStream API
#
# One JetStream server (memory-stored streams, so disk noise stays out); the driver fills the
# stream BENCH_READ once (JS_READ_N x 16 B) for the read tests; every worker reads it through a
# consumer of its own, and the publish tests write into BENCH_PUB (purged before each worker).
#
# - js_publish        publish with ack, one at a time (msg/s)
# - js_publish_async  publish_async with the default 4000-ack window, until all acked (msg/s)
# - js_fetch          fetch in batches of 100 from a durable pull consumer, ack each (msg/s)
# - js_consume        consume() with a callback that acks (nats-py: its push subscription with
#                     a callback and manual acks, nats-py having no pull consume) (msg/s)
# - js_ordered        ordered replay of the whole stream (nats-py: ordered_consumer=True) (msg/s)

JS_TESTS = ["js_publish", "js_publish_async", "js_fetch", "js_consume", "js_ordered"]
JS_CLIENTS = ["telestion_sync", "nats-py"]
JS_READ_N = 100_000
JS_FULL = {
    "js_publish": 5_000,
    "js_publish_async": 100_000,
    "js_fetch": 100_000,
    "js_consume": 100_000,
    "js_ordered": 100_000,
}
JS_QUICK = {
    "js_publish": 1_000,
    "js_publish_async": 20_000,
    "js_fetch": 20_000,
    "js_consume": 20_000,
    "js_ordered": 100_000,
}
JS_METRICS = [
    Metric("js_publish", "rate", "JetStream publish+ack msg/s (one at a time)", "{:,.0f}", True, 1.2),
    Metric("js_publish_async", "rate", "JetStream publish_async msg/s", "{:,.0f}", True, 1.5),
    Metric("js_fetch", "rate", "JetStream fetch(100)+ack msg/s", "{:,.0f}", True, 1.5),
    Metric("js_consume", "rate", "JetStream consume()+ack msg/s", "{:,.0f}", True, 1.5),
    Metric("js_ordered", "rate", "JetStream ordered replay msg/s (100k stored)", "{:,.0f}", True, 1.5),
]


def ts_js_worker(test: str, url: str, n: int) -> Dict[str, Any]:
    import telestion_sync as ts

    payload = b"x" * 16
    bus = ts.connect(url, name=f"bench-{test}")
    js = bus.jetstream(timeout=30)
    try:
        if test == "js_publish":
            t0 = time.perf_counter()
            for _ in range(n):
                js.publish("bench.pub", payload)
            el = time.perf_counter() - t0
        elif test == "js_publish_async":
            t0 = time.perf_counter()
            for _ in range(n):
                js.publish_async("bench.pub", payload)
            js.publish_async_complete(120)
            el = time.perf_counter() - t0
        elif test == "js_fetch":
            c = js.create_consumer("BENCH_READ", durable=f"ts_fetch_{os.getpid()}", max_ack_pending=-1)
            got = 0
            t0 = time.perf_counter()
            while got < n:
                for m in c.fetch(100, timeout=10):
                    m.ack()
                    got += 1
            bus.flush()
            el = time.perf_counter() - t0
        elif test == "js_consume":
            c = js.create_consumer("BENCH_READ", durable=f"ts_consume_{os.getpid()}", max_ack_pending=-1)
            done = threading.Event()
            count = [0]

            def cb(m: Any) -> None:
                m.ack()
                count[0] += 1
                if count[0] == n:
                    done.set()

            t0 = time.perf_counter()
            cc = c.consume(cb)
            if not done.wait(120):
                raise RuntimeError(f"consume saw {count[0]} of {n}")
            bus.flush()
            el = time.perf_counter() - t0
            cc.stop()
        elif test == "js_ordered":
            t0 = time.perf_counter()
            oc = js.ordered_consumer("BENCH_READ")
            got = 0
            for _m in oc.messages():
                got += 1
                if got == n:
                    break
            el = time.perf_counter() - t0
            oc.close()
        else:
            raise ValueError(test)
    finally:
        bus.close()
    return {"ok": True, "rate": n / el, "seconds": el}


async def natspy_js_worker(test: str, url: str, n: int) -> Dict[str, Any]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    payload = b"x" * 16
    nc = await nats.connect(url, name=f"bench-{test}")
    js = nc.jetstream(timeout=30)
    try:
        if test == "js_publish":
            t0 = time.perf_counter()
            for _ in range(n):
                await js.publish("bench.pub", payload)
            el = time.perf_counter() - t0
        elif test == "js_publish_async":
            t0 = time.perf_counter()
            for _ in range(n):
                await js.publish_async("bench.pub", payload)
            await js.publish_async_completed()
            el = time.perf_counter() - t0
        elif test == "js_fetch":
            durable = f"py_fetch_{os.getpid()}"
            await js.add_consumer(
                "BENCH_READ",
                ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
            )
            sub = await js.pull_subscribe_bind(durable, stream="BENCH_READ")
            got = 0
            t0 = time.perf_counter()
            while got < n:
                for m in await sub.fetch(100, timeout=10):
                    await m.ack()
                    got += 1
            await nc.flush()
            el = time.perf_counter() - t0
        elif test == "js_consume":
            done = asyncio.Event()
            count = [0]

            async def cb(m: Any) -> None:
                await m.ack()
                count[0] += 1
                if count[0] == n:
                    done.set()

            t0 = time.perf_counter()
            sub = await js.subscribe(
                "bench.read",
                durable=f"py_consume_{os.getpid()}",
                cb=cb,
                manual_ack=True,
                config=ConsumerConfig(max_ack_pending=-1),
                pending_msgs_limit=-1,
            )
            await asyncio.wait_for(done.wait(), 120)
            await nc.flush()
            el = time.perf_counter() - t0
            await sub.unsubscribe()
        elif test == "js_ordered":
            done = asyncio.Event()
            count = [0]

            async def ocb(m: Any) -> None:
                count[0] += 1
                if count[0] == n:
                    done.set()

            t0 = time.perf_counter()
            sub = await js.subscribe("bench.read", ordered_consumer=True, cb=ocb)
            await asyncio.wait_for(done.wait(), 120)
            el = time.perf_counter() - t0
            await sub.unsubscribe()
        else:
            raise ValueError(test)
    finally:
        await nc.close()
    return {"ok": True, "rate": n / el, "seconds": el}


def print_worker_result(run: Callable[[], Dict[str, Any]]) -> int:
    """A worker's one line of output: its result as JSON, or the error it failed with."""
    try:
        res = run()
    except Exception as exc:
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(res), flush=True)
    return 0


def run_js_worker(args: argparse.Namespace) -> int:
    if args.client == "telestion_sync":
        return print_worker_result(lambda: ts_js_worker(args.test, args.url, args.n))
    return print_worker_result(lambda: asyncio.run(natspy_js_worker(args.test, args.url, args.n)))


def run_js_driver(args: argparse.Namespace) -> int:
    """The JetStream comparison: its own server, its own streams, its own report."""
    import telestion_sync as ts
    from telestion_sync.server import NatsServer

    counts = JS_QUICK if args.quick else JS_FULL
    tests = [t for t in JS_TESTS if not args.only or t in args.only.split(",")]
    clients = [c for c in JS_CLIENTS if client_available(c)[0]]
    started = time.monotonic()
    results: Results = {t: {c: [] for c in clients} for t in tests}
    with NatsServer(jetstream=True) as server, ts.connect(server.url) as bus:
        js = bus.jetstream(timeout=30)
        js.create_stream("BENCH_PUB", subjects=["bench.pub"], storage="memory")
        js.create_stream("BENCH_READ", subjects=["bench.read"], storage="memory")
        for _ in range(max(JS_READ_N, max(counts[t] for t in ("js_fetch", "js_consume", "js_ordered")))):
            js.publish_async("bench.read", b"x" * 16)
        js.publish_async_complete(120)
        held = js.stream_info("BENCH_READ").state.messages
        print(f"JetStream server at {server.url}; BENCH_READ holds {held:,}", flush=True)
        for rnd in range(args.rounds):
            order = clients[rnd % len(clients) :] + clients[: rnd % len(clients)]
            for test in tests:
                for c in order:
                    js.purge_stream("BENCH_PUB")
                    t0 = time.monotonic()
                    res = run_worker_process("js-worker", c, test, server.url, counts[test], (), args.timeout)
                    results[test][c].append(res)
                    shown = f"{res['rate']:,.0f} msg/s" if res.get("ok") else f"ERROR {res.get('error')}"
                    took = time.monotonic() - t0
                    print(
                        f"[round {rnd + 1}/{args.rounds} {took:5.1f} s] {test:<17} {c:<14} {shown}",
                        flush=True,
                    )
                    for info in js.consumers("BENCH_READ"):  # each worker's durable goes
                        js.delete_consumer("BENCH_READ", info.name)
    lines, misses = ratio_table(
        "## JetStream benchmark",
        f"memory-stored streams, 16 B payloads, {args.rounds} rounds, clients interleaved; "
        f"wall time {time.monotonic() - started:.0f} s",
        JS_METRICS,
        results,
        tests,
    )
    print("\n".join(lines))
    return 0 if misses == 0 else 1


def ratio_table(
    title: str,
    setting: str,
    metrics: Sequence[Metric],
    results: Results,
    tests: Sequence[str],
    fmt: Callable[[Metric, Optional[float]], str] = lambda m, v: fmt_num(v),
) -> Tuple[List[str], int]:
    """The markdown report of a telestion_sync vs nats-py section (JetStream, KV): its lines
    and how many targets were missed."""
    lines = [
        title,
        "",
        "command: " + " ".join(shlex.quote(a) for a in ["python", os.path.relpath(__file__), *sys.argv[1:]]),
        setting,
        "",
        "| metric | telestion_sync | nats-py | ratio per round | median ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    misses = 0
    for m in metrics:
        if m.test not in tests:
            continue
        a = values(results, m.test, "telestion_sync", m.key)
        b = values(results, m.test, "nats-py", m.key)
        per = [x / y if x and y else None for x, y in zip(a, b)]
        med = median(per)
        ok = med is not None and m.passes(med)
        misses += not ok
        lines.append(
            f"| {m.label} | {fmt(m, median(a))} | {fmt(m, median(b))} | "
            + ", ".join(fmt_ratio(r) for r in per)
            + f" | {fmt_ratio(med)} | {m.target_text()} | {'PASS' if ok else 'FAIL'} |"
        )
    return lines, misses


# --------------------------------------------------------------------------------------------
# Key-Value and Object Store (--kv): telestion_sync against nats-py's KV and Object Store APIs
#
# One JetStream server, memory storage. The driver fills bucket "benchw" with KV_WATCH_N keys
# and puts a KV_OBJ_MB MiB object "read" into store "benchobj" once.
#
# - kv_put     kv.put one at a time (ops/s)
# - kv_get     kv.get of one key, one at a time (ops/s)
# - kv_watch   a watch delivering KV_WATCH_N entries (the bucket's values), until the marker (entries/s)
# - obj_put    put of a KV_OBJ_MB MiB file (MB/s; peak RSS growth reported)
# - obj_get    get of the KV_OBJ_MB MiB object, streamed into a sink (MB/s; peak RSS growth)

KV_TESTS = ["kv_put", "kv_get", "kv_watch", "obj_put", "obj_get"]
KV_WATCH_N = 10_000
KV_OBJ_MB = 64
KV_FULL = {"kv_put": 5_000, "kv_get": 5_000, "kv_watch": KV_WATCH_N, "obj_put": 1, "obj_get": 1}
KV_QUICK = {"kv_put": 1_000, "kv_get": 1_000, "kv_watch": KV_WATCH_N, "obj_put": 1, "obj_get": 1}
KV_METRICS = [
    Metric("kv_put", "rate", "KV put ops/s (one at a time)", "{:,.0f}", True, 1.2),
    Metric("kv_get", "rate", "KV get ops/s (one at a time)", "{:,.0f}", True, 1.2),
    Metric("kv_watch", "rate", f"KV watch entries/s ({KV_WATCH_N:,} delivered)", "{:,.0f}", True, 1.5),
    Metric("obj_put", "rate", f"Object Store put MB/s ({KV_OBJ_MB} MiB)", "{:,.1f}", True, 1.0),
    Metric("obj_get", "rate", f"Object Store get MB/s ({KV_OBJ_MB} MiB)", "{:,.1f}", True, 1.0),
]


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Sink:
    """Counts what is written and drops it (a get's destination)."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, b: Any) -> int:
        self.n += len(b)
        return len(b)


def ts_kv_worker(test: str, url: str, n: int, path: str) -> Dict[str, Any]:
    import telestion_sync as ts

    bus = ts.connect(url, name=f"bench-{test}")
    js = bus.jetstream(timeout=30)
    rss0 = _peak_rss_mb()
    try:
        if test == "kv_put":
            kv = js.key_value("benchp")
            t0 = time.perf_counter()
            for _i in range(n):
                kv.put("key", b"x" * 16)
            el = time.perf_counter() - t0
        elif test == "kv_get":
            kv = js.key_value("benchw")
            t0 = time.perf_counter()
            for _i in range(n):
                kv.get("k.1")
            el = time.perf_counter() - t0
        elif test == "kv_watch":
            kv = js.key_value("benchw")
            t0 = time.perf_counter()
            got = 0
            with kv.watch() as w:
                for e in w:
                    if e is None:
                        break
                    got += 1
            el = time.perf_counter() - t0
            if got != n:
                raise RuntimeError(f"watch delivered {got}, not {n}")
        elif test == "obj_put":
            obs = js.object_store("benchobj")
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                obs.put("put-ts", f)
            el = time.perf_counter() - t0
            n = os.path.getsize(path)
        elif test == "obj_get":
            obs = js.object_store("benchobj")
            sink = _Sink()
            t0 = time.perf_counter()
            with obs.get("read") as r:
                for chunk in r.iter_chunks():
                    sink.write(chunk)
            el = time.perf_counter() - t0
            n = sink.n
        else:
            raise ValueError(test)
    finally:
        bus.close()
    rate = n / el / 1e6 if test.startswith("obj") else n / el
    return {"ok": True, "rate": rate, "seconds": el, "rss_growth_mb": _peak_rss_mb() - rss0}


async def natspy_kv_worker(test: str, url: str, n: int, path: str) -> Dict[str, Any]:
    import nats

    nc = await nats.connect(url, name=f"bench-{test}")
    js = nc.jetstream(timeout=30)
    rss0 = _peak_rss_mb()
    try:
        if test == "kv_put":
            kv = await js.key_value("benchp")
            t0 = time.perf_counter()
            for _i in range(n):
                await kv.put("key", b"x" * 16)
            el = time.perf_counter() - t0
        elif test == "kv_get":
            kv = await js.key_value("benchw")
            t0 = time.perf_counter()
            for _i in range(n):
                await kv.get("k.1")
            el = time.perf_counter() - t0
        elif test == "kv_watch":
            kv = await js.key_value("benchw")
            t0 = time.perf_counter()
            got = 0
            w = await kv.watchall()
            async for e in w:
                if e is None:
                    break
                got += 1
            await w.stop()
            el = time.perf_counter() - t0
            if got != n:
                raise RuntimeError(f"watch delivered {got}, not {n}")
        elif test == "obj_put":
            obs = await js.object_store("benchobj")
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                await obs.put("put-py", f)
            el = time.perf_counter() - t0
            n = os.path.getsize(path)
        elif test == "obj_get":
            obs = await js.object_store("benchobj")
            sink = _Sink()
            t0 = time.perf_counter()
            await obs.get("read", writeinto=sink)
            el = time.perf_counter() - t0
            n = sink.n
        else:
            raise ValueError(test)
    finally:
        await nc.close()
    rate = n / el / 1e6 if test.startswith("obj") else n / el
    return {"ok": True, "rate": rate, "seconds": el, "rss_growth_mb": _peak_rss_mb() - rss0}


def run_kv_worker(args: argparse.Namespace) -> int:
    if args.client == "telestion_sync":
        return print_worker_result(lambda: ts_kv_worker(args.test, args.url, args.n, args.path))
    return print_worker_result(lambda: asyncio.run(natspy_kv_worker(args.test, args.url, args.n, args.path)))


def run_kv_driver(args: argparse.Namespace) -> int:
    """The Key-Value and Object Store comparison: its own server, buckets and report."""
    import tempfile

    import telestion_sync as ts
    from telestion_sync.server import NatsServer

    counts = KV_QUICK if args.quick else KV_FULL
    tests = [t for t in KV_TESTS if not args.only or t in args.only.split(",")]
    clients = [c for c in JS_CLIENTS if client_available(c)[0]]
    started = time.monotonic()
    results: Results = {t: {c: [] for c in clients} for t in tests}
    tmp = tempfile.mkdtemp(prefix="bench-obj-")
    path = os.path.join(tmp, "object.bin")
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(KV_OBJ_MB):
            f.write(block)
    try:
        with NatsServer(jetstream=True) as server, ts.connect(server.url) as bus:
            js = bus.jetstream(timeout=30)
            js.create_key_value("benchp", storage="memory")
            kvw = js.create_key_value("benchw", storage="memory")
            for i in range(KV_WATCH_N):
                js.publish_async(f"$KV.benchw.k.{i}", b"x" * 16)
            js.publish_async_complete(120)
            assert kvw.status().values == KV_WATCH_N
            obs = js.create_object_store("benchobj", storage="memory")
            with open(path, "rb") as f:
                obs.put("read", f)
            print(
                f"JetStream server at {server.url}; {KV_WATCH_N:,} keys, a {KV_OBJ_MB} MiB object", flush=True
            )
            for rnd in range(args.rounds):
                order = clients[rnd % len(clients) :] + clients[: rnd % len(clients)]
                for test in tests:
                    for c in order:
                        t0 = time.monotonic()
                        extra = ("--path", path)
                        res = run_worker_process(
                            "kv-worker", c, test, server.url, counts[test], extra, args.timeout
                        )
                        results[test][c].append(res)
                        if res.get("ok"):
                            shown = f"{res['rate']:,.1f} {'MB/s' if test.startswith('obj') else 'ops/s'}"
                            shown += f" (peak RSS +{res['rss_growth_mb']:.0f} MB)"
                        else:
                            shown = f"ERROR {res.get('error')}"
                        took = time.monotonic() - t0
                        print(
                            f"[round {rnd + 1}/{args.rounds} {took:5.1f} s] {test:<9} {c:<14} {shown}",
                            flush=True,
                        )
                        if test == "obj_put":
                            for name in ("put-ts", "put-py"):
                                try:
                                    obs.delete(name)
                                except ts.Error:
                                    pass
    finally:
        os.unlink(path)
        os.rmdir(tmp)
    lines, misses = ratio_table(
        "## Key-Value and Object Store benchmark",
        f"memory-stored buckets, 16 B values, {args.rounds} rounds, clients interleaved; "
        f"wall time {time.monotonic() - started:.0f} s",
        KV_METRICS,
        results,
        tests,
        lambda m, v: ("error" if v is None else f"{v:,.1f}") if m.test.startswith("obj") else fmt_num(v),
    )
    for test in ("obj_put", "obj_get"):
        if test in tests:
            a = values(results, test, "telestion_sync", "rss_growth_mb")
            b = values(results, test, "nats-py", "rss_growth_mb")
            lines.append(
                f"| {test} peak RSS growth MB | {fmt_num(median(a))} | {fmt_num(median(b))} | | | bounded | |"
            )
    print("\n".join(lines))
    return 0 if misses == 0 else 1


def fmt_num(v: Optional[float]) -> str:
    return "error" if v is None else f"{v:,.0f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--role", choices=["driver", "worker", "responder", "js-worker", "kv-worker"], default="driver"
    )
    p.add_argument(
        "--jetstream", action="store_true", help=f"run the JetStream comparison ({','.join(JS_TESTS)})"
    )
    p.add_argument(
        "--kv", action="store_true", help=f"run the Key-Value/Object Store comparison ({','.join(KV_TESTS)})"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of every test and client (3)")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run under a minute")
    p.add_argument("--only", default="", help=f"comma-separated tests out of {','.join(TESTS)}")
    p.add_argument("--clients", default="", help=f"comma-separated clients out of {','.join(CLIENTS)}")
    p.add_argument(
        "--responder",
        choices=["nats-py", "telestion_sync"],
        default="nats-py",
        help="implementation of the shared echo responder (nats-py asyncio)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per worker subprocess")
    # worker/responder options
    p.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--test", choices=TESTS + JS_TESTS + KV_TESTS, help=argparse.SUPPRESS)
    p.add_argument("--path", default="", help=argparse.SUPPRESS)
    p.add_argument("--url", default="nats://127.0.0.1:4222", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.role == "worker":
        return run_worker(args)
    if args.role == "responder":
        return run_responder(args)
    if args.role == "js-worker":
        return run_js_worker(args)
    if args.role == "kv-worker":
        return run_kv_worker(args)
    if args.kv:
        return run_kv_driver(args)
    if args.jetstream:
        return run_js_driver(args)
    return run_driver(args)


if __name__ == "__main__":
    sys.exit(main())
