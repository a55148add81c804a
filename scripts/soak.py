#!/usr/bin/env python3
"""Soak test: minutes of pub/sub with a server crash (kill -9) and restart every minute.

Not run in CI. One nats-server (``telestion_sync.server.NatsServer``) on a fixed port, two buses:

- the *publisher* bus publishes numbered messages (raw bytes, the sequence number in ASCII) at a
  steady rate and also subscribes to them itself (the *same-bus* subscriber);
- the *other* bus subscribes to the same subject (the *other-bus* subscriber).

Every ``--restart-every`` seconds the server is killed -9 and restarted on the same port after
``--outage`` seconds. For every message the publisher records whether ``bus.status`` was
CONNECTED when ``publish()`` was called:

- published while not CONNECTED ("buffered"): it waited in the reconnect buffer. The same bus
  resubscribes before it replays the buffer, so the same-bus subscriber must get every one of
  them: any loss there is a library bug. The other bus may reconnect after the publisher
  replayed, so its buffered losses are only reported.
- published while CONNECTED, from ``INFLIGHT_WINDOW`` seconds before a kill until both buses
  are back (reconnected and flushed): may be lost in flight ("in flight at kill").
- published while CONNECTED outside such a window: must never be lost ("unexplained").

Both subscribers also check for duplicates and reordering. A line is printed every
``--report-every`` seconds; RSS (VmRSS), threads and open file descriptors show leaks.

Exit status: 0 when the same-bus subscriber lost no buffered and no unexplained message, no
subscriber saw a duplicate or a reordered message, and nothing hung (a bus not reconnecting, the
publisher stalling, the final delivery not completing); 1 otherwise; 130 on Ctrl-C.

    python scripts/soak.py                                   # 10 minutes, a restart each minute
    python scripts/soak.py --minutes 1 --restart-every 15 --report-every 5
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any, Dict, List, Optional

import telestion_sync as ts
from telestion_sync.server import NatsServer, free_port

#: Messages published while CONNECTED up to this long before a kill may be lost in flight.
INFLIGHT_WINDOW = 1.0
#: How long a bus may take to reconnect (and flush) after the server is back.
RECONNECT_TIMEOUT = 15.0
#: While the publisher's bus is connected, publish() making no progress for this long, or a
#: subscriber receiving nothing new for this long while publishes go out, counts as a hang.
STALL_SECONDS = 5.0

# Publish classes, one byte per sequence number in Tracker.pub_state.
UNSET, CONNECTED, BUFFERED, EDGE = 0, 1, 2, 3  # EDGE: CONNECTED before publish(), not after


def rss_mb() -> float:
    """This process's resident set size (VmRSS) in MB, or NaN when /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def ms_or_never(seconds: Optional[float]) -> str:
    """A reconnect delay for the output: milliseconds, or "never"."""
    return "never" if seconds is None else f"{seconds * 1000:.0f} ms"


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class Receiver:
    """One subscriber's view: which sequence numbers arrived, duplicates, reordering, losses."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.recv = bytearray(capacity)  # 1 once the sequence number arrived
        self.received = 0
        self.max_seq = -1
        self.dups = 0
        self.reorders = 0
        self.examples: List[str] = []  # the first few duplicates / reorders, as evidence
        # Losses, classified by the scanner (main thread) below max_seq.
        self.scanned = 0
        self.lost_buffered = 0
        self.lost_inflight = 0
        self.lost_unexplained = 0
        self.lost_examples: List[str] = []

    def callback(self, msg: ts.Message) -> None:
        """Runs on the subscription's own thread (one thread per subscription)."""
        seq = int(msg.payload)
        recv = self.recv
        if seq >= len(recv):  # only if the publisher outgrew the preallocated capacity
            recv.extend(bytes(seq + 1 - len(recv) + 100_000))
        self.received += 1
        if recv[seq]:
            self.dups += 1
            if len(self.examples) < 10:
                self.examples.append(f"duplicate #{seq} (after #{self.max_seq})")
            return
        recv[seq] = 1
        if seq < self.max_seq:
            self.reorders += 1
            if len(self.examples) < 10:
                self.examples.append(f"#{seq} arrived after #{self.max_seq}")
        else:
            self.max_seq = seq


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rate = args.rate
        self.duration = args.minutes * 60.0
        capacity = int(self.rate * (self.duration + 30)) + 100_000
        self.pub_state = bytearray(capacity)
        self.same = Receiver("same bus", capacity)
        self.other = Receiver("other bus", capacity)
        self.published = 0  # the next sequence number; written by the publisher thread only
        self.buffered = 0  # published while not CONNECTED
        self.rejected = 0  # OutboundBufferFullError (retried with the same number)
        self.publisher_error: Optional[BaseException] = None
        self.publisher_done = threading.Event()
        self.stop = threading.Event()
        self.t0 = 0.0
        # [first seq, last seq + 1 or None while open]: where CONNECTED losses are explained.
        self.windows: List[List[Optional[int]]] = []
        self.failures: List[str] = []
        self.errors: Dict[str, collections.Counter[str]] = {
            "pub": collections.Counter(),
            "other": collections.Counter(),
        }
        self.restarts: List[Dict[str, Any]] = []
        self.reconnected_at: Dict[str, float] = {}  # set by on_reconnect (status threads)

    # --- publisher thread -----------------------------------------------------------------------

    def publish_loop(self, bus: ts.MessageBus, subject: str) -> None:
        rate = self.rate
        state = self.pub_state
        publish = bus.publish
        connected = ts.State.CONNECTED
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - self.t0) * rate)
                seq = self.published
                if seq >= due:
                    time.sleep(0.001)
                    continue
                while seq < due and not self.stop.is_set():
                    if seq >= len(state):
                        state.extend(bytes(100_000))
                    before = bus.status is connected
                    state[seq] = CONNECTED if before else BUFFERED
                    try:
                        publish(subject, b"%d" % seq)
                    except ts.OutboundBufferFullError:
                        self.rejected += 1
                        time.sleep(0.001)
                        break  # the same number again on the next round
                    if before:
                        if bus.status is not connected:
                            state[seq] = EDGE
                    else:
                        self.buffered += 1
                    seq += 1
                    self.published = seq
        except BaseException as exc:  # recorded and reported by the main thread
            self.publisher_error = exc
        finally:
            self.publisher_done.set()

    # --- accounting (main thread) ---------------------------------------------------------------

    def in_window(self, seq: int) -> bool:
        for lo, hi in self.windows:
            assert lo is not None
            if seq >= lo and (hi is None or seq < hi):
                return True
        return False

    def scan(self, r: Receiver, upto: int) -> None:
        """Classify the numbers below ``upto`` that did not arrive at ``r`` (incrementally)."""
        lo = r.scanned
        if upto <= lo:
            return
        recv, state = r.recv, self.pub_state
        i = recv.find(0, lo, upto)
        while i >= 0:
            cls = state[i]
            if cls == BUFFERED:
                r.lost_buffered += 1
                kind = "buffered"
            elif self.in_window(i):
                r.lost_inflight += 1
                kind = "in flight"
            else:
                r.lost_unexplained += 1
                kind = "unexplained"
            if kind != "in flight" and len(r.lost_examples) < 10:
                r.lost_examples.append(f"#{i} ({kind}, class {cls})")
            i = recv.find(0, i + 1, upto)
        r.scanned = upto

    def scan_all(self, final: bool = False) -> None:
        for r in (self.same, self.other):
            # Delivery is in order, so what is missing below the highest number seen is lost.
            self.scan(r, self.published if final else r.max_seq)

    # --- output ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {text}", flush=True)

    def report(self, pub_bus: ts.MessageBus, other_bus: ts.MessageBus) -> None:
        self.scan_all()
        s, o = self.same, self.other
        self.say(
            f"pub {self.published} (buffered {self.buffered}, rejected {self.rejected}) | "
            f"recv same {s.received} other {o.received} | "
            f"lost-buffered {s.lost_buffered}/{o.lost_buffered} | "
            f"in-flight-lost {s.lost_inflight}/{o.lost_inflight} | "
            f"unexplained {s.lost_unexplained}/{o.lost_unexplained} | "
            f"dup {s.dups}/{o.dups} reorder {s.reorders}/{o.reorders} | "
            f"reconnects {pub_bus.stats.reconnects}/{other_bus.stats.reconnects} | "
            f"RSS {rss_mb():.1f} MB threads {threading.active_count()} fds {open_fds()}"
        )

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.say("FAIL: " + text)

    # --- the run --------------------------------------------------------------------------------

    def restart_server(self, server: NatsServer, pub_bus: ts.MessageBus, other_bus: ts.MessageBus) -> None:
        n = len(self.restarts) + 1
        window: List[Optional[int]] = [max(0, self.published - int(self.rate * INFLIGHT_WINDOW)), None]
        self.windows.append(window)
        buffered_before = self.buffered
        seq_kill = self.published
        server.kill()
        t_kill = time.monotonic()
        self.stop.wait(self.args.outage)
        server.restart()
        t_up = time.monotonic()
        info: Dict[str, Any] = {"n": n, "at": t_kill - self.t0, "seq_kill": seq_kill}
        buses = (("pub", pub_bus), ("other", other_bus))
        for label, bus in buses:
            if not bus.wait_connected(RECONNECT_TIMEOUT):
                self.fail(
                    f"restart #{n}: {label} bus not reconnected {RECONNECT_TIMEOUT} s after the server "
                    f"came back (status {bus.status.value})"
                )
        for label, bus in buses:
            if bus.status is ts.State.CONNECTED:
                try:
                    bus.flush(RECONNECT_TIMEOUT)  # its SUB (and replayed buffer) reached the server
                except ts.Error as exc:
                    self.fail(f"restart #{n}: flush on the {label} bus after reconnecting failed: {exc!r}")
        window[1] = self.published
        time.sleep(0.01)  # on_reconnect runs on the bus's status thread
        for label, _ in buses:
            at = self.reconnected_at.get(label, 0.0)
            info[label] = at - t_up if at > t_kill else None
        info["buffered"] = self.buffered - buffered_before
        info["down"] = t_up - t_kill
        self.restarts.append(info)
        self.say(
            f"restart #{n}: killed at #{seq_kill}, server back after {info['down']:.2f} s; "
            f"reconnected pub {ms_or_never(info['pub'])}, other {ms_or_never(info['other'])} "
            "after that (on_reconnect); "
            f"{info['buffered']} publishes buffered; in-flight window #{window[0]}..#{window[1]}"
        )

    def wait_delivered(self, timeout: float) -> None:
        """After the last publish: wait until both subscribers have everything or stop moving."""
        deadline = time.monotonic() + timeout
        last = (-1, -1)
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            now = (self.same.received, self.other.received)
            if self.same.max_seq >= self.published - 1 and self.other.max_seq >= self.published - 1:
                return
            if now != last:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > 3.0:
                return
            time.sleep(0.05)

    def run(self) -> int:
        args = self.args
        port = args.port or free_port()
        subject = f"soak.{os.getpid()}"
        interrupted = False
        with ExitStack() as stack:
            server = NatsServer(port)
            stack.enter_context(server)
            common = dict(
                reconnect_time_wait=args.reconnect_time_wait,
                reconnect_jitter=0.01,
                max_reconnect_attempts=-1,
                reconnect_buf_size=args.reconnect_buf_size,
            )

            def on_error(which: str) -> Any:
                return lambda err: self.errors[which].update([type(err).__name__])

            def on_reconnect(which: str) -> Any:
                return lambda: self.reconnected_at.__setitem__(which, time.monotonic())

            pub_bus = ts.connect(
                server.url, name="soak-pub", on_error=on_error("pub"), on_reconnect=on_reconnect("pub"),
                **common,
            )
            stack.callback(pub_bus.close)
            other_bus = ts.connect(
                server.url, name="soak-other", on_error=on_error("other"),
                on_reconnect=on_reconnect("other"), **common,
            )
            stack.callback(other_bus.close)
            subs = [
                pub_bus.subscribe(subject, self.same.callback),
                other_bus.subscribe(subject, self.other.callback),
            ]
            pub_bus.flush()
            other_bus.flush()
            print(
                f"soak: {args.minutes:g} min, {self.rate} msg/s on {subject!r}, kill -9 + restart every "
                f"{args.restart_every:g} s (outage {args.outage:g} s), server {server.url}, "
                f"reconnect_buf_size {args.reconnect_buf_size}, "
                f"reconnect_time_wait {args.reconnect_time_wait}"
                f"\nsoak: telestion_sync {ts.__version__} from {os.path.dirname(ts.__file__)}; "
                "columns are same-bus/other-bus",
                flush=True,
            )
            self.t0 = time.monotonic()
            publisher = threading.Thread(
                target=self.publish_loop, args=(pub_bus, subject), name="soak-publisher", daemon=True
            )
            publisher.start()
            next_report = args.report_every
            next_restart = args.restart_every
            # Watchdog: (value, when it last changed) for the publisher and both subscribers.
            progress = {"publisher": [0, 0.0], "same-bus subscriber": [-1, 0.0],
                        "other-bus subscriber": [-1, 0.0]}
            behind_warned = False
            try:
                while True:
                    t = self.elapsed()
                    values = {"publisher": self.published, "same-bus subscriber": self.same.max_seq,
                              "other-bus subscriber": self.other.max_seq}
                    stalled = None
                    for what, v in values.items():
                        if v != progress[what][0]:
                            progress[what] = [v, t]
                        elif t - progress[what][1] > STALL_SECONDS and stalled is None and (
                            what == "publisher" or self.published > v + 1
                        ):
                            stalled = what
                    if stalled is not None and pub_bus.status is ts.State.CONNECTED:
                        self.fail(
                            f"hang: the {stalled} made no progress for {STALL_SECONDS:g} s "
                            f"(at #{values[stalled]}, published {self.published}, statuses "
                            f"{pub_bus.status.value}/{other_bus.status.value})"
                        )
                        break
                    if t >= self.duration or self.publisher_done.is_set():
                        break
                    if t >= next_restart:
                        next_restart += args.restart_every
                        if t + args.outage + 2.0 < self.duration:
                            self.restart_server(server, pub_bus, other_bus)
                            for entry in progress.values():  # the outage is no hang
                                entry[1] = self.elapsed()
                        continue
                    if t >= next_report:
                        next_report += args.report_every
                        self.report(pub_bus, other_bus)
                        continue
                    behind = (t * self.rate - self.published) / self.rate
                    if behind > 2.0 and not behind_warned:
                        behind_warned = True
                        self.say(f"warning: the publisher is {behind:.1f} s behind its schedule "
                                 "(--rate too high for this machine?)")
                    self.stop.wait(min(0.1, next_report - t, next_restart - t, self.duration - t))
            except KeyboardInterrupt:
                interrupted = True
                print("\nsoak: interrupted, stopping", flush=True)
            self.stop.set()
            publisher.join(5.0)
            if publisher.is_alive():
                self.fail(f"the publisher thread is stuck in publish() at #{self.published}")
            if self.publisher_error is not None:
                self.fail(f"publish() raised {self.publisher_error!r} at #{self.published}")
            if not interrupted:
                try:
                    pub_bus.flush(10.0)
                except ts.Error as exc:
                    self.fail(f"final flush failed: {exc!r}")
                self.wait_delivered(20.0)
                for r in (self.same, self.other):
                    if r.max_seq < self.published - 1:
                        self.fail(
                            f"{r.name}: the last message #{self.published - 1} never arrived "
                            f"(highest seen #{r.max_seq})"
                        )
            self.report(pub_bus, other_bus)
            if not interrupted:  # after Ctrl-C the tail was not waited for (and the server got it too)
                self.scan_all(final=True)
            dropped = [s.dropped for s in subs]
        return self.summary(dropped, interrupted)

    def summary(self, dropped: List[int], interrupted: bool) -> int:
        s, o = self.same, self.other
        print("\n=== soak summary ===")
        print(f"duration            {self.elapsed():.1f} s{' (interrupted)' if interrupted else ''}")
        print(f"published           {self.published} ({self.buffered} while not CONNECTED, "
              f"{self.rejected} rejected by a full reconnect buffer and retried)")
        print(f"server restarts     {len(self.restarts)}")
        for info in self.restarts:
            print(f"  #{info['n']} at {info['at']:.1f} s: buffered {info['buffered']}, "
                  f"reconnect after restart pub {ms_or_never(info['pub'])} / "
                  f"other {ms_or_never(info['other'])}")
        for r, d in ((s, dropped[0]), (o, dropped[1])):
            print(f"{r.name:<10}          received {r.received}, lost buffered {r.lost_buffered}, "
                  f"in flight at kill {r.lost_inflight}, unexplained {r.lost_unexplained}, "
                  f"duplicates {r.dups}, reordered {r.reorders}, slow-consumer drops {d}")
            for e in r.examples + r.lost_examples:
                print(f"    {e}")
        for which, counter in self.errors.items():
            if counter:
                print(f"errors ({which} bus)   " + ", ".join(f"{k} x{v}" for k, v in sorted(counter.items())))
        print(f"RSS at end          {rss_mb():.1f} MB")
        if s.lost_buffered:
            self.failures.append(f"same-bus subscriber lost {s.lost_buffered} buffered publish(es)")
        if s.lost_unexplained:
            self.failures.append(f"same-bus subscriber lost {s.lost_unexplained} message(s) "
                                 "published while CONNECTED, away from any kill")
        for r in (s, o):
            if r.dups or r.reorders:
                self.failures.append(f"{r.name}: {r.dups} duplicate(s), {r.reorders} reordered")
        if self.failures:
            print("RESULT: FAIL")
            for f in self.failures:
                print(f"  - {f}")
            return 130 if interrupted else 1
        print("RESULT: OK" + (" (interrupted)" if interrupted else ""))
        return 130 if interrupted else 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--rate", type=int, default=2000, help="messages per second (default 2000)")
    p.add_argument("--restart-every", type=float, default=60.0,
                   help="seconds between server kills (default 60)")
    p.add_argument("--outage", type=float, default=0.5,
                   help="seconds between kill -9 and restart (default 0.5)")
    p.add_argument("--report-every", type=float, default=10.0,
                   help="seconds between report lines (default 10)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one, kept)")
    p.add_argument("--reconnect-time-wait", type=float, default=0.05,
                   help="the buses' reconnect_time_wait (default 0.05 s)")
    p.add_argument("--reconnect-buf-size", type=int, default=0,
                   help="the buses' reconnect_buf_size in bytes (default: room for 30 s of "
                        "publishing, at least 8 MiB)")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.minutes <= 0 or args.restart_every <= 0 or args.report_every <= 0:
        p.error("--rate, --minutes, --restart-every and --report-every must be positive")
    if args.outage < 0:
        p.error("--outage must not be negative")
    if not args.reconnect_buf_size:
        # A frame is "PUB soak.<pid> <n>\r\n<digits>\r\n": well under 64 bytes.
        args.reconnect_buf_size = max(8 * 1024 * 1024, args.rate * 64 * 30)
    try:
        return Soak(args).run()
    except KeyboardInterrupt:  # during start-up or clean-up
        print("\nsoak: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
