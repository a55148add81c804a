"""Telestion services in synchronous Python: ``start_service()``, health, NATS micro discovery.

A Python service started here behaves like the TypeScript and Go ones: the same configuration
keys and precedence, the same start-up failures, the ``__telestion__.health`` check every
instance answers, and the ``$SRV.PING|INFO|STATS`` discovery of NATS micro services, so the
standard ``nats`` tooling lists it.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence

from . import codecs as _codecs
from .client import MessageBus, connect
from .config import Config, load_config
from .errors import ConfigError, Error
from .message import Message
from .options import (
    CALL,
    ConnectOptions,
    check_argv,
    check_bool,
    check_callback,
    check_mapping,
    check_max_msgs,
    check_path,
    check_queue,
    check_subject,
    check_timeout,
)
from .status import log_error
from .subscription import Subscription

log = logging.getLogger("telestion_sync.service")

HEALTH_SUBJECTS = ("__telestion__.health", "__telestion__/health")
ERROR_WINDOW = 60.0  # seconds of errors the health check counts
_clock = time.monotonic  # the error window's clock (a module attribute, so tests can move time on)

# What the io.nats.micro.v1 schemas (and nats.go's micro package) accept: names of services and
# endpoints, and the service version (the regular expression semver.org suggests).
_MICRO_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)


class _ErrorWindow:
    """Counts errors reported in the last ``ERROR_WINDOW`` seconds, then passes them on.

    Bounded: counts are kept per second (at most ``ERROR_WINDOW`` + 1 buckets), however many
    errors arrive; a coalesced report counts as the ``repeated`` errors it stands for."""

    def __init__(self, forward: Optional[Callable[[BaseException], Any]]) -> None:
        self._buckets: Deque[List[int]] = collections.deque()  # [second, count], oldest first
        self._lock = threading.Lock()
        self._forward = forward

    def __call__(self, err: BaseException) -> None:
        second = int(_clock())
        count = getattr(err, "repeated", 1)
        with self._lock:
            if self._buckets and self._buckets[-1][0] == second:
                self._buckets[-1][1] += count
            else:
                self._buckets.append([second, count])
                self._expire()
        (self._forward or log_error)(err)

    def _expire(self) -> None:
        cutoff = _clock() - ERROR_WINDOW
        while self._buckets and self._buckets[0][0] + 1 <= cutoff:
            self._buckets.popleft()

    def recent(self) -> int:
        with self._lock:
            self._expire()
            return sum(count for _, count in self._buckets)

    @property
    def buckets(self) -> int:
        """How many per-second counts are kept (bounded by the window)."""
        return len(self._buckets)


class _EndpointStats:
    """Per-endpoint counters for ``$SRV.STATS`` (in nanoseconds, as NATS micro reports)."""

    def __init__(self, name: str, subject: str, queue: Optional[str]) -> None:
        self.name = name
        self.subject = subject
        self.queue = queue
        self.num_requests = 0
        self.num_errors = 0
        self.last_error = ""
        self.processing_time = 0
        self._lock = threading.Lock()

    def record(self, elapsed_ns: int, error: Optional[str]) -> None:
        with self._lock:
            self.num_requests += 1
            self.processing_time += elapsed_ns
            if error is not None:
                self.num_errors += 1
                self.last_error = error

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "queue_group": self.queue, "metadata": {}}

    def stats(self) -> Dict[str, Any]:
        # "data" is an empty object, never null: revisions of the io.nats.micro.v1 stats schema
        # require an object there. nats.go omits it when empty, but nats-py's
        # EndpointStats.from_dict requires the key, so {} is what every reader accepts.
        with self._lock:
            n = self.num_requests
            return {
                "name": self.name,
                "subject": self.subject,
                "queue_group": self.queue,
                "num_requests": n,
                "num_errors": self.num_errors,
                "last_error": self.last_error,
                "processing_time": self.processing_time,
                "average_processing_time": self.processing_time // n if n else 0,
                "data": {},
            }


def make_data_dir(config: Mapping[str, Any]) -> Path:
    """``DATA_DIR`` as an absolute path, created if missing (ConfigError when it cannot be)."""
    path = Path(str(config["DATA_DIR"])).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"DATA_DIR {str(path)!r} cannot be created: {exc.strerror}") from None
    return path


def _micro_name(service_name: str) -> str:
    """NATS micro names allow letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", service_name) or "service"


def _check_version(version: str) -> None:
    """NATS micro discovery reports the version, and its schema requires SemVer (``1.2.3``)."""
    if not isinstance(version, str) or not _SEMVER.fullmatch(version):
        raise ConfigError(
            f"version {version!r} is not a semantic version (like '1.2.3' or '2.0.0-rc.1'); "
            "NATS micro discovery requires SemVer"
        )


def _check_service_args(description: Any, version: Any) -> None:
    """``description`` (a str) and ``version`` (SemVer) of a service: ConfigError otherwise."""
    if not isinstance(description, str):
        raise ConfigError(f"description must be a str, not {type(description).__name__}")
    _check_version(version)


def _endpoint_name(name: Optional[str], subject: str) -> str:
    """The endpoint's micro name: ``name`` when valid, by default derived from ``subject``."""
    if name is None:
        return _micro_name(subject)  # "calc.add" -> "calc_add", "latest.>" -> "latest__"
    if not isinstance(name, str) or not _MICRO_NAME.fullmatch(name):
        raise ConfigError(
            f"endpoint name {name!r} is invalid: NATS micro names allow only letters, digits, "
            f"'-' and '_' (e.g. {_micro_name(str(name))!r})"
        )
    return name


class Service:
    """A started Telestion service: its configuration, data directory and bus.

    ``bus`` (aliases ``nc``, ``message_bus``) is the connected :class:`MessageBus`; with
    ``nats=False`` it raises :class:`ConfigError` saying NATS is disabled. Use as a context
    manager, or call :meth:`run_forever` to serve until SIGINT/SIGTERM.
    """

    def __init__(
        self,
        config: Config,
        bus: Optional[MessageBus],
        errors: _ErrorWindow,
        *,
        description: str = "",
        version: str = "0.0.0",
        data_dir: Optional[Path] = None,
    ) -> None:
        _check_service_args(description, version)
        check_mapping("config", config)
        check_path("data_dir", data_dir)
        self.config = config
        self.service_name: str = str(config["SERVICE_NAME"])
        # start_service made it already (before connecting); made here when built directly
        self.data_dir = data_dir if data_dir is not None else make_data_dir(config)
        self._bus = bus
        self._errors = errors
        self.id = secrets.token_hex(11)
        self.description = description
        self.version = version
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self._endpoints: List[_EndpointStats] = []
        self._stop = threading.Event()
        self._closed = False
        if bus is not None:
            for subject in HEALTH_SUBJECTS:
                bus.reply(subject, self._health)  # no queue group: every instance answers
            self._serve_discovery(bus)
            bus.flush()  # started means: the server knows our subscriptions

    # --- the bus -----------------------------------------------------------------------------

    @property
    def bus(self) -> MessageBus:
        """The connected message bus."""
        if self._bus is None:
            raise ConfigError("NATS is disabled for this service (started with nats=False)")
        return self._bus

    nc = bus
    message_bus = bus

    @property
    def nats_enabled(self) -> bool:
        """Whether the service is on NATS (False when started with ``nats=False``, e.g. for
        the testbed's ``X_DISABLE_NATS``): check it before touching :attr:`bus`."""
        return self._bus is not None

    @property
    def recent_errors(self) -> int:
        """Errors reported to the bus's error handler in the last minute."""
        return self._errors.recent()

    # --- health and discovery ----------------------------------------------------------------

    def _health(self, msg: Message) -> Dict[str, Any]:
        return {"errors": self._errors.recent(), "name": self.service_name}

    def _identity(self, kind: str) -> Dict[str, Any]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": _micro_name(self.service_name),
            "id": self.id,
            "version": self.version,
            "metadata": {"telestion.service_name": self.service_name, "lang": "python-sync"},
        }

    def _ping(self, msg: Message) -> Dict[str, Any]:
        return self._identity("ping")

    def _info(self, msg: Message) -> Dict[str, Any]:
        return {
            **self._identity("info"),
            "description": self.description,
            "endpoints": [e.info() for e in self._endpoints],
        }

    def _stats(self, msg: Message) -> Dict[str, Any]:
        return {
            **self._identity("stats"),
            "started": self.started.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "endpoints": [e.stats() for e in self._endpoints],
        }

    def _serve_discovery(self, bus: MessageBus) -> None:
        name = _micro_name(self.service_name)
        for verb, handler in (("PING", self._ping), ("INFO", self._info), ("STATS", self._stats)):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{name}", f"$SRV.{verb}.{name}.{self.id}"):
                bus.reply(subject, handler)

    def endpoint(
        self,
        subject: str,
        handler: Callable[[Message], Any],
        *,
        name: Optional[str] = None,
        queue: Optional[str] = None,
        codec: _codecs.CodecSpec = "auto",
        schema: Optional[Callable[[Any], Any]] = None,
    ) -> Subscription:
        """Serve requests on ``subject`` in the service's queue group (``SERVICE_NAME``, so the
        instances share the work), with request/error counts and timings in ``$SRV.STATS``.

        ``name`` is the endpoint's name in NATS micro discovery: letters, digits, ``-`` and ``_``
        (:class:`ConfigError` otherwise); by default the subject with other characters as ``_``.
        """
        check_subject("subject", subject, wildcards=True)
        check_callback("handler", handler, optional=False)  # wrapped below: reply() sees timed
        check_queue(queue)  # "" is an error, not "the service's group"
        stats_name = _endpoint_name(name, subject)
        group = queue or self.service_name
        stats = _EndpointStats(stats_name, subject, group)

        def timed(msg: Message) -> Any:
            start = time.perf_counter_ns()
            try:
                result = handler(msg)
            except Exception as exc:
                stats.record(time.perf_counter_ns() - start, str(exc) or type(exc).__name__)
                raise
            stats.record(time.perf_counter_ns() - start, None)
            return result

        sub = self.bus.reply(subject, timed, queue=group, codec=codec, schema=schema)
        self._endpoints.append(stats)
        self.bus.flush()  # requests sent after this returns find the endpoint
        return sub

    # --- lifecycle ---------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Block until SIGINT or SIGTERM (or :meth:`stop`), then drain and close the bus."""
        previous: Dict[Any, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._stop.set())
        try:
            self._stop.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close(drain=True)

    def stop(self) -> None:
        """Make :meth:`run_forever` return (from any thread)."""
        self._stop.set()

    def close(self, drain: bool = False) -> None:
        """Close the bus (after delivering what is pending when ``drain``); idempotent."""
        check_bool("drain", drain, CALL)
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._bus is not None:
            if drain and self._bus.is_connected:
                try:
                    self._bus.drain(timeout=5)
                except Error:
                    self._bus.close()
            else:
                self._bus.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        nats = repr(self._bus) if self._bus is not None else "NATS disabled"
        return f"<Service {self.service_name!r} data_dir={str(self.data_dir)!r} {nats}>"


def start_service(
    *,
    nats: bool = True,
    argv: Optional[Sequence[str]] = None,
    env: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    description: str = "",
    version: str = "0.0.0",
    **connect_options: Any,
) -> Service:
    """Start a Telestion service: load and validate the configuration, create ``DATA_DIR``,
    connect to ``NATS_URL`` with ``NATS_USER``/``NATS_PASSWORD``, answer health checks.

    ``argv`` defaults to ``sys.argv[1:]`` and ``env`` to ``os.environ``. Start-up fails fast:
    :class:`ConfigError` for missing or unusable configuration, :class:`NoServersError` when the
    server is offline, :class:`AuthenticationError` for wrong credentials. Extra keyword
    arguments go to :func:`connect` (e.g. ``connect_timeout``, ``on_error``). ``version`` must be
    a semantic version (``1.2.3``; NATS micro discovery reports it), else :class:`ConfigError`.
    """
    # Programming errors: they fail before reading config, making DATA_DIR or connecting.
    _check_service_args(description, version)
    check_bool("nats", nats)
    check_argv("argv", argv)
    check_mapping("env", env)
    check_mapping("overrides", overrides)
    ConnectOptions.from_kwargs("start_service()", "nats://127.0.0.1:4222", connect_options)
    config = load_config(argv, env, overrides)
    data_dir = make_data_dir(config)  # a bad DATA_DIR fails before connecting, not hidden by a dead server
    errors = _ErrorWindow(connect_options.pop("on_error", None))
    bus = None
    if nats:
        connect_options.setdefault("name", str(config["SERVICE_NAME"]))
        if config.get("NATS_USER") is not None:
            connect_options.setdefault("user", str(config["NATS_USER"]))
        if config.get("NATS_PASSWORD") is not None:
            connect_options.setdefault("password", str(config["NATS_PASSWORD"]))
        bus = connect(str(config["NATS_URL"]), on_error=errors, **connect_options)
    try:
        service = Service(config, bus, errors, description=description, version=version, data_dir=data_dir)
    except BaseException:
        if bus is not None:
            bus.close()
        raise
    log.info(
        "service %s started (pid %d)%s", service.service_name, os.getpid(), "" if bus else " without NATS"
    )
    return service


def discover_services(
    bus: MessageBus, timeout: float = 0.5, *, max_services: Optional[int] = None
) -> List[Dict[str, Any]]:
    """Every Telestion service that answers the health check within ``timeout`` seconds, as
    ``{"name": ..., "errors": ...}`` dicts sorted by name.

    With ``max_services``, stop waiting once that many replies arrived: when you know how many
    instances to expect, a generous ``timeout`` then costs nothing unless one is missing.
    """
    if not isinstance(bus, MessageBus):
        raise TypeError(f"bus must be a MessageBus, not {type(bus).__name__}")
    check_timeout("timeout", timeout)
    check_max_msgs("max_services", max_services)
    found = []
    for msg in bus.request_many(HEALTH_SUBJECTS[0], timeout=timeout, max_msgs=max_services):
        try:
            data = msg.data
        except Error:
            continue
        if isinstance(data, dict) and "name" in data:
            found.append(data)
    return sorted(found, key=lambda d: str(d.get("name")))


__all__ = ["Service", "start_service", "discover_services", "HEALTH_SUBJECTS"]
