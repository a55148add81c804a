"""JetStream values: stream and consumer configurations, infos, acks and metadata.

Dataclasses that map to and from the API's JSON. Durations are seconds as floats (a
``timedelta`` is accepted too; the wire has nanoseconds), times are aware UTC ``datetime``s (the
wire has RFC 3339). Fields the server sends that are not modelled here are kept in ``extra`` and
sent back unchanged, so ``update_stream(info.config)`` never drops a setting of a newer server.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, Union

from .errors import InvalidArgumentError

Duration = Union[float, int, timedelta]
T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ZERO_TIME = "0001-01-01T00:00:00Z"

RETENTION = ("limits", "interest", "workqueue")
STORAGE = ("file", "memory")
DISCARD = ("old", "new")
COMPRESSION = ("none", "s2")
DELIVER_POLICIES = ("all", "last", "new", "by_start_sequence", "by_start_time", "last_per_subject")
ACK_POLICIES = ("none", "all", "explicit")
REPLAY_POLICIES = ("instant", "original")


# --- conversions ------------------------------------------------------------------------------


def seconds(value: Optional[Duration], name: str = "duration") -> Optional[float]:
    """A duration as float seconds (None stays None); negative values are refused."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be seconds (a number) or a timedelta, not {value!r}")
    if value < 0:
        raise InvalidArgumentError(f"{name} must not be negative, got {value!r}")
    return float(value)


def to_nanos(value: float) -> int:
    return int(round(value * 1_000_000_000))


def from_nanos(value: Any) -> float:
    return int(value) / 1_000_000_000


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (nanoseconds allowed, as the server writes them) as an aware datetime."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    if m.group(8):
        tz = timezone.utc
    else:
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(offset if m.group(9) == "+" else -offset)
    return datetime(year, month, day, hour, minute, sec, micro, tzinfo=tz).astimezone(timezone.utc)


def format_time(value: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC; naive datetimes are refused (ambiguous)."""
    if value.tzinfo is None:
        raise InvalidArgumentError(f"times must be aware datetimes (e.g. tzinfo=timezone.utc), got {value!r}")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def time_from_nanos(ns: int) -> datetime:
    """Nanoseconds since the epoch as an aware UTC datetime (microsecond precision)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def _meta(kind: Optional[str] = None, key: Optional[str] = None, typ: Any = None) -> Dict[str, Any]:
    return {"kind": kind, "key": key, "type": typ}


def opt(kind: Optional[str] = None, key: Optional[str] = None, typ: Any = None, default: Any = None) -> Any:
    """A dataclass field with JSON mapping metadata (``kind``: duration, time, nested, ...)."""
    return field(default=default, metadata=_meta(kind, key, typ))


def many(kind: Optional[str] = None, key: Optional[str] = None, typ: Any = None) -> Any:
    return field(default=None, metadata=_meta(kind, key, typ))


def _fields(cls: Any) -> List[Tuple[dataclasses.Field, str]]:
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        out.append((f, f.metadata.get("key") or f.name))
    return out


def to_json(obj: Any) -> Dict[str, Any]:
    """The API JSON of a model: None fields left out, unknown server fields put back."""
    out: Dict[str, Any] = dict(getattr(obj, "extra", None) or {})
    for f, key in _fields(type(obj)):
        value = getattr(obj, f.name)
        if value is None:
            continue
        kind = f.metadata.get("kind")
        if kind == "duration":
            value = to_nanos(value)
        elif kind == "durations":
            value = [to_nanos(v) for v in value]
        elif kind == "time":
            value = format_time(value)
        elif kind == "nested":
            value = to_json(value)
        elif kind == "nested_list":
            value = [to_json(v) for v in value]
        elif isinstance(value, (list, tuple)):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[key] = value
    return out


def from_json(cls: Type[T], data: Optional[Dict[str, Any]]) -> T:
    """A model from API JSON; keys not modelled go to ``extra``."""
    data = dict(data or {})
    kwargs: Dict[str, Any] = {}
    for f, key in _fields(cls):
        if key not in data:
            continue
        value = data.pop(key)
        kind = f.metadata.get("kind")
        if value is None:
            kwargs[f.name] = None
            continue
        if kind == "duration":
            value = from_nanos(value)
        elif kind == "durations":
            value = [from_nanos(v) for v in value]
        elif kind == "time":
            value = None if value == _ZERO_TIME else parse_time(value)
        elif kind == "nested":
            value = from_json(f.metadata["type"], value)
        elif kind == "nested_list":
            value = [from_json(f.metadata["type"], v) for v in value]
        kwargs[f.name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "extra"):
        obj.extra = data
    return obj


def _normalize(obj: Any) -> None:
    """Convert durations given as timedelta to seconds and check choice fields."""
    for f in dataclasses.fields(obj):
        kind = f.metadata.get("kind")
        value = getattr(obj, f.name)
        if value is None:
            continue
        if kind == "duration":
            setattr(obj, f.name, seconds(value, f.name))
        elif kind == "durations":
            setattr(obj, f.name, [seconds(v, f.name) for v in value])
        elif kind == "time":
            if not isinstance(value, datetime):
                raise InvalidArgumentError(f"{f.name} must be an aware datetime, not {value!r}")
            format_time(value)
        choices = f.metadata.get("type") if kind == "choice" else None
        if choices is not None and value not in choices:
            raise InvalidArgumentError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
        if kind in ("list", "nested_list", "durations") and isinstance(value, (str, bytes)):
            raise InvalidArgumentError(f"{f.name} must be a list, not a string")


# --- streams ----------------------------------------------------------------------------------


@dataclass
class ExternalStream:
    """Where a mirror or source lives in another domain or account."""

    api: Optional[str] = None
    deliver: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamSource:
    """A stream to mirror or source from (``domain=`` for a stream in another domain)."""

    name: str = ""
    opt_start_seq: Optional[int] = None
    opt_start_time: Optional[datetime] = opt("time")
    filter_subject: Optional[str] = None
    external: Optional[ExternalStream] = opt("nested", typ=ExternalStream)
    domain: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _normalize(self)
        if self.domain is not None and self.external is None:
            self.external = ExternalStream(api=f"$JS.{self.domain}.API")
        self.domain = None  # not a wire field: expressed as external.api


@dataclass
class StreamConfig:
    """A stream's configuration (None: the server's default)."""

    name: str = ""
    subjects: Optional[List[str]] = opt("list")
    description: Optional[str] = None
    retention: Optional[str] = opt("choice", typ=RETENTION)
    max_consumers: Optional[int] = None
    max_msgs: Optional[int] = None
    max_bytes: Optional[int] = None
    max_age: Optional[float] = opt("duration")
    max_msgs_per_subject: Optional[int] = None
    max_msg_size: Optional[int] = None
    storage: Optional[str] = opt("choice", typ=STORAGE)
    discard: Optional[str] = opt("choice", typ=DISCARD)
    replicas: Optional[int] = opt(key="num_replicas")
    duplicate_window: Optional[float] = opt("duration")
    allow_direct: Optional[bool] = None
    mirror_direct: Optional[bool] = None
    mirror: Optional[StreamSource] = opt("nested", typ=StreamSource)
    sources: Optional[List[StreamSource]] = many("nested_list", typ=StreamSource)
    no_ack: Optional[bool] = None
    deny_delete: Optional[bool] = None
    deny_purge: Optional[bool] = None
    allow_rollup_hdrs: Optional[bool] = None
    discard_new_per_subject: Optional[bool] = None
    compression: Optional[str] = opt("choice", typ=COMPRESSION)
    sealed: Optional[bool] = None
    allow_msg_ttl: Optional[bool] = None
    subject_delete_marker_ttl: Optional[float] = opt("duration")
    metadata: Optional[Dict[str, str]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _normalize(self)


@dataclass
class StreamState:
    """How much a stream holds now."""

    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    first_ts: Optional[datetime] = opt("time")
    last_seq: int = 0
    last_ts: Optional[datetime] = opt("time")
    consumer_count: int = 0
    deleted: Optional[List[int]] = None
    num_deleted: int = 0
    num_subjects: int = 0
    subjects: Optional[Dict[str, int]] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PeerInfo:
    """A replica of a clustered stream or consumer."""

    name: str = ""
    current: bool = False
    offline: bool = False
    active: Optional[float] = opt("duration")
    lag: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterInfo:
    """Where a stream or consumer lives: cluster name, leader server, other replicas."""

    name: Optional[str] = None
    leader: Optional[str] = None
    replicas: Optional[List[PeerInfo]] = many("nested_list", typ=PeerInfo)
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamSourceInfo:
    """The state of a mirror or source: lag and last activity."""

    name: str = ""
    lag: int = 0
    active: Optional[float] = opt("duration")
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamInfo:
    """A stream's configuration and state (``info.state.messages``, ``info.cluster.leader``)."""

    config: StreamConfig = opt("nested", typ=StreamConfig, default=None)
    state: StreamState = opt("nested", typ=StreamState, default=None)
    created: Optional[datetime] = opt("time")
    cluster: Optional[ClusterInfo] = opt("nested", typ=ClusterInfo)
    mirror: Optional[StreamSourceInfo] = opt("nested", typ=StreamSourceInfo)
    sources: Optional[List[StreamSourceInfo]] = many("nested_list", typ=StreamSourceInfo)
    ts: Optional[datetime] = opt("time")
    extra: Dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        from .._html import dataclass_html

        return dataclass_html(self)


# --- consumers --------------------------------------------------------------------------------


@dataclass
class ConsumerConfig:
    """A (pull) consumer's configuration (None: the server's default)."""

    name: Optional[str] = None
    durable_name: Optional[str] = None
    description: Optional[str] = None
    deliver_policy: Optional[str] = opt("choice", typ=DELIVER_POLICIES)
    opt_start_seq: Optional[int] = None
    opt_start_time: Optional[datetime] = opt("time")
    ack_policy: Optional[str] = opt("choice", typ=ACK_POLICIES)
    ack_wait: Optional[float] = opt("duration")
    max_deliver: Optional[int] = None
    backoff: Optional[List[float]] = many("durations")
    filter_subject: Optional[str] = None
    filter_subjects: Optional[List[str]] = opt("list")
    replay_policy: Optional[str] = opt("choice", typ=REPLAY_POLICIES)
    sample_freq: Optional[str] = None
    max_waiting: Optional[int] = None
    max_ack_pending: Optional[int] = None
    headers_only: Optional[bool] = None
    max_batch: Optional[int] = None
    max_expires: Optional[float] = opt("duration")
    max_bytes: Optional[int] = None
    inactive_threshold: Optional[float] = opt("duration")
    replicas: Optional[int] = opt(key="num_replicas")
    mem_storage: Optional[bool] = None
    metadata: Optional[Dict[str, str]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _normalize(self)


@dataclass
class SequenceInfo:
    """Consumer and stream sequence of the last delivered or acknowledged message."""

    consumer_seq: int = 0
    stream_seq: int = 0
    last_active: Optional[datetime] = opt("time")
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ConsumerInfo:
    """A consumer's configuration and state (``num_pending``, ``num_ack_pending``...)."""

    stream_name: str = ""
    name: str = ""
    config: ConsumerConfig = opt("nested", typ=ConsumerConfig, default=None)
    created: Optional[datetime] = opt("time")
    delivered: SequenceInfo = opt("nested", typ=SequenceInfo, default=None)
    ack_floor: SequenceInfo = opt("nested", typ=SequenceInfo, default=None)
    num_ack_pending: int = 0
    num_redelivered: int = 0
    num_waiting: int = 0
    num_pending: int = 0
    cluster: Optional[ClusterInfo] = opt("nested", typ=ClusterInfo)
    ts: Optional[datetime] = opt("time")
    extra: Dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        from .._html import dataclass_html

        return dataclass_html(self)


# --- publish and messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class PubAck:
    """The stream's acknowledgement of a publish: stored as ``seq`` in ``stream``;
    ``duplicate`` when a message with the same ``msg_id`` was stored already."""

    stream: str
    seq: int
    duplicate: bool = False
    domain: Optional[str] = None

    def _repr_html_(self) -> str:
        from .._html import dataclass_html

        return dataclass_html(self)


@dataclass
class SequencePair:
    """A message's sequence in its stream and in its consumer."""

    stream: int
    consumer: int


@dataclass
class MsgMetadata:
    """What the ack subject of a delivered message tells (nats.go's ``MsgMetadata``)."""

    sequence: SequencePair
    num_delivered: int
    num_pending: int
    timestamp: datetime
    stream: str
    consumer: str
    domain: str = ""


@dataclass
class APIStats:
    """Account-wide JetStream usage (``js.account_info()``)."""

    memory: int = 0
    storage: int = 0
    streams: int = 0
    consumers: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)
