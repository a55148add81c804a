"""The ``telestion-sync`` command: a dev server, pub/sub/request/reply, health, a quick bench.

Built on the library itself. Expected failures (server down, wrong password, timeout, permission
denied, bad input) print one line to stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from . import cli_jetstream, cli_kv, cli_ops
from ._version import __version__
from .client import MessageBus, connect
from .errors import (
    AuthenticationError,
    ConnectionClosedError,
    Error,
    NoServersError,
    PermissionViolationError,
)
from .message import Message
from .service import discover_services

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """An expected failure: printed as one line, exit code 1."""


def _describe(exc: BaseException) -> str:
    """``exc`` as one line: the type name (except for CLIError) and the text, newlines folded."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, CLIError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ends_command(err: BaseException) -> bool:
    """Whether a reported error ends a command on its own (a lost or refused connection, a denied
    subscription), so the command reports it as its failure and it must not show twice."""
    if isinstance(err, PermissionViolationError):
        return err.operation == "subscribe"
    if type(err) is Error and err.__cause__ is None:
        return True  # a server -ERR other than a permission violation: the server hangs up
    return isinstance(err, (ConnectionClosedError, NoServersError, AuthenticationError, OSError))


class _ErrorLog:
    """The bus's ``on_error`` handler in the CLI, instead of the library's warning log.

    It keeps what the bus reports so a command can judge it (pub fails on a denied publish); the
    default handler would print each error as well, so a failure showed twice or three times.
    With ``live`` (sub, reply: commands that run on) it prints errors that do not end the command
    (slow consumer, undecodable request) as one warning line each. ``wake`` is set on each error.
    """

    def __init__(self, live: bool = False) -> None:
        self.errors: List[BaseException] = []
        self.live = live
        self.wake = threading.Event()
        self._cond = threading.Condition()

    def __call__(self, err: BaseException) -> None:
        with self._cond:
            self.errors += [err] * getattr(err, "repeated", 1)  # identical ones come coalesced
            self._cond.notify_all()
        if self.live and not _ends_command(err):
            print(f"telestion-sync: warning: {_describe(err)}", file=sys.stderr, flush=True)
        self.wake.set()

    def wait_for(self, count: int, timeout: float) -> List[BaseException]:
        """The errors reported so far, once there are ``count`` (or after ``timeout`` seconds)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.errors) >= count, timeout)
            return list(self.errors)


def _checked(convert: Callable[[str], Any], noun: str, ok: Callable[[Any], bool], rule: str) -> Any:
    """An argparse type: ``convert`` the text (else "'x' is not <noun>"), then require ``ok``
    (else "<rule>, not x"): a clear one-line usage error instead of a traceback."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, not {text}")
        return value

    return parse


_positive_int = _checked(int, "a whole number", lambda v: v >= 1, "must be at least 1")
# a TCP port; 0 means a free port, or disabled where the help says so
_port = _checked(int, "a port number", lambda v: 0 <= v <= 65535, "a port is 0-65535")
_seconds = _checked(
    float, "a number of seconds", lambda v: 0 < v < float("inf"), "must be a positive number of seconds"
)


# --- output helpers -----------------------------------------------------------------------------


def _progress(done: int, total: int, stream: TextIO, start: float) -> None:
    """A one-line progress bar on a terminal (nothing when stderr is not a terminal)."""
    if not stream.isatty():
        return
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.perf_counter() - start, 1e-9)
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:,.0f}/s")
    if done >= total:
        stream.write("\n")
    stream.flush()


def _text_or_hex(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.hex(" ")


def _show_data(msg: Message, raw: bool) -> str:
    if raw:
        return _text_or_hex(msg.payload)
    try:
        data = msg.data
    except Error as exc:
        return f"<undecodable: {exc}> {msg.payload!r}"
    if isinstance(data, (bytes, bytearray)):
        return _text_or_hex(bytes(data))
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return repr(value)


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# --- connection options -------------------------------------------------------------------------


def _add_connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "-s", "--server", default=None, help="server URL(s) (env NATS_URL; default localhost:4222)"
    )
    g.add_argument("--user", default=None, help="user name (env NATS_USER)")
    g.add_argument("--password", default=None, help="password (env NATS_PASSWORD)")
    g.add_argument("--token", default=None, help="authentication token")
    g.add_argument("--creds", default=None, help="JWT user credentials file (.creds)")
    g.add_argument("--nkey", default=None, help="NKey seed file")
    g.add_argument("--tls-ca", default=None, help="CA file to verify the server")
    g.add_argument("--tls-cert", default=None, help="client certificate (mutual TLS)")
    g.add_argument("--tls-key", default=None, help="client key (mutual TLS)")
    g.add_argument("--connect-timeout", type=_seconds, default=2.0, help="seconds (default 2)")


def _connect(args: argparse.Namespace, errors: _ErrorLog, **extra: Any) -> MessageBus:
    """Connect (without reconnecting unless ``allow_reconnect=True`` is passed); the bus reports
    its errors to ``errors`` (not to a log)."""
    server = args.server or os.environ.get("NATS_URL") or "localhost:4222"
    user = args.user if args.user is not None else os.environ.get("NATS_USER")
    password = args.password if args.password is not None else os.environ.get("NATS_PASSWORD")
    return connect(
        server,
        name="telestion-sync-cli",
        user=user,
        password=password,
        token=args.token,
        creds=args.creds,
        nkey_seed=args.nkey,
        tls_ca_file=args.tls_ca,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        connect_timeout=args.connect_timeout,
        on_error=errors,
        **{"allow_reconnect": False, **extra},
    )


def _payload(args: argparse.Namespace) -> Any:
    """DATA (or --file) as the object to publish, by --raw / --cbor / JSON (default)."""
    if args.file is not None:
        with open(args.file, "rb") as f:
            content: bytes = f.read()
    elif args.data is not None:
        content = args.data.encode()
    else:
        content = b""
    if args.raw:
        return content
    if not content:
        return b"" if not args.cbor else None
    try:
        return json.loads(content)
    except ValueError:
        raise CLIError("DATA is not valid JSON (quote strings as '\"text\"', or use --raw)") from None


def _headers(pairs: Optional[List[str]]) -> Optional[Dict[str, List[str]]]:
    if not pairs:
        return None
    out: Dict[str, List[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition(":")
        if not sep or not key.strip():
            raise CLIError(f"--header wants KEY:VALUE, not {pair!r}")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _codec(args: argparse.Namespace) -> Optional[str]:
    """The codec --cbor / --raw ask for (pub, request), else None: the bus's default."""
    if args.cbor:
        return "cbor"
    if args.raw:
        return "raw"
    return None


# --- commands -----------------------------------------------------------------------------------


def _server_failure(exc: BaseException, log_text: str = "") -> str:
    """Why nats-server did not start or stopped: its fatal log line ("address already in use"),
    else the first line of ``exc``."""
    for line in reversed((log_text + "\n" + str(exc)).splitlines()):
        if "[FTL]" in line:
            return line.split("[FTL]", 1)[1].strip()
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def cmd_server(args: argparse.Namespace) -> int:
    from .server import NatsCluster, NatsServer, nats_server_binary

    try:
        nats_server_binary()
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    if (args.user is None) != (args.password is None):
        raise CLIError("--user and --password go together")
    cluster: Optional[NatsCluster] = None
    if args.cluster and args.cluster > 1:
        cluster = NatsCluster(
            args.cluster,
            host=args.host,
            user=args.user,
            password=args.password,
            jetstream=args.jetstream,
            store_dir=args.store_dir,
        )
        nodes = cluster.nodes
        # The ports given are the first node's (clients connect there and discover the rest);
        # the other nodes get free ports. Each node keeps a monitoring port: the routes are
        # checked through it.
        first = nodes[0]
        if args.port:
            first.port = args.port
        if args.monitor_port:
            first.monitor_port = args.monitor_port
        if args.websocket_port:
            first.websocket_port = args.websocket_port
    else:
        nodes = [
            NatsServer(
                args.port,
                host=args.host,
                user=args.user,
                password=args.password,
                monitor_port=args.monitor_port or None,
                websocket_port=args.websocket_port or None,
                jetstream=args.jetstream,
                store_dir=args.store_dir,
            )
        ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for node in nodes:
            try:
                node.start()
            except RuntimeError as exc:
                raise CLIError(
                    f"nats-server could not start on {node.host}:{node.port}: "
                    + _server_failure(exc, node.read_log())
                ) from None
        if cluster is not None:
            try:
                cluster.wait_routes()
            except RuntimeError as exc:
                raise CLIError(f"the cluster did not form: {_server_failure(exc)}") from None
        for node in nodes:
            print(f"nats-server  {node.url}")
            if node.monitor_port:
                print(f"  monitoring http://{node.host}:{node.monitor_port}")
            if node.websocket_port:
                print(f"  websocket  ws://{node.host}:{node.websocket_port}")
        if args.jetstream:
            print(f"  JetStream enabled, store in {os.path.abspath(args.store_dir)}")
        if args.user is not None:
            print(f"  user {args.user!r} required (password hidden)")
        print("press Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            for node in nodes:
                if not node.running:
                    reason = _server_failure(RuntimeError("no reason logged"), node.read_log())
                    raise CLIError(f"nats-server {node.url} exited unexpectedly: {reason}")
    except KeyboardInterrupt:
        pass
    finally:
        for node in nodes:
            node.__exit__(None, None, None)
    print("stopped")
    return 0


def _fail_on_reported(errors: _ErrorLog, bus: MessageBus) -> None:
    """After a flush: fail when the bus reported errors (e.g. a denied publish) meanwhile.

    The server answers a denied publish with -ERR before the PONG of the flush, so the error is
    counted by then; its delivery to ``errors`` (on the bus's status thread) may lag a little.
    """
    count = bus.stats.errors
    if not count:
        return
    reported = errors.wait_for(count, timeout=5.0)
    if not reported:
        raise CLIError(f"the server reported {count} error(s)")
    more = f" ({len(reported)} errors in all)" if len(reported) > 1 else ""
    raise CLIError(_describe(reported[0]) + more)


def cmd_pub(args: argparse.Namespace) -> int:
    data = _payload(args)
    headers = _headers(args.header)
    codec = _codec(args)
    errors = _ErrorLog()
    with _connect(args, errors) as bus:
        start = time.perf_counter()
        step = max(1, args.count // 100)
        for i in range(args.count):
            bus.publish(args.subject, data, headers=headers, codec=codec)
            if (i + 1) % step == 0 or i + 1 == args.count:
                _progress(i + 1, args.count, sys.stderr, start)
        bus.flush(timeout=10)
        _fail_on_reported(errors, bus)
    noun = "message" if args.count == 1 else "messages"
    print(f"published {args.count} {noun} to {args.subject}", file=sys.stderr)
    return 0


def _print_msg(msg: Message, raw: bool, out: TextIO) -> None:
    stamp = datetime.datetime.now().isoformat(timespec="milliseconds")
    print(f"[{stamp}] {msg.subject}" + (f" (reply {msg.reply})" if msg.reply else ""), file=out)
    for key, value in msg.headers.items():
        print(f"  {key}: {value}", file=out)
    print(_show_data(msg, raw), file=out, flush=True)


def cmd_sub(args: argparse.Namespace) -> int:
    errors = _ErrorLog(live=True)
    with _connect(args, errors) as bus:
        sub = bus.subscribe(args.subject, queue=args.queue)
        bus.flush()
        if sub.error is not None:  # denied: the server said so before the flush's PONG
            raise CLIError(_describe(sub.error))
        print(
            f"listening on {args.subject}" + (f" (queue {args.queue})" if args.queue else ""), file=sys.stderr
        )
        seen = 0
        while args.count is None or seen < args.count:
            try:
                msg = sub.next_msg(timeout=None)
            except Error as exc:
                raise CLIError(str(exc)) from None
            seen += 1
            _print_msg(msg, args.raw, sys.stdout)
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    data = _payload(args)
    with _connect(args, _ErrorLog()) as bus:
        reply = bus.request(
            args.subject, data, timeout=args.timeout, headers=_headers(args.header), codec=_codec(args)
        )
        print(_show_data(reply, args.raw_reply))
    return 0


def cmd_reply(args: argparse.Namespace) -> int:
    answer: Any = None
    if args.answer is not None:
        try:
            answer = json.loads(args.answer)
        except ValueError:
            raise CLIError("--answer is not valid JSON") from None
    errors = _ErrorLog(live=True)
    wake = errors.wake  # set on each reported error, when the bus closes, and at --count
    served = [0]

    def handler(msg: Message) -> Any:
        _print_msg(msg, False, sys.stderr)
        if answer is None:
            # Echo: the payload with the request's headers, so a CBOR request (Content-Type)
            # gets a reply that decodes as CBOR again.
            if msg.reply:
                msg.respond(msg.payload, headers=msg.headers or None)
            result: Any = None
        else:
            result = answer
        served[0] += 1
        if args.count is not None and served[0] >= args.count:
            wake.set()
        return result

    with _connect(args, errors, on_close=wake.set) as bus:
        sub = bus.reply(args.subject, handler, queue=args.queue)
        bus.flush()
        if sub.error is not None:  # denied: the server said so before the flush's PONG
            raise CLIError(_describe(sub.error))
        print(f"answering requests on {args.subject}", file=sys.stderr, flush=True)
        while True:
            wake.wait()
            wake.clear()
            if args.count is not None and served[0] >= args.count:
                break
            if sub.error is not None:
                raise CLIError(_describe(sub.error))
            if bus.is_closed:
                lost = [e for e in errors.errors if _ends_command(e)]
                cause = f": {_describe(lost[-1])}" if lost else ""
                raise CLIError(f"connection to the server closed{cause}")
        bus.flush()
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    with _connect(args, _ErrorLog()) as bus:
        services = discover_services(bus, timeout=args.timeout)
    if not services:
        print("no Telestion service answered", file=sys.stderr)
        return EXIT_ERROR
    # A service that does not report its error count (the Telestion Deno library answers with
    # its name only) shows "-", as a table shows a missing value, not "None".
    rows = [[str(s.get("name", "-")), "-" if s.get("errors") is None else str(s["errors"])] for s in services]
    print(_table(rows, ["SERVICE", "ERRORS"]))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """A quick benchmark of this library alone (the comparison with other clients is
    scripts/bench.py in the source tree)."""
    from .server import NatsServer

    own: Optional[NatsServer] = None
    if args.server is None and not os.environ.get("NATS_URL"):
        own = NatsServer().start()
        args.server = own.url
    try:
        rows = []
        with _connect(args, _ErrorLog()) as bus:
            payload = b"x" * args.size
            n = args.count
            start = time.perf_counter()
            step = max(1, n // 100)
            for i in range(n):
                bus.publish("bench.pub", payload)
                if (i + 1) % step == 0 or i + 1 == n:
                    _progress(i + 1, n, sys.stderr, start)
            bus.flush(timeout=60)
            rows.append(["publish", f"{n / (time.perf_counter() - start):,.0f} msg/s"])

            got = threading.Event()
            count = [0]

            def on_msg(msg: Message) -> None:
                count[0] += 1
                if count[0] == n:
                    got.set()

            bus.subscribe("bench.sub", on_msg)
            bus.flush()
            start = time.perf_counter()
            for _ in range(n):
                bus.publish("bench.sub", payload)
            if not got.wait(120):
                raise CLIError(f"pub->sub: only {count[0]} of {n} messages arrived")
            rows.append(["pub->sub", f"{n / (time.perf_counter() - start):,.0f} msg/s"])

            bus.reply("bench.echo", lambda msg: msg.payload)
            reqs = max(100, n // 50)
            times = []
            for _ in range(reqs):
                t0 = time.perf_counter()
                bus.request("bench.echo", payload, timeout=5)
                times.append(time.perf_counter() - t0)
            times.sort()
            rows.append(["requests", f"{reqs / sum(times):,.0f} req/s"])
            rows.append(["request p50", f"{times[len(times) // 2] * 1e6:,.0f} us"])
            rows.append(["request p99", f"{times[int(len(times) * 0.99)] * 1e6:,.0f} us"])
        print(_table(rows, ["TEST", f"RESULT ({args.size} B payloads)"]))
    finally:
        if own is not None:
            own.__exit__(None, None, None)
    return 0


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telestion-sync",
        description="Talk to a Telestion NATS bus from the terminal (telestion_sync " + __version__ + ").",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("server", help="start a nats-server for development")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "-p", "--port", type=_port, default=4222, help="client port, 0 for a free one (default 4222)"
    )
    p.add_argument("--monitor-port", type=_port, default=8222, help="0 to disable (default 8222)")
    p.add_argument("--websocket-port", type=_port, default=9222, help="for the web frontend, 0 to disable")
    p.add_argument("--user", default=None, help="require this user (with --password)")
    p.add_argument("--password", default=None)
    p.add_argument("--jetstream", action="store_true")
    p.add_argument(
        "--store-dir",
        default="jetstream",
        help="where JetStream keeps its data, kept after the server stops (default ./jetstream)",
    )
    p.add_argument(
        "--cluster",
        type=_positive_int,
        default=None,
        metavar="N",
        help="a local cluster of N nodes; the ports above are the first node's, the others get "
        "free ports (every node keeps a monitoring port)",
    )
    p.set_defaults(func=cmd_server)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("subject")
        p.add_argument("data", nargs="?", default=None, help="JSON (default), or text with --raw")
        kind = p.add_mutually_exclusive_group()
        kind.add_argument("--cbor", action="store_true", help="send DATA (JSON) encoded as CBOR")
        kind.add_argument("--raw", action="store_true", help="send DATA as bytes, unchanged")
        p.add_argument("--file", default=None, help="read DATA from a file")
        p.add_argument("-H", "--header", action="append", metavar="KEY:VALUE")

    p = sub.add_parser("pub", help="publish a message")
    data_options(p)
    p.add_argument("--count", type=_positive_int, default=1, help="publish N times (default 1)")
    _add_connection_options(p)
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser("sub", help="print messages on a subject")
    p.add_argument("subject")
    p.add_argument("--count", type=_positive_int, default=None, help="exit after N messages")
    p.add_argument("--queue", default=None)
    p.add_argument("--raw", action="store_true", help="print payloads undecoded")
    _add_connection_options(p)
    p.set_defaults(func=cmd_sub)

    p = sub.add_parser("request", help="send a request and print the reply")
    data_options(p)
    p.add_argument("--timeout", type=_seconds, default=2.0, help="seconds (default 2)")
    p.add_argument("--raw-reply", action="store_true", help="print the reply undecoded")
    _add_connection_options(p)
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("reply", help="answer requests (echo, or a fixed JSON answer)")
    p.add_argument("subject")
    p.add_argument("--answer", default=None, help="a JSON value to answer with (default: echo)")
    p.add_argument("--queue", default=None)
    p.add_argument("--count", type=_positive_int, default=None, help="exit after N requests")
    _add_connection_options(p)
    p.set_defaults(func=cmd_reply)

    p = sub.add_parser("health", help="list the Telestion services that answer the health check")
    p.add_argument("--timeout", type=_seconds, default=0.5, help="seconds to gather replies (default 0.5)")
    _add_connection_options(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("bench", help="a quick benchmark of this library")
    p.add_argument("--count", type=_positive_int, default=100_000)
    p.add_argument("--size", type=_positive_int, default=16, help="payload bytes (default 16)")
    _add_connection_options(p)
    p.set_defaults(func=cmd_bench)
    cli_jetstream.add_parsers(sub)
    cli_ops.add_parsers(sub)
    cli_kv.add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CLIError, Error, OSError, ValueError, TypeError) as exc:
        print(f"telestion-sync: {_describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
