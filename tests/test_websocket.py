"""The WebSocket transport (ws://, wss://) against real nats-servers with a ``websocket {}`` block:
messages, headers, 1 MiB payloads, auth, TLS and mutual TLS, reconnects, cluster discovery, lame
duck, compression, a proxy that re-frames the server's bytes, and the errors of a wrong port or a
refused upgrade. Plus the transport's own promises: address-by-address connects within one
timeout, and a reader that a stalled send side does not block.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

import telestion_sync as ts
from telestion_sync.pool import parse_server
from telestion_sync.server import NatsCluster, NatsServer, free_port
from telestion_sync.websocket import WebSocketStream

from . import authgen
from .conftest import clean_env, wait_until
from .test_cli import run
from .tlsutil import TLSFiles, connection_named
from .wsproxy import HTTPRefuser, ReframingProxy, SilentPort, SlowGreeter

pytestmark = pytest.mark.timeout(30)

FAST = dict(reconnect_time_wait=0.05, reconnect_jitter=0.01, max_reconnect_attempts=-1)
AT_ONCE = 1.0  # seconds: a wrong port or a refused upgrade must not wait for the connect timeout
PASSWORD = "s3cret"
TOKEN = "t0ken-for-ws"
MIB = 1024 * 1024


def ws_server(**options: Any) -> NatsServer:
    """A (not yet started) nats-server with a plain WebSocket port and a monitoring port."""
    options.setdefault("monitor_port", free_port())
    return NatsServer(websocket_port=free_port(), **options)


def unique(prefix: str = "ws") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_round_trip(bus: ts.MessageBus) -> None:
    """Publish/subscribe (with headers) and request/reply work on ``bus``."""
    subject = unique("rt")
    pull = bus.subscribe(subject)
    bus.reply(subject + ".add", lambda msg: msg.data["a"] + msg.data["b"])
    bus.flush()
    bus.publish(subject, {"over": "ws"}, headers={"Trace": "1"})
    msg = pull.next_msg(timeout=5)
    assert msg.data == {"over": "ws"}
    assert msg.headers["Trace"] == "1"
    assert bus.request(subject + ".add", {"a": 2, "b": 3}, timeout=5).data == 5


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    """One nats-server with a plain ws:// port for the tests that only need messages to flow."""
    with ws_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles(str(tmp_path_factory.mktemp("ws-tls")))


# --- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, scheme, port, path, shown",
    [
        ("ws://example.org", "ws", 80, "/", "ws://example.org:80"),
        ("wss://example.org", "wss", 443, "/", "wss://example.org:443"),
        ("ws://example.org:9222", "ws", 9222, "/", "ws://example.org:9222"),
        ("WSS://u:p@example.org/nats?x=1", "wss", 443, "/nats?x=1", "wss://example.org:443/nats?x=1"),
        ("ws://[::1]:9222/", "ws", 9222, "/", "ws://[::1]:9222"),
    ],
)
def test_ws_urls_parse_with_http_default_ports_and_keep_the_path(
    url: str, scheme: str, port: int, path: str, shown: str
) -> None:
    addr = parse_server(url)
    assert (addr.scheme, addr.port, addr.path, addr.url) == (scheme, port, path, shown)


def test_a_bad_scheme_names_the_ones_allowed() -> None:
    with pytest.raises(ValueError, match=r"nats://, tls://, ws:// or wss://, not http://"):
        ts.connect("http://127.0.0.1:1")


def test_ws_compression_must_be_a_bool() -> None:
    with pytest.raises(ts.ConfigError, match="ws_compression must be True or False"):
        ts.connect("ws://127.0.0.1:1", ws_compression="yes")  # type: ignore[arg-type]


# --- messages -------------------------------------------------------------------------------


def test_pub_sub_request_and_headers_over_ws(server: NatsServer) -> None:
    name = unique()
    with ts.connect(server.websocket_url, name=name) as bus:
        assert bus.connected_url == server.websocket_url
        assert bus.transport["scheme"] == "ws"
        assert_round_trip(bus)
        # a plain TCP client on the same server sees the same subjects
        with ts.connect(server.url) as tcp:
            sub = tcp.subscribe("mixed")
            tcp.flush()
            for i in range(100):
                bus.publish("mixed", i)
            assert [sub.next_msg(timeout=5).data for _ in range(100)] == list(range(100))
        assert bus.stats.out_msgs >= 100
        assert connection_named(server, name)["name"] == name


def test_a_1_mib_message_each_way_and_as_a_request(server: NatsServer) -> None:
    payload = os.urandom(MIB - 1024)  # within max_payload with the headers of a request
    with ts.connect(server.websocket_url) as bus:
        assert bus.max_payload == MIB
        pull = bus.subscribe("big")
        bus.reply("big.echo", lambda msg: msg.payload)
        bus.flush()
        bus.publish("big", payload)
        assert pull.next_msg(timeout=10).payload == payload
        assert bus.request("big.echo", payload, timeout=10).payload == payload
        with pytest.raises(ts.MaxPayloadError):
            bus.publish("big", b"x" * (MIB + 1))


def test_many_small_messages_in_order(server: NatsServer) -> None:
    with ts.connect(server.websocket_url) as bus:
        got: List[int] = []
        done = threading.Event()

        def on_msg(msg: ts.Message) -> None:
            got.append(int(msg.payload))
            if len(got) == 20_000:
                done.set()

        bus.subscribe("small", on_msg)
        bus.flush()
        for i in range(20_000):
            bus.publish("small", b"%d" % i)
        assert done.wait(20)
        assert got == list(range(20_000))


# --- compression ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressing_server() -> Iterator[NatsServer]:
    with ws_server(websocket_compression=True) as srv:
        yield srv


def test_compression_is_offered_by_default_and_used_when_the_server_has_it(
    compressing_server: NatsServer, server: NatsServer
) -> None:
    with ts.connect(compressing_server.websocket_url) as bus:
        assert bus.transport == {"scheme": "ws", "ws_compression": True}
        assert_round_trip(bus)
        text = b"telemetry " * (MIB // 10)  # compresses well (and inflates past max_payload)
        random_ = os.urandom(200_000)  # does not
        pull = bus.subscribe("z")
        bus.flush()
        full = b"a" * MIB  # a payload of exactly max_payload
        bus.publish("z", text)
        bus.publish("z", random_)
        bus.publish("z", full)
        assert pull.next_msg(timeout=10).payload == text
        assert pull.next_msg(timeout=10).payload == random_
        assert pull.next_msg(timeout=10).payload == full
    with ts.connect(compressing_server.websocket_url, ws_compression=False) as bus:
        assert bus.transport == {"scheme": "ws", "ws_compression": False}
        assert_round_trip(bus)
    with ts.connect(server.websocket_url) as bus:  # offered, but this server does not compress
        assert bus.transport == {"scheme": "ws", "ws_compression": False}


# --- auth -----------------------------------------------------------------------------------


def _auth_case(kind: str, tmp_path: Path) -> Tuple[str, Any, Any]:
    """(server config, connect options, url credentials) for one kind of auth."""
    if kind == "user":
        return (
            "authorization { user: alice, password: " + PASSWORD + " }",
            dict(user="alice", password=PASSWORD),
            "",
        )
    if kind == "url-user":
        return "authorization { user: alice, password: " + PASSWORD + " }", {}, f"alice:{PASSWORD}@"
    if kind == "token":
        return authgen.token_config(TOKEN), dict(token=TOKEN), ""
    if kind == "nkey":
        key = authgen.new_user_key()
        return authgen.nkey_config(key.public), dict(nkey_seed=key.seed), ""
    op = authgen.OperatorSetup()
    creds = op.user("ws-user").write_creds(str(tmp_path / "user.creds"))
    return op.config(), dict(creds=creds), ""


@pytest.mark.parametrize("kind", ["user", "url-user", "token", "nkey", "creds"])
def test_auth_over_ws(kind: str, tmp_path: Path) -> None:
    config, options, userinfo = _auth_case(kind, tmp_path)
    with ws_server(config=config) as srv:
        url = f"ws://{userinfo}127.0.0.1:{srv.websocket_port}"
        with ts.connect(url, **options) as bus:
            assert_round_trip(bus)
        started = time.monotonic()
        with pytest.raises(ts.AuthenticationError):
            ts.connect(srv.websocket_url, connect_timeout=5)
        assert time.monotonic() - started < AT_ONCE


# --- TLS ------------------------------------------------------------------------------------


def test_wss_with_a_trusted_certificate(tls_files: TLSFiles) -> None:
    with ws_server(websocket_tls=tls_files.server_config()) as srv:
        assert srv.websocket_url and srv.websocket_url.startswith("wss://")
        with ts.connect(srv.websocket_url, tls_ca_file=tls_files.ca_file) as bus:
            assert bus.transport["scheme"] == "wss"
            assert_round_trip(bus)
        with ts.connect(f"wss://localhost:{srv.websocket_port}", tls=tls_files.client_context()) as bus:
            assert_round_trip(bus)
        with pytest.raises(ts.TLSError, match="not trusted"):
            ts.connect(srv.websocket_url, tls_ca_file=tls_files.wrong_ca_file)


def test_wss_with_mutual_tls(tls_files: TLSFiles) -> None:
    with ws_server(websocket_tls=tls_files.server_config(verify=True)) as srv:
        options = dict(tls_ca_file=tls_files.ca_file)
        with ts.connect(
            srv.websocket_url,
            tls_cert_file=tls_files.client_cert,
            tls_key_file=tls_files.client_key,
            **options,
        ) as bus:
            assert_round_trip(bus)
        started = time.monotonic()
        with pytest.raises(ts.TLSError, match="client certificate"):
            ts.connect(srv.websocket_url, connect_timeout=5, **options)
        assert time.monotonic() - started < AT_ONCE


# --- reconnects, cluster, lame duck ---------------------------------------------------------


def test_reconnect_after_kill_and_restart() -> None:
    reconnected = threading.Event()
    lost = threading.Event()
    with ws_server() as srv:
        with ts.connect(
            srv.websocket_url, on_disconnect=lost.set, on_reconnect=reconnected.set, **FAST
        ) as bus:
            pull = bus.subscribe("after")
            bus.flush()
            srv.kill()
            # Once the client has seen the outage the publish waits in the reconnect buffer (a
            # publish into the dead socket before that is lost, as with any NATS client).
            assert lost.wait(10)
            bus.publish("after", b"buffered while down")
            srv.restart()
            assert reconnected.wait(10)
            assert bus.connected_url == srv.websocket_url
            bus.publish("after", b"sent after")
            assert pull.next_msg(timeout=5).payload == b"buffered while down"
            assert pull.next_msg(timeout=5).payload == b"sent after"
            assert bus.stats.reconnects == 1


def test_cluster_announces_ws_urls_and_the_client_fails_over_to_one() -> None:
    with NatsCluster(3, websocket=True) as cluster:
        first, others = cluster.websocket_urls[0], cluster.websocket_urls[1:]
        reconnected = threading.Event()
        with ts.connect(first, randomize=False, on_reconnect=reconnected.set, **FAST) as bus:
            wait_until(lambda: sorted(bus.discovered_servers) == sorted(others), what="ws URLs discovered")
            assert all(url.startswith("ws://") for url in bus.servers)
            pull = bus.subscribe("fail.over")
            bus.flush()
            cluster.node_for(first).kill()
            assert reconnected.wait(10)
            assert bus.connected_url in others
            with ts.connect(cluster.urls[1]) as tcp:  # routed to the node the client is on now
                wait_until(lambda: tcp.publish("fail.over", b"1") or pull.pending > 0, what="delivery")
            assert pull.next_msg(timeout=5).payload == b"1"


def test_lame_duck_over_ws_moves_to_the_other_server() -> None:
    config = 'lame_duck_duration: "30s"\nlame_duck_grace_period: "10s"'
    lame = threading.Event()
    reconnected = threading.Event()
    with ws_server(config=config) as a, ws_server() as b:
        with ts.connect(
            [a.websocket_url, b.websocket_url],
            randomize=False,
            on_lame_duck=lame.set,
            on_reconnect=reconnected.set,
            **FAST,
        ) as bus:
            assert bus.connected_url == a.websocket_url
            a.signal("ldm")
            assert lame.wait(10)
            assert reconnected.wait(10)
            assert bus.connected_url == b.websocket_url
            assert_round_trip(bus)
        a.kill()  # no need to sit out the lame-duck period


# --- frames as a proxy cuts and packs them --------------------------------------------------


def test_split_and_packed_frames_and_server_pings_through_a_reframing_proxy(server: NatsServer) -> None:
    assert server.websocket_port is not None
    proxy = ReframingProxy(server.websocket_port)
    try:
        with ts.connect(proxy.url) as bus:
            pull = bus.subscribe("reframed")
            bus.reply("reframed.echo", lambda msg: msg.data)
            bus.flush()
            for i in range(300):
                bus.publish("reframed", {"i": i, "pad": "x" * (i % 50)}, headers={"N": str(i)})
                if i % 30 == 0:
                    bus.flush()  # several batches, so both framings are used
            got = [pull.next_msg(timeout=10) for _ in range(300)]
            assert [m.data["i"] for m in got] == list(range(300))
            assert [m.headers["N"] for m in got] == [str(i) for i in range(300)]
            for i in range(5):
                assert bus.request("reframed.echo", {"q": i}, timeout=5).data == {"q": i}
            assert proxy.split_frames > 1000 and proxy.packed_frames > 5
            wait_until(lambda: proxy.pongs == proxy.pings, what="a PONG for every PING")
            assert proxy.pings > 10
    finally:
        proxy.close()


# --- errors ---------------------------------------------------------------------------------


def test_ws_url_to_a_plain_nats_port_fails_at_once_saying_so(server: NatsServer) -> None:
    started = time.monotonic()
    with pytest.raises(ts.WebSocketError, match=r"plain NATS port .*nats://") as info:
        ts.connect(f"ws://127.0.0.1:{server.port}", connect_timeout=5)
    assert time.monotonic() - started < AT_ONCE
    assert info.value.status is None


# --- the HTTP probe: a nats:// URL to a WebSocket port -------------------------------------------


def test_nats_url_to_a_websocket_port_fails_at_once_saying_to_use_ws(server: NatsServer) -> None:
    """A WebSocket port says nothing to a NATS client; the HTTP probe it then gets is answered
    with HTTP (nats-server: ``HTTP/1.1 400 Bad Request``), which names the cause and the fix."""
    for url in (f"nats://127.0.0.1:{server.websocket_port}", f"127.0.0.1:{server.websocket_port}"):
        started = time.monotonic()
        with pytest.raises(ts.WebSocketError, match=r"answered with HTTP \(HTTP/1.1 400 Bad") as info:
            ts.connect(url, connect_timeout=5)
        assert time.monotonic() - started < 2.0
        assert "looks like a WebSocket/HTTP port; use a ws:// URL" in str(info.value)
        assert info.value.status is None and not info.value.retryable


def test_nats_url_to_a_wss_port_says_to_use_wss(tls_files: TLSFiles) -> None:
    """A WebSocket port with TLS answers the plain probe as Go's HTTPS servers do."""
    with ws_server(websocket_tls=tls_files.server_config()) as srv:
        started = time.monotonic()
        with pytest.raises(ts.WebSocketError, match=r"HTTP/1.0 400 Bad Request.*use a wss:// URL"):
            ts.connect(f"nats://127.0.0.1:{srv.websocket_port}", connect_timeout=5)
        assert time.monotonic() - started < 2.0


def test_nats_url_to_a_nats_port_sends_no_probe(server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="telestion_sync.connection")
    with ts.connect(server.url, connect_timeout=5) as bus:
        assert_round_trip(bus)
    assert "HTTP probe" not in caplog.text


def test_a_silent_port_still_times_out_after_connect_timeout() -> None:
    """A peer that never says a word gets the probe once, then the connect timeout as before
    (no second attempt: silence is no answer that a slow NATS server could have given)."""
    silent = SilentPort()
    try:
        started = time.monotonic()
        with pytest.raises(ts.NoServersError, match=r"no INFO within 1.0 s.*nor did it answer") as info:
            ts.connect(f"nats://127.0.0.1:{silent.port}", connect_timeout=1.0)
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 1.9
        assert isinstance(info.value.__cause__, ts.TimeoutError)
        assert silent.received.get(timeout=5).startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:")
        assert silent.accepted == 1
    finally:
        silent.close()


@pytest.mark.parametrize("how", ["tls-url", "handshake-first"])
def test_no_probe_where_tls_is_asked_for(how: str) -> None:
    """TLS connections never get the plaintext probe: they time out as before."""
    silent = SilentPort()
    url = f"127.0.0.1:{silent.port}"
    options: dict[str, Any] = {"connect_timeout": 1.0}
    if how == "tls-url":
        url = "tls://" + url
    else:
        options["tls_handshake_first"] = True
    try:
        started = time.monotonic()
        with pytest.raises(ts.NoServersError):
            ts.connect(url, **options)
        assert time.monotonic() - started >= 1.0
        sent = silent.received.get(timeout=5)
        assert b"GET " not in sent and b"HTTP/1.1" not in sent
        if how == "handshake-first":
            assert sent[:1] == b"\x16"  # a TLS handshake record: the ClientHello
    finally:
        silent.close()


def test_http_probe_false_waits_for_the_timeout_and_says_to_use_ws(server: NatsServer) -> None:
    with pytest.raises(ts.NoServersError, match=r"sent no INFO within 0.5 s.*WebSocket port.*ws://"):
        ts.connect(f"nats://127.0.0.1:{server.websocket_port}", connect_timeout=0.5, http_probe=False)


def test_a_slow_nats_server_is_connected_to_again_without_the_probe(server: NatsServer) -> None:
    """A NATS server whose INFO comes after the probe rejects the probe; the client connects
    once more at once, without one, and never probes that server again (reconnects included)."""
    slow = SlowGreeter(server.port, delay=1.0)  # the probe goes after 0.25 s
    reconnected = threading.Event()
    try:
        started = time.monotonic()
        with ts.connect(slow.url, connect_timeout=4, on_reconnect=reconnected.set, **FAST) as bus:
            assert time.monotonic() - started < 4.0
            assert_round_trip(bus)
            first = list(slow.first_sent)
            assert len(first) == 2
            assert first[0].startswith(b"GET / HTTP/1.1\r\n")  # nats-server answered -ERR, closed
            assert first[1].startswith(b"CONNECT {")
            slow.drop()
            assert reconnected.wait(10)
            assert slow.first_sent[2].startswith(b"CONNECT {")  # known to speak NATS: no probe
            assert_round_trip(bus)
    finally:
        slow.close()


def test_a_tls_first_server_to_a_plain_url_fails_as_before(tls_files: TLSFiles) -> None:
    """A TLS-first server closes on the probe: no HTTP, so the attempt is made again without
    it, and fails as it did before the probe existed (naming tls_handshake_first)."""
    with tls_files.nats_server(handshake_first=True) as srv:
        with pytest.raises(ts.NoServersError, match=r"sent no INFO within 1.0 s \(if it expects TLS first"):
            ts.connect(srv.url, connect_timeout=1.0)


def test_nats_url_to_a_port_that_answers_http_fails_at_once() -> None:
    """A port that speaks first with HTTP (as some proxies do) is recognised at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def greet() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.settimeout(5)
            conn.recv(10)

    t = threading.Thread(target=greet, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        with pytest.raises(ts.WebSocketError, match="answered with HTTP.*ws://"):
            ts.connect(f"nats://127.0.0.1:{port}", connect_timeout=5)
        assert time.monotonic() - started < AT_ONCE
    finally:
        t.join(5)
        listener.close()


@pytest.mark.parametrize("status, reason", [(401, "Unauthorized"), (403, "Forbidden"), (404, "Not Found")])
def test_an_http_error_on_upgrade_is_reported_with_its_status(status: int, reason: str) -> None:
    refuser = HTTPRefuser(status, reason)
    try:
        started = time.monotonic()
        with pytest.raises(ts.WebSocketError, match=f"HTTP {status} {reason}: {reason}: go away") as info:
            ts.connect(refuser.url + "/nats", connect_timeout=5)
        assert time.monotonic() - started < AT_ONCE
        assert info.value.status == status
        assert refuser.requests[0].startswith(b"GET /nats HTTP/1.1\r\n")
    finally:
        refuser.close()


def test_a_server_error_on_upgrade_lets_the_next_server_be_tried(server: NatsServer) -> None:
    refuser = HTTPRefuser(503, "Service Unavailable")
    try:
        with ts.connect([refuser.url, server.websocket_url], randomize=False) as bus:
            assert bus.connected_url == server.websocket_url
        with pytest.raises(ts.NoServersError, match="HTTP 503") as info:
            ts.connect(refuser.url)
        assert isinstance(info.value.__cause__, ts.WebSocketError)
        assert info.value.__cause__.status == 503
    finally:
        refuser.close()


# --- several addresses, one connect timeout (every transport) -------------------------------


class Blackhole:
    """A listening socket whose backlog is full: connects to it hang (SYNs are dropped)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=1)

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Any:
    """fake_dns(name, [(ip, port), ...]): getaddrinfo answers ``name`` with these addresses."""
    real = socket.getaddrinfo

    def install(name: str, addrs: List[Tuple[str, int]]) -> None:
        def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host != name:
                return real(host, port, *args, **kwargs)
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (ip, p, 0, 0) if ":" in ip else (ip, p),
                )
                for ip, p in addrs
            ]

        monkeypatch.setattr(socket, "getaddrinfo", fake)

    return install


@pytest.mark.parametrize("scheme", ["nats", "ws"])
def test_localhost_is_tried_address_by_address(scheme: str, server: NatsServer, fake_dns: Any) -> None:
    """``localhost`` as ``::1`` then ``127.0.0.1``: the server listens only on the second."""
    port = server.port if scheme == "nats" else server.websocket_port
    assert port is not None
    fake_dns("localhost", [("::1", port), ("127.0.0.1", port)])
    with ts.connect(f"{scheme}://localhost:{port}", connect_timeout=2) as bus:
        assert_round_trip(bus)


@pytest.mark.parametrize("scheme", ["nats", "ws"])
def test_an_address_that_hangs_does_not_use_up_the_connect_timeout(
    scheme: str, server: NatsServer, fake_dns: Any
) -> None:
    port = server.port if scheme == "nats" else server.websocket_port
    assert port is not None
    hole = Blackhole()
    try:
        fake_dns("ground.test", [("127.0.0.1", hole.port), ("127.0.0.1", port)])
        started = time.monotonic()
        with ts.connect(f"{scheme}://ground.test:{port}", connect_timeout=1) as bus:
            assert time.monotonic() - started < 1
            assert_round_trip(bus)
        fake_dns("ground.test", [("127.0.0.1", hole.port), ("127.0.0.1", hole.port)])
        started = time.monotonic()
        with pytest.raises(ts.NoServersError):
            ts.connect(f"{scheme}://ground.test:{port}", connect_timeout=1)
        assert time.monotonic() - started < 1.5  # one timeout for all addresses, not one each
    finally:
        hole.close()


# --- NATS_URL and the CLI -------------------------------------------------------------------


def test_start_service_with_a_ws_nats_url(server: NatsServer, tmp_path: Path) -> None:
    env = {"NATS_URL": server.websocket_url or "", "SERVICE_NAME": "ws-svc", "DATA_DIR": str(tmp_path)}
    service = ts.start_service(env=env, argv=[])
    try:
        assert service.bus.connected_url == server.websocket_url
        with ts.connect(server.url) as tcp:
            replies = ts.discover_services(tcp, timeout=0.5)
        assert [r["name"] for r in replies] == ["ws-svc"]
    finally:
        service.close()


def test_cli_with_a_ws_server(server: NatsServer) -> None:
    with ts.connect(server.url) as tcp:
        pull = tcp.subscribe("cli.ws")
        tcp.flush()
        proc = run("pub", "cli.ws", '{"via": "ws"}', "--count", "3", "--server", server.websocket_url or "")
        assert proc.returncode == 0, proc.stderr
        assert [pull.next_msg(timeout=5).data for _ in range(3)] == [{"via": "ws"}] * 3
    proc = run("pub", "cli.ws", '"x"', url=server.websocket_url)  # NATS_URL=ws://...
    assert proc.returncode == 0, proc.stderr


def test_the_readme_websocket_example_runs() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (code,) = re.findall(r"```py\n(.*?)```", readme, flags=re.S)
    with ws_server(user="nats", password="nats") as srv:
        code = code.replace("groundstation:9222", f"127.0.0.1:{srv.websocket_port}")
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, env=clean_env()
        )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


# --- the stream itself ----------------------------------------------------------------------


def _server_side_handshake(sock: socket.socket) -> ServerProtocol:
    proto = ServerProtocol(max_size=None)
    while True:
        proto.receive_data(sock.recv(65536))
        reqs = [e for e in proto.events_received() if isinstance(e, Request)]
        if reqs:
            break
    proto.send_response(proto.accept(reqs[0]))
    for chunk in proto.data_to_send():
        sock.sendall(chunk)
    return proto


def test_the_reader_is_not_blocked_by_a_stalled_send_side() -> None:
    """A writer is stuck in sendall (the peer reads nothing); the peer sends a PING and data:
    the reader gets the data at once, and the PONG follows the writer's data on the wire."""
    client, peer = socket.socketpair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    stream = WebSocketStream(client, "127.0.0.1", 1, compression=False)
    sides: List[ServerProtocol] = []
    t = threading.Thread(target=lambda: sides.append(_server_side_handshake(peer)), daemon=True)
    t.start()
    stream.handshake(time.monotonic() + 5)
    t.join(5)
    proto = sides[0]
    stream.settimeout(10)
    big = b"b" * (8 * MIB)
    sent = threading.Event()
    writer = threading.Thread(target=lambda: (stream.sendall(big), sent.set()), daemon=True)
    writer.start()
    wait_until(lambda: stream._send_lock.locked(), what="the writer inside sendall")
    assert not sent.wait(0.2), "the peer reads nothing, so the writer must be stuck"
    # the server's PING and data, as bytes a server writes (unmasked)
    peer.sendall(
        Frame(Opcode.PING, b"p1").serialize(mask=False)
        + Frame(Opcode.BINARY, b"PONG\r\n").serialize(mask=False)
    )
    started = time.monotonic()
    assert stream.recv(100) == b"PONG\r\n"
    assert time.monotonic() - started < 1
    # now the peer reads: the big message comes first, then the PONG the reader queued
    frames: List[Frame] = []
    peer.settimeout(10)
    while not any(f.opcode is Opcode.PONG for f in frames):
        proto.receive_data(peer.recv(1 << 20))
        frames += [e for e in proto.events_received() if isinstance(e, Frame)]
    assert sent.wait(10)
    assert [f.opcode for f in frames] == [Opcode.BINARY, Opcode.PONG]
    assert len(frames[0].data) == len(big) and frames[1].data == b"p1"
    writer.join(5)
    stream.close()
    peer.close()
