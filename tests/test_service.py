"""Telestion services in-process: start_service, Service, health, NATS micro discovery, lifecycle.

Everything runs against real nats-servers (the conftest fixtures). SIGTERM/SIGINT handling of
run_forever() is tested in a child process, so a stray signal can never hit the test runner.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, Dict, Iterator, List

import jsonschema
import nats
import pytest
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

import telestion_sync as ts
import telestion_sync.service as service_module
from telestion_sync.server import NatsServer, free_port

from .conftest import clean_env

pytestmark = pytest.mark.timeout(30)

# Timing on a slow, loaded CI machine: waits for replies that must come are generous (REPLY_WAIT,
# ended early by max_msgs / max_services as soon as all expected replies are in); a test that
# proves "exactly one" keeps listening EXTRA_WAIT seconds after the expected replies arrived.
REPLY_WAIT = 5.0
EXTRA_WAIT = 1.0


def scatter_gather(
    bus: ts.MessageBus, subject: str, expected: int = 1, *, requests: int = 1, extra_wait: float = EXTRA_WAIT
) -> List[List[ts.Message]]:
    """Send ``requests`` requests on ``subject`` at once, each with its own reply subject; wait
    (up to REPLY_WAIT s per reply) until each has ``expected`` replies, then ``extra_wait`` s more
    for replies beyond that. Returns the replies of each request, so "exactly ``expected``
    replies per request" is a meaningful assertion however slow the machine is."""
    inbox = bus.new_inbox()
    sub = bus.subscribe(f"{inbox}.*")
    got: List[List[ts.Message]] = [[] for _ in range(requests)]

    def receive(timeout: float) -> None:
        msg = sub.next_msg(timeout)
        got[int(msg.subject.rsplit(".", 1)[1])].append(msg)

    try:
        for i in range(requests):
            bus.publish(subject, reply=f"{inbox}.{i}")
        while any(len(replies) < expected for replies in got):
            try:
                receive(REPLY_WAIT)
            except ts.TimeoutError:
                pytest.fail(f"{subject}: replies per request {[len(r) for r in got]}, expected {expected}")
        deadline = time.monotonic() + extra_wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                receive(left)
            except ts.TimeoutError:
                break
    finally:
        sub.unsubscribe()
    return got


@pytest.fixture
def start(server: NatsServer, tmp_path: Path) -> Iterator:
    """start(name, **options) -> a Service on ``server`` (closed after the test)."""
    services: List[ts.Service] = []

    def run(name: str = "svc", **options: Any) -> ts.Service:
        env = {"NATS_URL": server.url, "SERVICE_NAME": name, "DATA_DIR": str(tmp_path / "data")}
        options.setdefault("argv", [])
        options.setdefault("connect_timeout", REPLY_WAIT)
        service = ts.start_service(env={**env, **options.pop("env", {})}, **options)
        services.append(service)
        if service.nats_enabled:
            # start_service() does not wait until the server has the health and discovery
            # subscriptions (see test_start_service_returns_once_the_server_has_its_subscriptions)
            service.bus.flush()
        return service

    yield run
    for service in services:
        service.close()


def no_nats(tmp_path: Path, **options: Any) -> ts.Service:
    env = {"NATS_URL": "localhost:4222", "SERVICE_NAME": "offline", "DATA_DIR": str(tmp_path / "d")}
    env.update(options.pop("env", {}))
    return ts.start_service(nats=False, argv=options.pop("argv", []), env=env, **options)


# --- configuration ---------------------------------------------------------------------------


def test_precedence_dev_file_env_cli_overrides(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    keys = ("A", "B", "C", "D", "SERVICE_NAME")
    config_file.write_text(json.dumps({k: "file" for k in keys}))
    service = ts.start_service(
        nats=False,
        argv=["--dev", "--C=cli", "--D", "cli"],
        env={"CONFIG_FILE": str(config_file), "B": "env", "C": "env", "D": "env", "DATA_DIR": str(tmp_path)},
        overrides={"D": "override"},
    )
    with service:
        c = service.config
        assert (c["A"], c["B"], c["C"], c["D"]) == ("file", "env", "cli", "override")
        assert c["SERVICE_NAME"] == "file"  # the file beats --dev
        assert c["NATS_URL"] == "localhost:4222"  # --dev default
        assert "NATS_USER" not in c and "NATS_PASSWORD" not in c
        assert service.service_name == "file"


def test_config_file_object_under_config_key(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"pub": {"FREQUENCY": 2, "DATA_SUBJECT": "d.x"}, "FREQUENCY": 9}))
    with no_nats(tmp_path, env={"CONFIG_FILE": str(config_file), "CONFIG_KEY": "pub"}) as service:
        assert service.config["FREQUENCY"] == 2  # JSON values keep their type in-process
        assert service.config["DATA_SUBJECT"] == "d.x"


def test_overrides_can_supply_required_keys(tmp_path: Path) -> None:
    service = ts.start_service(
        nats=False,
        argv=[],
        env={},
        overrides={"NATS_URL": "x:1", "SERVICE_NAME": "ov", "DATA_DIR": str(tmp_path), "N": 5},
    )
    with service:
        assert service.service_name == "ov"
        assert service.config["N"] == 5


def test_missing_keys_fail_naming_them_and_dev() -> None:
    with pytest.raises(ts.ConfigError) as info:
        ts.start_service(nats=False, argv=["--SERVICE_NAME=x"], env={})
    text = str(info.value)
    assert "NATS_URL" in text and "DATA_DIR" in text and "--dev" in text
    assert "SERVICE_NAME" not in text


@pytest.mark.parametrize(
    "content, key, expected",
    [
        (None, None, "does not exist"),
        ("{nope", None, "not valid JSON"),
        ("[1, 2]", None, "JSON object"),
        ('{"a": 1}', "a", "CONFIG_KEY 'a'"),
        ('{"a": {}}', "b", "CONFIG_KEY 'b'"),
    ],
)
def test_config_file_errors_name_the_file_and_key(tmp_path: Path, content, key, expected) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    env = {"CONFIG_FILE": str(path), **({"CONFIG_KEY": key} if key else {})}
    with pytest.raises(ts.ConfigError) as info:
        no_nats(tmp_path, env=env)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_config_is_a_read_only_mapping_with_attribute_access(tmp_path: Path) -> None:
    with no_nats(tmp_path, env={"NATS_PASSWORD": "hunter2", "EXTRA": "x"}) as service:
        config = service.config
        assert isinstance(config, Mapping) and not isinstance(config, MutableMapping)
        assert config.SERVICE_NAME == config["SERVICE_NAME"] == "offline"
        assert config.EXTRA == "x"
        assert config.get("MISSING", "default") == "default"
        with pytest.raises(AttributeError, match="MISSING"):
            config.MISSING  # noqa: B018
        with pytest.raises(KeyError):
            config["MISSING"]
        with pytest.raises(TypeError):
            config["EXTRA"] = "changed"  # type: ignore[index]
        with pytest.raises(TypeError):
            del config["EXTRA"]  # type: ignore[attr-defined]
        assert "EXTRA" in config and len(config) == len(dict(config))
        assert "hunter2" not in repr(config)  # the password is masked


def test_config_attributes_cannot_be_assigned(tmp_path: Path) -> None:
    with no_nats(tmp_path) as service:
        with pytest.raises((AttributeError, TypeError)):
            service.config.SERVICE_NAME = "changed"
        assert service.config.SERVICE_NAME == service.config["SERVICE_NAME"]


def test_data_dir_is_absolute_and_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with no_nats(tmp_path, env={"DATA_DIR": "nested/deeper/data"}) as service:
        assert service.data_dir.is_absolute()
        assert service.data_dir == tmp_path.resolve() / "nested" / "deeper" / "data"
        assert service.data_dir.is_dir()
        assert service.config["DATA_DIR"] == "nested/deeper/data"  # the config keeps what was given


def test_data_dir_that_cannot_be_created_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ts.ConfigError, match="DATA_DIR"):
        no_nats(tmp_path, env={"DATA_DIR": str(blocker / "data")})


# --- the bus ---------------------------------------------------------------------------------


def test_bus_aliases_and_connection_name(start) -> None:
    service = start("aliases")
    assert isinstance(service.bus, ts.MessageBus)
    assert service.bus is service.nc is service.message_bus
    assert service.bus.is_connected
    assert service.bus.name == "aliases"  # the connection is named after the service
    assert service.nats_enabled is True
    assert service.service_name == "aliases"


def test_nats_disabled_bus_raises_config_error(tmp_path: Path) -> None:
    with no_nats(tmp_path, env={"NATS_URL": f"127.0.0.1:{free_port()}"}) as service:  # never contacted
        assert service.nats_enabled is False
        for alias in ("bus", "nc", "message_bus"):
            with pytest.raises(ts.ConfigError, match="NATS is disabled"):
                getattr(service, alias)
        with pytest.raises(ts.ConfigError, match="NATS is disabled"):
            service.endpoint("x", lambda msg: None)
        assert "NATS disabled" in repr(service)


def test_start_up_fails_fast_offline_and_with_wrong_credentials(
    auth_server: NatsServer, tmp_path: Path
) -> None:
    base = {"SERVICE_NAME": "s", "DATA_DIR": str(tmp_path)}
    with pytest.raises(ts.NoServersError):
        ts.start_service(argv=[], env={**base, "NATS_URL": f"localhost:{free_port()}"}, connect_timeout=1)
    with pytest.raises(ts.AuthenticationError):  # the server answers at once: no waiting
        ts.start_service(
            argv=[],
            env={**base, "NATS_URL": auth_server.url, "NATS_USER": "alice", "NATS_PASSWORD": "bad"},
            connect_timeout=REPLY_WAIT,
        )
    ok = ts.start_service(
        argv=[],
        env={**base, "NATS_URL": auth_server.url, "NATS_USER": "alice", "NATS_PASSWORD": "s3cret"},
        connect_timeout=REPLY_WAIT,
    )
    with ok:
        assert ok.bus.is_connected


class SlowUplink:
    """A loopback TCP proxy that delivers client->server bytes ``delay`` seconds late (network
    latency on the uplink); server->client bytes pass at once."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"nats://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: List[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            chunks: queue.Queue = queue.Queue()
            threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._read, args=(client, chunks), daemon=True).start()
            threading.Thread(target=self._send_late, args=(chunks, upstream), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _read(src: socket.socket, chunks: queue.Queue) -> None:
        try:
            while True:
                data = src.recv(65536)
                chunks.put((time.monotonic(), data))
                if not data:
                    return
        except OSError:
            chunks.put((time.monotonic(), b""))

    def _send_late(self, chunks: queue.Queue, dst: socket.socket) -> None:
        try:
            while True:
                received, data = chunks.get()
                time.sleep(max(0.0, received + self.delay - time.monotonic()))  # the latency itself
                if not data:
                    return
                dst.sendall(data)
        except OSError:
            pass

    def __enter__(self) -> SlowUplink:
        return self

    def __exit__(self, *exc: Any) -> None:
        for sock in self._sockets:
            sock.close()


def test_start_service_returns_once_the_server_has_its_subscriptions(
    server: NatsServer, bus: ts.MessageBus, tmp_path: Path
) -> None:
    with SlowUplink(server.port, delay=0.3) as uplink:
        env = {"NATS_URL": uplink.url, "SERVICE_NAME": "slow", "DATA_DIR": str(tmp_path)}
        with ts.start_service(argv=[], env=env, connect_timeout=3) as service:
            assert service.bus.is_connected
            replies = bus.request_many("__telestion__.health", timeout=2, max_msgs=1)
            assert [m.data for m in replies] == [{"errors": 0, "name": "slow"}]


# --- health ----------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["__telestion__.health", "__telestion__/health"])
def test_every_instance_answers_health_without_a_queue_group(start, bus: ts.MessageBus, subject) -> None:
    start("twin")
    start("twin")
    replies = bus.request_many(subject, timeout=REPLY_WAIT, max_msgs=2)  # a queue group gives 1
    assert [m.data for m in replies] == [{"errors": 0, "name": "twin"}] * 2


def test_health_counts_reported_errors(start, other: ts.MessageBus, errors) -> None:
    service = start("faulty", on_error=errors)
    got: List[ts.Message] = []
    service.bus.subscribe("telemetry.broken", got.append)
    service.bus.flush()
    assert other.request("__telestion__.health", timeout=REPLY_WAIT).data == {"errors": 0, "name": "faulty"}

    # A CBOR-marked payload that is not CBOR: a DecodeError for the service's error handler.
    other.publish("telemetry.broken", b"\xff\xfe", headers={"Content-Type": "application/cbor"})
    errors.wait(ts.DecodeError)
    assert got == []
    assert service.recent_errors == 1
    for subject in ("__telestion__.health", "__telestion__/health"):
        assert other.request(subject, timeout=REPLY_WAIT).data == {"errors": 1, "name": "faulty"}
    found = ts.discover_services(other, timeout=REPLY_WAIT, max_services=1)
    assert found == [{"errors": 1, "name": "faulty"}]


def test_health_forgets_errors_after_the_window(
    start, other: ts.MessageBus, errors, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.monotonic()]
    monkeypatch.setattr(service_module, "_clock", lambda: now[0])  # time moves only when told
    service = start("forgetful", on_error=errors)
    service.bus.subscribe("telemetry.broken", lambda msg: None)
    service.bus.flush()

    def report_one_error() -> None:  # a DecodeError for the service's error handler
        seen = len(errors.of(ts.DecodeError))
        other.publish("telemetry.broken", b"\xff\xfe", headers={"Content-Type": "application/cbor"})
        errors.wait_many(ts.DecodeError, seen + 1)

    def health() -> int:
        reply = other.request("__telestion__.health", timeout=REPLY_WAIT).data
        assert reply["name"] == "forgetful"
        return int(reply["errors"])

    window = service_module.ERROR_WINDOW
    report_one_error()  # at t0
    now[0] += window / 2
    report_one_error()  # at t0 + window/2
    assert (service.recent_errors, health()) == (2, 2)
    now[0] += window / 2 - 1  # the first error is one second short of the window: still counted
    assert (service.recent_errors, health()) == (2, 2)
    now[0] += 2  # ... and one second past it, it is gone
    assert (service.recent_errors, health()) == (1, 1)
    report_one_error()
    assert health() == 2
    now[0] += window + 1  # both remaining errors are older than the window
    assert (service.recent_errors, health()) == (0, 0)


def test_health_counts_a_permission_error(tmp_path: Path, errors) -> None:
    users = """authorization { users: [
        {user: "svc", password: "pw", permissions: {publish: {deny: ["forbidden.>"]}}}
    ] }"""
    with NatsServer(config=users) as srv:
        env = {
            "NATS_URL": srv.url,
            "NATS_USER": "svc",
            "NATS_PASSWORD": "pw",
            "SERVICE_NAME": "p",
            "DATA_DIR": str(tmp_path),
        }
        with ts.start_service(argv=[], env=env, on_error=errors) as service:
            service.bus.publish("forbidden.x", b"1")
            errors.wait(ts.PermissionViolationError)
            reply = service.bus.request("__telestion__.health", timeout=REPLY_WAIT)
            assert reply.data == {"errors": 1, "name": "p"}


def test_discover_services_lists_running_services(start, bus: ts.MessageBus, tmp_path: Path) -> None:
    start("beta")
    start("alpha")
    with no_nats(tmp_path):  # a service without NATS is not on the bus
        found = ts.discover_services(bus, timeout=REPLY_WAIT, max_services=2)
        assert ts.discover_services(bus, timeout=0.5) == found  # and no third one answers
    assert found == [{"errors": 0, "name": "alpha"}, {"errors": 0, "name": "beta"}]


def test_discover_services_without_services_is_empty(bus: ts.MessageBus) -> None:
    assert ts.discover_services(bus, timeout=0.2) == []


# --- NATS micro discovery --------------------------------------------------------------------


def test_srv_ping_all_and_by_name(start, bus: ts.MessageBus) -> None:
    a = start("alpha", version="1.2.3")
    b = start("beta")
    pings = [m.data for m in bus.request_many("$SRV.PING", timeout=REPLY_WAIT, max_msgs=2)]
    assert sorted(p["name"] for p in pings) == ["alpha", "beta"]
    for p in pings:
        assert p["type"] == "io.nats.micro.v1.ping_response"
        assert set(p) == {"type", "name", "id", "version", "metadata"}
        assert p["metadata"]["telestion.service_name"] == p["name"]
    (by_name,) = scatter_gather(bus, "$SRV.PING.alpha", extra_wait=0.5)  # beta must not answer
    assert [m.data["id"] for m in by_name] == [a.id]
    assert by_name[0].data["version"] == "1.2.3"
    assert bus.request(f"$SRV.PING.beta.{b.id}", timeout=REPLY_WAIT).data["id"] == b.id
    with pytest.raises(ts.NoRespondersError):
        bus.request("$SRV.PING.gamma", timeout=1)


def test_srv_names_are_sanitized_for_micro(start, bus: ts.MessageBus) -> None:
    service = start("ground.station/1")
    ping = bus.request("$SRV.PING.ground_station_1", timeout=REPLY_WAIT).data
    assert ping["name"] == "ground_station_1"
    assert ping["id"] == service.id
    assert ping["metadata"]["telestion.service_name"] == "ground.station/1"


def test_srv_info_lists_endpoints(start, bus: ts.MessageBus) -> None:
    service = start("calc", description="adds numbers", version="2.0.0")
    service.endpoint("calc.add", lambda msg: msg.data["a"] + msg.data["b"])
    service.endpoint("calc.div", lambda msg: 1, name="divide", queue="dividers")
    service.endpoint("calc.>", lambda msg: 0)
    info = bus.request("$SRV.INFO.calc", timeout=REPLY_WAIT).data
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert (info["name"], info["id"], info["version"]) == ("calc", service.id, "2.0.0")
    assert info["description"] == "adds numbers"
    assert info["endpoints"] == [  # the default name is the subject made a valid micro name
        {"name": "calc_add", "subject": "calc.add", "queue_group": "calc", "metadata": {}},
        {"name": "divide", "subject": "calc.div", "queue_group": "dividers", "metadata": {}},
        {"name": "calc__", "subject": "calc.>", "queue_group": "calc", "metadata": {}},
    ]
    infos = bus.request_many("$SRV.INFO", timeout=REPLY_WAIT, max_msgs=1)
    assert [m.data["id"] for m in infos] == [service.id]


@pytest.mark.parametrize("name", ["calc.add", "with space", "latest.>", "", "ümlaut"])
def test_an_invalid_endpoint_name_fails_naming_it(start, bus: ts.MessageBus, name: str) -> None:
    service = start("calc")
    with pytest.raises(ts.ConfigError) as info:
        service.endpoint("calc.add", lambda msg: 1, name=name)
    assert repr(name) in str(info.value) and "endpoint name" in str(info.value)
    assert "letters, digits, '-' and '_'" in str(info.value)
    assert bus.request("$SRV.INFO.calc", timeout=REPLY_WAIT).data["endpoints"] == []
    with pytest.raises(ts.NoRespondersError):  # nothing was subscribed
        bus.request("calc.add", timeout=REPLY_WAIT)


@pytest.mark.parametrize("version", ["1.0", "v1.2.3", "1.2.3.4", "01.2.3", "1.2.3-", "", "latest", "1.2.3\n"])
def test_a_version_that_is_not_semver_fails_naming_it(tmp_path: Path, version: str) -> None:
    env = {"NATS_URL": f"127.0.0.1:{free_port()}", "SERVICE_NAME": "v", "DATA_DIR": str(tmp_path)}
    for nats_enabled in (True, False):  # checked before connecting: no NoServersError here
        with pytest.raises(ts.ConfigError) as info:
            ts.start_service(nats=nats_enabled, argv=[], env=env, version=version, connect_timeout=1)
        assert repr(version) in str(info.value) and "semantic version" in str(info.value)


@pytest.mark.parametrize("version", ["0.0.0", "1.2.3", "10.20.30", "1.0.0-rc.1", "2.0.0-alpha-1+build.5"])
def test_semver_versions_are_accepted(tmp_path: Path, version: str) -> None:
    with no_nats(tmp_path, version=version) as service:
        assert service.version == version


# The io.nats.micro.v1 response schemas (nats-io/jsm.go schemas/micro/v1/{ping,info,stats}_response
# .json), transcribed: the constraints a NATS micro service's discovery replies must meet.
_SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$", "minLength": 1}
_METADATA = {"oneOf": [{"type": "object", "additionalProperties": {"type": "string"}}, {"type": "null"}]}
_INT64 = {"type": "integer", "maximum": 2**63 - 1, "minimum": -(2**63 - 1)}


def _micro_response(kind: str, required: List[str], **properties: Any) -> Dict[str, Any]:
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["type", "name", "id", "version", *required],
        "properties": {
            "type": {"type": "string", "const": f"io.nats.micro.v1.{kind}_response"},
            "name": _NAME,
            "id": {"type": "string", "minLength": 1},
            "version": {"type": "string", "pattern": _SEMVER_PATTERN, "minLength": 5},
            "metadata": _METADATA,
            **properties,
        },
    }


MICRO_V1_SCHEMAS = {
    "PING": _micro_response("ping", []),
    "INFO": _micro_response(
        "info",
        ["description"],
        description={"type": "string"},
        endpoints={
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "subject"],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "metadata": _METADATA,
                    "queue_group": {"type": "string"},
                },
            },
        },
    ),
    "STATS": _micro_response(
        "stats",
        ["started", "endpoints"],
        started={"type": "string", "format": "date-time"},  # checked below: needs an extra package
        endpoints={
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "subject",
                    "num_requests",
                    "num_errors",
                    "last_error",
                    "processing_time",
                    "average_processing_time",
                ],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "num_requests": _INT64,
                    "num_errors": _INT64,
                    "last_error": {"type": "string"},
                    "processing_time": _INT64,
                    "average_processing_time": _INT64,
                    "queue_group": {"type": "string"},
                    "data": {"type": "object"},  # optional; an object in earlier schema revisions
                },
            },
        },
    ),
}
_RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"


def test_srv_replies_match_the_micro_v1_schemas(start, bus: ts.MessageBus) -> None:
    service = start("ground.station", description="schema check", version="1.0.0-rc.1+build.5")
    service.endpoint("calc.add", lambda msg: msg.data["a"] + msg.data["b"])  # default names
    service.endpoint("latest.>", lambda msg: b"")
    service.endpoint("calc.div", lambda msg: msg.data["a"] / msg.data["b"], name="div-ide", queue="q")
    assert bus.request("calc.add", {"a": 1, "b": 2}, timeout=REPLY_WAIT).data == 3
    with pytest.raises(ts.ServiceError):
        bus.request("calc.div", {"a": 1, "b": 0}, timeout=REPLY_WAIT)

    name = "ground_station"
    for verb, schema in MICRO_V1_SCHEMAS.items():
        validator = jsonschema.Draft7Validator(schema)
        for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{name}", f"$SRV.{verb}.{name}.{service.id}"):
            reply = bus.request(subject, timeout=REPLY_WAIT).data
            problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(reply)]
            assert problems == [], f"{subject} does not match the schema: {problems}\n{reply}"
            assert (reply["name"], reply["id"]) == (name, service.id)
            if verb != "PING":
                assert len(reply["endpoints"]) == 3
                assert [e["name"] for e in reply["endpoints"]] == ["calc_add", "latest__", "div-ide"]
            if verb == "STATS":
                assert re.match(_RFC3339, reply["started"]), reply["started"]
                started = datetime.datetime.fromisoformat(reply["started"].replace("Z", "+00:00"))
                assert started.tzinfo is not None
                assert [e["num_requests"] for e in reply["endpoints"]] == [1, 0, 1]
                assert [e["data"] for e in reply["endpoints"]] == [{}] * 3  # an object, never null


def test_srv_stats_count_requests_and_errors(start, bus: ts.MessageBus, errors) -> None:
    service = start("calc", on_error=errors)

    def divide(msg: ts.Message) -> float:
        return msg.data["a"] / msg.data["b"]

    service.endpoint("calc.div", divide, name="divide")
    service.bus.flush()  # the server has the endpoint's subscription
    assert bus.request("calc.div", {"a": 6, "b": 3}, timeout=REPLY_WAIT).data == 2.0
    with pytest.raises(ts.ServiceError) as info:
        bus.request("calc.div", {"a": 1, "b": 0}, timeout=REPLY_WAIT)
    assert "division by zero" in str(info.value)

    stats = bus.request(f"$SRV.STATS.calc.{service.id}", timeout=REPLY_WAIT).data
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    assert stats["id"] == service.id and stats["name"] == "calc"
    assert stats["started"].endswith("Z")
    (endpoint,) = stats["endpoints"]
    assert endpoint["name"] == "divide" and endpoint["subject"] == "calc.div"
    assert endpoint["queue_group"] == "calc"
    assert endpoint["num_requests"] == 2
    assert endpoint["num_errors"] == 1
    assert "division by zero" in endpoint["last_error"]
    assert endpoint["processing_time"] > 0
    assert endpoint["average_processing_time"] == endpoint["processing_time"] // 2
    # The failed request is also an error for the health check (reported after the reply went
    # out, on the bus's status thread: wait for it).
    assert "ZeroDivisionError" in str(errors.wait(ts.Error))
    assert bus.request("__telestion__.health", timeout=REPLY_WAIT).data["errors"] == 1


def test_endpoint_uses_the_service_name_as_queue_group(start, bus: ts.MessageBus) -> None:
    handled: Dict[str, int] = {}
    lock = threading.Lock()

    def worker(service: ts.Service) -> Any:
        def handle(msg: ts.Message) -> str:
            with lock:
                handled[service.id] = handled.get(service.id, 0) + 1
            return service.id

        return handle

    instances = [start("workers"), start("workers")]
    for service in instances:
        service.endpoint("work.do", worker(service))
        service.bus.flush()
    replies = scatter_gather(bus, "work.do", requests=3)
    assert [len(r) for r in replies] == [1, 1, 1]  # one answer per request
    answered_by = {bus.request("work.do", timeout=REPLY_WAIT).data for _ in range(40)}
    assert sum(handled.values()) == 43
    assert answered_by == {s.id for s in instances}  # the group spreads the work
    counts = {}
    for s in instances:
        stats = bus.request(f"$SRV.STATS.workers.{s.id}", timeout=REPLY_WAIT).data
        counts[s.id] = stats["endpoints"][0]["num_requests"]
    assert counts == handled


# --- lifecycle -------------------------------------------------------------------------------


def test_run_forever_returns_after_stop_from_another_thread(start, other: ts.MessageBus) -> None:
    service = start("runner")
    received: List[int] = []
    service.bus.subscribe("work", lambda msg: received.append(msg.data))
    service.bus.flush()
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def feed_then_stop() -> None:
        for i in range(200):
            other.publish("work", i)
        other.flush()  # the server routed every message to the service before it stops
        service.stop()

    stopper = threading.Thread(target=feed_then_stop)
    stopper.start()
    service.run_forever()  # main thread: installs (and restores) SIGINT/SIGTERM handlers
    stopper.join(5)
    assert service.bus.is_closed
    assert received == list(range(200))  # drained before closing
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with pytest.raises(ts.ConnectionClosedError):
        service.bus.publish("x", b"")


def test_run_forever_off_the_main_thread(start) -> None:
    service = start("threaded")
    runner = threading.Thread(target=service.run_forever)
    runner.start()
    service.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert service.bus.is_closed


def test_close_is_idempotent_and_context_manager_closes(start, bus: ts.MessageBus) -> None:
    service = start("closing")
    service.close()
    service.close()
    service.close(drain=True)
    assert service.bus.is_closed
    service.run_forever()  # already stopped: returns at once

    with start("ctx") as ctx:
        assert ctx.bus.is_connected
        found = ts.discover_services(bus, timeout=REPLY_WAIT, max_services=1)
        assert [s["name"] for s in found] == ["ctx"]
    assert ctx.bus.is_closed
    assert ts.discover_services(bus, timeout=0.5) == []  # neither closed service answers


_SIGNAL_SCRIPT = """
import signal, sys, threading, time
import telestion_sync as ts

service = ts.start_service()
service.endpoint("svc.echo", lambda msg: msg.data)
received = []
service.bus.subscribe("work", lambda msg: received.append(msg.data))
service.bus.flush()  # every subscription is known to the server before "ready"

def announce():
    # ready once run_forever() has installed its handler (so the signal cannot kill us early)
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        time.sleep(0.005)
    print("ready", service.service_name, flush=True)

threading.Thread(target=announce, daemon=True).start()
service.run_forever()
print("closed", service.bus.is_closed, len(received), flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_forever_stops_on_signals(server: NatsServer, bus: ts.MessageBus, tmp_path: Path, sig) -> None:
    script = tmp_path / "service.py"
    script.write_text(_SIGNAL_SCRIPT)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            f"--NATS_URL={server.url}",
            "--SERVICE_NAME=sig",
            f"--DATA_DIR={tmp_path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip()) for line in proc.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=10) == "ready sig"
        assert bus.request("svc.echo", {"x": 1}, timeout=10).data == {"x": 1}
        for i in range(50):
            bus.publish("work", i)
        bus.flush()  # the server routed all 50 to the service: they must be handled before it exits
        found = ts.discover_services(bus, timeout=REPLY_WAIT, max_services=1)
        assert [s["name"] for s in found] == ["sig"]
        proc.send_signal(sig)
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
        assert lines.get(timeout=5) == "closed True 50"
        assert ts.discover_services(bus, timeout=0.2) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --- interop: nats-py sees the micro discovery -----------------------------------------------


def test_nats_py_reads_the_discovery_responses(start, server: NatsServer) -> None:
    service = start("interop", version="1.0.0")
    service.endpoint("interop.echo", lambda msg: msg.data)
    service.bus.flush()

    async def ask() -> Dict[str, Any]:
        nc = await nats.connect(server.url)
        try:
            echo = await nc.request("interop.echo", b'{"n": 1}', timeout=2)
            out = {"echo": json.loads(echo.data)}
            for verb in ("PING", "INFO", "STATS"):
                msg = await nc.request(f"$SRV.{verb}.interop", b"", timeout=2)
                out[verb] = json.loads(msg.data)
            return out
        finally:
            await nc.close()

    got = asyncio.run(ask())
    assert got["echo"] == {"n": 1}
    ping = ServicePing.from_dict(got["PING"])
    assert (ping.name, ping.id, ping.version) == ("interop", service.id, "1.0.0")
    info = ServiceInfo.from_dict(got["INFO"])
    assert [(e.name, e.subject, e.queue_group) for e in info.endpoints] == [
        ("interop_echo", "interop.echo", "interop")
    ]
    assert got["STATS"]["endpoints"][0]["num_requests"] == 1


def test_nats_py_parses_the_stats_response(start, bus: ts.MessageBus) -> None:
    service = start("interop")
    service.endpoint("interop.echo", lambda msg: msg.data)
    service.bus.flush()
    bus.request("interop.echo", {"n": 1}, timeout=REPLY_WAIT)
    stats = ServiceStats.from_dict(bus.request("$SRV.STATS.interop", timeout=REPLY_WAIT).data)
    assert stats.endpoints[0].num_requests == 1
