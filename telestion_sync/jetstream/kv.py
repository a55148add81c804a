"""Key-Value store: a bucket of keys and their revisions on a JetStream stream.

The wire format is nats.go's and nats-py's (ADR-8), so buckets are shared with services in any
language: bucket ``B`` is stream ``KV_B`` on subjects ``$KV.B.>``; a value is a message on
``$KV.B.<key>`` whose stream sequence is its revision; a delete is an empty message with
``KV-Operation: DEL``, a purge one with ``KV-Operation: PURGE`` and ``Nats-Rollup: sub`` (older
revisions go). Built only on the public :class:`~telestion_sync.JetStream` API.

A :class:`KeyWatcher` is an ordered consumer: after a reconnect, a server restart or a lost
consumer it resumes at the stream sequence after the last entry it handed out, so a watch
neither misses nor repeats an update.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Sequence, Union

from .. import codecs as _codecs
from ..errors import Error, TimeoutError
from ..subscription import SubscriptionClosedError
from .context import new_name
from .errors import (
    BucketNotFoundError,
    InvalidArgumentError,
    InvalidKeyError,
    KeyExistsError,
    KeyNotFoundError,
    MessageNotFoundError,
    StreamNotFoundError,
    WrongLastSequenceError,
)
from .message import ack_fields
from .models import StreamConfig, StreamInfo, seconds, time_from_nanos

if TYPE_CHECKING:  # pragma: no cover
    from .context import JetStream
    from .message import JetStreamMessage, StoredMessage
    from .ordered import OrderedConsumer

log = logging.getLogger("telestion_sync.kv")

KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"
ROLLUP = "Nats-Rollup"
MSG_TTL = "Nats-TTL"
PUT, DEL, PURGE = "PUT", "DEL", "PURGE"
MAX_HISTORY = 64

_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
_FILTER_RE = re.compile(r"^[-/_=.a-zA-Z0-9*]*>?$")
WATCH_EXPIRES = 30.0
WATCH_HEARTBEAT = 5.0  # a silent stream leader is noticed within 10 s


def check_bucket(name: Any) -> str:
    """A bucket name: letters, digits, ``_`` and ``-`` (it becomes part of a stream name)."""
    if not isinstance(name, str) or not _BUCKET_RE.match(name):
        raise InvalidArgumentError(
            f"invalid bucket name {name!r}: use only letters, digits, '_' and '-' (and at least one)"
        )
    return name


def _key_shape(key: str) -> Optional[str]:
    if not key:
        return "must not be empty"
    if key[0] == "." or key[-1] == ".":
        return "must not start or end with '.'"
    if ".." in key:
        return "must not contain an empty token ('..')"
    return None


def check_key(key: Any) -> str:
    """A key: letters, digits and ``-/_=.``, no empty token (nats.go's rule)."""
    return _check(key, "key", _KEY_RE, "letters, digits and '-', '/', '_', '=', '.'")


def check_filter(key: Any) -> str:
    """A watch or keys filter: a key, where tokens may be ``*`` and the last ``>``."""
    return _check(
        key, "key filter", _FILTER_RE, "letters, digits, '-', '/', '_', '=', '.', '*' and a final '>'"
    )


def _check(key: Any, what: str, allowed: Any, chars: str) -> str:
    """``key`` when it is a str of ``allowed`` shape, else :class:`InvalidKeyError` naming it."""
    noun = what.split()[-1]  # "key" or "filter"
    if not isinstance(key, str):
        raise InvalidKeyError(f"invalid {what} {key!r}: a {noun} is a str, not {type(key).__name__}")
    problem = _key_shape(key)
    if problem is None and not allowed.match(key):
        problem = f"may contain only {chars}"
    if problem:
        raise InvalidKeyError(f"invalid {what} {key!r}: a {noun} {problem}")
    return key


def _operation(headers: Optional[dict]) -> str:
    """PUT, DEL or PURGE from a stored message's headers (server TTL markers included)."""
    if not headers:
        return PUT
    op = headers.get(KV_OPERATION)
    if op:
        return DEL if op == DEL else PURGE if op == PURGE else PUT
    reason = headers.get(MARKER_REASON)
    if reason in ("MaxAge", "Purge"):
        return PURGE
    if reason == "Remove":
        return DEL
    return PUT


def _ttl_header(ttl: Any, param: str = "ttl") -> str:
    value = seconds(ttl, param)
    if value is None or value < 1:
        raise InvalidArgumentError(f"{param} must be at least 1 second, got {ttl!r}")
    return f"{value:g}s"


class KeyValueEntry:
    """One revision of a key: ``key``, ``value`` (the payload decoded like ``msg.data``, None
    for a delete or purge marker), ``payload`` (bytes), ``revision`` (its stream sequence),
    ``created`` (aware UTC datetime), ``delta`` (entries still pending behind it in a watch,
    0 from ``get``) and ``operation`` (``"PUT"``, ``"DEL"`` or ``"PURGE"``)."""

    __slots__ = (
        "bucket",
        "key",
        "payload",
        "revision",
        "_created",
        "_created_ns",
        "delta",
        "operation",
        "headers",
        "_codec",
    )

    def __init__(
        self,
        bucket: str,
        key: str,
        payload: bytes,
        revision: int,
        created: Optional[datetime],
        delta: int,
        operation: str,
        headers: Optional[dict] = None,
        codec: _codecs.CodecSpec = None,
        created_ns: int = -1,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.payload = payload
        self.revision = revision
        self._created = created
        self._created_ns = created_ns  # a watch's entries: converted on first access
        self.delta = delta
        self.operation = operation
        self.headers = headers or {}
        self._codec = codec

    @property
    def created(self) -> Optional[datetime]:
        """When the revision was stored (aware UTC datetime)."""
        c = self._created
        if c is None and self._created_ns >= 0:
            c = self._created = time_from_nanos(self._created_ns)
        return c

    @created.setter
    def created(self, value: Optional[datetime]) -> None:
        self._created = value
        self._created_ns = -1

    @property
    def value(self) -> Any:
        """The value decoded with the bucket's codec (auto: by Content-Type, JSON, else bytes);
        None for a DEL or PURGE marker."""
        if self.operation != PUT:
            return None
        if self._codec is None:
            return _codecs.decode_auto(self.payload, self.headers)
        return _codecs.get_codec(self._codec).decode(self.payload)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyValueEntry):
            return NotImplemented
        return (self.bucket, self.key, self.revision, self.operation, self.payload) == (
            other.bucket,
            other.key,
            other.revision,
            other.operation,
            other.payload,
        )

    def __hash__(self) -> int:
        return hash((self.bucket, self.key, self.revision))

    def __repr__(self) -> str:
        return (
            f"<KeyValueEntry {self.bucket}/{self.key} rev={self.revision} {self.operation} "
            f"payload={self.payload[:40]!r}>"
        )


@dataclass
class KeyValueStatus:
    """A bucket's configuration and state: ``values`` (stored entries, markers and history
    included), ``bytes``, ``history``, ``ttl`` (seconds, 0 = forever) and more."""

    bucket: str
    values: int
    bytes: int
    history: int
    ttl: float
    max_value_size: int
    max_bytes: int
    storage: str
    replicas: int
    compressed: bool
    allow_msg_ttl: bool
    limit_marker_ttl: float
    description: str
    stream_info: StreamInfo
    backing_store: str = "JetStream"


def status_of(bucket: str, info: StreamInfo) -> KeyValueStatus:
    cfg, state = info.config, info.state
    return KeyValueStatus(
        bucket=bucket,
        values=state.messages,
        bytes=state.bytes,
        history=int(cfg.max_msgs_per_subject or 1),
        ttl=float(cfg.max_age or 0.0),
        max_value_size=int(cfg.max_msg_size if cfg.max_msg_size is not None else -1),
        max_bytes=int(cfg.max_bytes if cfg.max_bytes is not None else -1),
        storage=cfg.storage or "file",
        replicas=int(cfg.replicas or 1),
        compressed=(cfg.compression or "none") != "none",
        allow_msg_ttl=bool(cfg.allow_msg_ttl),
        limit_marker_ttl=float(cfg.subject_delete_marker_ttl or 0.0),
        description=cfg.description or "",
        stream_info=info,
    )


def bucket_config(
    bucket: str,
    *,
    history: int = 1,
    ttl: Any = None,
    max_value_size: Optional[int] = None,
    max_bytes: Optional[int] = None,
    storage: Optional[str] = None,
    replicas: int = 1,
    compression: bool = False,
    description: Optional[str] = None,
    allow_msg_ttl: bool = False,
    limit_marker_ttl: Any = None,
    metadata: Optional[dict] = None,
) -> StreamConfig:
    """The stream configuration of a bucket, as nats.go writes it (so both see the same)."""
    check_bucket(bucket)
    if isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= MAX_HISTORY:
        raise InvalidArgumentError(f"history must be an integer from 1 to {MAX_HISTORY}, got {history!r}")
    max_age = seconds(ttl, "ttl") or 0.0
    marker_ttl = seconds(limit_marker_ttl, "limit_marker_ttl")
    dupe = 120.0 if not max_age or max_age >= 120.0 else max_age
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        description=description,
        max_msgs_per_subject=history,
        max_bytes=max_bytes if max_bytes else -1,
        max_age=max_age,
        max_msg_size=max_value_size if max_value_size else -1,
        storage=storage,
        replicas=replicas,
        allow_rollup_hdrs=True,
        deny_delete=True,
        duplicate_window=dupe,
        max_msgs=-1,
        max_consumers=-1,
        allow_direct=True,
        compression="s2" if compression else None,
        discard="new",
        allow_msg_ttl=True if (allow_msg_ttl or marker_ttl) else None,
        subject_delete_marker_ttl=marker_ttl or None,
        metadata=metadata,
    )


class KeyValue:
    """A Key-Value bucket (``js.create_key_value(...)`` or ``js.key_value(name)``).

    Values are encoded like ``bus.publish`` does (JSON by default, bytes raw, ``codec=`` on the
    handle or per call); every call is blocking, thread-safe and bounded by ``timeout``.
    """

    def __init__(self, js: JetStream, bucket: str, info: StreamInfo, codec: _codecs.CodecSpec = None) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self.codec = codec
        if codec is not None:
            _codecs.get_codec(codec)  # a wrong name fails here, not on first use
        self.cached_info = info

    def __repr__(self) -> str:
        return f"<KeyValue {self.bucket!r}>"

    # --- reading ------------------------------------------------------------------------------

    def _entry(self, key: str, m: StoredMessage, codec: _codecs.CodecSpec) -> KeyValueEntry:
        return KeyValueEntry(
            self.bucket,
            key,
            m.payload,
            m.seq,
            m.time,
            0,
            _operation(m.headers),
            m.headers,
            codec if codec is not None else self.codec,
        )

    def _raw_get(self, key: str, revision: Optional[int], timeout: Optional[float]) -> KeyValueEntry:
        subject = self._prefix + check_key(key)
        try:
            if revision is None:
                m = self.js.get_last_msg_for_subject(self.stream, subject, timeout=timeout)
            else:
                if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
                    raise InvalidArgumentError(f"revision must be an integer >= 1, got {revision!r}")
                m = self.js.get_msg(self.stream, revision, timeout=timeout)
        except MessageNotFoundError:
            at = "" if revision is None else f" at revision {revision}"
            raise KeyNotFoundError(
                f"key {key!r} not found in bucket {self.bucket!r}{at}", 404, 10037
            ) from None
        except StreamNotFoundError:
            raise BucketNotFoundError(f"bucket {self.bucket!r} not found", 404, 10059) from None
        if m.subject != subject:
            raise KeyNotFoundError(
                f"revision {revision} of bucket {self.bucket!r} is not key {key!r}", 404, 10037
            )
        return self._entry(key, m, None)

    def get(
        self,
        key: str,
        revision: Optional[int] = None,
        *,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
    ) -> KeyValueEntry:
        """The latest entry of ``key`` (or the one at ``revision``). :class:`KeyNotFoundError`
        when the key was never written, is deleted or purged, or ``revision`` is another key's."""
        e = self._raw_get(key, revision, timeout)
        if e.operation != PUT:
            at = "" if revision is None else f" at revision {revision}"
            raise KeyNotFoundError(
                f"key {key!r} in bucket {self.bucket!r} is deleted{at} ({e.operation})", 404, 10037
            )
        if codec is not None:
            e._codec = codec
        return e

    # --- writing ------------------------------------------------------------------------------

    def _publish(
        self,
        key: str,
        value: Any,
        *,
        last: Optional[int],
        headers: Optional[dict],
        codec: _codecs.CodecSpec,
        timeout: Optional[float],
    ) -> int:
        subject = self._prefix + check_key(key)
        try:
            ack = self.js.publish(
                subject,
                value,
                expected_last_subject_seq=last,
                headers=headers,
                codec=codec if codec is not None else self.codec,
                timeout=timeout,
            )
        except StreamNotFoundError:
            raise BucketNotFoundError(f"bucket {self.bucket!r} not found", 404, 10059) from None
        return ack.seq

    def put(
        self,
        key: str,
        value: Any,
        *,
        ttl: Any = None,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
    ) -> int:
        """Store ``value`` under ``key``; returns the new revision. ``ttl`` (seconds) expires
        this value on buckets made with ``allow_msg_ttl=True``."""
        headers = {MSG_TTL: _ttl_header(ttl)} if ttl is not None else None
        return self._publish(key, value, last=None, headers=headers, codec=codec, timeout=timeout)

    def create(
        self,
        key: str,
        value: Any,
        *,
        ttl: Any = None,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
    ) -> int:
        """Store ``value`` only if ``key`` has no live value (never written, deleted or
        purged); returns the revision. :class:`KeyExistsError` otherwise."""
        headers = {MSG_TTL: _ttl_header(ttl)} if ttl is not None else None
        try:
            return self._publish(key, value, last=0, headers=headers, codec=codec, timeout=timeout)
        except WrongLastSequenceError as exc:
            code, err_code = exc.code, exc.err_code
        # The key has a revision: fine if it is a delete or purge marker (as nats.go does).
        try:
            e: Optional[KeyValueEntry] = self._raw_get(key, None, timeout)
        except KeyNotFoundError:
            e = None
        if e is not None and e.operation != PUT:
            try:
                return self._publish(
                    key, value, last=e.revision, headers=headers, codec=codec, timeout=timeout
                )
            except WrongLastSequenceError as exc:
                code, err_code = exc.code, exc.err_code
        raise KeyExistsError(f"key {key!r} exists in bucket {self.bucket!r}", code, err_code)

    def update(
        self,
        key: str,
        value: Any,
        last: int,
        *,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
    ) -> int:
        """Store ``value`` only if the key's latest revision is ``last`` (optimistic
        concurrency); returns the new revision. :class:`WrongLastSequenceError` otherwise."""
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise InvalidArgumentError(f"last must be a revision (an integer >= 0), got {last!r}")
        try:
            return self._publish(key, value, last=last, headers=None, codec=codec, timeout=timeout)
        except WrongLastSequenceError as exc:
            raise WrongLastSequenceError(
                f"update of key {key!r} in bucket {self.bucket!r}: its latest revision is not {last} "
                f"({exc.description})",
                exc.code,
                exc.err_code,
            ) from None

    def delete(self, key: str, *, last: Optional[int] = None, timeout: Optional[float] = None) -> int:
        """Mark ``key`` deleted (its history stays); ``last``: only if that is its latest
        revision (:class:`WrongLastSequenceError`). Returns the marker's revision."""
        return self._publish(key, b"", last=last, headers={KV_OPERATION: DEL}, codec="raw", timeout=timeout)

    def purge(
        self, key: str, *, last: Optional[int] = None, ttl: Any = None, timeout: Optional[float] = None
    ) -> int:
        """Mark ``key`` purged and drop its older revisions; ``last`` as in :meth:`delete`;
        ``ttl`` removes the marker itself later (``allow_msg_ttl`` buckets)."""
        headers = {KV_OPERATION: PURGE, ROLLUP: "sub"}
        if ttl is not None:
            headers[MSG_TTL] = _ttl_header(ttl)
        return self._publish(key, b"", last=last, headers=headers, codec="raw", timeout=timeout)

    # --- listing ------------------------------------------------------------------------------

    def _collect(self, watcher: KeyWatcher, timeout: Optional[float]) -> List[KeyValueEntry]:
        wait = self.js._timeout(timeout)
        out: List[KeyValueEntry] = []
        with watcher:
            while True:
                e = watcher.next(wait)
                if e is None:
                    return out
                out.append(e)

    def keys(self, filters: Union[str, Sequence[str]] = ">", *, timeout: Optional[float] = None) -> List[str]:
        """The keys with a live value (matching ``filters``), sorted; ``[]`` for an empty
        bucket (a list may be empty; nats.go raises ErrNoKeysFound instead)."""
        w = self.watch(filters, ignore_deletes=True, meta_only=True, timeout=timeout)
        return sorted({e.key for e in self._collect(w, timeout)})

    def history(
        self, key: str, *, codec: _codecs.CodecSpec = None, timeout: Optional[float] = None
    ) -> List[KeyValueEntry]:
        """Every stored revision of ``key``, oldest first, markers included
        (:class:`KeyNotFoundError` when there is none, as in nats.go)."""
        check_key(key)
        entries = self._collect(self.watch(key, include_history=True, codec=codec, timeout=timeout), timeout)
        if not entries:
            raise KeyNotFoundError(f"key {key!r} not found in bucket {self.bucket!r}", 404, 10037)
        return entries

    def purge_deletes(self, older_than: Any = 1800.0, *, timeout: Optional[float] = None) -> int:
        """Remove delete and purge markers: those older than ``older_than`` seconds go with
        everything before them, newer ones keep just the marker (``older_than <= 0``: remove
        all markers). Returns how many keys were cleaned."""
        if isinstance(older_than, timedelta):
            older_than = older_than.total_seconds()
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)):
            raise InvalidArgumentError(f"older_than must be seconds, got {older_than!r}")
        w = self.watch(">", timeout=timeout)
        markers = [e for e in self._collect(w, timeout) if e.operation != PUT]
        limit = datetime.now(timezone.utc) - timedelta(seconds=max(older_than, 0))
        for e in markers:
            keep = 0 if older_than <= 0 or (e.created is not None and e.created < limit) else 1
            self.js.purge_stream(self.stream, subject=self._prefix + e.key, keep=keep, timeout=timeout)
        return len(markers)

    def status(self, *, timeout: Optional[float] = None) -> KeyValueStatus:
        """The bucket's configuration and state (values, bytes, history, ttl...)."""
        try:
            info = self.js.stream_info(self.stream, timeout=timeout)
        except StreamNotFoundError:
            raise BucketNotFoundError(f"bucket {self.bucket!r} not found", 404, 10059) from None
        self.cached_info = info
        return status_of(self.bucket, info)

    # --- watching -----------------------------------------------------------------------------

    def watch(
        self,
        keys: Union[str, Sequence[str]] = ">",
        callback: Optional[Callable[[KeyValueEntry], Any]] = None,
        *,
        include_history: bool = False,
        ignore_deletes: bool = False,
        updates_only: bool = False,
        meta_only: bool = False,
        on_initial_done: Optional[Callable[[], Any]] = None,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
    ) -> KeyWatcher:
        """Watch keys (a filter or a list; ``*`` and ``>`` allowed): the current values
        (every revision with ``include_history``; none with ``updates_only``), then live
        updates. Iterate it (``None`` once when the initial values are done) or give
        ``callback`` (and ``on_initial_done``). Survives reconnects and server restarts."""
        filters = [keys] if isinstance(keys, str) else list(keys)
        if not filters:
            raise InvalidArgumentError("keys must name at least one key or filter")
        for f in filters:
            check_filter(f)
        if include_history and updates_only:
            raise InvalidArgumentError("include_history and updates_only exclude each other")
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        return KeyWatcher(
            self,
            [self._prefix + f for f in filters],
            include_history=include_history,
            ignore_deletes=ignore_deletes,
            updates_only=updates_only,
            meta_only=meta_only,
            callback=callback,
            on_initial_done=on_initial_done,
            codec=codec if codec is not None else self.codec,
            timeout=timeout,
        )


class Watcher:
    """What KV and Object Store watches share: an ordered consumer handing out converted
    entries in stream order, each once, with ``None`` once after the initial values.

    Iterate it, call ``next(timeout)``, or give a callback (run on a thread of its own, with
    ``on_initial_done`` for the marker). ``stop()`` ends it (an iteration in progress too); the
    bus closing ends it as well. Resumes after the last entry handed out on reconnects,
    restarts and lost consumers (the ordered consumer's reset)."""

    _what = "watch"

    def __init__(
        self,
        js: JetStream,
        stream: str,
        subjects: List[str],
        *,
        include_history: bool,
        ignore_deletes: bool,
        updates_only: bool,
        meta_only: bool,
        callback: Optional[Callable[[Any], Any]],
        on_initial_done: Optional[Callable[[], Any]],
        timeout: Optional[float],
        bucket: str,
    ) -> None:
        self._ignore_deletes = ignore_deletes
        self.initial_done = threading.Event()
        self._marker_due = False
        self._received = 0
        self._last: Optional[JetStreamMessage] = None  # the message of the last entry handed out
        self._stopped = False
        opt_start_seq = None
        if updates_only:
            policy = "by_start_sequence"  # not "new": a reset before the first update must not skip any
            try:
                opt_start_seq = js.stream_info(stream, timeout=timeout).state.last_seq + 1
            except StreamNotFoundError:
                raise BucketNotFoundError(f"bucket {bucket!r} not found", 404, 10059) from None
        else:
            policy = "all" if include_history else "last_per_subject"
        try:
            self._oc: OrderedConsumer = js.ordered_consumer(
                stream,
                filter_subjects=subjects,
                deliver_policy=policy,
                opt_start_seq=opt_start_seq,
                headers_only=meta_only,
                name_prefix=f"w_{bucket[:16]}_{new_name()[:10]}",
                timeout=timeout,
            )
        except StreamNotFoundError:
            raise BucketNotFoundError(f"bucket {bucket!r} not found", 404, 10059) from None
        self._init_pending = 0 if updates_only else self._oc.initial_pending
        if updates_only:
            self.initial_done.set()  # no initial values, so no marker (as nats.go)
        elif self._init_pending == 0:
            self._marker_due = True
            self.initial_done.set()
        self._it = self._oc.messages(expires=WATCH_EXPIRES, heartbeat=WATCH_HEARTBEAT)
        self._callback = callback
        self._on_initial_done = on_initial_done
        self._thread: Optional[threading.Thread] = None
        if callback is not None:
            self._thread = threading.Thread(
                target=self._run, name=f"telestion_sync-{self._what}", daemon=True
            )
            self._thread.start()

    @property
    def last_revision(self) -> int:
        """The stream sequence of the last entry handed out (0: none yet).

        Not the ordered consumer's ``last_stream_seq``: that runs up to a batch ahead, over
        messages its pump has sorted but this watch has not handed out yet."""
        m = self._last
        return 0 if m is None else m.metadata.sequence.stream

    def _convert(self, m: JetStreamMessage) -> Any:
        raise NotImplementedError

    def _is_delete(self, entry: Any) -> bool:
        raise NotImplementedError

    def _num_pending(self, m: JetStreamMessage, entry: Any) -> int:
        """Messages still pending behind ``m`` (while the initial values are read)."""
        return m.metadata.num_pending

    def next(self, timeout: Optional[float] = None) -> Any:
        """The next entry, or ``None`` once when the initial values are done.
        ``ts.TimeoutError`` after ``timeout`` seconds; ``SubscriptionClosedError`` once stopped."""
        if self._marker_due:
            self._marker_due = False
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._stopped:
                raise SubscriptionClosedError(f"the {self._what} was stopped")
            m = self._it.next(left)
            self._last = m
            e = self._convert(m)
            if e is None:
                continue  # unreadable (logged by _convert)
            deliver = not (self._ignore_deletes and self._is_delete(e))
            if not self.initial_done.is_set():
                self._received += 1
                if self._received >= self._init_pending or self._num_pending(m, e) == 0:
                    self.initial_done.set()
                    if not deliver:
                        return None
                    self._marker_due = True
            if deliver:
                return e

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        try:
            return self.next(None)
        except SubscriptionClosedError:
            raise StopIteration from None

    def _run(self) -> None:
        callback = self._callback
        assert callback is not None
        while True:
            try:
                e = self.next(1.0)
            except TimeoutError:
                continue
            except (SubscriptionClosedError, Error) as exc:
                if not isinstance(exc, SubscriptionClosedError):
                    log.warning("%s ended: %s", self._what, exc)
                return
            try:
                if e is None:
                    if self._on_initial_done is not None:
                        self._on_initial_done()
                else:
                    callback(e)
            except Exception:
                log.exception("%s callback raised", self._what)

    def wait_initial(self, timeout: Optional[float] = None) -> bool:
        """Wait until the initial values were received (True) or ``timeout`` passed."""
        return self.initial_done.wait(timeout)

    def stop(self) -> None:
        """End the watch: no more entries; a blocked iteration ends within a fraction of a
        second; the server-side consumer is removed."""
        self._stopped = True
        self._it.stop()
        self._oc.close()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for a callback watcher's thread to end (after ``stop()``); True if it has."""
        if self._thread is None or self._thread is threading.current_thread():
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class KeyWatcher(Watcher):
    """A watch of keys (``kv.watch(...)``): :class:`KeyValueEntry` objects, ``None`` once
    when the initial values are done (see :class:`Watcher`)."""

    _what = "kv-watch"

    def __init__(
        self,
        kv: KeyValue,
        subjects: List[str],
        *,
        codec: _codecs.CodecSpec,
        **options: Any,
    ) -> None:
        self.kv = kv
        self._prefix_len = len(kv._prefix)
        self._codec = codec
        super().__init__(kv.js, kv.stream, subjects, bucket=kv.bucket, **options)

    def __repr__(self) -> str:
        return f"<KeyWatcher {self.kv.bucket!r} last_revision={self.last_revision}>"

    def _convert(self, m: JetStreamMessage) -> KeyValueEntry:
        f = ack_fields(m.reply)  # the sequence, time and pending without the full metadata
        if f is None:  # an unusual subject: the full parse (which raises what is wrong)
            md = m.metadata
            seq, created, ns, pending = md.sequence.stream, md.timestamp, -1, md.num_pending
        else:
            seq, ns, pending = f
            created = None
        h = m.headers
        return KeyValueEntry(
            self.kv.bucket,
            m.subject[self._prefix_len :],
            m.payload,
            seq,
            created,
            pending,
            _operation(h) if h else PUT,
            h,
            self._codec,
            ns,
        )

    def _num_pending(self, m: JetStreamMessage, entry: KeyValueEntry) -> int:
        return entry.delta

    def _is_delete(self, entry: KeyValueEntry) -> bool:
        return entry.operation != PUT

    def next(self, timeout: Optional[float] = None) -> Optional[KeyValueEntry]:
        """The next entry, or ``None`` once when the initial values are done.
        ``ts.TimeoutError`` after ``timeout`` seconds; ``SubscriptionClosedError`` once stopped."""
        e: Optional[KeyValueEntry] = super().next(timeout)
        return e

    def __iter__(self) -> Iterator[Optional[KeyValueEntry]]:
        return self

    def __enter__(self) -> KeyWatcher:
        return self


__all__ = [
    "KeyValue",
    "KeyValueEntry",
    "KeyValueStatus",
    "KeyWatcher",
    "Watcher",
    "check_key",
    "check_bucket",
    "bucket_config",
]
