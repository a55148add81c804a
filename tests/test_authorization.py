"""Per-subject permissions on a real server: what is allowed works, what is denied fails with
an error a script can act on, and the connection survives every denial."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsServer, free_port

from .conftest import ErrorLog, wait_until

pytestmark = pytest.mark.timeout(30)

RECONNECT_FOREVER: Dict[str, Any] = dict(reconnect_time_wait=0.05, max_reconnect_attempts=-1)


def restart_with_password(srv: NatsServer, password: str) -> None:
    """Crash ``srv`` and bring it back on the same port, now wanting ``password``."""
    srv.kill()
    srv.password = password
    srv.restart()


CONFIG = """
authorization {
  users = [
    { user: ground, password: gpw,
      permissions: {
        publish: { allow: ["cmd.>", "telemetry.>", "svc.>", "_INBOX.>"], deny: ["cmd.secret"] },
        subscribe: { allow: ["telemetry.>", "_INBOX.>", "svc.>", "q.>"], deny: ["telemetry.private"] }
      } }
    { user: sat, password: spw,
      permissions: {
        publish: { allow: ["telemetry.>", "_INBOX.>"] },
        subscribe: { allow: ["cmd.>", "svc.>", "_INBOX.>"] }
      } }
    { user: noinbox, password: npw,
      permissions: { publish: { allow: ["svc.>"] }, subscribe: { allow: ["other.>"] } } }
  ]
}
"""


@pytest.fixture(scope="module")
def perm_server() -> Iterator[NatsServer]:
    with NatsServer(config=CONFIG) as srv:
        yield srv


def test_allowed_operations_work(perm_server: NatsServer) -> None:
    with (
        ts.connect(perm_server.url, user="ground", password="gpw") as ground,
        ts.connect(perm_server.url, user="sat", password="spw") as sat,
    ):
        tele = ground.subscribe("telemetry.>")
        cmds = sat.subscribe("cmd.>")
        sat.reply("svc.status", lambda msg: {"ok": True})
        ground.flush()
        sat.flush()
        sat.publish("telemetry.temp", {"c": 20})
        ground.publish("cmd.reboot", {"now": True})
        assert tele.next_msg(2).data == {"c": 20}
        assert cmds.next_msg(2).data == {"now": True}
        assert ground.request("svc.status", timeout=2).data == {"ok": True}


def test_denied_publish_is_reported_and_the_connection_survives(
    perm_server: NatsServer, errors: ErrorLog
) -> None:
    with ts.connect(perm_server.url, user="ground", password="gpw", on_error=errors) as bus:
        sub = bus.subscribe("telemetry.>")
        bus.flush()
        bus.publish("cmd.secret", b"x")
        bus.publish("forbidden.topic", b"x")
        bus.flush(timeout=2)  # no hang after denied publishes
        denied = errors.wait_many(ts.PermissionViolationError, 2)
        assert {e.operation for e in denied} == {"publish"}  # type: ignore[attr-defined]
        assert {e.subject for e in denied} == {"cmd.secret", "forbidden.topic"}  # type: ignore[attr-defined]
        bus.publish("telemetry.ok", b"still here")
        assert sub.next_msg(2).payload == b"still here"
        assert bus.is_connected


def test_denied_subscribe_fails_the_pull_subscription(perm_server: NatsServer, errors: ErrorLog) -> None:
    with ts.connect(perm_server.url, user="ground", password="gpw", on_error=errors) as bus:
        denied = bus.subscribe("telemetry.private")
        fine = bus.subscribe("telemetry.public")
        bus.flush()
        with pytest.raises(ts.PermissionViolationError) as info:
            denied.next_msg(timeout=5)
        assert info.value.operation == "subscribe"
        assert info.value.subject == "telemetry.private"
        assert denied.error is info.value and not denied.is_valid
        assert fine.is_valid
        bus.publish("telemetry.public", b"ok")
        assert fine.next_msg(2).payload == b"ok"
        errors.wait(ts.PermissionViolationError)


def test_subscribe_outside_the_allow_list_fails_and_the_connection_survives_a_run_of_denials(
    perm_server: NatsServer, errors: ErrorLog
) -> None:
    """One connection meets every kind of denial in a row and still works afterwards."""
    with ts.connect(perm_server.url, user="sat", password="spw", on_error=errors) as bus:
        outside = bus.subscribe("weather.now")  # not in sat's subscribe allow list
        with pytest.raises(ts.PermissionViolationError) as info:
            outside.next_msg(timeout=5)
        assert (info.value.operation, info.value.subject) == ("subscribe", "weather.now")
        bus.publish("cmd.reboot", b"")  # publish outside the allow list
        with pytest.raises(ts.PermissionViolationError):
            bus.request("cmd.reboot", timeout=10)
        with pytest.raises(ts.PermissionViolationError):
            bus.request_many("cmd.reboot", timeout=10)
        errors.wait_many(ts.PermissionViolationError, 4)
        cmds = bus.subscribe("cmd.>")
        bus.flush()
        with ts.connect(perm_server.url, user="ground", password="gpw") as ground:
            ground.publish("cmd.go", b"still here")
            assert cmds.next_msg(5).payload == b"still here"
        assert bus.is_connected


def test_request_many_to_a_denied_subject_fails_with_the_permission_error(perm_server: NatsServer) -> None:
    with ts.connect(perm_server.url, user="sat", password="spw") as bus:
        started = time.monotonic()
        with pytest.raises(ts.PermissionViolationError) as info:
            bus.request_many("cmd.reboot", timeout=10)
        assert info.value.subject == "cmd.reboot"
        assert time.monotonic() - started < 5, "waited for the timeout instead of the server's answer"


def test_denied_queue_subscribe_with_callback_reports_to_the_error_handler(
    perm_server: NatsServer, errors: ErrorLog
) -> None:
    with ts.connect(perm_server.url, user="sat", password="spw", on_error=errors) as bus:
        got: List[Any] = []
        sub = bus.subscribe("telemetry.x", got.append, queue="workers")
        bus.flush()
        err = errors.wait(ts.PermissionViolationError)
        assert isinstance(err, ts.PermissionViolationError)
        assert (err.operation, err.queue) == ("subscribe", "workers")
        assert sub.wait_finished(5)
        assert sub.error is err
        assert bus.is_connected


def test_request_to_a_denied_subject_fails_with_the_permission_error(perm_server: NatsServer) -> None:
    with ts.connect(perm_server.url, user="sat", password="spw") as bus:
        with pytest.raises(ts.PermissionViolationError) as info:
            bus.request("cmd.reboot", timeout=10)
        assert info.value.subject == "cmd.reboot"


def test_request_without_inbox_permission_fails_with_the_permission_error(
    perm_server: NatsServer,
) -> None:
    with ts.connect(perm_server.url, user="noinbox", password="npw") as bus:
        with pytest.raises(ts.PermissionViolationError) as info:
            bus.request("svc.status", timeout=10)
        assert info.value.operation == "subscribe"
        with pytest.raises(ts.PermissionViolationError):
            bus.request("svc.status", timeout=10)  # at once from now on


def test_inbox_prefix_lets_restricted_users_make_requests() -> None:
    config = """
    authorization {
      users = [
        { user: a, password: a, permissions: { publish: ["svc.>"], subscribe: ["_I.a.>"] } }
        { user: b, password: b, permissions: { publish: ["_I.>"], subscribe: ["svc.>"] } }
      ]
    }
    """
    with NatsServer(config=config) as srv:
        with ts.connect(srv.url, user="b", password="b") as responder:
            responder.reply("svc.hello", lambda msg: "hi")
            responder.flush()
            with ts.connect(srv.url, user="a", password="a", inbox_prefix="_I.a") as bus:
                assert bus.request("svc.hello", timeout=2).data == "hi"
                assert bus.new_inbox().startswith("_I.a.")


def test_authorization_violation_on_reconnect_ends_the_loop() -> None:
    """A server that starts refusing our credentials after a restart: two refusals from it
    end the reconnect loop with AuthenticationError as the cause (as nats.go does)."""
    with NatsServer(user="u", password="old") as srv:
        closed = threading.Event()
        bus = ts.connect(srv.url, user="u", password="old", on_close=closed.set, **RECONNECT_FOREVER)
        try:
            restart_with_password(srv, "new")
            assert closed.wait(10)
            with pytest.raises(ts.ConnectionClosedError) as info:
                bus.publish("x", b"")
            assert bus.is_closed
            assert isinstance(info.value.__cause__, ts.AuthenticationError), info.value.__cause__
        finally:
            bus.close()


def test_repeated_refusal_ends_reconnecting_even_with_other_servers_in_the_pool(errors: ErrorLog) -> None:
    """nats.go: the same refusal twice from the server we were on aborts the reconnect loop,
    even when attempts are unlimited and other (dead) servers remain in the pool."""
    with NatsServer(user="u", password="old") as srv:
        dead = f"nats://127.0.0.1:{free_port()}"
        closed = threading.Event()
        bus = ts.connect(
            [srv.url, dead],
            randomize=False,
            user="u",
            password="old",
            on_close=closed.set,
            on_error=errors,
            **RECONNECT_FOREVER,
        )
        try:
            restart_with_password(srv, "new")
            assert closed.wait(15), f"still {bus.status} after the refusals; errors: {errors.errors}"
            refusals = errors.of(ts.AuthenticationError)
            assert len(refusals) >= 2
            with pytest.raises(ts.ConnectionClosedError) as info:
                bus.request("x", timeout=1)
            assert info.value.__cause__ is refusals[-1]
        finally:
            bus.close()


def test_ignore_auth_error_abort_keeps_trying_until_the_credentials_work(errors: ErrorLog) -> None:
    """With ignore_auth_error_abort=True refusals do not end reconnecting: the bus comes back
    once the server accepts the (unchanged) credentials again."""
    with NatsServer(user="u", password="pw") as srv:
        reconnected = threading.Event()
        bus = ts.connect(
            srv.url,
            user="u",
            password="pw",
            ignore_auth_error_abort=True,
            on_error=errors,
            on_reconnect=reconnected.set,
            **RECONNECT_FOREVER,
        )
        try:
            restart_with_password(srv, "other")
            errors.wait(ts.AuthenticationError, timeout=10)
            wait_until(lambda: bus.stats.errors >= 3, what="several refusals")
            assert not bus.is_closed
            restart_with_password(srv, "pw")
            assert reconnected.wait(10)
            assert bus.is_connected
        finally:
            bus.close()


def test_a_denied_inbox_is_tried_again_after_a_reconnect() -> None:
    """Requests fail fast while the reply inbox is denied; once a restarted server allows it,
    they work again on the same bus (the denial is not remembered forever)."""

    def config(inbox: str) -> str:
        return f"""
        authorization {{
          users = [
            {{ user: r, password: r,
               permissions: {{ publish: ["svc.>"], subscribe: ["{inbox}"] }} }}
            {{ user: s, password: s, permissions: {{ publish: ["_INBOX.>"], subscribe: ["svc.>"] }} }}
          ]
        }}
        """

    with NatsServer(config=config("other.>")) as srv:
        reconnected = threading.Event()
        bus = ts.connect(
            srv.url, user="r", password="r", reconnect_time_wait=0.05, on_reconnect=reconnected.set
        )
        try:
            with pytest.raises(ts.PermissionViolationError):
                bus.request("svc.hello", timeout=10)
            srv.kill()
            srv.config = config("_INBOX.>")
            srv.restart()
            assert reconnected.wait(10)
            with ts.connect(srv.url, user="s", password="s") as responder:
                responder.reply("svc.hello", lambda msg: "hi")
                responder.flush()
                assert bus.request("svc.hello", timeout=5).data == "hi"
        finally:
            bus.close()
