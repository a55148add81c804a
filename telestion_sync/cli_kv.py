"""``telestion-sync kv ...`` and ``telestion-sync object ...``: Key-Value and Object Store.

Kept apart from ``cli.py``, which only calls :func:`add_parsers`. Large object transfers show a
small text progress bar of our own on stderr when stderr is a terminal (no extra dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, List, Optional, TextIO

from .cli_jetstream import _js, _show
from .jetstream import JetStream, KeyValueEntry, ObjectInfo

PROGRESS_MIN = 1 << 20  # objects smaller than this get no bar


class Progress:
    """A one-line text progress bar on ``stream`` (redrawn at most 10 times a second)."""

    def __init__(self, total: int, label: str, stream: TextIO) -> None:
        self.total, self.label, self.stream = total, label, stream
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        frac = min(done / self.total, 1.0) if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = done / max(now - self._start, 1e-6) / 2**20
        self.stream.write(
            f"\r{self.label} [{bar}] {frac * 100:5.1f}% {done / 2**20:.1f} MiB {rate:.1f} MiB/s"
        )
        self.stream.flush()

    def end(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _progress(total: int, label: str, quiet: bool) -> Optional[Progress]:
    if quiet or total < PROGRESS_MIN or not sys.stderr.isatty():
        return None
    return Progress(total, label, sys.stderr)


def _value_arg(args: argparse.Namespace) -> Any:
    if args.file is not None:
        with open(args.file, "rb") as f:
            return f.read()
    if args.value is None:
        return sys.stdin.buffer.read()
    if args.raw:
        return args.value.encode()
    try:
        return json.loads(args.value)
    except ValueError:
        return args.value  # plain text is stored as a JSON string


class _AsMessage:
    """An entry seen as a message (``payload`` and ``data``) for the shared printer."""

    def __init__(self, e: KeyValueEntry) -> None:
        self.payload = e.payload
        self._e = e

    @property
    def data(self) -> Any:
        return self._e.value


def _print_entry(e: KeyValueEntry, raw: bool, verbose: bool = True) -> None:
    if verbose:
        when = e.created.isoformat() if e.created else "-"
        print(f"[{e.revision}] {when} {e.operation} {e.key}")
    if e.operation == "PUT":
        print(_show(_AsMessage(e), raw))


# --- kv ---------------------------------------------------------------------------------------


def cmd_kv_add(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        kv = js.create_key_value(
            args.bucket,
            history=args.history,
            ttl=args.ttl,
            storage=args.storage,
            replicas=args.replicas,
            max_value_size=args.max_value_size,
            max_bytes=args.max_bytes,
            description=args.description,
        )
        print(f"bucket {kv.bucket} created (history {args.history})")
        return 0

    return _js(args, run)


def cmd_kv_get(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        e = js.key_value(args.bucket).get(args.key, args.revision)
        _print_entry(e, args.raw, args.verbose)
        return 0

    return _js(args, run)


def cmd_kv_put(args: argparse.Namespace) -> int:
    value = _value_arg(args)

    def run(js: JetStream) -> int:
        kv = js.key_value(args.bucket)
        if args.create:
            rev = kv.create(args.key, value)
        elif args.last is not None:
            rev = kv.update(args.key, value, last=args.last)
        else:
            rev = kv.put(args.key, value)
        print(f"{args.key} revision {rev}")
        return 0

    return _js(args, run)


def cmd_kv_del(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        kv = js.key_value(args.bucket)
        if args.key is None:
            js.delete_key_value(args.bucket)
            print(f"bucket {args.bucket} deleted")
        elif args.purge:
            kv.purge(args.key, last=args.last)
            print(f"{args.key} purged")
        else:
            kv.delete(args.key, last=args.last)
            print(f"{args.key} deleted")
        return 0

    return _js(args, run)


def cmd_kv_ls(args: argparse.Namespace) -> int:
    from .cli import _table

    def run(js: JetStream) -> int:
        if args.bucket is None:
            sts = js.key_values()
            if not sts:
                print("no buckets")
                return 0
            rows = [[s.bucket, str(s.values), str(s.bytes), str(s.history), f"{s.ttl:g}"] for s in sts]
            print(_table(rows, ["BUCKET", "VALUES", "BYTES", "HISTORY", "TTL"]))
            return 0
        for key in js.key_value(args.bucket).keys(args.filter or ">"):
            print(key)
        return 0

    return _js(args, run)


def cmd_kv_history(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        for e in js.key_value(args.bucket).history(args.key):
            _print_entry(e, args.raw)
        return 0

    return _js(args, run)


def cmd_kv_watch(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        kv = js.key_value(args.bucket)
        seen = 0
        with kv.watch(args.keys or ">", include_history=args.history, updates_only=args.updates_only) as w:
            for e in w:
                if e is None:
                    if not args.updates_only:
                        print("--- initial values done ---", flush=True)
                    continue
                _print_entry(e, args.raw)
                sys.stdout.flush()
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
        return 0

    return _js(args, run)


# --- object -----------------------------------------------------------------------------------


def _info_json(info: ObjectInfo) -> dict:
    d = info.to_json()
    d["mtime"] = info.modified.isoformat() if info.modified else None
    return d


def cmd_obj_add(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        js.create_object_store(
            args.bucket,
            description=args.description,
            storage=args.storage,
            replicas=args.replicas,
            ttl=args.ttl,
        )
        print(f"object store {args.bucket} created")
        return 0

    return _js(args, run)


def cmd_obj_put(args: argparse.Namespace) -> int:
    name = args.name or os.path.basename(args.file)
    size = os.path.getsize(args.file)

    def run(js: JetStream) -> int:
        obs = js.object_store(args.bucket)
        bar = _progress(size, f"put {name}", args.quiet)
        with open(args.file, "rb") as f:
            info = obs.put(name, f, description=args.description, progress=bar)
        if bar is not None:
            bar.end()
        print(f"{info.name}: {info.size} bytes in {info.chunks} chunks, {info.digest}")
        return 0

    return _js(args, run)


def cmd_obj_get(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        obs = js.object_store(args.bucket)
        with obs.get(args.name) as r:
            bar = _progress(r.info.size, f"get {args.name}", args.quiet or args.output == "-")
            out = sys.stdout.buffer if args.output == "-" else None
            path = args.output or os.path.basename(args.name)
            done = 0
            sink: Any = out if out is not None else open(path, "wb")
            try:
                for chunk in r.iter_chunks():
                    sink.write(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar(done)
            except BaseException:
                if out is None:
                    sink.close()
                    os.unlink(path)
                raise
            if out is None:
                sink.close()
            if bar is not None:
                bar.end()
            if out is None:
                print(f"{args.name}: {done} bytes written to {path} (digest verified)")
        return 0

    return _js(args, run)


def cmd_obj_ls(args: argparse.Namespace) -> int:
    from .cli import _table

    def run(js: JetStream) -> int:
        if args.bucket is None:
            sts = js.object_stores()
            if not sts:
                print("no object stores")
                return 0
            rows = [[s.bucket, str(s.size), "yes" if s.sealed else "no", s.description] for s in sts]
            print(_table(rows, ["STORE", "BYTES", "SEALED", "DESCRIPTION"]))
            return 0
        infos = js.object_store(args.bucket).list()
        if not infos:
            print("no objects")
            return 0
        rows = [
            [i.name, str(i.size), str(i.chunks), i.modified.isoformat() if i.modified else "-"]
            for i in sorted(infos, key=lambda i: i.name)
        ]
        print(_table(rows, ["NAME", "SIZE", "CHUNKS", "MODIFIED"]))
        return 0

    return _js(args, run)


def cmd_obj_info(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        print(
            json.dumps(_info_json(js.object_store(args.bucket).info(args.name)), indent=2, ensure_ascii=False)
        )
        return 0

    return _js(args, run)


def cmd_obj_rm(args: argparse.Namespace) -> int:
    def run(js: JetStream) -> int:
        if args.name is None:
            js.delete_object_store(args.bucket)
            print(f"object store {args.bucket} deleted")
        else:
            js.object_store(args.bucket).delete(args.name)
            print(f"{args.name} deleted")
        return 0

    return _js(args, run)


# --- parsers ----------------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Add the ``kv`` and ``object`` commands to the CLI's subparsers."""
    from .cli import _add_connection_options, _positive_int, _seconds

    def common(p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
        p.add_argument("--timeout", type=_seconds, default=5.0, help="API timeout in seconds (default 5)")
        _add_connection_options(p)
        p.set_defaults(func=func)

    kv = subparsers.add_parser("kv", help="Key-Value buckets: add, get, put, del, ls, watch, history")
    ks = kv.add_subparsers(dest="kv_command", metavar="ACTION")
    ks.required = True

    p = ks.add_parser("add", help="create a bucket")
    p.add_argument("bucket")
    p.add_argument("--history", type=_positive_int, default=1)
    p.add_argument("--ttl", type=_seconds, default=None, help="seconds values live")
    p.add_argument("--storage", choices=["file", "memory"], default=None)
    p.add_argument("--replicas", type=_positive_int, default=1)
    p.add_argument("--max-value-size", type=_positive_int, default=None)
    p.add_argument("--max-bytes", type=_positive_int, default=None)
    p.add_argument("--description", default=None)
    common(p, cmd_kv_add)

    p = ks.add_parser("get", help="print a key's value")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("--revision", type=_positive_int, default=None)
    p.add_argument("--raw", action="store_true", help="print the bytes undecoded")
    p.add_argument("-v", "--verbose", action="store_true", help="also print revision, time, operation")
    common(p, cmd_kv_get)

    p = ks.add_parser("put", help="store a value (JSON, or text; --raw: bytes; none: stdin)")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("value", nargs="?", default=None)
    p.add_argument("--raw", action="store_true")
    p.add_argument("--file", default=None, help="store the bytes of a file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--create", action="store_true", help="fail if the key has a value")
    g.add_argument("--last", type=int, default=None, help="only if the latest revision is LAST")
    common(p, cmd_kv_put)

    p = ks.add_parser("del", help="delete a key (or, without KEY, the whole bucket)")
    p.add_argument("bucket")
    p.add_argument("key", nargs="?", default=None)
    p.add_argument("--purge", action="store_true", help="also drop the key's history")
    p.add_argument("--last", type=int, default=None)
    common(p, cmd_kv_del)

    p = ks.add_parser("ls", help="list buckets, or a bucket's keys")
    p.add_argument("bucket", nargs="?", default=None)
    p.add_argument("filter", nargs="*", help="key filters (wildcards allowed)")
    common(p, cmd_kv_ls)

    p = ks.add_parser("history", help="print every stored revision of a key")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("--raw", action="store_true")
    common(p, cmd_kv_history)

    p = ks.add_parser("watch", help="print the current values, then updates as they come")
    p.add_argument("bucket")
    p.add_argument("keys", nargs="*", help="key filters (default: all)")
    p.add_argument("--history", action="store_true", help="every stored revision first")
    p.add_argument("--updates-only", action="store_true")
    p.add_argument("--count", type=_positive_int, default=None, help="exit after N entries")
    p.add_argument("--raw", action="store_true")
    common(p, cmd_kv_watch)

    obj = subparsers.add_parser("object", help="Object Stores: add, put, get, ls, info, rm")
    os_ = obj.add_subparsers(dest="object_command", metavar="ACTION")
    os_.required = True

    p = os_.add_parser("add", help="create an object store")
    p.add_argument("bucket")
    p.add_argument("--description", default=None)
    p.add_argument("--storage", choices=["file", "memory"], default=None)
    p.add_argument("--replicas", type=_positive_int, default=1)
    p.add_argument("--ttl", type=_seconds, default=None)
    common(p, cmd_obj_add)

    p = os_.add_parser("put", help="store a file (progress bar on a terminal)")
    p.add_argument("bucket")
    p.add_argument("file")
    p.add_argument("--name", default=None, help="object name (default: the file's name)")
    p.add_argument("--description", default=None)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common(p, cmd_obj_put)

    p = os_.add_parser("get", help="write an object to a file (-o -: stdout); digest verified")
    p.add_argument("bucket")
    p.add_argument("name")
    p.add_argument("-o", "--output", default=None, help="file (default: the object's name)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common(p, cmd_obj_get)

    p = os_.add_parser("ls", help="list object stores, or a store's objects")
    p.add_argument("bucket", nargs="?", default=None)
    common(p, cmd_obj_ls)

    p = os_.add_parser("info", help="an object's info as JSON")
    p.add_argument("bucket")
    p.add_argument("name")
    common(p, cmd_obj_info)

    p = os_.add_parser("rm", help="delete an object (or, without NAME, the whole store)")
    p.add_argument("bucket")
    p.add_argument("name", nargs="?", default=None)
    common(p, cmd_obj_rm)


__all__: List[str] = ["add_parsers", "Progress"]
