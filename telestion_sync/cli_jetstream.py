"""``telestion-sync stream ...`` and ``telestion-sync consumer ...``: JetStream essentials.

Kept apart from ``cli.py``, which only calls :func:`add_parsers`. Uses the library's JetStream
API; failures print one line (the CLI's error handling), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any, Callable, Dict, List

from .jetstream import JetStream, JetStreamMessage, StoredMessage, StreamConfig
from .jetstream.models import DELIVER_POLICIES, DISCARD, RETENTION, STORAGE, to_json


def _js(args: argparse.Namespace, run: Callable[[JetStream], int]) -> int:
    from .cli import _connect, _ErrorLog

    errors = _ErrorLog()
    with _connect(args, errors) as bus:
        return run(bus.jetstream(timeout=args.timeout))


def _print_json(value: Any) -> None:
    def default(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, (bytes, bytearray)):
            return "0x" + bytes(v).hex()
        return repr(v)

    print(json.dumps(value, indent=2, default=default, ensure_ascii=False))


def _info_dict(info: Any) -> Dict[str, Any]:
    d = asdict(info)
    d.pop("extra", None)
    return {k: v for k, v in d.items() if v is not None}


def _show(msg: Any, raw: bool) -> str:
    from .cli import _text_or_hex

    if raw:
        return _text_or_hex(msg.payload)
    try:
        data = msg.data
    except Exception as exc:
        return f"<undecodable: {exc}> {msg.payload!r}"
    if isinstance(data, (bytes, bytearray)):
        return _text_or_hex(bytes(data))
    return json.dumps(
        data, ensure_ascii=False, default=lambda v: "0x" + v.hex() if isinstance(v, bytes) else repr(v)
    )


def _print_stored(m: StoredMessage, raw: bool) -> None:
    when = m.time.isoformat() if m.time else "-"
    print(f"[{m.seq}] {when} {m.subject}")
    for k, v in m.headers.items():
        print(f"  {k}: {v}")
    print(_show(m, raw))


def _print_delivered(m: JetStreamMessage, raw: bool) -> None:
    md = m.metadata
    counts = f"delivered {md.num_delivered}, pending {md.num_pending}"
    print(f"[{md.sequence.stream}] {md.timestamp.isoformat()} {m.subject} ({counts})")
    for k, v in m.headers.items():
        print(f"  {k}: {v}")
    print(_show(m, raw))


# --- stream -------------------------------------------------------------------------------------


def cmd_stream_add(args: argparse.Namespace) -> int:
    cfg = StreamConfig(
        name=args.name,
        subjects=args.subjects or None,
        storage=args.storage,
        replicas=args.replicas,
        retention=args.retention,
        discard=args.discard,
        max_age=args.max_age,
        max_msgs=args.max_msgs,
        max_bytes=args.max_bytes,
        max_msgs_per_subject=args.max_msgs_per_subject,
        duplicate_window=args.dupe_window,
        allow_direct=True if args.allow_direct else None,
        description=args.description,
    )

    def run(js: JetStream) -> int:
        info = js.create_stream(cfg)
        print(f"stream {info.config.name} created, subjects {', '.join(info.config.subjects or [])}")
        return 0

    return _js(args, run)


def cmd_stream_info(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        info = js.stream_info(args.name)
        _print_json(
            {
                "config": to_json(info.config),
                "state": _info_dict(info.state),
                "cluster": _info_dict(info.cluster) if info.cluster else None,
            }
        )
        return 0

    return _js(args, run)


def cmd_stream_ls(args: argparse.Namespace) -> int:
    from .cli import _table

    def run(js: JetStream) -> int:
        infos = js.streams(args.subject)
        if not infos:
            print("no streams")
            return 0
        rows = [
            [
                i.config.name,
                ",".join(i.config.subjects or []),
                str(i.state.messages),
                str(i.state.bytes),
                i.state.last_ts.isoformat() if i.state.last_ts else "-",
            ]
            for i in sorted(infos, key=lambda i: i.config.name)
        ]
        print(_table(rows, ["STREAM", "SUBJECTS", "MESSAGES", "BYTES", "LAST"]))
        return 0

    return _js(args, run)


def cmd_stream_rm(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        js.delete_stream(args.name)
        print(f"stream {args.name} deleted")
        return 0

    return _js(args, run)


def cmd_stream_purge(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        n = js.purge_stream(args.name, subject=args.subject, keep=args.keep, seq=args.seq)
        print(f"{n} messages purged from {args.name}")
        return 0

    return _js(args, run)


def cmd_stream_get(args: argparse.Namespace) -> int:
    from .cli import CLIError

    if (args.seq is None) == (args.last_for is None):
        raise CLIError("give SEQ or --last-for SUBJECT")

    def run(js: JetStream) -> int:
        if args.seq is not None:
            m = js.get_msg(args.name, args.seq)
        else:
            m = js.get_last_msg_for_subject(args.name, args.last_for)
        _print_stored(m, args.raw)
        return 0

    return _js(args, run)


def cmd_stream_view(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        oc = js.ordered_consumer(
            args.name,
            filter_subjects=[args.subject] if args.subject else None,
            opt_start_seq=args.since_seq,
        )
        shown = 0
        try:
            while args.count is None or shown < args.count:
                want = 100 if args.count is None else min(100, args.count - shown)
                batch = oc.fetch(want, timeout=args.wait)
                if not batch:
                    break
                for m in batch:
                    _print_delivered(m, args.raw)
                    shown += 1
                if batch[-1].metadata.num_pending == 0:
                    break
        finally:
            oc.close()
        print(f"{shown} messages", file=sys.stderr)
        return 0

    return _js(args, run)


# --- consumer -----------------------------------------------------------------------------------


def cmd_consumer_add(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        options: Dict[str, Any] = {"ack_policy": args.ack, "deliver_policy": args.deliver}
        if args.filter:
            options["filter_subjects"] = args.filter
        if args.start_seq is not None:
            options["opt_start_seq"] = args.start_seq
        if args.ack_wait is not None:
            options["ack_wait"] = args.ack_wait
        if args.max_deliver is not None:
            options["max_deliver"] = args.max_deliver
        c = js.create_consumer(args.stream, durable=args.name, **options)
        print(f"consumer {c.stream}/{c.name} created")
        return 0

    return _js(args, run)


def cmd_consumer_info(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        info = js.consumer_info(args.stream, args.name)
        d = _info_dict(info)
        d["config"] = to_json(info.config)
        _print_json(d)
        return 0

    return _js(args, run)


def cmd_consumer_ls(args: argparse.Namespace) -> int:
    from .cli import _table

    def run(js: JetStream) -> int:
        infos = js.consumers(args.stream)
        if not infos:
            print("no consumers")
            return 0
        rows = [
            [
                i.name,
                "durable" if i.config.durable_name else "ephemeral",
                str(i.num_pending),
                str(i.num_ack_pending),
            ]
            for i in sorted(infos, key=lambda i: i.name)
        ]
        print(_table(rows, ["CONSUMER", "KIND", "PENDING", "ACK PENDING"]))
        return 0

    return _js(args, run)


def cmd_consumer_rm(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        js.delete_consumer(args.stream, args.name)
        print(f"consumer {args.stream}/{args.name} deleted")
        return 0

    return _js(args, run)


def cmd_consumer_next(args: argparse.Namespace) -> int:
    from .cli import CLIError

    def run(js: JetStream) -> int:
        c = js.consumer(args.stream, args.name)
        got = 0
        while got < args.count:
            batch = c.fetch(min(100, args.count - got), timeout=args.wait)
            if not batch:
                break
            for m in batch:
                _print_delivered(m, args.raw)
                if not args.no_ack and c.cached_info and c.cached_info.config.ack_policy != "none":
                    m.ack_sync()
                got += 1
        if got == 0:
            raise CLIError(f"no message from {args.stream}/{args.name} within {args.wait} s")
        return 0

    return _js(args, run)


# --- parsers ------------------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Add the ``stream`` and ``consumer`` commands to the CLI's subparsers."""
    from .cli import _add_connection_options, _positive_int, _seconds

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=_seconds, default=5.0, help="API timeout in seconds (default 5)")
        _add_connection_options(p)

    stream = subparsers.add_parser("stream", help="JetStream streams: add, info, ls, rm, purge, get, view")
    ss = stream.add_subparsers(dest="stream_command", metavar="ACTION")
    ss.required = True

    p = ss.add_parser("add", help="create a stream")
    p.add_argument("name")
    p.add_argument("--subjects", nargs="+", default=[], metavar="SUBJECT", help="default: the stream name")
    p.add_argument("--storage", choices=STORAGE, default=None)
    p.add_argument("--replicas", type=_positive_int, default=None)
    p.add_argument("--retention", choices=RETENTION, default=None)
    p.add_argument("--discard", choices=DISCARD, default=None)
    p.add_argument("--max-age", type=_seconds, default=None, help="seconds")
    p.add_argument("--max-msgs", type=_positive_int, default=None)
    p.add_argument("--max-bytes", type=_positive_int, default=None)
    p.add_argument("--max-msgs-per-subject", type=_positive_int, default=None)
    p.add_argument("--dupe-window", type=_seconds, default=None, help="seconds")
    p.add_argument("--allow-direct", action="store_true")
    p.add_argument("--description", default=None)
    common(p)
    p.set_defaults(func=cmd_stream_add)

    p = ss.add_parser("info", help="a stream's configuration and state as JSON")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_stream_info)

    p = ss.add_parser("ls", help="list streams")
    p.add_argument("--subject", default=None, help="only streams that store this subject")
    common(p)
    p.set_defaults(func=cmd_stream_ls)

    p = ss.add_parser("rm", help="delete a stream and its messages")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_stream_rm)

    p = ss.add_parser("purge", help="remove messages (all, by subject, keep N, below SEQ)")
    p.add_argument("name")
    p.add_argument("--subject", default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--keep", type=int, default=None)
    g.add_argument("--seq", type=_positive_int, default=None)
    common(p)
    p.set_defaults(func=cmd_stream_purge)

    p = ss.add_parser("get", help="print a stored message by sequence or the last on a subject")
    p.add_argument("name")
    p.add_argument("seq", nargs="?", type=_positive_int, default=None)
    p.add_argument("--last-for", default=None, metavar="SUBJECT")
    p.add_argument("--raw", action="store_true")
    common(p)
    p.set_defaults(func=cmd_stream_get)

    p = ss.add_parser("view", help="print stored messages in order")
    p.add_argument("name")
    p.add_argument("--subject", default=None, help="only this subject (wildcards allowed)")
    p.add_argument("--since-seq", type=_positive_int, default=None)
    p.add_argument("--count", type=_positive_int, default=None)
    p.add_argument("--wait", type=_seconds, default=1.0, help="seconds to wait for more (default 1)")
    p.add_argument("--raw", action="store_true")
    common(p)
    p.set_defaults(func=cmd_stream_view)

    consumer = subparsers.add_parser("consumer", help="JetStream consumers: add, info, ls, rm, next")
    cs = consumer.add_subparsers(dest="consumer_command", metavar="ACTION")
    cs.required = True

    p = cs.add_parser("add", help="create a durable pull consumer")
    p.add_argument("stream")
    p.add_argument("name")
    p.add_argument("--filter", nargs="+", default=[], metavar="SUBJECT")
    p.add_argument("--deliver", choices=DELIVER_POLICIES, default="all")
    p.add_argument("--start-seq", type=_positive_int, default=None)
    p.add_argument("--ack", choices=["explicit", "none", "all"], default="explicit")
    p.add_argument("--ack-wait", type=_seconds, default=None)
    p.add_argument("--max-deliver", type=int, default=None)
    common(p)
    p.set_defaults(func=cmd_consumer_add)

    p = cs.add_parser("info", help="a consumer's configuration and state as JSON")
    p.add_argument("stream")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_consumer_info)

    p = cs.add_parser("ls", help="list a stream's consumers")
    p.add_argument("stream")
    common(p)
    p.set_defaults(func=cmd_consumer_ls)

    p = cs.add_parser("rm", help="delete a consumer")
    p.add_argument("stream")
    p.add_argument("name")
    common(p)
    p.set_defaults(func=cmd_consumer_rm)

    p = cs.add_parser("next", help="fetch, print and acknowledge messages")
    p.add_argument("stream")
    p.add_argument("name")
    p.add_argument("--count", type=_positive_int, default=1)
    p.add_argument("--wait", type=_seconds, default=2.0, help="seconds to wait (default 2)")
    p.add_argument("--no-ack", action="store_true", help="do not acknowledge")
    p.add_argument("--raw", action="store_true")
    common(p)
    p.set_defaults(func=cmd_consumer_next)


__all__: List[str] = ["add_parsers"]
