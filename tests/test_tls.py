"""TLS against real nats-servers: server verification, mutual TLS, handshake first, hostname
override, and the errors a misconfigured client gets (at once, never a retry loop).

The certificates come from trustme (a CA per test module, see ``tlsutil.py``); the servers are
real nats-server processes with ``tls {}`` blocks, and the server's own monitoring (``connz``)
shows that a connection really is TLS.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type, Union

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsCluster, NatsServer

from .conftest import join_all
from .proxy import TCPProxy
from .tlsutil import ALIAS_HOSTNAME, TLSFiles, connection_named

pytestmark = pytest.mark.timeout(30)

FAST = dict(reconnect_time_wait=0.05, reconnect_jitter=0.01, max_reconnect_attempts=-1)
AT_ONCE = 2.0  # seconds: a configuration error must not wait for a (5 s) connect timeout
SLOW_CONNECT = 5.0


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A fresh trustme CA (and a second, untrusted one) for this module."""
    return TLSFiles(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def tls_server(tls_files: TLSFiles) -> Iterator[NatsServer]:
    """TLS required; certificate for localhost and 127.0.0.1."""
    with tls_files.nats_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def mtls_server(tls_files: TLSFiles) -> Iterator[NatsServer]:
    """TLS required and a client certificate signed by the test CA (``verify: true``)."""
    with tls_files.nats_server(verify=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def first_server(tls_files: TLSFiles) -> Iterator[NatsServer]:
    """TLS handshake first: the server sends INFO only after the TLS handshake."""
    with tls_files.nats_server(handshake_first=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def alias_server(tls_files: TLSFiles) -> Iterator[NatsServer]:
    """TLS required; its certificate names only ``nats.test`` (no IP, no localhost)."""
    with tls_files.nats_server(alias=True) as srv:
        yield srv


# --- helpers --------------------------------------------------------------------------------


def tls_url(srv: NatsServer, host: str = "127.0.0.1") -> str:
    return f"tls://{host}:{srv.port}"


def unique_name(prefix: str = "tls") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_round_trip(bus: ts.MessageBus) -> None:
    """Publish/subscribe and request/reply work on ``bus``."""
    subject = unique_name("rt")
    pull = bus.subscribe(subject)
    bus.reply(subject + ".add", lambda msg: msg.data["a"] + msg.data["b"])
    bus.flush()
    bus.publish(subject, {"over": "tls"})
    assert pull.next_msg(timeout=5).data == {"over": "tls"}
    assert bus.request(subject + ".add", {"a": 2, "b": 3}, timeout=5).data == 5


def assert_tls_on_server(
    srv: NatsServer, name: str, *, tls_first: bool = False, peer_cn: Optional[str] = None
) -> dict:
    """The server lists the connection named ``name`` as a TLS connection."""
    conn = connection_named(srv, name)
    assert conn.get("tls_version"), f"connection {name!r} is not TLS on the server: {conn}"
    assert conn.get("tls_cipher_suite"), conn
    if tls_first:
        assert conn.get("tls_first") is True, f"connection {name!r} did not do TLS first: {conn}"
    if peer_cn is not None:
        subjects = [c.get("subject", "") for c in conn.get("tls_peer_certs") or []]
        assert any(f"CN={peer_cn}" in s for s in subjects), subjects
    return conn


def assert_tls_round_trip(
    srv: NatsServer, url: str, *, tls_first: bool = False, peer_cn: Optional[str] = None, **options: Any
) -> None:
    """``ts.connect(url, **options)`` under a fresh name: messages flow, and ``srv`` lists the
    connection as TLS (see :func:`assert_tls_on_server` for ``tls_first`` and ``peer_cn``)."""
    name = unique_name()
    with ts.connect(url, name=name, **options) as bus:
        assert_round_trip(bus)
        assert_tls_on_server(srv, name, tls_first=tls_first, peer_cn=peer_cn)


def assert_reconnects_over_tls(
    srv: NatsServer,
    url: str,
    break_link: Callable[[], None],
    *,
    tls_first: bool = False,
    peer_cn: Optional[str] = None,
    **options: Any,
) -> None:
    """Connected to ``url``, ``break_link()`` drops the connection: the bus reconnects, a
    subscription made before still receives, and ``srv`` lists the new connection as TLS."""
    reconnected = threading.Event()
    name = unique_name()
    subject = unique_name("reconnect")
    with ts.connect(url, name=name, on_reconnect=reconnected.set, **FAST, **options) as bus:
        pull = bus.subscribe(subject)
        bus.flush()
        break_link()
        assert reconnected.wait(10), "no reconnect after the connection was broken"
        bus.publish(subject, b"again")
        assert pull.next_msg(timeout=5).payload == b"again"
        assert_tls_on_server(srv, name, tls_first=tls_first, peer_cn=peer_cn)


def kill_and_restart(srv: NatsServer) -> Callable[[], None]:
    """A ``break_link`` for :func:`assert_reconnects_over_tls`: the server crashes and restarts."""

    def restart() -> None:
        srv.kill()
        srv.restart()

    return restart


def connect_must_fail(
    kind: Union[Type[BaseException], Tuple[Type[BaseException], ...]],
    servers: Any,
    within: float,
    **options: Any,
) -> Tuple[BaseException, float]:
    """``ts.connect(servers, **options)`` raises ``kind`` within ``within`` seconds; returns the
    exception and the time it took. Any other outcome fails the test with what happened."""
    start = time.monotonic()
    try:
        bus = ts.connect(servers, **options)
    except Exception as exc:
        elapsed = time.monotonic() - start
        if not isinstance(exc, kind):
            pytest.fail(
                f"connect() raised {type(exc).__name__}: {exc} (expected {kind}); cause: {exc.__cause__!r}"
            )
        assert elapsed < within, f"connect() took {elapsed:.2f} s to raise {exc!r} (limit {within} s)"
        return exc, elapsed
    status = bus.status
    bus.close()
    pytest.fail(f"connect() returned a bus (status {status}) instead of raising {kind}")


def assert_client_certificate_demanded(mtls_server: NatsServer, **options: Any) -> None:
    """Without a client certificate ``connect()`` to the mutual TLS server fails at once, and
    the error says that a certificate is missing."""
    exc, _ = connect_must_fail(
        (ts.TLSError, ts.AuthenticationError),
        tls_url(mtls_server),
        AT_ONCE,
        connect_timeout=SLOW_CONNECT,
        **options,
    )
    assert "certificate" in str(exc).lower(), f"does not mention the client certificate: {exc}"


# --- the error type -------------------------------------------------------------------------


def test_tls_error_is_a_ts_error() -> None:
    assert issubclass(ts.TLSError, ts.Error)


# --- server verification --------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    ["tls-url-ip", "tls-url-localhost", "nats-url-tls-true", "nats-url-ca-file-only"],
)
def test_ca_file_verifies_the_server_and_messages_flow_over_tls(
    tls_files: TLSFiles, tls_server: NatsServer, form: str
) -> None:
    name = unique_name()
    opts: Dict[str, Any] = dict(tls_ca_file=tls_files.ca_file)
    if form == "tls-url-ip":
        url = tls_url(tls_server)
    elif form == "tls-url-localhost":
        url = tls_url(tls_server, "localhost")
    elif form == "nats-url-tls-true":
        url, opts["tls"] = tls_server.url, True
    else:  # any tls_* option turns TLS on
        url = tls_server.url
    with ts.connect(url, name=name, connect_timeout=SLOW_CONNECT, **opts) as bus:
        assert bus.is_connected
        if url.startswith("tls://"):
            assert bus.connected_url is not None and bus.connected_url.startswith("tls://")
        assert_round_trip(bus)
        assert_tls_on_server(tls_server, name)


@pytest.mark.parametrize("scheme", ["tls", "nats"])
def test_ssl_context_from_trustme_is_used_as_given(
    tls_files: TLSFiles, tls_server: NatsServer, scheme: str
) -> None:
    ctx = ssl.create_default_context()
    tls_files.ca.configure_trust(ctx)
    url = tls_url(tls_server) if scheme == "tls" else tls_server.url
    assert_tls_round_trip(tls_server, url, tls=ctx)


@pytest.mark.timeout(60)  # above its own waits, so a failure reads as an assertion
def test_large_payloads_and_heavy_two_way_traffic_over_tls(
    tls_files: TLSFiles, tls_server: NatsServer
) -> None:
    """Reader and writer threads share the TLS socket: big frames (many TLS records) and
    thousands of small ones in both directions at once arrive whole and in order."""
    with ts.connect(tls_url(tls_server), tls_ca_file=tls_files.ca_file) as bus:
        big = bytes(range(256)) * (bus.max_payload // 256 - 64)
        bus.reply("tls.echo", lambda msg: msg.payload)
        bus.flush()
        assert bus.request("tls.echo", big, timeout=10).payload == big

        n = 20_000
        got: List[int] = []
        done = threading.Event()

        def cb(msg: ts.Message) -> None:
            got.append(int(msg.payload))
            if len(got) == n:
                done.set()

        bus.subscribe("tls.flood", cb)
        bus.flush()
        errors: List[BaseException] = []

        def requests() -> None:
            try:
                for i in range(50):
                    assert bus.request("tls.echo", str(i).encode() * 1000, timeout=10).payload == (
                        str(i).encode() * 1000
                    )
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=requests)
        t.start()
        for i in range(n):
            bus.publish("tls.flood", str(i).encode())
        assert done.wait(20), f"{len(got)} of {n} messages arrived"
        join_all([t], 20, what="the request thread")
        assert not errors, errors
        assert got == list(range(n))


def test_reading_and_writing_threads_share_a_fresh_tls_connection(
    tls_files: TLSFiles, tls_server: NatsServer
) -> None:
    """Right after the handshake the reader thread decrypts (TLS 1.3 session tickets, echoed
    messages) while publisher threads make the writer encrypt: one OpenSSL object used by two
    threads at once corrupts the stream (spurious EOF, bad record MAC, even crashes). Thirty fresh
    connections, none may drop and every message must come back."""
    for round_ in range(30):
        bus = ts.connect(tls_url(tls_server), tls_ca_file=tls_files.ca_file, allow_reconnect=False)
        try:
            _publish_while_reading(bus, f"connection {round_}")
        finally:
            bus.close()


def _publish_while_reading(bus: ts.MessageBus, label: str, n_threads: int = 3, per_thread: int = 100) -> None:
    failures: List[BaseException] = []
    got: List[bytes] = []
    done = threading.Event()

    def cb(msg: ts.Message) -> None:
        got.append(msg.payload)
        if len(got) == n_threads * per_thread:
            done.set()

    def publish(k: int) -> None:
        try:
            for i in range(per_thread):
                bus.publish("tls.fresh", b"%d.%d" % (k, i))
                time.sleep(0)
        except Exception as exc:  # reported below
            failures.append(exc)

    bus.subscribe("tls.fresh", cb)
    threads = [threading.Thread(target=publish, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    join_all(threads, 10, what=f"{label}: a publisher thread")
    arrived = done.wait(5)
    assert not failures, f"{label}: {failures[0]!r}"
    assert bus.is_connected, f"{label}: the connection dropped ({bus.status})"
    assert arrived, f"{label}: {len(got)} of {n_threads * per_thread} messages came back"


def test_close_over_tls_stops_every_thread(tls_files: TLSFiles, tls_server: NatsServer) -> None:
    bus = ts.connect(tls_url(tls_server), tls_ca_file=tls_files.ca_file)
    bus.subscribe("a", lambda m: None)
    bus.flush()
    threads = bus.threads
    start = time.monotonic()
    bus.close()
    assert time.monotonic() - start < 3
    assert bus.is_closed and not bus.is_connected
    assert not [t for t in threads if t.is_alive()]


# --- verification failures ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("retry", [False, True], ids=["plain", "retry_on_failed_connect"])
def test_untrusted_server_certificate_raises_tls_error_naming_the_host(
    tls_files: TLSFiles, tls_server: NatsServer, host: str, retry: bool
) -> None:
    exc, _ = connect_must_fail(
        ts.TLSError,
        tls_url(tls_server, host),
        AT_ONCE,
        tls_ca_file=tls_files.wrong_ca_file,
        connect_timeout=SLOW_CONNECT,
        retry_on_failed_connect=retry,
        **FAST,
    )
    assert host in str(exc), f"the error does not name {host!r}: {exc}"


def test_system_cas_do_not_trust_the_test_ca(tls_server: NatsServer) -> None:
    exc, _ = connect_must_fail(
        ts.TLSError, tls_url(tls_server), AT_ONCE, tls=True, connect_timeout=SLOW_CONNECT
    )
    assert "127.0.0.1" in str(exc), exc


def test_context_trusting_the_wrong_ca_raises_tls_error(tls_files: TLSFiles, tls_server: NatsServer) -> None:
    ctx = ssl.create_default_context()
    tls_files.wrong_ca.configure_trust(ctx)
    exc, _ = connect_must_fail(
        ts.TLSError, tls_url(tls_server), AT_ONCE, tls=ctx, connect_timeout=SLOW_CONNECT
    )
    assert "127.0.0.1" in str(exc), exc


@pytest.mark.parametrize("retry", [False, True], ids=["plain", "retry_on_failed_connect"])
def test_plain_client_against_a_tls_server_is_told_to_enable_tls(tls_server: NatsServer, retry: bool) -> None:
    exc, _ = connect_must_fail(
        ts.TLSError,
        tls_server.url,
        AT_ONCE,
        connect_timeout=SLOW_CONNECT,
        retry_on_failed_connect=retry,
        **FAST,
    )
    text = str(exc)
    assert re.search(r"requires?\b.*\bTLS", text, re.IGNORECASE), f"does not say TLS is required: {text}"
    assert "tls://" in text or "tls=" in text, f"does not say how to enable TLS: {text}"


def test_tls_handshake_that_stalls_times_out_within_connect_timeout(tls_files: TLSFiles) -> None:
    """A peer that announces TLS and then never answers the ClientHello: connect() gives up
    after connect_timeout (a fault injection, like the TCP proxy; not a NATS server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(SLOW_CONNECT)  # accept() must not outlive the test
    port = listener.getsockname()[1]
    held: List[socket.socket] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        held.append(conn)
        conn.sendall(
            b'INFO {"server_id":"STALL","version":"2.15.1","proto":1,"max_payload":1048576,'
            b'"headers":true,"tls_required":true}\r\n'
        )

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        exc, elapsed = connect_must_fail(
            ts.Error, f"tls://127.0.0.1:{port}", 1.0 + 1.5, tls_ca_file=tls_files.ca_file, connect_timeout=1.0
        )
        assert elapsed >= 0.9, f"gave up after {elapsed:.2f} s, before the connect timeout: {exc!r}"
    finally:
        listener.close()
        t.join(SLOW_CONNECT)
        for c in held:
            c.close()


@pytest.mark.parametrize("handshake_first", [False, True], ids=["info-first", "handshake-first"])
def test_tls_client_against_a_plain_server_raises_tls_error_at_once(
    tls_files: TLSFiles, server: NatsServer, handshake_first: bool
) -> None:
    connect_must_fail(
        ts.TLSError,
        tls_url(server),
        AT_ONCE,
        tls_ca_file=tls_files.ca_file,
        tls_handshake_first=handshake_first,
        connect_timeout=SLOW_CONNECT,
    )


@pytest.mark.parametrize("option", ["tls_ca_file", "tls_cert_file"])
@pytest.mark.parametrize("problem", ["missing", "not-pem"])
def test_unusable_tls_files_raise_a_ts_error_naming_the_file(
    tls_files: TLSFiles, tls_server: NatsServer, tmp_path: Any, option: str, problem: str
) -> None:
    if problem == "missing":
        path = str(tmp_path / "no-such-file.pem")
    else:
        path = str(tmp_path / "garbage.pem")
        with open(path, "w") as f:
            f.write("this is not a PEM file\n")
    files = dict(
        tls_ca_file=tls_files.ca_file, tls_cert_file=tls_files.client_cert, tls_key_file=tls_files.client_key
    )
    files[option] = path
    exc, _ = connect_must_fail(ts.Error, tls_url(tls_server), AT_ONCE, connect_timeout=SLOW_CONNECT, **files)
    assert path in str(exc), f"the error does not name {path}: {exc}"


# --- the system's CAs (SSL_CERT_FILE points OpenSSL's default CA file at the test CA) ----------


@pytest.fixture
def system_trusts_test_ca(tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", tls_files.ca_file)


@pytest.mark.usefixtures("system_trusts_test_ca")
@pytest.mark.parametrize("form", ["tls-url", "tls-true"])
def test_system_cas_are_the_default(tls_server: NatsServer, form: str) -> None:
    if form == "tls-url":
        assert_tls_round_trip(tls_server, tls_url(tls_server))
    else:
        assert_tls_round_trip(tls_server, tls_server.url, tls=True)


@pytest.mark.usefixtures("system_trusts_test_ca")
def test_tls_handshake_first_alone_turns_tls_on(first_server: NatsServer) -> None:
    """``any tls_* option turns TLS on``: a nats:// URL with only tls_handshake_first=True."""
    assert_tls_round_trip(
        first_server, first_server.url, tls_first=True, tls_handshake_first=True, connect_timeout=SLOW_CONNECT
    )


@pytest.mark.usefixtures("system_trusts_test_ca")
def test_tls_hostname_alone_turns_tls_on(alias_server: NatsServer) -> None:
    """``any tls_* option turns TLS on``: a nats:// URL with only tls_hostname=..."""
    assert_tls_round_trip(
        alias_server, alias_server.url, tls_hostname=ALIAS_HOSTNAME, connect_timeout=SLOW_CONNECT
    )


# --- mutual TLS -----------------------------------------------------------------------------


def test_mutual_tls_with_client_cert_and_key_files(tls_files: TLSFiles, mtls_server: NatsServer) -> None:
    assert_tls_round_trip(
        mtls_server,
        tls_url(mtls_server),
        peer_cn="test-client",
        tls_ca_file=tls_files.ca_file,
        tls_cert_file=tls_files.client_cert,
        tls_key_file=tls_files.client_key,
    )


def test_mutual_tls_with_client_cert_in_an_ssl_context(tls_files: TLSFiles, mtls_server: NatsServer) -> None:
    assert_tls_round_trip(
        mtls_server,
        tls_url(mtls_server),
        peer_cn="test-client",
        tls=tls_files.client_context(client_cert=True),
    )


@pytest.mark.parametrize("max_version", [None, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_mutual_tls_without_a_client_cert_in_a_context_fails_clearly_at_once(
    tls_files: TLSFiles, mtls_server: NatsServer, max_version: Optional[ssl.TLSVersion]
) -> None:
    """TLS 1.3 reports the missing certificate after the handshake, TLS 1.2 during it."""
    ctx = tls_files.client_context()
    if max_version is not None:
        ctx.maximum_version = max_version
    assert_client_certificate_demanded(mtls_server, tls=ctx)


@pytest.mark.parametrize("retry", [False, True], ids=["plain", "retry_on_failed_connect"])
def test_mutual_tls_without_a_client_cert_fails_clearly_at_once(
    tls_files: TLSFiles, mtls_server: NatsServer, retry: bool
) -> None:
    assert_client_certificate_demanded(
        mtls_server, tls_ca_file=tls_files.ca_file, retry_on_failed_connect=retry, **FAST
    )


def test_mutual_tls_with_a_cert_from_an_untrusted_ca_fails_at_once(
    tls_files: TLSFiles, mtls_server: NatsServer
) -> None:
    exc, _ = connect_must_fail(
        (ts.TLSError, ts.AuthenticationError),
        tls_url(mtls_server),
        AT_ONCE,
        tls_ca_file=tls_files.ca_file,
        tls_cert_file=tls_files.wrong_client_cert,
        tls_key_file=tls_files.wrong_client_key,
        connect_timeout=SLOW_CONNECT,
    )
    assert "certificate" in str(exc).lower() or "ca" in str(exc).lower(), exc


# --- handshake first ------------------------------------------------------------------------


def test_handshake_first_with_ca_file(tls_files: TLSFiles, first_server: NatsServer) -> None:
    name = unique_name()
    with ts.connect(
        tls_url(first_server), name=name, tls_ca_file=tls_files.ca_file, tls_handshake_first=True
    ) as bus:
        assert bus.server_info.get("server_id")
        assert_round_trip(bus)
        assert_tls_on_server(first_server, name, tls_first=True)


def test_handshake_first_with_ssl_context_and_nats_url(tls_files: TLSFiles, first_server: NatsServer) -> None:
    assert_tls_round_trip(
        first_server,
        first_server.url,
        tls_first=True,
        tls=tls_files.client_context(),
        tls_handshake_first=True,
    )


@pytest.mark.parametrize("connect_timeout", [1.0, 4.0])
def test_plain_client_against_handshake_first_fails_within_connect_timeout(
    first_server: NatsServer, connect_timeout: float
) -> None:
    """The server waits for a ClientHello (and drops the client after its 2 s TLS timeout), the
    client waits for INFO: connect() fails, naming the server, no later than connect_timeout."""
    exc, _ = connect_must_fail(
        ts.Error, first_server.url, connect_timeout + 1.0, connect_timeout=connect_timeout
    )
    assert str(first_server.port) in str(exc), f"the error does not name the server: {exc}"


def test_tls_client_without_handshake_first_fails_within_connect_timeout(
    tls_files: TLSFiles, first_server: NatsServer
) -> None:
    exc, _ = connect_must_fail(
        ts.Error, tls_url(first_server), 1.0 + 1.0, tls_ca_file=tls_files.ca_file, connect_timeout=1.0
    )
    assert str(first_server.port) in str(exc), f"the error does not name the server: {exc}"


def test_handshake_first_client_against_a_normal_tls_server_fails_at_once(
    tls_files: TLSFiles, tls_server: NatsServer
) -> None:
    """The server sends a plain INFO where the client expects a TLS ServerHello."""
    connect_must_fail(
        ts.Error,
        tls_url(tls_server),
        AT_ONCE + 1.0,
        tls_ca_file=tls_files.ca_file,
        tls_handshake_first=True,
        connect_timeout=SLOW_CONNECT,
    )


# --- hostname override ----------------------------------------------------------------------


def test_tls_hostname_overrides_the_name_checked(tls_files: TLSFiles, alias_server: NatsServer) -> None:
    assert_tls_round_trip(
        alias_server, tls_url(alias_server), tls_ca_file=tls_files.ca_file, tls_hostname=ALIAS_HOSTNAME
    )


def test_tls_hostname_with_ssl_context(tls_files: TLSFiles, alias_server: NatsServer) -> None:
    assert_tls_round_trip(
        alias_server, tls_url(alias_server), tls=tls_files.client_context(), tls_hostname=ALIAS_HOSTNAME
    )


def test_certificate_for_another_name_raises_tls_error_naming_the_host(
    tls_files: TLSFiles, alias_server: NatsServer
) -> None:
    exc, _ = connect_must_fail(
        ts.TLSError,
        tls_url(alias_server),
        AT_ONCE,
        tls_ca_file=tls_files.ca_file,
        connect_timeout=SLOW_CONNECT,
    )
    assert "127.0.0.1" in str(exc), exc


def test_wrong_tls_hostname_raises_tls_error_naming_it(tls_files: TLSFiles, alias_server: NatsServer) -> None:
    exc, _ = connect_must_fail(
        ts.TLSError,
        tls_url(alias_server),
        AT_ONCE,
        tls_ca_file=tls_files.ca_file,
        tls_hostname="other.test",
        connect_timeout=SLOW_CONNECT,
    )
    assert "other.test" in str(exc), exc


# --- reconnects keep TLS --------------------------------------------------------------------


def test_reconnect_after_a_cut_connection_is_tls_again(tls_files: TLSFiles, tls_server: NatsServer) -> None:
    proxy = TCPProxy(tls_server.host, tls_server.port)
    try:
        assert_reconnects_over_tls(
            tls_server, f"tls://127.0.0.1:{proxy.port}", proxy.cut, tls_ca_file=tls_files.ca_file
        )
        assert proxy.accepted >= 2
    finally:
        proxy.close()


def test_reconnect_after_a_server_restart_is_tls_again(tls_files: TLSFiles) -> None:
    with tls_files.nats_server(verify=True) as srv:
        assert_reconnects_over_tls(
            srv,
            tls_url(srv),
            kill_and_restart(srv),
            peer_cn="test-client",
            tls_ca_file=tls_files.ca_file,
            tls_cert_file=tls_files.client_cert,
            tls_key_file=tls_files.client_key,
        )


def test_reconnect_to_a_handshake_first_server(tls_files: TLSFiles) -> None:
    with tls_files.nats_server(handshake_first=True) as srv:
        assert_reconnects_over_tls(
            srv,
            tls_url(srv),
            kill_and_restart(srv),
            tls_first=True,
            tls_ca_file=tls_files.ca_file,
            tls_handshake_first=True,
        )


# --- clusters: servers discovered from INFO connect_urls -----------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "host, localhost_only",
    [("127.0.0.1", False), ("localhost", True)],
    ids=["cert-with-ip", "cert-for-localhost-only"],
)
def test_failover_to_a_discovered_server_keeps_tls(
    tls_files: TLSFiles, host: str, localhost_only: bool
) -> None:
    """The client knows one node; the others come from INFO ``connect_urls`` (as IP addresses).
    When its node dies it moves to a discovered one over TLS, verifying that node's certificate
    against the name it was given (nats.go and nats-py keep the original hostname for discovered
    IP addresses, so a certificate issued only for ``localhost`` still matches)."""
    config = tls_files.server_config(localhost_only=localhost_only)
    with NatsCluster(3, config=config, name="tls") as cluster:
        first = cluster.nodes[0]
        reconnected = threading.Event()
        name = unique_name()
        with ts.connect(
            tls_url(first, host),
            name=name,
            tls_ca_file=tls_files.ca_file,
            on_reconnect=reconnected.set,
            randomize=False,
            **FAST,
        ) as bus:
            pull = bus.subscribe("tls.failover")
            bus.flush()
            discovered = {int(url.rsplit(":", 1)[1]) for url in bus.discovered_servers}
            assert {n.port for n in cluster.nodes[1:]} <= discovered, bus.discovered_servers
            first.kill()
            assert reconnected.wait(15), "did not move to a discovered server"
            port = int((bus.connected_url or "").rsplit(":", 1)[1])
            assert port != first.port
            node = next(n for n in cluster.nodes if n.port == port)
            bus.publish("tls.failover", b"moved")
            assert pull.next_msg(timeout=5).payload == b"moved"
            assert_tls_on_server(node, name)
