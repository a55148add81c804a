"""Authentication against real nats-servers: tokens, passwords, NKeys and JWT .creds files.

The credentials come from ``tests/authgen.py`` (hand-signed with ``nkeys``); the first tests
check that material with nats-py, independently of telestion_sync. Then telestion_sync must
connect with good credentials, fail ``connect()`` at once with ``ts.AuthenticationError`` on
wrong, unknown, expired or missing ones, honour JWT permissions, and never show a secret in
``repr(bus)``, ``bus.stats``, error messages or its logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Dict, Iterator, List

import nats
import nats.errors
import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer

from . import authgen
from .conftest import ErrorLog

pytestmark = pytest.mark.timeout(30)

TOKEN = "t0k3n-Zq8xW2"
PASSWORD = "pa55-Kv7yR1"
CONNECT_TIMEOUT = 2.0
# AuthenticationError must come "at once": well within the connect timeout, never after retries.
FAIL_FAST = CONNECT_TIMEOUT + 0.5


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def op() -> authgen.OperatorSetup:
    return authgen.OperatorSetup()


@pytest.fixture
def jwt_server(op: authgen.OperatorSetup) -> Iterator[NatsServer]:
    """A nats-server in operator mode that knows ``op``'s account (MEMORY resolver)."""
    with NatsServer(config=op.config()) as srv:
        yield srv


@pytest.fixture
def nkey_user() -> authgen.NKey:
    return authgen.new_user_key()


@pytest.fixture
def nkey_server(nkey_user: authgen.NKey) -> Iterator[NatsServer]:
    """A nats-server that admits only ``nkey_user``."""
    with NatsServer(config=authgen.nkey_config(nkey_user.public)) as srv:
        yield srv


@pytest.fixture
def token_server() -> Iterator[NatsServer]:
    with NatsServer(config=authgen.token_config(TOKEN)) as srv:
        yield srv


@pytest.fixture
def password_server() -> Iterator[NatsServer]:
    with NatsServer(user="alice", password=PASSWORD) as srv:
        yield srv


def roundtrip(bus: ts.MessageBus, subject: str = "auth.check") -> None:
    """The connection really works: a message published on it comes back to a subscription."""
    sub = bus.subscribe(subject)
    bus.flush()
    bus.publish(subject, b"ping")
    assert sub.next_msg(5).payload == b"ping"
    sub.unsubscribe()


def refused(url: str, **options: Any) -> ts.AuthenticationError:
    """Connect, expect AuthenticationError within FAIL_FAST seconds, return the error."""
    start = time.monotonic()
    with pytest.raises(ts.AuthenticationError) as info:
        bus = ts.connect(url, connect_timeout=CONNECT_TIMEOUT, **options)
        bus.close()  # pragma: no cover - only when the assertion is about to fail
    elapsed = time.monotonic() - start
    assert elapsed < FAIL_FAST, f"AuthenticationError took {elapsed:.2f} s"
    return info.value


class Counting:
    """A zero-argument credential callable that counts its calls."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.calls += 1
        return self.value


# --- the generator, checked with nats-py ----------------------------------------------------


def natspy(url: str, *, publish: str = "", **options: Any) -> List[BaseException]:
    """Connect with nats-py (no reconnects), optionally publish, and return the reported errors.

    Raises what ``nats.connect`` raises when the server refuses the connection.
    """

    async def main() -> List[BaseException]:
        errors: List[BaseException] = []

        async def error_cb(exc: Exception) -> None:
            errors.append(exc)

        nc = await nats.connect(
            url,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=CONNECT_TIMEOUT,
            error_cb=error_cb,
            **options,
        )
        try:
            if publish:
                await nc.publish(publish, b"x")
            await nc.flush(timeout=CONNECT_TIMEOUT)
            # a permissions -ERR arrives after the PONG at the latest; one more round trip
            await nc.flush(timeout=CONNECT_TIMEOUT)
        finally:
            await nc.close()
        return errors

    return asyncio.run(main())


def test_generated_jwts_are_signed_by_their_issuers(op: authgen.OperatorSetup) -> None:
    user = op.user(pub_allow=["ok.>"], exp=int(time.time()) + 60)
    for token, iss, sub, kind in [
        (op.operator_jwt, op.operator, op.operator, "operator"),
        (op.account_jwt, op.operator, op.account, "account"),
        (user.jwt, op.account, user.key, "user"),
    ]:
        assert authgen.verify_jwt(token)
        claims = authgen.decode_jwt(token)
        assert claims["iss"] == iss.public and claims["sub"] == sub.public
        assert claims["nats"]["type"] == kind and claims["nats"]["version"] == 2
        assert claims["jti"] == authgen.claims_id(claims)
        header = json.loads(authgen.b64url_decode(token.split(".")[0]))
        assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = authgen.decode_jwt(user.jwt)
    assert claims["nats"]["pub"] == {"allow": ["ok.>"]}
    assert claims["exp"] > claims["iat"]
    head, body, sig = user.jwt.split(".")
    assert not authgen.verify_jwt(f"{head}.{body}.{authgen.b64url(op.account.sign(b'other'))}")
    assert user.key.seed.startswith("SU") and user.key.public.startswith("U")
    assert op.account.seed.startswith("SA") and op.operator.seed.startswith("SO")
    text = user.creds
    assert text.index("-----BEGIN NATS USER JWT-----\n" + user.jwt + "\n------END NATS USER JWT------") < (
        text.index("-----BEGIN USER NKEY SEED-----\n" + user.seed + "\n------END USER NKEY SEED------")
    )


def test_generated_creds_work_with_nats_py(
    op: authgen.OperatorSetup, jwt_server: NatsServer, tmp_path: Any
) -> None:
    good = op.user().write_creds(str(tmp_path / "good.creds"))
    assert natspy(jwt_server.url, user_credentials=good) == []
    foreign = op.foreign_user().write_creds(str(tmp_path / "foreign.creds"))
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        natspy(jwt_server.url, user_credentials=foreign)
    now = int(time.time())
    expired = op.user(iat=now - 120, exp=now - 60).write_creds(str(tmp_path / "expired.creds"))
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        natspy(jwt_server.url, user_credentials=expired)


def test_generated_permissions_work_with_nats_py(
    op: authgen.OperatorSetup, jwt_server: NatsServer, tmp_path: Any
) -> None:
    creds = op.user(pub_allow=["ok.>"]).write_creds(str(tmp_path / "perm.creds"))
    assert natspy(jwt_server.url, publish="ok.x", user_credentials=creds) == []
    errors = natspy(jwt_server.url, publish="denied.x", user_credentials=creds)
    assert any("permissions violation" in str(e).lower() for e in errors), errors


def test_generated_nkeys_and_token_work_with_nats_py(
    nkey_user: authgen.NKey, nkey_server: NatsServer, token_server: NatsServer, tmp_path: Any
) -> None:
    good = authgen.write_seed(str(tmp_path / "good.nk"), nkey_user.seed)
    assert natspy(nkey_server.url, nkeys_seed=good) == []
    bad = authgen.write_seed(str(tmp_path / "bad.nk"), authgen.new_user_key().seed)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        natspy(nkey_server.url, nkeys_seed=bad)
    assert natspy(token_server.url, token=TOKEN) == []
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        natspy(token_server.url, token="wrong")


# --- tokens ---------------------------------------------------------------------------------


def test_token_good_bad_and_missing(token_server: NatsServer) -> None:
    with ts.connect(token_server.url, token=TOKEN, connect_timeout=CONNECT_TIMEOUT) as bus:
        roundtrip(bus)
    refused(token_server.url, token="wrong-token")
    refused(token_server.url)


def test_token_in_the_url(token_server: NatsServer) -> None:
    with ts.connect(f"nats://{TOKEN}@127.0.0.1:{token_server.port}") as bus:
        roundtrip(bus)
        assert TOKEN not in repr(bus) and TOKEN not in (bus.connected_url or "")
    err = refused(f"nats://wrong-token@127.0.0.1:{token_server.port}")
    assert "wrong-token" not in str(err)


def test_token_callable_is_called_at_each_connect(token_server: NatsServer) -> None:
    token = Counting(TOKEN)
    reconnected = threading.Event()
    with ts.connect(
        token_server.url,
        token=token,
        reconnect_time_wait=0.1,
        on_reconnect=reconnected.set,
    ) as bus:
        roundtrip(bus)
        assert token.calls == 1
        token_server.stop()
        token_server.restart()
        assert reconnected.wait(10), "no reconnect after the server restarted"
        roundtrip(bus)
        assert token.calls >= 2, "the token callable was not asked again on reconnect"
    refused(token_server.url, token=Counting("wrong-token"))


def test_token_callable_that_returns_a_wrong_token(token_server: NatsServer) -> None:
    bad = Counting("wrong-token")
    refused(token_server.url, token=bad)
    assert bad.calls == 1, "a refused token must not be retried"


# --- user / password ------------------------------------------------------------------------


def test_password_callable(password_server: NatsServer) -> None:
    password = Counting(PASSWORD)
    with ts.connect(password_server.url, user="alice", password=password) as bus:
        roundtrip(bus)
    assert password.calls == 1
    refused(password_server.url, user="alice", password=lambda: "wrong-password")
    refused(password_server.url, user="mallory", password=password)


def test_password_callable_is_called_again_on_reconnect(password_server: NatsServer) -> None:
    password = Counting(PASSWORD)
    reconnected = threading.Event()
    with ts.connect(
        password_server.url,
        user="alice",
        password=password,
        reconnect_time_wait=0.1,
        on_reconnect=reconnected.set,
    ) as bus:
        password_server.stop()
        password_server.restart()
        assert reconnected.wait(10), "no reconnect after the server restarted"
        roundtrip(bus)
    assert password.calls >= 2


# --- NKeys ----------------------------------------------------------------------------------


def test_nkey_seed_as_string(nkey_user: authgen.NKey, nkey_server: NatsServer) -> None:
    with ts.connect(nkey_server.url, nkey_seed=nkey_user.seed) as bus:
        roundtrip(bus)


def test_nkey_seed_as_file_path(nkey_user: authgen.NKey, nkey_server: NatsServer, tmp_path: Any) -> None:
    path = authgen.write_seed(str(tmp_path / "user.nk"), nkey_user.seed)  # ends with a newline
    with ts.connect(nkey_server.url, nkey_seed=path) as bus:
        roundtrip(bus)


def test_nkey_seed_as_callable(nkey_user: authgen.NKey, nkey_server: NatsServer) -> None:
    seed = Counting(nkey_user.seed)
    with ts.connect(nkey_server.url, nkey_seed=seed) as bus:
        roundtrip(bus)
    assert seed.calls >= 1


def test_wrong_or_missing_nkey_is_refused_at_once(nkey_server: NatsServer, tmp_path: Any) -> None:
    other = authgen.new_user_key()
    refused(nkey_server.url, nkey_seed=other.seed)
    refused(nkey_server.url, nkey_seed=authgen.write_seed(str(tmp_path / "other.nk"), other.seed))
    refused(nkey_server.url, nkey_seed=lambda: other.seed)
    refused(nkey_server.url)


# --- JWT .creds -----------------------------------------------------------------------------


def test_creds_file(op: authgen.OperatorSetup, jwt_server: NatsServer, tmp_path: Any) -> None:
    path = op.user().write_creds(str(tmp_path / "user.creds"))
    with ts.connect(jwt_server.url, creds=path) as bus:
        roundtrip(bus)


def test_creds_callable(op: authgen.OperatorSetup, jwt_server: NatsServer) -> None:
    creds = Counting(op.user().creds)
    with ts.connect(jwt_server.url, creds=creds) as bus:
        roundtrip(bus)
    assert creds.calls >= 1


def test_creds_of_an_unknown_account_are_refused(
    op: authgen.OperatorSetup, jwt_server: NatsServer, tmp_path: Any
) -> None:
    path = op.foreign_user().write_creds(str(tmp_path / "foreign.creds"))
    refused(jwt_server.url, creds=path)


def test_expired_user_jwt_is_refused(
    op: authgen.OperatorSetup, jwt_server: NatsServer, tmp_path: Any
) -> None:
    now = int(time.time())
    path = op.user(iat=now - 120, exp=now - 60).write_creds(str(tmp_path / "expired.creds"))
    refused(jwt_server.url, creds=path)


def test_creds_with_someone_elses_seed_are_refused(op: authgen.OperatorSetup, jwt_server: NatsServer) -> None:
    user = op.user()
    stolen_jwt = authgen.creds_text(user.jwt, authgen.new_user_key().seed)
    refused(jwt_server.url, creds=lambda: stolen_jwt)


def test_creds_with_windows_line_endings(op: authgen.OperatorSetup, jwt_server: NatsServer) -> None:
    text = op.user().creds.replace("\n", "\r\n")
    with ts.connect(jwt_server.url, creds=lambda: text) as bus:
        roundtrip(bus)


def test_creds_callable_rotates_an_expiring_jwt(
    op: authgen.OperatorSetup, jwt_server: NatsServer, errors: ErrorLog
) -> None:
    """The server drops a user whose JWT expires; the next connect asks the callable again."""
    short, fresh = op.user(exp=int(time.time()) + 3), op.user()  # >= 2 s left to connect
    creds = Counting(short.creds)
    reconnected = threading.Event()

    def next_creds() -> str:
        text = creds()
        creds.value = fresh.creds
        return text

    with ts.connect(
        jwt_server.url,
        creds=next_creds,
        on_error=errors,
        on_reconnect=reconnected.set,
        reconnect_time_wait=0.1,
    ) as bus:
        roundtrip(bus)
        assert reconnected.wait(10), "no reconnect after the user JWT expired"
        roundtrip(bus)
        assert creds.calls >= 2
    errors.wait(ts.AuthenticationError)


def test_missing_credentials_in_operator_mode_are_refused(jwt_server: NatsServer) -> None:
    refused(jwt_server.url)


def test_jwt_permissions(
    op: authgen.OperatorSetup, jwt_server: NatsServer, tmp_path: Any, errors: ErrorLog
) -> None:
    path = op.user(pub_allow=["ok.>"]).write_creds(str(tmp_path / "limited.creds"))
    with ts.connect(jwt_server.url, creds=path, on_error=errors) as bus:
        sub = bus.subscribe("ok.>")
        bus.flush()
        bus.publish("ok.x", b"allowed")
        assert sub.next_msg(5).payload == b"allowed"
        bus.publish("denied.x", b"nope")
        bus.flush(timeout=2)  # must not hang after a denied publish
        err = errors.wait(ts.PermissionViolationError)
        assert isinstance(err, ts.PermissionViolationError)
        assert (err.operation, err.subject) == ("publish", "denied.x")
        bus.publish("ok.y", b"still here")
        assert sub.next_msg(5).payload == b"still here"
        assert bus.is_connected


# --- secrets stay secret --------------------------------------------------------------------


def _assert_hidden(secrets: List[str], *texts: str) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"a secret ({secret[:4]}...) leaked into: {text[:300]!r}"


def _leaks(
    caplog: pytest.LogCaptureFixture,
    url: str,
    secrets: List[str],
    good: Dict[str, Any],
    bad: Dict[str, Any],
) -> None:
    """Connect with ``good`` options and fail with ``bad`` ones; no secret may show anywhere."""
    caplog.set_level(logging.DEBUG, logger="telestion_sync")
    with ts.connect(url, name="leak-check", **good) as bus:
        roundtrip(bus)
        _assert_hidden(secrets, repr(bus), str(bus), bus._repr_html_(), str(bus.stats), repr(bus.stats))
    err = refused(url, **bad)
    _assert_hidden(secrets, str(err), repr(err), str(err.__cause__), str(err.__context__))
    assert caplog.records, "expected some DEBUG log output from telestion_sync"
    _assert_hidden(secrets, caplog.text)


def test_password_never_shown(password_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wr0ng-Passw0rd-Q3"
    _leaks(
        caplog,
        password_server.url,
        [PASSWORD, wrong],
        {"user": "alice", "password": PASSWORD},
        {"user": "alice", "password": wrong},
    )


def test_password_in_url_never_shown(password_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="telestion_sync")
    wrong = "wr0ng-Passw0rd-Q3"
    with ts.connect(f"nats://alice:{PASSWORD}@127.0.0.1:{password_server.port}") as bus:
        roundtrip(bus)
        _assert_hidden([PASSWORD], repr(bus), str(bus.stats), bus.connected_url or "")
    err = refused(f"nats://alice:{wrong}@127.0.0.1:{password_server.port}")
    _assert_hidden([PASSWORD, wrong], str(err), repr(err), caplog.text)


def test_token_never_shown(token_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wr0ng-T0ken-Q3"
    _leaks(caplog, token_server.url, [TOKEN, wrong], {"token": TOKEN}, {"token": lambda: wrong})


def test_nkey_seed_never_shown(
    nkey_user: authgen.NKey, nkey_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    other = authgen.new_user_key()
    _leaks(
        caplog,
        nkey_server.url,
        [nkey_user.seed, other.seed],
        {"nkey_seed": nkey_user.seed},
        {"nkey_seed": other.seed},
    )


def test_creds_never_shown(
    op: authgen.OperatorSetup, jwt_server: NatsServer, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    user, stranger = op.user(), op.foreign_user()
    _leaks(
        caplog,
        jwt_server.url,
        [user.seed, user.jwt, stranger.seed, stranger.jwt],
        {"creds": user.write_creds(str(tmp_path / "user.creds"))},
        {"creds": stranger.write_creds(str(tmp_path / "stranger.creds"))},
    )


def test_unusable_seed_is_not_echoed(nkey_server: NatsServer) -> None:
    """A seed that is not a valid NKey fails connect; the message must not quote it."""
    garbage = "SU" + "A" * 20 + "not-a-valid-seed"
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is not specified, the message is
        ts.connect(nkey_server.url, nkey_seed=garbage, connect_timeout=CONNECT_TIMEOUT).close()
    assert garbage not in str(info.value) and garbage not in repr(info.value)


def test_credentials_in_a_bad_url_are_not_echoed() -> None:
    """A URL that does not parse is reported without the password it carries."""
    for url in (f"nats://alice:{PASSWORD}@127.0.0.1:99999", f"http://alice:{PASSWORD}@127.0.0.1:4222"):
        with pytest.raises(ValueError) as info:
            ts.connect(url, connect_timeout=CONNECT_TIMEOUT).close()
        assert PASSWORD not in str(info.value), str(info.value)


def test_a_bare_jwt_given_as_creds_is_not_echoed(op: authgen.OperatorSetup, jwt_server: NatsServer) -> None:
    """A JWT passed where the creds file's text belongs fails connect without quoting the JWT."""
    user = op.user()
    with pytest.raises(ts.Error) as info:
        ts.connect(jwt_server.url, creds=lambda: user.jwt, connect_timeout=CONNECT_TIMEOUT).close()
    assert user.jwt not in str(info.value) and user.jwt[:40] not in str(info.value), str(info.value)


def _chain(exc: BaseException) -> List[BaseException]:
    """An exception and everything behind it (``__cause__`` and ``__context__``)."""
    seen: List[BaseException] = []
    todo: List[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.append(e)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    return seen


@pytest.mark.parametrize(
    "option, secret",
    [
        ("nkey_seed", "su" + "a" * 56),  # a lower-cased seed: read as a file name
        ("nkey_seed", "SU" + "A" * 20 + "not-a-valid-seed"),
        ("creds", "eyJ0eXAiOiJKV1QifQ.c2VjcmV0.c2lnbmF0dXJl"),  # a bare JWT
    ],
)
def test_unusable_secrets_are_not_kept_anywhere_in_the_exception_chain(
    nkey_server: NatsServer, option: str, secret: str
) -> None:
    """Tools that walk ``__context__`` (loggers, tracebacks) must not find the secret either."""
    with pytest.raises(ts.Error) as info:
        ts.connect(nkey_server.url, connect_timeout=CONNECT_TIMEOUT, **{option: secret}).close()
    for e in _chain(info.value):
        assert secret not in str(e) and secret not in repr(e), (type(e), str(e))


def test_revoked_user_is_reported_and_reconnecting_ends(op: authgen.OperatorSetup, errors: ErrorLog) -> None:
    """The account revokes the user while connected: the server's 'User Authentication
    Revoked' reaches the error handler, and since every reconnect is refused the same way the
    bus closes with that refusal as the cause (nats.go's behaviour)."""
    user = op.user()
    closed = threading.Event()
    with NatsServer(config=op.config()) as srv:
        bus = ts.connect(
            srv.url, creds=lambda: user.creds, on_error=errors, on_close=closed.set, reconnect_time_wait=0.05
        )
        try:
            roundtrip(bus)
            srv.config = op.revoke(user)
            srv.reload()  # the account JWT now revokes the user
            revoked = errors.wait(ts.AuthenticationError, timeout=10)
            assert "revoked" in str(revoked).lower(), revoked
            assert closed.wait(10), f"still {bus.status}; errors: {errors.errors}"
            with pytest.raises(ts.ConnectionClosedError) as info:
                bus.publish("x", b"")
            assert isinstance(info.value.__cause__, ts.AuthenticationError)
        finally:
            bus.close()
