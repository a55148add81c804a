"""Record a pass and replay it: every message with its receive time, subject, reply subject and
headers, byte-exact, as JSON Lines (``.jsonl``) or a CBOR sequence (``.cbor``, RFC 8742).

File formats (one record per message, in receive order):

- JSON Lines: ``{"time": "2024-05-01T12:00:00.123456789Z", "time_ns": 1714564800123456789,
  "subject": "telemetry.temp", "reply": "...", "headers": [["Key", "value"], ...],
  "encoding": "utf-8", "payload": "{\\"celsius\\": 21.5}"}``. ``encoding`` is ``"utf-8"``
  (``payload`` is the payload as text) when the payload is valid UTF-8, else ``"base64"``.
  ``reply`` and ``headers`` are left out when the message had none.
- CBOR sequence: one map per message, ``{"time_ns", "subject", "reply", "headers", "payload"}``
  with ``payload`` a byte string.

Headers are kept as ``[key, value]`` pairs in their order, a repeated key's values apart. A
recorder flushes to the OS at least every ``flush_interval`` seconds, so a killed recorder loses
at most that much; a truncated last record is skipped with a :class:`RecordingWarning` when
reading, never an exception.
"""

from __future__ import annotations

import base64
import glob
import json
import logging
import math
import os
import queue
import re
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    BinaryIO,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
    overload,
)

import cbor2

from . import codecs as _codecs
from ._exit import register_exit
from .errors import DecodeError, Error
from .message import Message
from .options import CALL, check_seconds, is_int
from .progress import Progress
from .protocol import validate_subject

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from .client import MessageBus
    from .subscription import Subscription

log = logging.getLogger("telestion_sync.recording")

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, Sequence[PathLike], "Recording"]
HeaderItems = List[Tuple[str, str]]

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".cbor": "cbor", ".cbors": "cbor"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_STOP: Any = object()


class RecordingWarning(UserWarning):
    """A record in a recording could not be read (a truncated last line after a crash) and was
    skipped."""


# --- messages -----------------------------------------------------------------------------------


def header_items(msg: Any) -> HeaderItems:
    """A message's headers as ``(key, value)`` pairs in received order, repeated keys apart."""
    block = getattr(msg, "header_block", None)
    if block:
        items: HeaderItems = []
        for line in block.decode("utf-8", "replace").split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep:  # the value as sent: only the one space after the colon is the format's
                items.append((key, value[1:] if value.startswith(" ") else value))
        return items
    headers = getattr(msg, "headers", None) or {}
    return [(str(k), str(v)) for k, v in headers.items()]


def time_from_ns(ns: int) -> datetime:
    """An aware UTC datetime (microseconds) from nanoseconds since the epoch."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def iso_ns(ns: int) -> str:
    """``2024-05-01T12:00:00.123456789Z`` (nanoseconds kept)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


class RecordedMessage:
    """One recorded message: ``time`` (aware UTC datetime; ``time_ns`` exact), ``subject``,
    ``reply``, ``headers`` (like ``Message.headers``; ``header_items`` keeps repeated keys
    apart), ``payload`` (bytes, exactly as received) and ``data`` (decoded like ``msg.data``:
    CBOR by its Content-Type, else JSON, else the bytes)."""

    __slots__ = ("time_ns", "subject", "reply", "header_items", "payload", "_data")

    def __init__(
        self,
        time_ns: int,
        subject: str,
        payload: bytes,
        reply: Optional[str] = None,
        header_items: Optional[HeaderItems] = None,
    ) -> None:
        self.time_ns = time_ns
        self.subject = subject
        self.reply = reply
        self.header_items: HeaderItems = header_items or []
        self.payload = payload
        self._data: Any = _STOP

    @property
    def time(self) -> datetime:
        """The receive time, an aware UTC datetime."""
        return time_from_ns(self.time_ns)

    @property
    def headers(self) -> Dict[str, str]:
        """The headers as ``Message.headers`` shows them (a repeated key's values joined)."""
        out: Dict[str, str] = {}
        for k, v in self.header_items:
            out[k] = out[k] + ", " + v if k in out else v
        return out

    def publish_headers(self) -> Optional[Dict[str, Union[str, List[str]]]]:
        """The headers to publish again: repeated keys as lists (their values apart)."""
        if not self.header_items:
            return None
        out: Dict[str, List[str]] = {}
        for k, v in self.header_items:
            out.setdefault(k, []).append(v)
        return {k: v[0] if len(v) == 1 else v for k, v in out.items()}

    @property
    def data(self) -> Any:
        """The payload decoded as ``msg.data`` decodes it in ``"auto"`` mode (cached)."""
        if self._data is _STOP:
            try:
                self._data = _codecs.decode_auto(self.payload, self.headers or None)
            except Exception as exc:
                raise DecodeError(f"recorded message on {self.subject!r} does not decode: {exc}") from exc
        return self._data

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return _codecs.json_loads(self.payload)

    def cbor(self) -> Any:
        """The payload parsed as CBOR."""
        return _codecs.CBOR.decode(self.payload)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedMessage):
            return NotImplemented
        return (self.time_ns, self.subject, self.reply, self.header_items, self.payload) == (
            other.time_ns,
            other.subject,
            other.reply,
            other.header_items,
            other.payload,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = self.payload[:40]
        more = "..." if len(self.payload) > 40 else ""
        return f"<RecordedMessage {iso_ns(self.time_ns)} {self.subject!r} payload={shown!r}{more}>"

    def _repr_html_(self) -> str:
        import html

        return "<code>" + html.escape(repr(self)) + "</code>"


# --- encoding -----------------------------------------------------------------------------------


def encode_jsonl(
    time_ns: int, subject: str, reply: Optional[str], items: HeaderItems, payload: bytes
) -> bytes:
    """One JSON Lines record (with its newline)."""
    d: Dict[str, Any] = {"time": iso_ns(time_ns), "time_ns": time_ns, "subject": subject}
    if reply:
        d["reply"] = reply
    if items:
        d["headers"] = [list(kv) for kv in items]
    try:
        d["payload"] = payload.decode("utf-8")
        d["encoding"] = "utf-8"
    except UnicodeDecodeError:
        d["payload"] = base64.b64encode(payload).decode("ascii")
        d["encoding"] = "base64"
    try:
        line = json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a subject that is not UTF-8 (kept as surrogates): escaped
        line = json.dumps(d, separators=(",", ":")).encode("ascii")
    return line + b"\n"


def encode_cbor(
    time_ns: int, subject: str, reply: Optional[str], items: HeaderItems, payload: bytes
) -> bytes:
    """One CBOR sequence item."""
    d: Dict[str, Any] = {"time_ns": time_ns, "subject": subject, "payload": payload}
    if reply:
        d["reply"] = reply
    if items:
        d["headers"] = [list(kv) for kv in items]
    return bytes(cbor2.dumps(d))


_ENCODERS = {"jsonl": encode_jsonl, "cbor": encode_cbor}


def _from_record(d: Any) -> RecordedMessage:
    if not isinstance(d, dict):
        raise ValueError(f"a record is a map, not {type(d).__name__}")
    payload = d.get("payload", b"")
    if isinstance(payload, str):
        enc = d.get("encoding", "utf-8")
        if enc == "base64":
            payload = base64.b64decode(payload, validate=True)
        elif enc == "utf-8":
            payload = payload.encode("utf-8")
        else:
            raise ValueError(f"unknown payload encoding {enc!r}")
    if not isinstance(payload, bytes):
        raise ValueError("payload is not bytes")
    items = [(str(k), str(v)) for k, v in d.get("headers") or []]
    time_ns = d["time_ns"]
    if not is_int(time_ns):
        raise ValueError("time_ns is not an integer")
    return RecordedMessage(time_ns, str(d["subject"]), payload, d.get("reply") or None, items)


def _warn(path: Path, what: str) -> None:
    warnings.warn(f"{path}: {what}", RecordingWarning, stacklevel=4)
    log.warning("%s: %s", path, what)


def read_jsonl(path: Path) -> Tuple[List[RecordedMessage], int]:
    """The messages of a JSON Lines file and the number of records skipped (each warned)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    out: List[RecordedMessage] = []
    skipped = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(_from_record(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            skipped += 1
            where = "truncated last line" if i == len(lines) - 1 else f"line {i + 1} unreadable"
            _warn(path, f"{where} skipped ({exc})")
    return out, skipped


def read_cbor(path: Path) -> Tuple[List[RecordedMessage], int]:
    """The messages of a CBOR sequence and the number of items skipped (each warned)."""
    out: List[RecordedMessage] = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        decoder = cbor2.CBORDecoder(f)
        while f.tell() < size:
            start = f.tell()
            try:
                item = decoder.decode()
                out.append(_from_record(item))
            except (cbor2.CBORDecodeError, ValueError, KeyError, TypeError) as exc:
                # A sequence cannot be resynchronized: what follows a bad item is lost too.
                what = "truncated last item" if isinstance(exc, cbor2.CBORDecodeEOF) else "unreadable item"
                _warn(path, f"{what} at byte {start} skipped ({size - start} bytes; {exc})")
                return out, 1
    return out, 0


def format_of(path: PathLike, format: Optional[str] = None) -> str:  # noqa: A002
    """``"jsonl"`` or ``"cbor"``: ``format`` when given, else by the file's extension."""
    if format is not None:
        if format not in ("jsonl", "cbor"):
            raise ValueError(f"format must be 'jsonl' or 'cbor', not {format!r}")
        return format
    ext = Path(path).suffix.lower()
    try:
        return FORMATS[ext]
    except KeyError:
        raise ValueError(
            f"cannot tell the format of {os.fspath(path)!r} by its extension: use .jsonl or .cbor, "
            "or pass format='jsonl' / format='cbor'"
        ) from None


def rotated_name(path: Path, index: int) -> Path:
    """The ``index``-th file of a rotated recording: ``pass.jsonl`` -> ``pass.0001.jsonl``."""
    return path.with_name(f"{path.stem}.{index:04d}{path.suffix}")


def _rotated_files(path: Path) -> List[Path]:
    pattern = re.compile(re.escape(path.stem) + r"\.(\d{4,})" + re.escape(path.suffix) + "$")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def recording_files(source: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """The files a recording source names: a file, a rotated set (``pass.jsonl`` finds
    ``pass.0001.jsonl``...), a directory (its ``.jsonl``/``.cbor`` files), a glob, or a list."""
    if isinstance(source, (list, tuple)):
        files: List[Path] = []
        for item in source:
            files.extend(recording_files(item))
        return files
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"path must be a path, a glob or a list of them, not {type(source).__name__}")
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in FORMATS and p.is_file())
        if not found:
            raise FileNotFoundError(f"no .jsonl or .cbor recording in directory {os.fspath(path)!r}")
        return found
    if glob.has_magic(os.fspath(path)):
        matched = sorted(Path(p) for p in glob.glob(os.fspath(path)))
        if not matched:
            raise FileNotFoundError(f"no recording matches {os.fspath(path)!r}")
        return matched
    rotated = _rotated_files(path)
    if rotated:
        return rotated
    raise FileNotFoundError(f"no recording at {os.fspath(path)!r}")


# --- reading ------------------------------------------------------------------------------------


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches the NATS ``pattern`` (``*`` one token, ``>`` the rest)."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def _patterns(subjects: Union[str, Sequence[str], None], param: str = "subjects") -> Optional[List[str]]:
    if subjects is None:
        return None
    if isinstance(subjects, str):
        subjects = [subjects]
    if not isinstance(subjects, (list, tuple)) or not subjects:
        raise TypeError(f"{param} must be a subject or a non-empty list of subjects, not {subjects!r}")
    for s in subjects:
        if not isinstance(s, str):
            raise TypeError(f"{param} must hold subjects (str), not {type(s).__name__}")
        validate_subject(s, wildcards=True)
    return list(subjects)


class Recording(Sequence[RecordedMessage]):
    """The messages of a recording, in receive order: iterate, index, ``len()``, ``filter()``,
    ``to_dataframe()``. ``files`` lists what was read and ``skipped`` the records that were
    not readable (each warned with :class:`RecordingWarning`)."""

    def __init__(
        self, messages: List[RecordedMessage], files: Optional[List[Path]] = None, skipped: int = 0
    ) -> None:
        self.messages = messages
        self.files = files or []
        self.skipped = skipped

    @overload
    def __getitem__(self, index: int) -> RecordedMessage: ...

    @overload
    def __getitem__(self, index: slice) -> Recording: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[RecordedMessage, Recording]:
        if isinstance(index, slice):
            return Recording(self.messages[index], self.files)
        return self.messages[index]

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[RecordedMessage]:
        return iter(self.messages)

    def filter(self, subjects: Union[str, Sequence[str]]) -> Recording:
        """The messages whose subject matches any of ``subjects`` (NATS wildcards)."""
        pats = _patterns(subjects) or []
        return Recording(
            [m for m in self.messages if any(subject_matches(p, m.subject) for p in pats)], self.files
        )

    @property
    def subjects(self) -> List[str]:
        """The distinct subjects, sorted."""
        return sorted({m.subject for m in self.messages})

    @property
    def start(self) -> Optional[datetime]:
        """The first receive time (None when empty)."""
        return self.messages[0].time if self.messages else None

    @property
    def end(self) -> Optional[datetime]:
        """The last receive time (None when empty)."""
        return self.messages[-1].time if self.messages else None

    @property
    def duration(self) -> float:
        """Seconds from the first to the last message."""
        if not self.messages:
            return 0.0
        return (self.messages[-1].time_ns - self.messages[0].time_ns) / 1e9

    def to_dataframe(self) -> pandas.DataFrame:
        """A pandas DataFrame: see :func:`telestion_sync.dataframe.to_dataframe`."""
        from .dataframe import to_dataframe

        return to_dataframe(self.messages)

    def __repr__(self) -> str:
        return (
            f"<Recording {len(self)} messages, {len(self.subjects)} subjects, "
            f"{self.duration:.3f} s, {len(self.files)} file(s)>"
        )

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{n}</td></tr>"
            for s, n in sorted(_count_subjects(self.messages).items())[:50]
        )
        start = html.escape(iso_ns(self.messages[0].time_ns)) if self.messages else "-"
        return (
            f"<b>Recording</b>: {len(self)} messages over {self.duration:.3f} s from {start}"
            f"{f', {self.skipped} skipped' if self.skipped else ''}"
            f"<table><tr><th>subject</th><th>messages</th></tr>{rows}</table>"
        )


def _count_subjects(messages: Iterable[RecordedMessage]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for m in messages:
        out[m.subject] = out.get(m.subject, 0) + 1
    return out


def load_recording(path: Source) -> Recording:
    """Read a recording: a ``.jsonl`` or ``.cbor`` file, a rotated set (give the name passed
    to the recorder), a directory, a glob, or a list of those. Messages come sorted by
    receive time. An unreadable record (a truncated last line after a crash) is skipped with
    a :class:`RecordingWarning`."""
    if isinstance(path, Recording):
        return path
    files = recording_files(path)
    messages: List[RecordedMessage] = []
    skipped = 0
    for f in files:
        got, bad = read_cbor(f) if format_of(f) == "cbor" else read_jsonl(f)
        messages.extend(got)
        skipped += bad
    messages.sort(key=lambda m: m.time_ns)  # stable: equal times keep their file order
    return Recording(messages, files, skipped)


# --- recording ----------------------------------------------------------------------------------


_running: weakref.WeakSet[Recorder] = weakref.WeakSet()


def _stop_at_exit() -> None:
    """Recorders a script never stopped write what they hold before the bus closes (a clean
    exit loses nothing; only a crash may lose the last unflushed second)."""
    for rec in list(_running):
        try:
            rec.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            log.debug("stopping a recorder at exit failed", exc_info=True)


register_exit(_stop_at_exit)  # registered after the bus's: runs before it


class Recorder:
    """Writes every message on ``subjects`` to ``path`` until :meth:`stop`; a context manager.

    Messages are stamped (``time.time_ns()``) by a cheap callback on the bus's delivery threads
    and written by one writer thread, flushed to the OS at least every ``flush_interval``
    seconds. ``rotate_bytes`` / ``rotate_seconds`` start a new numbered file
    (``pass.0001.jsonl``, ``pass.0002.jsonl``...) when the current one is that big or old.
    Up to ``max_pending`` messages wait for the writer; beyond that they are dropped,
    counted in ``dropped`` and logged (the subscriptions' own drops count there too).
    An existing file at ``path`` is replaced.
    """

    def __init__(
        self,
        bus: MessageBus,
        subjects: Union[str, Sequence[str]],
        path: PathLike,
        *,
        format: Optional[str] = None,  # noqa: A002 - the documented name
        rotate_bytes: Optional[int] = None,
        rotate_seconds: Optional[float] = None,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        progress: Optional[bool] = False,
    ) -> None:
        self.subjects = _patterns(subjects) or []
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path, not {type(path).__name__}")
        self.path = Path(path)
        self.format = format_of(self.path, format)
        if rotate_bytes is not None and (not is_int(rotate_bytes) or rotate_bytes < 1):
            raise ValueError(f"rotate_bytes must be a positive number of bytes or None, not {rotate_bytes!r}")
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = check_seconds("rotate_seconds", rotate_seconds, none=True, errors=CALL)
        self.flush_interval = check_seconds("flush_interval", flush_interval, errors=CALL) or 1.0
        if not is_int(max_pending) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive number of messages, not {max_pending!r}")
        self.bus = bus
        self.messages = 0  # written
        self.bytes = 0  # written to files
        self.files: List[Path] = []
        self.error: Optional[BaseException] = None  # why writing stopped (disk full...)
        self.started: Optional[float] = None
        self.stopped: Optional[float] = None
        self._encode = _ENCODERS[self.format]
        self._q: queue.Queue[Any] = queue.Queue(max_pending)
        self._dropped = 0  # queue full or writing failed (callback threads and writer)
        self._drop_lock = threading.Lock()
        self._subs: List[Subscription] = []
        self._fp: Optional[BinaryIO] = None
        self._file_bytes = 0
        self._file_started = 0.0
        self._thread: Optional[threading.Thread] = None
        self._progress_wanted = progress
        self._progress: Optional[Progress] = None
        self._state = "new"

    # --- counters ----------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Messages lost: the writer fell behind (or failed), or a subscription's limit hit."""
        return self._dropped + sum(s.dropped for s in self._subs)

    @property
    def pending(self) -> int:
        """Messages waiting for the writer."""
        return self._q.qsize()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._state == "running"

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Recorder:
        """Open the first file, subscribe and wait until the server has the subscriptions
        (messages published after this returns are recorded). Returns self."""
        if self._state != "new":
            raise Error(f"this recorder was {self._state}; make a new one")
        self._open(0)
        try:
            for s in self.subjects:
                # raw: nothing is decoded before delivery, so a payload that does not match
                # its Content-Type is recorded too (byte-exact), not dropped
                self._subs.append(self.bus.subscribe(s, self._on_msg, codec="raw"))
            self.bus.flush(timeout)
        except BaseException:
            for sub in self._subs:
                sub.unsubscribe()
            self._close_file()
            raise
        if self._progress_wanted is not False:
            self._progress = Progress(
                None, desc=f"recording to {self.path.name}", enabled=self._progress_wanted
            )
        self.started = time.time()
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name="telestion_sync-recorder", daemon=True)
        self._thread.start()
        _running.add(self)
        log.info("recording %s to %s", ", ".join(self.subjects), self.path)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what the subscriptions hold, write and flush everything, close the file
        (idempotent). Logs a warning when messages were dropped."""
        if self._state != "running":
            return
        self._state = "stopping"
        _running.discard(self)
        deadline = time.monotonic() + timeout
        for sub in self._subs:
            try:
                sub.drain(max(0.1, deadline - time.monotonic()))
            except Error:  # bus closed, or the drain timed out: what came is written
                sub.unsubscribe()
        self._q.put(_STOP)
        t = self._thread
        if t is not None:
            t.join(max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                log.error("the recorder's writer did not finish within %s s", timeout)
        self.stopped = time.time()
        self._state = "stopped"
        if self._progress is not None:
            self._progress.close()
        if self.dropped:
            log.warning("recording to %s dropped %d message(s)", self.path, self.dropped)
        log.info("%s", self.summary())

    def summary(self) -> str:
        """One line: what was recorded where."""
        n = len(self.files)
        where = os.fspath(self.files[0]) if n == 1 else f"{n} files ({os.fspath(self.path)})"
        text = f"recorded {self.messages} messages ({self.bytes} bytes) to {where}"
        if self.dropped:
            text += f"; DROPPED {self.dropped}"
        if self.error is not None:
            text += f"; writing failed: {self.error}"
        return text

    def __enter__(self) -> Recorder:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<Recorder {self._state} {os.fspath(self.path)!r} messages={self.messages} "
            f"bytes={self.bytes} files={len(self.files)} dropped={self.dropped}>"
        )

    def _repr_html_(self) -> str:
        import html

        return "<code>" + html.escape(repr(self)) + "</code>"

    # --- callback and writer -------------------------------------------------------------------

    def _on_msg(self, msg: Message) -> None:
        try:
            self._q.put_nowait((time.time_ns(), msg))
        except queue.Full:
            self._drop(1, "the writer fell behind")

    def _drop(self, n: int, why: str) -> None:
        with self._drop_lock:
            first = self._dropped == 0
            self._dropped += n
        if first:
            log.warning("recording to %s: dropping messages (%s)", self.path, why)

    def _file_name(self, index: int) -> Path:
        if self.rotate_bytes is None and self.rotate_seconds is None:
            return self.path
        return rotated_name(self.path, index + 1)

    def _open(self, index: int) -> None:
        name = self._file_name(index)
        if name.parent and not name.parent.exists():
            name.parent.mkdir(parents=True, exist_ok=True)
        self._fp = open(name, "wb")  # noqa: SIM115 - closed by _close_file
        self.files.append(name)
        self._file_bytes = 0
        self._file_started = time.monotonic()

    def _close_file(self) -> None:
        fp, self._fp = self._fp, None
        if fp is not None:
            try:
                fp.flush()
                os.fsync(fp.fileno())
            finally:
                fp.close()

    def _write(self, item: Tuple[int, Message]) -> None:
        t, msg = item
        if self.error is not None:
            self._drop(1, "writing failed")
            return
        try:
            rec = self._encode(t, msg.subject, msg.reply, header_items(msg), msg.payload)
            if self._file_bytes and (
                (self.rotate_bytes is not None and self._file_bytes + len(rec) > self.rotate_bytes)
                or (
                    self.rotate_seconds is not None
                    and time.monotonic() - self._file_started >= self.rotate_seconds
                )
            ):
                self._close_file()
                self._open(len(self.files))
            assert self._fp is not None
            self._fp.write(rec)
        except Exception as exc:
            self.error = exc
            log.error("recording to %s failed: %s; further messages are dropped", self.path, exc)
            self._drop(1, "writing failed")
            return
        self._file_bytes += len(rec)
        self.bytes += len(rec)
        self.messages += 1

    def _run(self) -> None:
        q = self._q
        interval = self.flush_interval
        last_flush = time.monotonic()
        try:
            while True:
                wait = max(0.005, interval - (time.monotonic() - last_flush))
                try:
                    item = q.get(timeout=wait)
                except queue.Empty:
                    item = None
                n = 0
                while item is not None and item is not _STOP:
                    self._write(item)
                    n += 1
                    if n >= 1000 or time.monotonic() - last_flush >= interval:
                        break  # flush on time even under a steady stream
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        item = None
                if time.monotonic() - last_flush >= interval or item is _STOP:
                    if self._fp is not None and self.error is None:
                        try:
                            self._fp.flush()
                        except OSError as exc:
                            self.error = exc
                            log.error("recording to %s failed: %s", self.path, exc)
                    last_flush = time.monotonic()
                if self._progress is not None:
                    self._progress.set(self.messages)
                if item is _STOP:
                    break
        finally:
            try:
                self._close_file()
            except OSError as exc:
                if self.error is None:
                    self.error = exc
                log.error("closing %s failed: %s", self.path, exc)


# --- replay -------------------------------------------------------------------------------------


@dataclass
class ReplaySummary:
    """What :func:`replay` did: ``count`` published (of ``total`` selected), in ``duration``
    seconds of wall time, for ``recorded_duration`` seconds of recording; ``interrupted`` when
    Ctrl-C (or ``stop``) ended it early."""

    count: int
    total: int
    duration: float
    recorded_duration: float
    speed: Optional[float]
    interrupted: bool = False

    def __str__(self) -> str:
        speed = "as fast as possible" if self.speed is None else f"at {self.speed:g}x"
        text = (
            f"replayed {self.count} of {self.total} messages in {self.duration:.3f} s "
            f"({self.recorded_duration:.3f} s recorded, {speed})"
        )
        return text + (" - interrupted" if self.interrupted else "")


def replay(
    bus: MessageBus,
    source: Source,
    speed: Optional[float] = 1.0,
    subjects: Union[str, Sequence[str], None] = None,
    progress: Optional[bool] = None,
    stop: Optional[threading.Event] = None,
) -> ReplaySummary:
    """Publish a recording again: same subjects, payloads, headers and reply subjects, with the
    original gaps between messages divided by ``speed`` (None: as fast as possible).

    ``source``: what :func:`load_recording` takes, or a :class:`Recording`. ``subjects``
    replays only those (NATS wildcards). ``progress``: None shows a bar in a notebook or on a
    terminal, True always, False never. Blocks until done and flushed; ``stop.set()`` from
    another thread ends it early. Ctrl-C flushes what was published and raises
    ``KeyboardInterrupt`` (the summary is on the exception as ``summary``).
    """
    if speed is not None and (not isinstance(speed, (int, float)) or isinstance(speed, bool)):
        raise TypeError(f"speed must be a number > 0 or None (as fast as possible), not {speed!r}")
    if speed is not None and not (0 < speed < math.inf):
        raise ValueError(f"speed must be a number > 0 or None (as fast as possible), not {speed!r}")
    rec = load_recording(source)
    pats = _patterns(subjects)
    msgs = rec.filter(pats).messages if pats is not None else rec.messages
    total = len(msgs)
    summary = ReplaySummary(0, total, 0.0, 0.0, speed)
    if msgs:
        summary.recorded_duration = (msgs[-1].time_ns - msgs[0].time_ns) / 1e9
    bar = Progress(total, desc="replay", enabled=progress)
    start = time.monotonic()
    t0 = msgs[0].time_ns if msgs else 0
    try:
        for m in msgs:
            if speed is not None:
                due = start + (m.time_ns - t0) / 1e9 / speed
                left = due - time.monotonic()
                if left > 0:
                    if stop is not None:
                        if stop.wait(left):
                            summary.interrupted = True
                            break
                    else:
                        time.sleep(left)
            elif stop is not None and stop.is_set():
                summary.interrupted = True
                break
            bus.publish(m.subject, m.payload, reply=m.reply, headers=m.publish_headers())
            summary.count += 1
            bar.update(1)
        bus.flush(10.0)
    except KeyboardInterrupt as exc:
        summary.interrupted = True
        summary.duration = time.monotonic() - start
        bar.close()
        try:
            bus.flush(2.0)
        except Error:
            pass
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    summary.duration = time.monotonic() - start
    bar.close()
    return summary
