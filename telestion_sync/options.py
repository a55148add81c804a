"""Input checks: bad arguments fail at once, with a message naming the parameter.

Conventions (the README's "Input checking" lists them for users):

- **Configuration** (``ts.connect()``/``MessageBus`` options, ``start_service()``, ``Service``,
  ``load_config()``): a wrong type *or* value raises :class:`ConfigError` (a ``ValueError``)
  naming the option and what it takes, before any socket is opened or file is written.
- **Call arguments** (``publish``, ``subscribe``, ``request``, ``next_msg``...): a wrong type
  raises ``TypeError``, a wrong value ``ValueError``, each naming the parameter.
- **Subjects and queue groups**: any problem, a wrong type included, raises
  :class:`BadSubjectError` (a ``ValueError``), as it always has.
- ``bool`` is never taken for a number (``connect_timeout=True`` is an error), and a number is
  never taken for a ``bool``. Durations are seconds (``int`` or ``float``), finite, not NaN.
- Limits follow nats.go: a negative pending limit means unlimited and 0 is an error;
  ``max_reconnect_attempts=-1`` reconnects forever; ``reconnect_buf_size`` 0 or -1 keeps no
  buffer while disconnected (publishing then raises ``OutboundBufferFullError``; nats.go's -1).

Checks live here, not in the hot paths: ``publish()`` of bytes to a known subject runs none.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import os
import ssl
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple, Union

from . import codecs as _codecs
from .connection import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_OUTSTANDING_PINGS,
    DEFAULT_MAX_RECONNECT_ATTEMPTS,
    DEFAULT_PING_INTERVAL,
    DEFAULT_RECONNECT_BUF_SIZE,
    DEFAULT_RECONNECT_JITTER,
    DEFAULT_RECONNECT_TIME_WAIT,
    DEFAULT_WRITE_TIMEOUT,
)
from .errors import BadSubjectError, ConfigError
from .pool import parse_servers
from .protocol import validate_queue, validate_subject

_INF = math.inf

#: What a negative pending limit ("unlimited") becomes in a subscription: no queue reaches it,
#: so the per-message limit check stays one plain comparison.
UNLIMITED = sys.maxsize

_Errors = Tuple[type, type]
CONFIG: _Errors = (ConfigError, ConfigError)  # configuration: ConfigError for type and value
CALL: _Errors = (TypeError, ValueError)  # call arguments: TypeError / ValueError


def type_name(value: Any) -> str:
    """The type of ``value`` as an error message shows it (``dict``, ``NoneType``)."""
    return type(value).__name__


def _bad_type(name: str, expected: str, value: Any, errors: _Errors, hint: str = "") -> NoReturn:
    raise errors[0](f"{name} must be {expected}, not {type_name(value)}{hint}")


def _bad_value(name: str, rule: str, value: Any, errors: _Errors, show: bool = True) -> NoReturn:
    shown = f", not {value!r}" if show else ""
    raise errors[1](f"{name} {rule}{shown}")


def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` in Python, never a count here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name: str, value: Any, errors: _Errors = CONFIG) -> bool:
    """``True`` or ``False`` only: ``1``, ``"yes"`` or ``None`` are not guessed at."""
    if not isinstance(value, bool):
        _bad_type(name, "True or False", value, errors)
    return value


def check_int(name: str, value: Any, minimum: int, rule: str, errors: _Errors = CONFIG) -> int:
    """An integer (not a bool) of at least ``minimum``; ``rule`` says the range in words."""
    if not is_int(value):
        _bad_type(name, "an int", value, errors)
    if value < minimum:
        _bad_value(name, rule, value, errors)
    return int(value)


def check_seconds(
    name: str, value: Any, *, zero: bool = False, none: bool = False, errors: _Errors = CONFIG
) -> Optional[float]:
    """A finite number of seconds, > 0 (>= 0 with ``zero``); None passes with ``none``."""
    t = type(value)
    if (t is float or t is int) and (0.0 < value < _INF or (zero and value == 0)):
        return float(value)  # the common case, cheaply (NaN fails both comparisons)
    if value is None and none:
        return None
    if not is_number(value):
        expected = "a number of seconds" + (" or None" if none else "")
        _bad_type(name, expected, value, errors)
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not zero):
        rule = "must be a finite number of seconds " + (">= 0" if zero else "> 0")
        if none:
            rule += " (None: no limit)"
        _bad_value(name, rule, value, errors)
    return float(value)


def check_timeout(name: str, value: Any) -> float:
    """A call's timeout: seconds > 0, finite (TypeError / ValueError)."""
    return check_seconds(name, value, errors=CALL)  # type: ignore[return-value]


def check_wait(value: Any) -> None:
    """``next_msg``'s timeout: None (wait forever) or seconds >= 0 (0: only what is queued)."""
    if value is not None:
        check_seconds("timeout", value, zero=True, none=True, errors=CALL)


def check_callable(
    name: str, value: Any, errors: _Errors = CONFIG, *, optional: bool = True, hint: str = ""
) -> Any:
    """A plain callable (None too when ``optional``). An ``async def`` function is refused: it
    would be called on a thread and return a coroutine that never runs."""
    if value is None and optional:
        return None
    if not callable(value):
        expected = "callable" + (" or None" if optional else "")
        _bad_type(name, expected, value, errors, hint)
    if inspect.iscoroutinefunction(value):
        raise errors[0](
            f"{name} must be a plain function, not an async one: telestion_sync calls it on a "
            "thread of its own and would get a coroutine that never runs"
        )
    return value


def check_str(name: str, value: Any, errors: _Errors = CONFIG, *, optional: bool = True) -> Optional[str]:
    """A non-empty ``str`` (or None when ``optional``): an empty string is never a silent default."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        _bad_type(name, "a str" + (" or None" if optional else ""), value, errors)
    if not value:
        _bad_value(
            name,
            "must not be empty" + ("; pass None to leave it out" if optional else ""),
            value,
            errors,
            False,
        )
    return value


def check_path(name: str, value: Any, errors: _Errors = CONFIG) -> Optional[str]:
    """A file path: a non-empty ``str`` or ``os.PathLike`` (returned as ``str``), or None."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        _bad_type(name, "a file path (str or os.PathLike) or None", value, errors)
    if not value:
        _bad_value(name, "must not be empty; pass None to leave it out", value, errors, False)
    return value


def check_secret(name: str, value: Any, *, files: bool = False) -> Any:
    """A credential: a ``str`` or a callable returning one (called at each connect), or None.

    With ``files`` (``nkey_seed``, ``creds``) also ``bytes`` (decoded as UTF-8) and an
    ``os.PathLike`` path (as ``str``), and it must not be empty. The value is never shown in
    the message: it may be the secret itself.
    """
    if value is None or callable(value):
        return check_callable(name, value)
    if files and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if files and isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{name} bytes are not UTF-8 text (value not shown)") from None
    if not isinstance(value, str):
        expected = "a str, bytes, an os.PathLike path" if files else "a str"
        _bad_type(name, f"{expected} or a callable returning a str", value, CONFIG)
    if files and not value.strip():
        raise ConfigError(f"{name} must not be empty; pass None to leave it out")
    return value


def check_pending_limit(name: str, value: Any, errors: _Errors = CONFIG) -> int:
    """A pending limit as nats.go takes it: positive, or negative for unlimited; 0 is refused
    (it used to mean "the default" silently)."""
    if not is_int(value):
        _bad_type(name, "an int (negative: unlimited)", value, errors)
    if value == 0:
        _bad_value(
            name,
            "must not be 0: give a positive limit, or a negative number for unlimited",
            value,
            errors,
            False,
        )
    return int(value)


def effective_limit(limit: int) -> int:
    """A checked pending limit as a subscription enforces it: negative (unlimited) becomes
    :data:`UNLIMITED`, so the reader's check stays ``len(queue) >= limit``."""
    return UNLIMITED if limit < 0 else limit


def check_max_msgs(name: str, value: Any, *, none: bool = True) -> Optional[int]:
    """A message count: an int >= 1 (None: no limit, when ``none``)."""
    if value is None and none:
        return None
    return check_int(name, value, 1, "must be at least 1" + (" (None: no limit)" if none else ""), CALL)


def check_subject(name: str, value: Any, *, wildcards: bool) -> bytes:
    """A subject, encoded; :class:`BadSubjectError` naming ``name`` when it is not valid (a
    literal subject without ``wildcards``: no ``*`` or ``>`` tokens)."""
    try:
        return validate_subject(value, wildcards=wildcards)
    except BadSubjectError as exc:
        if name == "subject":
            raise
        raise BadSubjectError(f"{name}: {exc}") from None


def check_queue(value: Any) -> None:
    """A queue group: None, or a non-empty ``str`` without whitespace (BadSubjectError)."""
    if value is not None:
        validate_queue(value)


def check_codec(name: str, value: Any, errors: _Errors = CALL) -> None:
    """A codec: None, a known name (``auto``, ``json``, ``cbor``, ``raw``) or a codec object."""
    if value is None:
        return
    try:
        _codecs.get_codec(value)
    except TypeError:
        _bad_type(name, "a codec name ('auto', 'json', 'cbor', 'raw'), a codec object or None", value, errors)
    except ValueError as exc:
        raise errors[1](f"{name}: {exc}") from None


def check_headers(value: Any) -> None:
    """Headers: None or a mapping of ``str`` to ``str`` or a list of ``str`` (names and values
    are checked when the frame is encoded, still before anything is sent)."""
    if value is not None and not isinstance(value, Mapping):
        _bad_type("headers", "a mapping of str to str or list of str (or None)", value, CALL)


def check_mapping(name: str, value: Any, errors: _Errors = CONFIG) -> None:
    """None or a mapping (``env``, ``overrides``)."""
    if value is not None and not isinstance(value, Mapping):
        _bad_type(name, "a mapping (dict) or None", value, errors)


def check_argv(name: str, value: Any, errors: _Errors = CONFIG) -> None:
    """None or a list of ``str`` (a single ``str`` would be read letter by letter)."""
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        _bad_type(name, "a list of str or None", value, errors, " (split the command line into words)")
    for item in value:
        if not isinstance(item, str):
            _bad_type(f"every item of {name}", "a str", item, errors)


# --- the options of ts.connect() / MessageBus ---------------------------------------------------


def _check_servers(value: Any) -> None:
    if not isinstance(value, str) and (
        not isinstance(value, Sequence) or isinstance(value, (bytes, bytearray))
    ):
        _bad_type("servers", "a URL, a comma-separated str of URLs or a list of URLs", value, CONFIG)
    try:
        parse_servers(value)
    except ValueError as exc:
        raise ConfigError(f"servers: {exc}") from None


def _check_tls(value: Any) -> Any:
    if value is not None and not isinstance(value, (bool, ssl.SSLContext)):
        _bad_type("tls", "a bool or an ssl.SSLContext (or None)", value, CONFIG, _TLS_HINT)
    return value


_TLS_HINT = "; file paths go in tls_ca_file=, tls_cert_file=, tls_key_file="


@dataclass(frozen=True)
class ConnectOptions:
    """Every option of ``ts.connect()``/``MessageBus``, checked as a whole when it is made.

    Building it raises :class:`ConfigError` (or ``TypeError`` for an unknown option) before
    anything is opened. File paths given as ``os.PathLike`` and credentials given as ``bytes``
    are stored as ``str``; everything else as given. The defaults are ``MessageBus``'s.
    """

    servers: Union[str, Sequence[str]] = "nats://127.0.0.1:4222"
    name: Optional[str] = None
    user: Any = None
    password: Any = None
    token: Any = None
    nkey_seed: Any = None
    creds: Any = None
    tls: Union[bool, ssl.SSLContext, None] = None
    tls_ca_file: Optional[str] = None
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_hostname: Optional[str] = None
    tls_handshake_first: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ping_interval: float = DEFAULT_PING_INTERVAL
    max_outstanding_pings: int = DEFAULT_MAX_OUTSTANDING_PINGS
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    echo: bool = True
    inbox_prefix: str = "_INBOX"
    default_codec: _codecs.CodecSpec = "json"
    pending_msgs_limit: int = 512 * 1024  # subscription.py's defaults (a test keeps them equal)
    pending_bytes_limit: int = 64 * 1024 * 1024
    on_error: Optional[Callable[[BaseException], Any]] = None
    on_disconnect: Optional[Callable[[], Any]] = None
    on_reconnect: Optional[Callable[[], Any]] = None
    on_close: Optional[Callable[[], Any]] = None
    on_discovered_servers: Optional[Callable[[List[str]], Any]] = None
    on_lame_duck: Optional[Callable[[], Any]] = None
    allow_reconnect: bool = True
    max_reconnect_attempts: int = DEFAULT_MAX_RECONNECT_ATTEMPTS
    reconnect_time_wait: float = DEFAULT_RECONNECT_TIME_WAIT
    reconnect_jitter: float = DEFAULT_RECONNECT_JITTER
    reconnect_wait: Optional[Callable[[Any], float]] = None
    reconnect_buf_size: int = DEFAULT_RECONNECT_BUF_SIZE
    randomize: bool = True
    ignore_discovered_servers: bool = False
    retry_on_failed_connect: bool = False
    ignore_auth_error_abort: bool = False
    ws_compression: bool = True
    http_probe: bool = True

    def __post_init__(self) -> None:
        _check_servers(self.servers)
        check_str("name", self.name)
        for key in ("user", "password", "token"):
            check_secret(key, getattr(self, key))
        for key in ("nkey_seed", "creds"):
            self._set(key, check_secret(key, getattr(self, key), files=True))
        _check_tls(self.tls)
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            self._set(key, check_path(key, getattr(self, key)))
        check_str("tls_hostname", self.tls_hostname)
        for key in _BOOLS:
            check_bool(key, getattr(self, key))
        for key in ("connect_timeout", "ping_interval", "write_timeout"):
            check_seconds(key, getattr(self, key))
        for key in ("reconnect_time_wait", "reconnect_jitter"):
            check_seconds(key, getattr(self, key), zero=True)
        check_int("max_outstanding_pings", self.max_outstanding_pings, 1, "must be at least 1")
        check_int(
            "max_reconnect_attempts", self.max_reconnect_attempts, -1, "must be >= 0, or -1 to try forever"
        )
        check_int(
            "reconnect_buf_size",
            self.reconnect_buf_size,
            -1,
            "must be a size in bytes >= 0 (0 or -1: no buffering while disconnected)",
        )
        self._check_inbox_prefix()
        check_codec("default_codec", self.default_codec, CONFIG)
        check_pending_limit("pending_msgs_limit", self.pending_msgs_limit)
        check_pending_limit("pending_bytes_limit", self.pending_bytes_limit)
        for key in _CALLBACKS:
            check_callable(key, getattr(self, key))

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)  # frozen: only the normalisation above writes

    def _check_inbox_prefix(self) -> None:
        value = self.inbox_prefix
        if not isinstance(value, str):
            _bad_type("inbox_prefix", "a str", value, CONFIG)
        try:
            validate_subject(value, wildcards=False)
        except BadSubjectError as exc:
            raise ConfigError(f"inbox_prefix must be a literal subject (no wildcards): {exc}") from None

    @classmethod
    def from_kwargs(cls, where: str, servers: Any, options: Mapping[str, Any]) -> ConnectOptions:
        """The options of a call like ``connect(servers, **options)``; an unknown option is a
        ``TypeError`` naming ``where`` (as Python's own message would)."""
        unknown = sorted(set(options) - _FIELDS)
        if unknown or "servers" in options:
            bad = unknown[0] if unknown else "servers"
            raise TypeError(f"{where} got an unexpected keyword argument {bad!r}")
        return cls(servers, **options)

    @classmethod
    def from_locals(cls, args: Dict[str, Any]) -> ConnectOptions:
        """The options from ``MessageBus.__init__``'s ``locals()`` (every parameter but self)."""
        return cls(**{k: v for k, v in args.items() if k != "self"})


_FIELDS = frozenset(f.name for f in dataclasses.fields(ConnectOptions))
_BOOLS = (
    "tls_handshake_first",
    "echo",
    "allow_reconnect",
    "randomize",
    "ignore_discovered_servers",
    "retry_on_failed_connect",
    "ignore_auth_error_abort",
    "ws_compression",
    "http_probe",
)
_CALLBACKS = (
    "on_error",
    "on_disconnect",
    "on_reconnect",
    "on_close",
    "on_discovered_servers",
    "on_lame_duck",
    "reconnect_wait",
)


# --- the arguments of the bus's methods ---------------------------------------------------------

_QUEUE_HINT = "; to join a queue group pass queue={!r}"


def check_callback(name: str, value: Any, *, optional: bool = True) -> None:
    """A subscription callback or reply handler. A ``str`` where the callback belongs is nats-py's
    positional queue group (``subscribe("pos", "workers")``): the message says how to pass it."""
    hint = _QUEUE_HINT.format(value) if isinstance(value, str) else ""
    check_callable(name, value, CALL, optional=optional, hint=hint)


def check_subscribe(
    subject: Any,
    callback: Any,
    queue: Any,
    codec: Any,
    schema: Any,
    max_msgs: Any,
    pending_msgs_limit: Any,
    pending_bytes_limit: Any,
    own_thread: Any = False,
) -> None:
    """Every argument of ``subscribe()``, before anything is created or sent."""
    check_subject("subject", subject, wildcards=True)
    check_callback("callback", callback)
    check_queue(queue)
    check_codec("codec", codec)
    check_callable("schema", schema, CALL)
    check_max_msgs("max_msgs", max_msgs)
    if pending_msgs_limit is not None:
        check_pending_limit("pending_msgs_limit", pending_msgs_limit, CALL)
    if pending_bytes_limit is not None:
        check_pending_limit("pending_bytes_limit", pending_bytes_limit, CALL)
    check_bool("own_thread", own_thread, CALL)


def check_publish(reply: Any, headers: Any, codec: Any) -> None:
    """``publish()``'s optional arguments (only off its fast path: the fast path has none)."""
    if reply is not None:
        check_subject("reply", reply, wildcards=False)
    check_headers(headers)
    check_codec("codec", codec)


def check_request(subject: Any, timeout: Any, headers: Any, codec: Any) -> None:
    """``request()``/``request_many()``: checked before the reply inbox is subscribed."""
    check_subject("subject", subject, wildcards=False)
    check_timeout("timeout", timeout)
    check_headers(headers)
    check_codec("codec", codec)
