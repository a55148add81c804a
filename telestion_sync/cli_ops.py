"""``telestion-sync record`` and ``telestion-sync replay``: record a pass to a file, publish it
again. Kept apart from ``cli.py``, which only calls :func:`add_parsers`.

``record`` runs until Ctrl-C, SIGTERM or ``--duration``, then writes what is left, closes the
file and prints one summary line; a recorder killed outright (SIGKILL) leaves a readable file
(at most the last ``--flush-interval`` seconds lost).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from .recording import Recorder, replay


def cmd_record(args: argparse.Namespace) -> int:
    from .cli import _connect, _ErrorLog

    errors = _ErrorLog(live=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with _connect(args, errors, allow_reconnect=True, max_reconnect_attempts=-1) as bus:
            rec = Recorder(
                bus,
                args.subjects,
                args.output,
                format=args.format,
                rotate_bytes=args.rotate_bytes,
                rotate_seconds=args.rotate_seconds,
                flush_interval=args.flush_interval,
                progress=None,
            )
            rec.start()
            print(
                f"recording {' '.join(args.subjects)} to {args.output} (Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )
            deadline = None if args.duration is None else time.monotonic() + args.duration
            try:
                while not stop.is_set() and not bus.is_closed:
                    left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                    if left <= 0:
                        break
                    stop.wait(left)
            except KeyboardInterrupt:
                pass
            finally:
                rec.stop()
                print(rec.summary(), file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if rec.error is not None else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .cli import _connect, _ErrorLog

    speed = None if args.fast else args.speed
    errors = _ErrorLog(live=True)
    with _connect(args, errors) as bus:
        try:
            summary = replay(bus, args.files, speed=speed, subjects=args.subject or None, progress=None)
        except KeyboardInterrupt as exc:
            got: Any = getattr(exc, "summary", None)
            if got is not None:
                print(str(got), file=sys.stderr)
            return 130
    print(str(summary), file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``record`` and ``replay`` to the CLI's subcommands."""
    from .cli import _add_connection_options, _checked, _positive_int, _seconds

    speed_factor = _checked(float, "a number", lambda v: 0 < v < float("inf"), "must be a number > 0")

    p = sub.add_parser("record", help="record messages to a .jsonl or .cbor file until Ctrl-C")
    p.add_argument("subjects", nargs="+", metavar="SUBJECT", help="subjects to record (wildcards allowed)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="a .jsonl or .cbor file")
    p.add_argument("--format", choices=("jsonl", "cbor"), default=None, help="default: by the extension")
    p.add_argument("--rotate-bytes", type=_positive_int, default=None, metavar="N",
                   help="start a new numbered file when one reaches N bytes")  # fmt: skip
    p.add_argument("--rotate-seconds", type=_seconds, default=None, metavar="S",
                   help="start a new numbered file every S seconds")  # fmt: skip
    p.add_argument("--flush-interval", type=_seconds, default=1.0, metavar="S",
                   help="flush to the OS at least every S seconds (default 1)")  # fmt: skip
    p.add_argument("--duration", type=_seconds, default=None, metavar="S", help="stop after S seconds")
    _add_connection_options(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="publish a recording again with its original timing")
    p.add_argument("files", nargs="+", metavar="FILE", help="recording files, a directory or a glob")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument(
        "--speed", type=speed_factor, default=1.0, metavar="X", help="time scale (default 1: real time)"
    )
    speed.add_argument("--fast", action="store_true", help="as fast as possible")
    p.add_argument("--subject", action="append", metavar="S", help="only these subjects (repeatable)")
    _add_connection_options(p)
    p.set_defaults(func=cmd_replay)
