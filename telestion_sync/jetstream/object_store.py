"""Object Store: files of any size on a JetStream stream, in chunks, with a SHA-256 digest.

The wire format is nats.go's and nats-py's (ADR-20): store ``S`` is stream ``OBJ_S``; an
object's chunks go to ``$O.S.C.<nuid>`` (a fresh nuid per put) and its info, as JSON, to
``$O.S.M.<base64url(name)>`` with ``Nats-Rollup: sub`` (only the latest info is kept). The
info is published last, so an interrupted put leaves no visible object; its chunks are purged.
Digests are ``SHA-256=`` and padded base64url, as nats.go writes them.

Memory stays bounded whatever the size: ``put`` reads one chunk at a time and keeps at most
``window`` chunks unacknowledged; ``get`` returns a file-like reader that pulls chunks as they
are read and checks the digest when the last one arrives. Built only on the public
:class:`~telestion_sync.JetStream` API.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Union

from ..errors import Error
from ..subscription import SubscriptionClosedError
from .context import new_name
from .errors import (
    BucketNotFoundError,
    DigestMismatchError,
    InvalidArgumentError,
    JetStreamError,
    MessageNotFoundError,
    ObjectNotFoundError,
    StreamNotFoundError,
)
from .kv import Watcher, check_bucket
from .models import StreamConfig, StreamInfo, parse_time, seconds

if TYPE_CHECKING:  # pragma: no cover
    import concurrent.futures

    from .context import JetStream
    from .message import JetStreamMessage, StoredMessage
    from .models import PubAck

log = logging.getLogger("telestion_sync.object_store")

DEFAULT_CHUNK_SIZE = 128 * 1024  # nats.go's
DEFAULT_WINDOW = 32  # chunks in flight during a put (4 MiB at the default chunk size)
DIGEST_PREFIX = "SHA-256="
_ZERO_TIME = "0001-01-01T00:00:00Z"  # what nats.go writes as mtime (the message time counts)

ObjectData = Union[
    bytes, bytearray, memoryview, str, "os.PathLike[str]", io.RawIOBase, io.BufferedIOBase, Any
]


def encode_name(name: str) -> str:
    """An object name as the last token of its meta subject (padded base64url)."""
    return base64.urlsafe_b64encode(name.encode()).decode()


def digest_string(sha: Any) -> str:
    return DIGEST_PREFIX + base64.urlsafe_b64encode(sha.digest()).decode()


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"an object name must be a non-empty str, got {name!r}")
    return name


def _headers_in(value: Any) -> Dict[str, str]:
    """Object headers from JSON: nats.go writes ``{"K": ["v", ...]}``; plain strings accepted."""
    out: Dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out[str(k)] = ", ".join(str(x) for x in v) if isinstance(v, list) else str(v)
    return out


def _headers_out(headers: Optional[Mapping[str, Any]]) -> Optional[Dict[str, List[str]]]:
    if not headers:
        return None
    return {
        str(k): [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)] for k, v in headers.items()
    }


@dataclass
class ObjectLink:
    """Where a link points: an object (``bucket`` and ``name``) or a whole store (no name)."""

    bucket: str
    name: Optional[str] = None


@dataclass
class ObjectInfo:
    """An object's info: ``name``, ``size``, ``chunks``, ``digest``, ``modified`` (aware UTC,
    the server's time of the info), ``deleted``, ``link``, ``nuid``, and the user's
    ``description``, ``headers`` and ``metadata``."""

    name: str
    bucket: str = ""
    nuid: str = ""
    size: int = 0
    chunks: int = 0
    digest: str = ""
    modified: Optional[datetime] = None
    deleted: bool = False
    description: str = ""
    headers: Dict[str, str] = field(default_factory=dict)
    metadata: Dict[str, str] = field(default_factory=dict)
    link: Optional[ObjectLink] = None
    max_chunk_size: Optional[int] = None

    @property
    def is_link(self) -> bool:
        return self.link is not None

    def to_json(self) -> Dict[str, Any]:
        """The info as nats.go writes it (``mtime`` zero: readers take the message time)."""
        d: Dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        h = _headers_out(self.headers)
        if h:
            d["headers"] = h
        if self.metadata:
            d["metadata"] = dict(self.metadata)
        options: Dict[str, Any] = {}
        if self.link is not None:
            options["link"] = {
                "bucket": self.link.bucket,
                **({"name": self.link.name} if self.link.name else {}),
            }
        if self.max_chunk_size:
            options["max_chunk_size"] = self.max_chunk_size
        if options:
            d["options"] = options
        d.update(bucket=self.bucket, nuid=self.nuid, size=self.size, mtime=_ZERO_TIME, chunks=self.chunks)
        if self.digest:
            d["digest"] = self.digest
        if self.deleted:
            d["deleted"] = True
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any], modified: Optional[datetime] = None) -> ObjectInfo:
        opts = d.get("options") or {}
        link = opts.get("link")
        if modified is None and d.get("mtime") and d["mtime"] != _ZERO_TIME:
            try:
                modified = parse_time(d["mtime"].replace("+00:00", "Z"))
            except ValueError:
                modified = None
        return cls(
            name=str(d.get("name", "")),
            bucket=str(d.get("bucket", "")),
            nuid=str(d.get("nuid", "")),
            size=int(d.get("size") or 0),
            chunks=int(d.get("chunks") or 0),
            digest=str(d.get("digest") or ""),
            modified=modified,
            deleted=bool(d.get("deleted", False)),
            description=str(d.get("description") or ""),
            headers=_headers_in(d.get("headers")),
            metadata=dict(d.get("metadata") or {}),
            link=ObjectLink(str(link.get("bucket", "")), link.get("name") or None) if link else None,
            max_chunk_size=opts.get("max_chunk_size"),
        )


@dataclass
class ObjectStoreStatus:
    """A store's configuration and state: ``size`` (bytes stored, infos included), ``ttl``,
    ``sealed``, ``storage``, ``replicas``..."""

    bucket: str
    description: str
    ttl: float
    storage: str
    replicas: int
    sealed: bool
    size: int
    compressed: bool
    metadata: Dict[str, str]
    stream_info: StreamInfo
    backing_store: str = "JetStream"

    @classmethod
    def of(cls, bucket: str, info: StreamInfo) -> ObjectStoreStatus:
        cfg = info.config
        return cls(
            bucket=bucket,
            description=cfg.description or "",
            ttl=float(cfg.max_age or 0.0),
            storage=cfg.storage or "file",
            replicas=int(cfg.replicas or 1),
            sealed=bool(cfg.sealed),
            size=info.state.bytes,
            compressed=(cfg.compression or "none") != "none",
            metadata=dict(cfg.metadata or {}),
            stream_info=info,
        )


def store_config(
    bucket: str,
    *,
    description: Optional[str] = None,
    ttl: Any = None,
    max_bytes: Optional[int] = None,
    storage: Optional[str] = None,
    replicas: int = 1,
    compression: bool = False,
    metadata: Optional[Dict[str, str]] = None,
) -> StreamConfig:
    """The stream configuration of an Object Store, as nats.go writes it."""
    check_bucket(bucket)
    return StreamConfig(
        name=f"OBJ_{bucket}",
        subjects=[f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
        description=description,
        max_age=seconds(ttl, "ttl") or 0.0,
        max_bytes=max_bytes if max_bytes else -1,
        storage=storage,
        replicas=replicas,
        discard="new",
        allow_rollup_hdrs=True,
        allow_direct=True,
        compression="s2" if compression else None,
        metadata=metadata,
    )


def _open_source(data: Any) -> tuple[Any, bool]:
    """A binary reader for ``data`` and whether we opened it (and must close it)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(data)), True
    if isinstance(data, str):
        return io.BytesIO(data.encode()), True
    if isinstance(data, os.PathLike):
        return open(data, "rb"), True
    if callable(getattr(data, "read", None)):
        return data, False
    raise InvalidArgumentError(
        f"object data must be bytes, str, a binary file object or a path, not {type(data).__name__}"
    )


def _read_chunk(src: Any, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end), from any reader."""
    parts: List[bytes] = []
    left = size
    while left > 0:
        b = src.read(left)
        if b is None:  # a non-blocking raw stream with nothing ready: wait a little
            time.sleep(0.001)
            continue
        if isinstance(b, str):
            raise InvalidArgumentError("object data must be read in binary mode (got str from read())")
        if not b:
            break
        parts.append(bytes(b))
        left -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ObjectStore:
    """An Object Store (``js.create_object_store(...)`` or ``js.object_store(name)``)."""

    def __init__(self, js: JetStream, bucket: str, info: StreamInfo) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"OBJ_{bucket}"
        self.cached_info = info

    def __repr__(self) -> str:
        return f"<ObjectStore {self.bucket!r}>"

    def _chunk_subject(self, nuid: str) -> str:
        return f"$O.{self.bucket}.C.{nuid}"

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self.bucket}.M.{encode_name(name)}"

    # --- infos --------------------------------------------------------------------------------

    def info(self, name: str, *, show_deleted: bool = False, timeout: Optional[float] = None) -> ObjectInfo:
        """The info of object ``name`` (:class:`ObjectNotFoundError` when missing or deleted,
        unless ``show_deleted``)."""
        _check_name(name)
        try:
            m = self.js.get_last_msg_for_subject(self.stream, self._meta_subject(name), timeout=timeout)
        except MessageNotFoundError:
            raise ObjectNotFoundError(
                f"object {name!r} not found in store {self.bucket!r}", 404, 10037
            ) from None
        except StreamNotFoundError:
            raise BucketNotFoundError(f"object store {self.bucket!r} not found", 404, 10059) from None
        info = self._parse_info(m)
        if info.deleted and not show_deleted:
            raise ObjectNotFoundError(f"object {name!r} in store {self.bucket!r} is deleted", 404, 10037)
        return info

    get_info = info

    @staticmethod
    def _parse_info(m: Union[StoredMessage, JetStreamMessage]) -> ObjectInfo:
        try:
            d = json.loads(m.payload)
        except ValueError as exc:
            raise JetStreamError(f"malformed object info on {m.subject!r}: {exc}") from None
        when = m.time if hasattr(m, "time") else m.metadata.timestamp
        return ObjectInfo.from_json(d, when)

    def _publish_info(self, info: ObjectInfo, timeout: Optional[float]) -> None:
        self.js.publish(
            self._meta_subject(info.name),
            json.dumps(info.to_json()).encode(),
            headers={"Nats-Rollup": "sub"},
            timeout=timeout,
        )
        info.modified = datetime.now(timezone.utc)

    def _purge_chunks(self, nuid: str, timeout: Optional[float]) -> None:
        self.js.purge_stream(self.stream, subject=self._chunk_subject(nuid), timeout=timeout)

    # --- put ----------------------------------------------------------------------------------

    def put(
        self,
        name: str,
        data: ObjectData,
        *,
        description: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        window: int = DEFAULT_WINDOW,
        progress: Optional[Callable[[int], Any]] = None,
        timeout: Optional[float] = None,
    ) -> ObjectInfo:
        """Store ``data`` (bytes, a str as UTF-8, a binary file object or a path) as ``name``,
        replacing any object of that name. Streamed in ``chunk_size`` chunks with at most
        ``window`` unacknowledged, so memory stays bounded; ``progress(bytes_sent)`` is called
        after each chunk. If it fails part-way, no object is visible and its chunks are purged."""
        _check_name(name)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidArgumentError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise InvalidArgumentError(f"window must be a positive integer, got {window!r}")
        src, owned = _open_source(data)
        try:
            try:
                existing: Optional[ObjectInfo] = self.info(name, show_deleted=True, timeout=timeout)
            except ObjectNotFoundError:
                existing = None
            nuid = new_name()
            subject = self._chunk_subject(nuid)
            info = ObjectInfo(
                name=name,
                bucket=self.bucket,
                nuid=nuid,
                description=description or "",
                headers=_headers_in(_headers_out(headers)),
                metadata=dict(metadata or {}),
                max_chunk_size=chunk_size,
            )
            wait = self.js._timeout(timeout)
            sha = hashlib.sha256()
            inflight: Deque[concurrent.futures.Future[PubAck]] = collections.deque()
            sent = chunks = 0
            try:
                while True:
                    chunk = _read_chunk(src, chunk_size)
                    if not chunk:
                        break
                    sha.update(chunk)
                    while len(inflight) >= window:
                        inflight.popleft().result(wait)
                    inflight.append(self.js.publish_async(subject, chunk, timeout=wait))
                    sent += len(chunk)
                    chunks += 1
                    if progress is not None:
                        progress(sent)
                while inflight:
                    inflight.popleft().result(wait)
                info.size, info.chunks, info.digest = sent, chunks, digest_string(sha)
                self._publish_info(info, timeout)
            except BaseException as exc:
                # Chunks still in flight would land after the purge: wait for their acks first.
                for fut in inflight:
                    try:
                        fut.result(wait)
                    except BaseException:
                        pass
                log.info("put of %r into %r failed (%r); purging its chunks", name, self.bucket, exc)
                try:
                    self._purge_chunks(nuid, timeout)
                except Error as purge_exc:
                    log.warning("purging the chunks of a failed put of %r: %s", name, purge_exc)
                if isinstance(exc, StreamNotFoundError):
                    raise BucketNotFoundError(f"object store {self.bucket!r} not found", 404, 10059) from None
                raise
            if existing is not None and existing.nuid and existing.nuid != nuid and not existing.is_link:
                self._purge_chunks(existing.nuid, timeout)
            return info
        finally:
            if owned:
                src.close()

    # --- get ----------------------------------------------------------------------------------

    def _resolve(self, name: str, timeout: Optional[float]) -> tuple[ObjectStore, ObjectInfo]:
        info = self.info(name, timeout=timeout)
        if info.link is None:
            return self, info
        if not info.link.name:
            raise InvalidArgumentError(
                f"object {name!r} links to a whole store ({info.link.bucket!r}), not an object"
            )
        store = (
            self
            if info.link.bucket == self.bucket
            else self.js.object_store(info.link.bucket, timeout=timeout)
        )
        return store, store.info(info.link.name, timeout=timeout)

    def get(self, name: str, *, timeout: Optional[float] = None) -> ObjectReader:
        """A file-like reader of object ``name`` (links followed), streamed chunk by chunk;
        the digest is checked when the last chunk arrives (:class:`DigestMismatchError`)."""
        store, info = self._resolve(name, timeout)
        return ObjectReader(store, info, self.js._timeout(timeout))

    def get_bytes(self, name: str, *, timeout: Optional[float] = None) -> bytes:
        """The whole object as bytes (digest checked)."""
        with self.get(name, timeout=timeout) as r:
            return r.read()

    def get_file(
        self, name: str, path: Union[str, os.PathLike[str]], *, timeout: Optional[float] = None
    ) -> ObjectInfo:
        """Write object ``name`` to ``path`` (streamed; the file is removed if the digest fails)."""
        with self.get(name, timeout=timeout) as r:
            try:
                with open(path, "wb") as f:
                    for chunk in r.iter_chunks():
                        f.write(chunk)
            except BaseException:
                try:
                    os.unlink(path)
                except OSError:
                    pass
                raise
            return r.info

    # --- other operations ---------------------------------------------------------------------

    def delete(self, name: str, *, timeout: Optional[float] = None) -> None:
        """Delete object ``name``: a deleted info replaces it and its chunks are purged
        (:class:`ObjectNotFoundError` when there is none)."""
        info = self.info(name, show_deleted=True, timeout=timeout)
        info.deleted, info.size, info.chunks, info.digest = True, 0, 0, ""
        self._publish_info(info, timeout)
        if info.nuid:
            self._purge_chunks(info.nuid, timeout)

    def update_meta(
        self,
        name: str,
        *,
        new_name: Optional[str] = None,
        description: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> ObjectInfo:
        """Change an object's name, description, headers or metadata (None: unchanged); the
        chunks stay. Renaming onto a live object raises :class:`JetStreamError`."""
        info = self.info(name, timeout=timeout)
        if new_name is not None and new_name != name:
            _check_name(new_name)
            try:
                other = self.info(new_name, show_deleted=True, timeout=timeout)
            except ObjectNotFoundError:
                other = None
            if other is not None and not other.deleted:
                raise JetStreamError(f"cannot rename {name!r}: object {new_name!r} exists in {self.bucket!r}")
            info.name = new_name
        if description is not None:
            info.description = description
        if headers is not None:
            info.headers = _headers_in(_headers_out(headers))
        if metadata is not None:
            info.metadata = dict(metadata)
        self._publish_info(info, timeout)
        if info.name != name:
            self.js.purge_stream(self.stream, subject=self._meta_subject(name), timeout=timeout)
        return info

    def add_link(self, name: str, target: ObjectInfo, *, timeout: Optional[float] = None) -> ObjectInfo:
        """Make ``name`` a link to the object ``target`` (in this store or another); a link
        to a link or to a deleted object is refused, as is replacing an object by a link."""
        _check_name(name)
        if not isinstance(target, ObjectInfo) or not target.name:
            raise InvalidArgumentError("target must be the ObjectInfo of the object to link to")
        if target.deleted:
            raise InvalidArgumentError(f"cannot link to deleted object {target.name!r}")
        if target.is_link:
            raise InvalidArgumentError(f"cannot link to a link ({target.name!r})")
        return self._put_link(name, ObjectLink(target.bucket, target.name), timeout)

    def add_bucket_link(
        self, name: str, store: Union[ObjectStore, str], *, timeout: Optional[float] = None
    ) -> ObjectInfo:
        """Make ``name`` a link to another whole store."""
        _check_name(name)
        bucket = store.bucket if isinstance(store, ObjectStore) else check_bucket(store)
        return self._put_link(name, ObjectLink(bucket, None), timeout)

    def _put_link(self, name: str, link: ObjectLink, timeout: Optional[float]) -> ObjectInfo:
        try:
            existing = self.info(name, show_deleted=True, timeout=timeout)
        except ObjectNotFoundError:
            existing = None
        if existing is not None and not existing.deleted and not existing.is_link:
            raise JetStreamError(f"object {name!r} exists in {self.bucket!r} and is not a link")
        info = ObjectInfo(name=name, bucket=self.bucket, nuid=new_name(), link=link)
        self._publish_info(info, timeout)
        return info

    def list(self, *, show_deleted: bool = False, timeout: Optional[float] = None) -> List[ObjectInfo]:
        """The infos of all objects (deleted ones only with ``show_deleted``); ``[]`` for an
        empty store."""
        out: List[ObjectInfo] = []
        with self.watch(ignore_deletes=not show_deleted, timeout=timeout) as w:
            wait = self.js._timeout(timeout)
            while True:
                info = w.next(wait)
                if info is None:
                    return out
                out.append(info)

    def watch(
        self,
        callback: Optional[Callable[[ObjectInfo], Any]] = None,
        *,
        include_history: bool = False,
        ignore_deletes: bool = False,
        updates_only: bool = False,
        on_initial_done: Optional[Callable[[], Any]] = None,
        timeout: Optional[float] = None,
    ) -> ObjectWatcher:
        """Watch the infos of the store's objects: the current ones, ``None`` once, then
        changes (see :meth:`KeyValue.watch`)."""
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        return ObjectWatcher(
            self,
            include_history=include_history,
            ignore_deletes=ignore_deletes,
            updates_only=updates_only,
            meta_only=False,
            callback=callback,
            on_initial_done=on_initial_done,
            timeout=timeout,
        )

    def seal(self, *, timeout: Optional[float] = None) -> ObjectStoreStatus:
        """Seal the store: nothing can be added, changed or removed any more."""
        info = self.js.stream_info(self.stream, timeout=timeout)
        info.config.sealed = True
        info = self.js.update_stream(info.config, timeout=timeout)
        self.cached_info = info
        return ObjectStoreStatus.of(self.bucket, info)

    def status(self, *, timeout: Optional[float] = None) -> ObjectStoreStatus:
        """The store's configuration and state."""
        try:
            info = self.js.stream_info(self.stream, timeout=timeout)
        except StreamNotFoundError:
            raise BucketNotFoundError(f"object store {self.bucket!r} not found", 404, 10059) from None
        self.cached_info = info
        return ObjectStoreStatus.of(self.bucket, info)


class ObjectWatcher(Watcher):
    """A watch of a store's object infos (``obs.watch()``): :class:`ObjectInfo` objects and
    ``None`` once when the initial ones are done."""

    _what = "object-watch"

    def __init__(self, store: ObjectStore, **options: Any) -> None:
        self.store = store
        super().__init__(store.js, store.stream, [f"$O.{store.bucket}.M.>"], bucket=store.bucket, **options)

    def _convert(self, m: JetStreamMessage) -> Optional[ObjectInfo]:
        try:
            return ObjectStore._parse_info(m)
        except JetStreamError as exc:
            log.warning("object watch of %r: %s", self.store.bucket, exc)
            return None

    def _is_delete(self, entry: ObjectInfo) -> bool:
        return entry.deleted

    def next(self, timeout: Optional[float] = None) -> Optional[ObjectInfo]:
        """The next info, ``None`` once when the initial ones are done (see :class:`Watcher`)."""
        info: Optional[ObjectInfo] = super().next(timeout)
        return info

    def __iter__(self) -> Iterator[Optional[ObjectInfo]]:
        return self

    def __enter__(self) -> ObjectWatcher:
        return self


class ObjectReader(io.RawIOBase):
    """A streamed, read-only, file-like view of an object (``obs.get(name)``): ``read(n)``,
    ``readinto``, ``iter_chunks()``, line iteration, a context manager. At most a window of
    chunks is buffered; the SHA-256 digest and the size are checked when the last chunk
    arrives, before its bytes are handed out (:class:`DigestMismatchError`)."""

    WINDOW = 16  # chunks requested at a time

    def __init__(self, store: ObjectStore, info: ObjectInfo, timeout: float) -> None:
        super().__init__()
        self.info = info
        self._store = store
        self._timeout = timeout
        self._sha = hashlib.sha256()
        self._received = 0
        self._chunks = 0
        self._buf = memoryview(b"")
        self._last = b""
        self._eof = False
        self._oc: Any = None
        self._it: Any = None
        if info.size == 0:
            self._finish()
        else:
            self._oc = store.js.ordered_consumer(
                store.stream,
                filter_subjects=[store._chunk_subject(info.nuid)],
                deliver_policy="all",
                name_prefix=f"get_{store.bucket[:16]}_{new_name()[:10]}",
                timeout=timeout,
            )
            self._it = self._oc.messages(max_messages=self.WINDOW, expires=max(timeout, 5.0))

    def __repr__(self) -> str:
        return f"<ObjectReader {self.info.bucket}/{self.info.name} {self._received}/{self.info.size} bytes>"

    def readable(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return self.info.name

    def _finish(self) -> None:
        """The last chunk has arrived: check size and digest, then stop the consumer."""
        self._eof = True
        self._stop_consumer()
        digest = digest_string(self._sha)
        if self._received != self.info.size or (self.info.digest and digest != self.info.digest):
            self._buf = memoryview(b"")  # none of the bad bytes are handed out afterwards
            raise DigestMismatchError(
                f"object {self.info.name!r} in {self.info.bucket!r}: got {self._received} bytes with "
                f"digest {digest}, its info says {self.info.size} bytes with {self.info.digest}"
            )

    def _stop_consumer(self) -> None:
        if self._it is not None:
            self._it.stop()
            self._oc.close()
            self._it = None

    def _next_chunk(self) -> bool:
        """Receive the next chunk into the buffer; False at the end."""
        if self._eof:
            return False
        try:
            m = self._it.next(self._timeout)
        except SubscriptionClosedError:
            raise Error(f"reading object {self.info.name!r}: the bus closed") from None
        data = m.payload
        self._sha.update(data)
        self._received += len(data)
        self._chunks += 1
        self._last = data
        self._buf = memoryview(data)
        if m.metadata.num_pending == 0 or self._received >= self.info.size:
            self._finish()
        return True

    def readinto(self, b: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed object reader")
        while not self._buf:
            if not self._next_chunk():
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left with -1); b"" at the end."""
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("I/O operation on closed object reader")
        while not self._buf:
            if not self._next_chunk():
                return b""
        out = bytes(self._buf[:size])
        self._buf = self._buf[size:]
        return out

    def readall(self) -> bytes:
        parts = [bytes(self._buf)]
        self._buf = memoryview(b"")
        while self._next_chunk():
            parts.append(bytes(self._buf))
            self._buf = memoryview(b"")
        return b"".join(parts)

    def iter_chunks(self) -> Iterator[bytes]:
        """The object's bytes chunk by chunk (as stored), without extra copies."""
        if self._buf:
            yield bytes(self._buf)
            self._buf = memoryview(b"")
        while self._next_chunk():
            self._buf = memoryview(b"")
            yield self._last

    def close(self) -> None:
        """Stop receiving (the server-side consumer goes too)."""
        self._stop_consumer()
        super().close()


__all__ = [
    "ObjectStore",
    "ObjectInfo",
    "ObjectLink",
    "ObjectReader",
    "ObjectWatcher",
    "ObjectStoreStatus",
    "DEFAULT_CHUNK_SIZE",
]
