"""Bad input gets a clear error at once (issue 9): one table row per rule, and the good values.

Conventions (telestion_sync/options.py): configuration (connect, start_service, load_config)
raises ConfigError for a wrong type or value, before a socket is opened or a file written; call
arguments raise TypeError / ValueError; subjects and queue groups BadSubjectError. Every message
names the parameter. Each row asserts that nothing was sent or opened where that matters.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import pathlib
import socket
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import telestion_sync as ts
from telestion_sync import cli
from telestion_sync.message import Message
from telestion_sync.options import UNLIMITED, ConnectOptions
from telestion_sync.server import NatsServer, free_port

from . import authgen
from .conftest import ErrorLog, wait_until
from .tlsutil import TLSFiles


async def _async_callback(msg: Any) -> None:  # pragma: no cover - never called: refused
    pass


# --- a probe that sees any connection attempt ----------------------------------------------------


class Probe:
    """A listening TCP socket (not a server): ``untouched()`` is True while nobody connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.url = f"nats://127.0.0.1:{self.sock.getsockname()[1]}"

    def untouched(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return True
        conn.close()
        return False


@pytest.fixture
def probe() -> Iterator[Probe]:
    p = Probe()
    yield p
    p.sock.close()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[NatsServer]:
    """One server (with monitoring, to see what reached it) for the many table rows."""
    with NatsServer(monitor_port=free_port()) as srv:
        yield srv


# --- ts.connect() / MessageBus options: ConfigError before connecting -----------------------------

# (option, bad value, fragment of the message); the message also names the option.
CONNECT_RULES: List[Tuple[str, Any, str]] = [
    ("name", 5, "name must be a str or None, not int"),
    ("name", "", "name must not be empty"),
    ("user", 5, "user must be a str or a callable returning a str, not int"),
    ("password", b"pw", "password must be a str or a callable returning a str, not bytes"),
    ("token", 1.0, "token must be a str or a callable returning a str, not float"),
    ("user", _async_callback, "user must be a plain function, not an async one"),
    ("nkey_seed", 5, "nkey_seed must be a str, bytes, an os.PathLike path or a callable"),
    ("nkey_seed", "", "nkey_seed must not be empty"),
    ("nkey_seed", b"\xff\xfe", "nkey_seed bytes are not UTF-8"),
    (
        "creds",
        ["a"],
        "creds must be a str, bytes, an os.PathLike path or a callable returning a str, not list",
    ),
    ("creds", "  ", "creds must not be empty"),
    ("tls", {"ca_file": "ca.pem"}, "tls must be a bool or an ssl.SSLContext (or None), not dict"),
    ("tls", "yes", "tls must be a bool or an ssl.SSLContext (or None), not str"),
    ("tls", 1, "tls must be a bool or an ssl.SSLContext (or None), not int"),
    ("tls_ca_file", 5, "tls_ca_file must be a file path (str or os.PathLike) or None, not int"),
    ("tls_ca_file", "", "tls_ca_file must not be empty"),
    ("tls_cert_file", True, "tls_cert_file must be a file path"),
    ("tls_key_file", b"key.pem", "tls_key_file must be a file path"),
    ("tls_hostname", "", "tls_hostname must not be empty"),
    ("tls_hostname", 5, "tls_hostname must be a str or None, not int"),
    ("tls_handshake_first", 1, "tls_handshake_first must be True or False, not int"),
    ("connect_timeout", True, "connect_timeout must be a number of seconds, not bool"),
    ("connect_timeout", "2", "connect_timeout must be a number of seconds, not str"),
    ("connect_timeout", None, "connect_timeout must be a number of seconds, not NoneType"),
    ("connect_timeout", 0, "connect_timeout must be a finite number of seconds > 0, not 0"),
    ("connect_timeout", -1.5, "connect_timeout must be a finite number of seconds > 0, not -1.5"),
    ("connect_timeout", math.nan, "connect_timeout must be a finite number of seconds > 0, not nan"),
    ("connect_timeout", math.inf, "connect_timeout must be a finite number of seconds > 0, not inf"),
    ("ping_interval", 0, "ping_interval must be a finite number of seconds > 0, not 0"),
    ("ping_interval", math.inf, "ping_interval must be a finite number of seconds > 0"),
    ("ping_interval", False, "ping_interval must be a number of seconds, not bool"),
    ("write_timeout", 0, "write_timeout must be a finite number of seconds > 0, not 0"),
    ("write_timeout", "10", "write_timeout must be a number of seconds, not str"),
    ("max_outstanding_pings", 0, "max_outstanding_pings must be at least 1, not 0"),
    ("max_outstanding_pings", True, "max_outstanding_pings must be an int, not bool"),
    ("max_outstanding_pings", 1.5, "max_outstanding_pings must be an int, not float"),
    ("echo", 0, "echo must be True or False, not int"),
    ("echo", None, "echo must be True or False, not NoneType"),
    ("inbox_prefix", "my inbox", "inbox_prefix must be a literal subject"),
    ("inbox_prefix", "_INBOX.>", "inbox_prefix must be a literal subject (no wildcards)"),
    ("inbox_prefix", "_INBOX.", "inbox_prefix must be a literal subject"),
    ("inbox_prefix", "", "inbox_prefix must be a literal subject"),
    ("inbox_prefix", 5, "inbox_prefix must be a str, not int"),
    ("default_codec", "yaml", "default_codec: unknown codec 'yaml'"),
    ("default_codec", 5, "default_codec must be a codec name"),
    ("pending_msgs_limit", 0, "pending_msgs_limit must not be 0"),
    ("pending_msgs_limit", True, "pending_msgs_limit must be an int (negative: unlimited), not bool"),
    ("pending_msgs_limit", 1.5, "pending_msgs_limit must be an int"),
    ("pending_msgs_limit", None, "pending_msgs_limit must be an int"),
    ("pending_bytes_limit", 0, "pending_bytes_limit must not be 0"),
    ("pending_bytes_limit", "1MB", "pending_bytes_limit must be an int"),
    ("on_error", "log", "on_error must be callable or None, not str"),
    ("on_error", _async_callback, "on_error must be a plain function, not an async one"),
    ("on_disconnect", 5, "on_disconnect must be callable or None, not int"),
    ("on_reconnect", True, "on_reconnect must be callable or None, not bool"),
    ("on_close", "close", "on_close must be callable or None, not str"),
    ("on_discovered_servers", [], "on_discovered_servers must be callable or None, not list"),
    ("on_lame_duck", 1, "on_lame_duck must be callable or None, not int"),
    ("allow_reconnect", "no", "allow_reconnect must be True or False, not str"),
    ("max_reconnect_attempts", -2, "max_reconnect_attempts must be >= 0, or -1 to try forever, not -2"),
    ("max_reconnect_attempts", True, "max_reconnect_attempts must be an int, not bool"),
    ("max_reconnect_attempts", 1.5, "max_reconnect_attempts must be an int, not float"),
    ("reconnect_time_wait", -1, "reconnect_time_wait must be a finite number of seconds >= 0, not -1"),
    ("reconnect_time_wait", math.nan, "reconnect_time_wait must be a finite number of seconds >= 0"),
    ("reconnect_time_wait", True, "reconnect_time_wait must be a number of seconds, not bool"),
    ("reconnect_jitter", -0.1, "reconnect_jitter must be a finite number of seconds >= 0, not -0.1"),
    ("reconnect_wait", 2.0, "reconnect_wait must be callable or None, not float"),
    ("reconnect_buf_size", -2, "reconnect_buf_size must be a size in bytes >= 0 (0 or -1: no buffering"),
    ("reconnect_buf_size", 1.5, "reconnect_buf_size must be an int, not float"),
    ("reconnect_buf_size", True, "reconnect_buf_size must be an int, not bool"),
    ("randomize", 1, "randomize must be True or False, not int"),
    ("ignore_discovered_servers", "yes", "ignore_discovered_servers must be True or False, not str"),
    ("retry_on_failed_connect", 1, "retry_on_failed_connect must be True or False, not int"),
    ("ignore_auth_error_abort", None, "ignore_auth_error_abort must be True or False, not NoneType"),
    ("ws_compression", "yes", "ws_compression must be True or False, not str"),
    ("http_probe", 0, "http_probe must be True or False, not int"),
]


@pytest.mark.parametrize(("option", "value", "fragment"), CONNECT_RULES, ids=lambda v: repr(v)[:30])
def test_bad_connect_option_fails_before_connecting(
    probe: Probe, option: str, value: Any, fragment: str
) -> None:
    # retry_on_failed_connect: were the option not refused, connect() would return and the
    # probe would see the attempt (not a NoServersError that could be mistaken for the check).
    options: Dict[str, Any] = {"connect_timeout": 0.5, "retry_on_failed_connect": True, option: value}
    with pytest.raises(ts.ConfigError) as info:
        ts.connect(probe.url, **options).close()
    assert fragment in str(info.value)
    assert str(info.value).startswith(option)
    assert probe.untouched(), "a socket was opened before the option was checked"


@pytest.mark.parametrize(
    ("servers", "fragment"),
    [
        (42, "servers must be a URL, a comma-separated str of URLs or a list of URLs, not int"),
        (b"nats://127.0.0.1", "servers must be a URL"),
        ({"url"}, "servers must be a URL"),
        ([], "servers: no server URL given"),
        ("", "servers: no server URL given"),
        ("http://127.0.0.1:4222", "scheme must be nats://, tls://, ws:// or wss://"),
        ("nats://127.0.0.1:99999", "has an invalid port"),
        (["nats://127.0.0.1", 5], "server URL must be a non-empty string, not int"),
    ],
)
def test_bad_servers_are_a_config_error(servers: Any, fragment: str) -> None:
    with pytest.raises(ts.ConfigError) as info:
        ts.connect(servers).close()
    assert fragment in str(info.value)


def test_contradicting_tls_options_fail_before_connecting(probe: Probe) -> None:
    with pytest.raises(ts.ConfigError, match="tls=False contradicts"):
        ts.connect(probe.url, tls=False, tls_ca_file="ca.pem")
    with pytest.raises(ts.ConfigError, match="tls_key_file needs tls_cert_file"):
        ts.connect(probe.url, tls_key_file="key.pem")
    assert probe.untouched()


def test_an_unknown_option_is_a_type_error(probe: Probe) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'conect_timeout'"):
        ts.connect(probe.url, conect_timeout=1)
    assert probe.untouched()


GOOD_CONNECT: List[Tuple[str, Any]] = [
    ("name", None),
    ("user", lambda: "someone"),
    ("password", ""),  # an empty password is a password
    ("tls", None),
    ("connect_timeout", 1),
    ("connect_timeout", 2.5),
    ("ping_interval", 30),
    ("max_outstanding_pings", 1),
    ("write_timeout", 0.5),
    ("echo", False),
    ("inbox_prefix", "_I.tool"),
    ("default_codec", "cbor"),
    ("default_codec", ts.JSONCodec()),
    ("default_codec", None),
    ("pending_msgs_limit", -1),
    ("pending_bytes_limit", -5),
    ("on_error", print),
    ("on_close", None),
    ("max_reconnect_attempts", -1),
    ("max_reconnect_attempts", 0),
    ("reconnect_time_wait", 0),
    ("reconnect_jitter", 0.0),
    ("reconnect_wait", lambda state: 0.1),
    ("reconnect_buf_size", 0),
    ("reconnect_buf_size", -1),
    ("randomize", False),
]


@pytest.mark.parametrize(("option", "value"), GOOD_CONNECT, ids=lambda v: repr(v)[:30])
def test_good_connect_options_are_accepted(shared_server: NatsServer, option: str, value: Any) -> None:
    with ts.connect(shared_server.url, **{option: value}) as bus:
        bus.flush()
        assert bus.is_connected


def test_servers_in_every_accepted_form(shared_server: NatsServer) -> None:
    hostport = shared_server.url.split("://", 1)[1]
    for servers in (shared_server.url, hostport, [shared_server.url], (hostport,), f" {hostport} ,"):
        with ts.connect(servers) as bus:
            bus.flush()


@pytest.mark.parametrize("size", [0, -1])
def test_reconnect_buf_size_zero_and_minus_one_keep_no_buffer(server: NatsServer, size: int) -> None:
    """0 and -1 (nats.go's "disabled") both refuse to buffer while disconnected, at once."""
    with ts.connect(server.url, reconnect_buf_size=size, reconnect_time_wait=30) as bus:
        bus.flush()
        server.stop()
        wait_until(lambda: not bus.is_connected, what="the bus to notice the server left")
        with pytest.raises(ts.OutboundBufferFullError, match="reconnect buffer full"):
            bus.publish("x", b"1")


def test_path_and_bytes_credentials_reach_the_server(tmp_path: pathlib.Path) -> None:
    """An nkey seed given as a pathlib.Path or as bytes logs in (normalised to str)."""
    user = authgen.new_user_key()
    seed_file = pathlib.Path(authgen.write_seed(str(tmp_path / "user.nk"), user.seed))
    with NatsServer(config=authgen.nkey_config(user.public)) as srv:
        for seed in (seed_file, user.seed.encode()):
            with ts.connect(srv.url, nkey_seed=seed, connect_timeout=5) as bus:
                bus.flush()


def test_tls_file_paths_may_be_path_objects(tmp_path: pathlib.Path) -> None:
    files = TLSFiles(str(tmp_path))
    with files.nats_server() as srv:
        with ts.connect(srv.url, tls_ca_file=pathlib.Path(files.ca_file), connect_timeout=5) as bus:
            bus.flush()


# --- ConnectOptions: one options object, in step with MessageBus ----------------------------------


def test_connect_options_match_message_bus_parameters() -> None:
    """Every MessageBus keyword is a ConnectOptions field with the same default (and back)."""
    params = inspect.signature(ts.MessageBus.__init__).parameters
    bus_defaults = {n: p.default for n, p in params.items() if n != "self"}
    fields = {f.name: f.default for f in dataclasses.fields(ConnectOptions)}
    assert fields == bus_defaults


def test_connect_options_are_frozen_and_normalised(tmp_path: pathlib.Path) -> None:
    opts = ConnectOptions(
        "localhost:4222",
        nkey_seed=tmp_path / "user.nk",
        creds=b"-----BEGIN NATS USER JWT-----",
        tls_ca_file=tmp_path / "ca.pem",
        tls_cert_file=str(tmp_path / "cert.pem"),
    )
    assert opts.nkey_seed == str(tmp_path / "user.nk")
    assert opts.creds == "-----BEGIN NATS USER JWT-----"
    assert opts.tls_ca_file == str(tmp_path / "ca.pem")
    assert opts.tls_cert_file == str(tmp_path / "cert.pem")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.connect_timeout = 5
    with pytest.raises(TypeError, match="connect\\(\\) got an unexpected keyword argument 'nmae'"):
        ConnectOptions.from_kwargs("connect()", "localhost", {"nmae": "x"})


def test_secrets_are_not_echoed_in_option_errors() -> None:
    with pytest.raises(ts.ConfigError) as info:
        ConnectOptions(nkey_seed=b"SUA\xff-secret-seed")
    assert "secret" not in str(info.value)
    with pytest.raises(ts.ConfigError) as info:
        ConnectOptions(password=12345678)
    assert "12345678" not in str(info.value)


# --- the bus's methods: TypeError / ValueError / BadSubjectError, nothing sent ---------------------

Call = Callable[[ts.MessageBus, ts.Subscription], Any]

# (what, call, exception type, fragment of the message)
METHOD_RULES: List[Tuple[str, Call, type, str]] = [
    # subscribe
    (
        "subscribe positional queue",
        lambda b, s: b.subscribe("pos", "workers"),
        TypeError,
        "callback must be callable or None, not str; to join a queue group pass queue='workers'",
    ),
    (
        "subscribe callback int",
        lambda b, s: b.subscribe("x", 5),
        TypeError,
        "callback must be callable or None, not int",
    ),
    (
        "subscribe async callback",
        lambda b, s: b.subscribe("x", _async_callback),
        TypeError,
        "callback must be a plain",
    ),
    ("subscribe subject space", lambda b, s: b.subscribe("a b"), ts.BadSubjectError, "contains whitespace"),
    (
        "subscribe subject int",
        lambda b, s: b.subscribe(5),
        ts.BadSubjectError,
        "subject must be a str, not int",
    ),
    (
        "subscribe subject empty",
        lambda b, s: b.subscribe(""),
        ts.BadSubjectError,
        "subject must not be empty",
    ),
    (
        "subscribe > not last",
        lambda b, s: b.subscribe("a.>.b"),
        ts.BadSubjectError,
        "'>' may only be the last",
    ),
    ("subscribe queue empty", lambda b, s: b.subscribe("x", queue=""), ts.BadSubjectError, "queue group"),
    (
        "subscribe queue space",
        lambda b, s: b.subscribe("x", queue="a b"),
        ts.BadSubjectError,
        "contains whitespace",
    ),
    ("subscribe queue int", lambda b, s: b.subscribe("x", queue=5), ts.BadSubjectError, "queue group"),
    (
        "subscribe codec name",
        lambda b, s: b.subscribe("x", codec="yaml"),
        ValueError,
        "codec: unknown codec 'yaml'",
    ),
    ("subscribe codec int", lambda b, s: b.subscribe("x", codec=5), TypeError, "codec must be a codec name"),
    (
        "subscribe schema",
        lambda b, s: b.subscribe("x", schema="Model"),
        TypeError,
        "schema must be callable or None",
    ),
    (
        "subscribe max_msgs 0",
        lambda b, s: b.subscribe("x", max_msgs=0),
        ValueError,
        "max_msgs must be at least 1",
    ),
    (
        "subscribe max_msgs bool",
        lambda b, s: b.subscribe("x", max_msgs=True),
        TypeError,
        "max_msgs must be an int",
    ),
    (
        "subscribe max_msgs float",
        lambda b, s: b.subscribe("x", max_msgs=2.5),
        TypeError,
        "max_msgs must be an int",
    ),
    (
        "subscribe pending_msgs_limit 0",
        lambda b, s: b.subscribe("x", pending_msgs_limit=0),
        ValueError,
        "pending_msgs_limit must not be 0: give a positive limit, or a negative number for unlimited",
    ),
    (
        "subscribe pending_bytes_limit 0",
        lambda b, s: b.subscribe("x", pending_bytes_limit=0),
        ValueError,
        "pending_bytes_limit must not be 0",
    ),
    (
        "subscribe pending_msgs_limit str",
        lambda b, s: b.subscribe("x", pending_msgs_limit="10"),
        TypeError,
        "pending_msgs_limit must be an int",
    ),
    (
        "subscribe pending_bytes_limit bool",
        lambda b, s: b.subscribe("x", pending_bytes_limit=True),
        TypeError,
        "pending_bytes_limit must be an int",
    ),
    # publish
    ("publish wildcard", lambda b, s: b.publish("a.*", b"x"), ts.BadSubjectError, "wildcard"),
    ("publish subject int", lambda b, s: b.publish(5, b"x"), ts.BadSubjectError, "subject must be a str"),
    ("publish subject space", lambda b, s: b.publish("a b", b"x"), ts.BadSubjectError, "contains whitespace"),
    (
        "publish reply space",
        lambda b, s: b.publish("x", b"", reply="a b"),
        ts.BadSubjectError,
        "reply: subject",
    ),
    (
        "publish reply wildcard",
        lambda b, s: b.publish("x", reply="_INBOX.*"),
        ts.BadSubjectError,
        "reply: subject",
    ),
    (
        "publish reply int",
        lambda b, s: b.publish("x", reply=5),
        ts.BadSubjectError,
        "reply: subject must be a str",
    ),
    (
        "publish immediate None",
        lambda b, s: b.publish("x", b"x", immediate=None),
        TypeError,
        "immediate must be True or False, got None",
    ),
    (
        "publish immediate str",
        lambda b, s: b.publish("x", immediate="yes"),
        TypeError,
        "immediate must be True or False, got 'yes'",
    ),
    (
        "publish headers list",
        lambda b, s: b.publish("x", headers=[("k", "v")]),
        TypeError,
        "headers must be a mapping of str to str or list of str (or None), not list",
    ),
    (
        "publish header name",
        lambda b, s: b.publish("x", headers={"a b": "v"}),
        ValueError,
        "invalid header name",
    ),
    (
        "publish header value",
        lambda b, s: b.publish("x", headers={"k": 5}),
        TypeError,
        "header 'k' value must be",
    ),
    (
        "publish header CRLF",
        lambda b, s: b.publish("x", headers={"k": "a\r\nb"}),
        ValueError,
        "contains CR or LF",
    ),
    ("publish codec name", lambda b, s: b.publish("x", 1, codec="yaml"), ValueError, "codec: unknown codec"),
    ("publish codec int", lambda b, s: b.publish("x", b"", codec=5), TypeError, "codec must be a codec name"),
    # request
    (
        "request timeout 0",
        lambda b, s: b.request("x", timeout=0),
        ValueError,
        "timeout must be a finite number of seconds > 0",
    ),
    (
        "request timeout <0",
        lambda b, s: b.request("x", timeout=-1),
        ValueError,
        "timeout must be a finite number",
    ),
    (
        "request timeout nan",
        lambda b, s: b.request("x", timeout=math.nan),
        ValueError,
        "timeout must be a finite",
    ),
    (
        "request timeout inf",
        lambda b, s: b.request("x", timeout=math.inf),
        ValueError,
        "timeout must be a finite",
    ),
    (
        "request timeout None",
        lambda b, s: b.request("x", timeout=None),
        TypeError,
        "timeout must be a number of seconds",
    ),
    (
        "request timeout bool",
        lambda b, s: b.request("x", timeout=True),
        TypeError,
        "timeout must be a number of seconds",
    ),
    ("request wildcard", lambda b, s: b.request("svc.*"), ts.BadSubjectError, "wildcard"),
    ("request subject space", lambda b, s: b.request("a b"), ts.BadSubjectError, "contains whitespace"),
    ("request subject list", lambda b, s: b.request([]), ts.BadSubjectError, "must be a str, not list"),
    (
        "request headers str",
        lambda b, s: b.request("x", headers="k: v"),
        TypeError,
        "headers must be a mapping",
    ),
    ("request codec", lambda b, s: b.request("x", 1, codec="yaml"), ValueError, "codec: unknown codec"),
    # request_many
    (
        "request_many timeout",
        lambda b, s: b.request_many("x", timeout=0),
        ValueError,
        "timeout must be a finite",
    ),
    (
        "request_many max_msgs",
        lambda b, s: b.request_many("x", max_msgs=0),
        ValueError,
        "max_msgs must be at least 1",
    ),
    (
        "request_many max_msgs type",
        lambda b, s: b.request_many("x", max_msgs=1.0),
        TypeError,
        "max_msgs must be an int",
    ),
    ("request_many subject", lambda b, s: b.request_many("a b"), ts.BadSubjectError, "contains whitespace"),
    # reply
    ("reply handler str", lambda b, s: b.reply("x", "echo"), TypeError, "handler must be callable, not str"),
    (
        "reply handler None",
        lambda b, s: b.reply("x", None),
        TypeError,
        "handler must be callable, not NoneType",
    ),
    (
        "reply async handler",
        lambda b, s: b.reply("x", _async_callback),
        TypeError,
        "handler must be a plain function",
    ),
    ("reply subject", lambda b, s: b.reply("a b", print), ts.BadSubjectError, "contains whitespace"),
    ("reply queue", lambda b, s: b.reply("x", print, queue=""), ts.BadSubjectError, "queue group"),
    ("reply codec", lambda b, s: b.reply("x", print, codec="yaml"), ValueError, "unknown codec"),
    (
        "reply pending limit",
        lambda b, s: b.reply("x", print, pending_msgs_limit=0),
        ValueError,
        "must not be 0",
    ),
    # flush, rtt, drain
    (
        "flush timeout 0",
        lambda b, s: b.flush(0),
        ValueError,
        "timeout must be a finite number of seconds > 0",
    ),
    ("flush timeout None", lambda b, s: b.flush(None), TypeError, "timeout must be a number of seconds"),
    ("rtt timeout", lambda b, s: b.rtt(-1), ValueError, "timeout must be a finite number"),
    ("drain timeout", lambda b, s: b.drain(0), ValueError, "timeout must be a finite number"),
    ("drain timeout str", lambda b, s: b.drain("10"), TypeError, "timeout must be a number of seconds"),
    # Subscription
    (
        "next_msg timeout <0",
        lambda b, s: s.next_msg(-1),
        ValueError,
        "timeout must be a finite number of seconds >= 0",
    ),
    (
        "next_msg timeout str",
        lambda b, s: s.next_msg("1"),
        TypeError,
        "timeout must be a number of seconds or None",
    ),
    ("next_msg timeout nan", lambda b, s: s.next_msg(math.nan), ValueError, "timeout must be a finite"),
    ("next_msgs max 0", lambda b, s: s.next_msgs(0), ValueError, "max_msgs must be at least 1, not 0"),
    ("next_msgs max str", lambda b, s: s.next_msgs("5"), TypeError, "max_msgs must be an int"),
    (
        "next_msgs timeout <0",
        lambda b, s: s.next_msgs(5, -1),
        ValueError,
        "timeout must be a finite number of seconds >= 0",
    ),
    (
        "auto_unsubscribe 0",
        lambda b, s: s.auto_unsubscribe(0),
        ValueError,
        "max_msgs must be at least 1, not 0",
    ),
    ("auto_unsubscribe bool", lambda b, s: s.auto_unsubscribe(True), TypeError, "max_msgs must be an int"),
    ("auto_unsubscribe float", lambda b, s: s.auto_unsubscribe(2.5), TypeError, "max_msgs must be an int"),
    (
        "sub.drain timeout 0",
        lambda b, s: s.drain(0),
        ValueError,
        "timeout must be a finite number of seconds > 0",
    ),
    (
        "sub.drain timeout str",
        lambda b, s: s.drain("1"),
        TypeError,
        "timeout must be a number of seconds or None",
    ),
    # Message.respond
    (
        "respond headers",
        lambda b, s: Message("q", b"", "reply.to", None, s).respond(b"", headers=["k"]),
        TypeError,
        "headers must be a mapping",
    ),
    (
        "respond codec",
        lambda b, s: Message("q", b"", "reply.to", None, s).respond(1, codec="yaml"),
        ValueError,
        "codec: unknown codec",
    ),
]


def _server_counts(srv: NatsServer) -> Tuple[int, int]:
    varz = srv.monitor("varz")
    return varz["in_msgs"], varz["subscriptions"]


@pytest.mark.parametrize(("what", "call", "kind", "fragment"), METHOD_RULES, ids=[r[0] for r in METHOD_RULES])
def test_bad_method_argument_fails_at_once_and_sends_nothing(
    shared_server: NatsServer, what: str, call: Call, kind: type, fragment: str
) -> None:
    with ts.connect(shared_server.url) as bus:
        sub = bus.subscribe("pull.here")
        bus.flush()
        before = _server_counts(shared_server), bus.stats.out_msgs, bus.subscriptions, len(bus.threads)
        with pytest.raises(kind) as info:
            call(bus, sub)
        assert fragment in str(info.value)
        if kind is TypeError:  # the exact type: not a ValueError subclass that happens to match
            assert not isinstance(info.value, ValueError)
        assert not bus.is_closed, "a refused call must leave the bus as it was (drain closes it)"
        assert sub.is_valid
        bus.flush()
        after = _server_counts(shared_server), bus.stats.out_msgs, bus.subscriptions, len(bus.threads)
        assert after == before, "something was sent or created before the argument was checked"


@pytest.mark.parametrize(
    ("timeout", "kind"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (None, TypeError),
        (True, TypeError),
        ("1", TypeError),
    ],
)
def test_request_checks_its_timeout_on_a_subject_in_steady_use(
    shared_server: NatsServer, timeout: Any, kind: type
) -> None:
    """request() skips the subject check for subjects it has sent to before: the timeout is
    still checked, before anything is sent."""
    with ts.connect(shared_server.url) as bus:
        for _ in range(3):
            bus.publish("steady.subject", b"")
        bus.flush()
        sent = bus.stats.out_msgs
        with pytest.raises(kind, match="timeout") as info:
            bus.request("steady.subject", timeout=timeout)
        if kind is TypeError:
            assert not isinstance(info.value, ValueError)
        assert bus.stats.out_msgs == sent


GOOD_CALLS: List[Tuple[str, Call]] = [
    ("subscribe unlimited", lambda b, s: b.subscribe("x", pending_msgs_limit=-1, pending_bytes_limit=-1)),
    (
        "subscribe all options",
        lambda b, s: b.subscribe("x.>", print, queue="q", codec="json", schema=dict, max_msgs=1),
    ),
    ("subscribe codec object", lambda b, s: b.subscribe("x", codec=ts.CBORCodec())),
    ("publish header list", lambda b, s: b.publish("x", b"", headers={"k": ["a", "b"]}, reply="r.1")),
    ("publish codec None", lambda b, s: b.publish("x", {"a": 1}, codec=None, headers={})),
    ("request_many int timeout", lambda b, s: b.request_many("nobody", timeout=1, max_msgs=None)),
    ("reply callable object", lambda b, s: b.reply("svc", ErrorLog(), queue="q")),
    ("flush int", lambda b, s: b.flush(1)),
    ("rtt float", lambda b, s: b.rtt(2.5)),
    ("auto_unsubscribe", lambda b, s: s.auto_unsubscribe(3)),
    ("sub.drain None", lambda b, s: s.drain(None)),
]


@pytest.mark.parametrize(("what", "call"), GOOD_CALLS, ids=[r[0] for r in GOOD_CALLS])
def test_good_method_arguments_are_accepted(shared_server: NatsServer, what: str, call: Call) -> None:
    with ts.connect(shared_server.url) as bus:
        sub = bus.subscribe("pull.here")
        call(bus, sub)
        bus.flush()


def test_next_msg_timeout_zero_polls_and_none_waits(bus: ts.MessageBus) -> None:
    sub = bus.subscribe("poll")
    with pytest.raises(ts.TimeoutError):
        sub.next_msg(0)
    bus.publish("poll", b"1")
    bus.flush()
    wait_until(lambda: sub.pending == 1, what="the message to be queued")
    assert sub.next_msg(0).payload == b"1"
    bus.publish("poll", b"2")
    assert sub.next_msg(None).payload == b"2"


# --- pending limits: negative = unlimited, nothing dropped ---------------------------------------


def test_negative_pending_limit_receives_more_than_the_default_allows(server: NatsServer) -> None:
    """With a bus default of 10 messages, a subscription with -1 takes all 1000; one with the
    default drops exactly the rest (before: -1 dropped every message)."""
    errors = ErrorLog()
    with ts.connect(server.url, pending_msgs_limit=10, on_error=errors) as bus:
        limited = bus.subscribe("flood")
        unlimited = bus.subscribe("flood", pending_msgs_limit=-1)
        assert unlimited.pending_msgs_limit == UNLIMITED
        for i in range(1000):
            bus.publish("flood", b"%d" % i)
        bus.flush()
        wait_until(lambda: unlimited.pending == 1000, what="all 1000 messages to be queued")
        assert unlimited.dropped == 0
        assert [int(unlimited.next_msg(0).payload) for _ in range(1000)] == list(range(1000))
        assert limited.pending == 10 and limited.dropped == 990
        assert errors.wait(ts.SlowConsumerError).subject == "flood"
        assert all(e.sid == limited.sid for e in errors.of(ts.SlowConsumerError))


def test_negative_pending_bytes_limit_is_unlimited(server: NatsServer) -> None:
    with ts.connect(server.url, pending_bytes_limit=100) as bus:
        limited = bus.subscribe("bytes")
        unlimited = bus.subscribe("bytes", pending_bytes_limit=-1)
        for _ in range(200):
            bus.publish("bytes", b"x" * 16)
        bus.flush()
        wait_until(lambda: unlimited.pending == 200, what="all 200 messages to be queued")
        assert unlimited.dropped == 0 and unlimited.pending_bytes == 3200
        assert limited.pending == 6 and limited.dropped == 194


def test_negative_bus_default_makes_every_subscription_unlimited(server: NatsServer) -> None:
    """A callback blocked on a gate: nothing is dropped while 2000 messages wait for it."""
    gate = threading.Event()
    got: List[bytes] = []
    done = threading.Event()

    def slow(msg: ts.Message) -> None:
        gate.wait(10)
        got.append(msg.payload)
        if len(got) == 2000:
            done.set()

    with ts.connect(server.url, pending_msgs_limit=-1, pending_bytes_limit=-1) as bus:
        sub = bus.subscribe("cb", slow)
        for i in range(2000):
            bus.publish("cb", b"%d" % i)
        bus.flush()
        wait_until(lambda: sub.pending >= 1999, what="the messages to queue behind the callback")
        gate.set()
        assert done.wait(10)
        assert sub.dropped == 0 and [int(p) for p in got] == list(range(2000))


# --- Telestion services and configuration: ConfigError before anything is done -------------------


def _service_env(url: str, tmp_path: pathlib.Path) -> Dict[str, str]:
    return {"NATS_URL": url, "SERVICE_NAME": "checked", "DATA_DIR": str(tmp_path / "data")}


SERVICE_RULES: List[Tuple[Dict[str, Any], type, str]] = [
    (
        {"argv": "--dev"},
        ts.ConfigError,
        "argv must be a list of str or None, not str (split the command line",
    ),
    ({"argv": ["--dev", 1]}, ts.ConfigError, "every item of argv must be a str, not int"),
    ({"env": [("A", "b")]}, ts.ConfigError, "env must be a mapping (dict) or None, not list"),
    ({"overrides": "DATA_DIR=x"}, ts.ConfigError, "overrides must be a mapping (dict) or None, not str"),
    ({"nats": "yes"}, ts.ConfigError, "nats must be True or False, not str"),
    ({"description": 5}, ts.ConfigError, "description must be a str, not int"),
    ({"version": "1"}, ts.ConfigError, "version '1' is not a semantic version"),
    ({"connect_timeout": 0}, ts.ConfigError, "connect_timeout must be a finite number of seconds > 0"),
    ({"on_error": "print"}, ts.ConfigError, "on_error must be callable or None, not str"),
    ({"tls": {"ca_file": "x"}}, ts.ConfigError, "tls must be a bool or an ssl.SSLContext"),
    ({"pending_msgs_limit": 0}, ts.ConfigError, "pending_msgs_limit must not be 0"),
    ({"conect_timeout": 1}, TypeError, "start_service() got an unexpected keyword argument 'conect_timeout'"),
    ({"servers": "nats://x"}, TypeError, "start_service() got an unexpected keyword argument 'servers'"),
]


@pytest.mark.parametrize(("kwargs", "kind", "fragment"), SERVICE_RULES, ids=lambda v: repr(v)[:30])
def test_bad_start_service_argument_fails_before_anything_is_done(
    probe: Probe, tmp_path: pathlib.Path, kwargs: Dict[str, Any], kind: type, fragment: str
) -> None:
    args: Dict[str, Any] = {"argv": [], "env": _service_env(probe.url, tmp_path), **kwargs}
    with pytest.raises(kind) as info:
        ts.start_service(**args).close()
    assert fragment in str(info.value)
    assert not (tmp_path / "data").exists(), "DATA_DIR was made before the arguments were checked"
    assert probe.untouched()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"argv": "--dev"}, "argv must be a list of str or None, not str"),
        ({"argv": [b"--dev"]}, "every item of argv must be a str, not bytes"),
        ({"env": 5}, "env must be a mapping (dict) or None, not int"),
        ({"overrides": [("dev", "true")]}, "overrides must be a mapping (dict) or None, not list"),
    ],
)
def test_bad_load_config_argument(kwargs: Dict[str, Any], fragment: str) -> None:
    args: Dict[str, Any] = {"argv": [], "env": {}, **kwargs}
    with pytest.raises(ts.ConfigError) as info:
        ts.load_config(**args)
    assert fragment in str(info.value)


@pytest.fixture
def service(server: NatsServer, tmp_path: pathlib.Path) -> Iterator[ts.Service]:
    with ts.start_service(argv=[], env=_service_env(server.url, tmp_path)) as svc:
        yield svc


SvcCall = Callable[[ts.Service], Any]
SERVICE_METHOD_RULES: List[Tuple[str, SvcCall, type, str]] = [
    ("endpoint subject", lambda s: s.endpoint("a b", print), ts.BadSubjectError, "contains whitespace"),
    (
        "endpoint handler",
        lambda s: s.endpoint("svc.x", "echo"),
        TypeError,
        "handler must be callable, not str",
    ),
    (
        "endpoint queue empty",
        lambda s: s.endpoint("svc.x", print, queue=""),
        ts.BadSubjectError,
        "queue group",
    ),
    (
        "endpoint name",
        lambda s: s.endpoint("svc.x", print, name="a.b"),
        ts.ConfigError,
        "endpoint name 'a.b'",
    ),
    ("close drain", lambda s: s.close(drain="no"), TypeError, "drain must be True or False, not str"),
    ("discover bus", lambda s: ts.discover_services(s), TypeError, "bus must be a MessageBus, not Service"),
    ("discover timeout", lambda s: ts.discover_services(s.bus, 0), ValueError, "timeout must be a finite"),
    (
        "discover max",
        lambda s: ts.discover_services(s.bus, max_services=0),
        ValueError,
        "max_services must be at least 1",
    ),
    (
        "Service description",
        lambda s: ts.Service(s.config, None, s._errors, description=None),
        ts.ConfigError,
        "description must be a str, not NoneType",
    ),
    ("Service config", lambda s: ts.Service([], None, s._errors), ts.ConfigError, "config must be a mapping"),
    (
        "Service data_dir",
        lambda s: ts.Service(s.config, None, s._errors, data_dir=5),
        ts.ConfigError,
        "data_dir must be a file path",
    ),
]


@pytest.mark.parametrize(
    ("what", "call", "kind", "fragment"), SERVICE_METHOD_RULES, ids=[r[0] for r in SERVICE_METHOD_RULES]
)
def test_bad_service_argument_fails_at_once(
    service: ts.Service, what: str, call: SvcCall, kind: type, fragment: str
) -> None:
    subs = len(service.bus.subscriptions)
    with pytest.raises(kind) as info:
        call(service)
    assert fragment in str(info.value)
    assert len(service.bus.subscriptions) == subs and service.bus.is_connected


# --- the command line: a usage error (exit 2) or one line (exit 1), never a traceback -------------


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["request", "svc", "--timeout", "0"], 2, "must be a positive number of seconds, not 0"),
        (["request", "svc", "--timeout", "inf"], 2, "must be a positive number of seconds"),
        (["pub", "x", "--count", "0"], 2, "must be at least 1, not 0"),
        (["sub", "x", "--connect-timeout", "-1"], 2, "must be a positive number of seconds"),
        (["server", "--port", "70000"], 2, "a port is 0-65535"),
        (["pub", "x", "-s", "http://127.0.0.1:4222"], 1, "ConfigError: servers: server URL"),
        (["pub", "a b", "{}", "-s", "{url}"], 1, "BadSubjectError: subject 'a b' contains whitespace"),
        (["pub", "x", "-H", "novalue", "-s", "{url}"], 1, "--header wants KEY:VALUE"),
        (["sub", "x", "--queue", "", "-s", "{url}"], 1, "BadSubjectError: queue group"),
    ],
)
def test_bad_cli_arguments(
    shared_server: NatsServer, capsys: pytest.CaptureFixture[str], argv: List[str], code: int, fragment: str
) -> None:
    argv = [a.replace("{url}", shared_server.url) for a in argv]
    result: Optional[int] = None
    try:
        result = cli.main(argv)
    except SystemExit as exc:  # argparse's usage error
        result = int(exc.code or 0)
    err = capsys.readouterr().err
    assert result == code
    assert fragment in err
    assert "Traceback" not in err
