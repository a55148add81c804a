"""Sans-I/O NATS client protocol: a parser fed bytes, and pure encoders.

Nothing here touches a socket or a thread, so it can be tested and fuzzed on its own. The parser
turns the server's byte stream into events (tuples, for speed on the receive hot path); the
encoders build the client's frames. Reference: the NATS client protocol ("INFO", "CONNECT",
"PUB", "HPUB", "SUB", "UNSUB", "MSG", "HMSG", "PING", "PONG", "+OK", "-ERR").
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import BadSubjectError, ProtocolError

# Event tags: the first item of every event tuple the parser returns.
MSG = 1  # (MSG, subject: bytes, sid: int, reply: bytes | None, payload: bytes, header_block: None)
HMSG = 2  # (HMSG, subject, sid, reply, payload, header_block: bytes)
PING = 3  # (PING,)
PONG = 4  # (PONG,)
OK = 5  # (OK,)
ERR = 6  # (ERR, text: str)  text without the quotes
INFO = 7  # (INFO, info: dict)

Event = Tuple[Any, ...]

PING_FRAME = b"PING\r\n"
PONG_FRAME = b"PONG\r\n"
CRLF = b"\r\n"
HEADER_VERSION = b"NATS/1.0"

#: Longest control line accepted from the server (nats-server's own default is 4 KiB; INFO
#: lines of big clusters can be longer, so allow more but keep it bounded).
DEFAULT_MAX_CONTROL_LINE = 64 * 1024
#: Largest payload size accepted before the server told us its max_payload.
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024

_PING_EVENT: Event = (PING,)
_PONG_EVENT: Event = (PONG,)
_OK_EVENT: Event = (OK,)


def _bad_line(line: bytes) -> ProtocolError:
    shown = line[:80] + (b"..." if len(line) > 80 else b"")
    return ProtocolError(f"invalid protocol line from server: {shown!r}")


class Parser:
    """Incremental parser of the server-to-client protocol.

    ``feed(data)`` returns the complete events in ``data`` plus whatever was buffered from earlier
    calls; partial frames wait for more bytes. Invalid input raises :class:`ProtocolError`, as do a
    control line over ``max_control_line`` bytes and a payload size over ``max_payload``, so a
    hostile peer cannot make the client buffer without bound.
    """

    __slots__ = ("_chunks", "_have", "_need", "max_control_line", "max_payload")

    def __init__(
        self,
        max_control_line: int = DEFAULT_MAX_CONTROL_LINE,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        # A partial frame waits as a list of chunks, joined once when complete: one copy of a
        # large payload instead of one per received chunk.
        self._chunks: List[bytes] = []
        self._have = 0  # bytes in _chunks
        self._need = 0  # bytes _chunks must hold before parsing can progress
        self.max_control_line = max_control_line
        self.max_payload = max_payload

    @property
    def bytes_needed(self) -> int:
        """How many more bytes the current partial frame needs (0 when unknown)."""
        return max(0, self._need - self._have)

    def reset(self) -> None:
        """Forget any partial frame (after the connection was replaced)."""
        self._chunks = []
        self._have = 0
        self._need = 0

    def feed(self, data: bytes) -> List[Event]:
        """Parse ``data`` and return the events it completes, in order."""
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
            self._have = 0
            self._need = 0
        events: List[Event] = []
        append = events.append
        n = len(data)
        pos = 0
        find = data.find
        while pos < n:
            end = find(b"\r\n", pos)
            if end < 0:
                # +1: a trailing CR may be the first half of the line's CRLF.
                if n - pos > self.max_control_line + 1:
                    raise ProtocolError(f"control line from server exceeds {self.max_control_line} bytes")
                break
            if end - pos > self.max_control_line:
                raise ProtocolError(f"control line from server exceeds {self.max_control_line} bytes")
            c = data[pos]
            if c == 77 or c == 72:  # 'M' or 'H': the hot path, MSG and HMSG
                args = data[pos:end].split()
                op = args[0]
                # MSG <subject> <sid> [reply] <size>; HMSG adds <header size> before <size>.
                hmsg = op == b"HMSG"
                if hmsg or op == b"MSG":
                    nargs = len(args) - hmsg
                    if nargs == 4:
                        reply = None
                    elif nargs == 5:
                        reply = args[3]
                    else:
                        raise _bad_line(data[pos:end])
                    size = self._size(args[-1], data, pos, end)
                    hsize = self._size(args[-2], data, pos, end) if hmsg else 0
                    if hsize > size:
                        raise _bad_line(data[pos:end])
                    start = end + 2
                    stop = start + size
                    if stop + 2 > n:
                        self._need = stop + 2 - pos
                        break
                    if data[stop : stop + 2] != b"\r\n":
                        raise ProtocolError("message payload not followed by CRLF (size mismatch)")
                    try:
                        sid = int(args[2])
                    except ValueError:
                        raise _bad_line(data[pos:end]) from None
                    if hmsg:
                        append(
                            (
                                HMSG,
                                args[1],
                                sid,
                                reply,
                                data[start + hsize : stop],
                                data[start : start + hsize],
                            )
                        )
                    else:
                        append((MSG, args[1], sid, reply, data[start:stop], None))
                    pos = stop + 2
                    continue
            line = data[pos:end]
            args = line.split()
            op = args[0].upper() if args else b""
            if op == b"PING":
                append(_PING_EVENT)
            elif op == b"PONG":
                append(_PONG_EVENT)
            elif op == b"+OK":
                append(_OK_EVENT)
            elif op == b"-ERR":
                text = line.strip()[4:].strip().decode("utf-8", "replace")
                if len(text) >= 2 and text[0] == text[-1] == "'":
                    text = text[1:-1]
                append((ERR, text))
            elif op == b"INFO":
                try:
                    info = json.loads(line.strip()[4:])
                except (ValueError, RecursionError):
                    raise _bad_line(line) from None
                if not isinstance(info, dict):
                    raise _bad_line(line)
                append((INFO, info))
            elif op in (b"MSG", b"HMSG") and args[0] != op or line[:1].isspace():
                # Lower-case op or leading white space (legal but rare): go on with the line
                # spelled canonically, which the hot path above then parses (or rejects).
                data = b" ".join([op, *args[1:]]) + data[end:]
                n = len(data)
                pos = 0
                find = data.find
                continue
            else:
                raise _bad_line(line)
            pos = end + 2
        if pos < n:
            rest = data[pos:]
            self._chunks = [rest]
            self._have = len(rest)
        return events

    def _size(self, raw: bytes, data: bytes, pos: int, end: int) -> int:
        try:
            size = int(raw)
        except ValueError:
            raise _bad_line(data[pos:end]) from None
        if size < 0:
            raise _bad_line(data[pos:end])
        if size > self.max_payload:
            raise ProtocolError(
                f"server announced a {size}-byte message, over the {self.max_payload}-byte limit"
            )
        return size


# --- subjects -------------------------------------------------------------------------------

_WHITESPACE = (" ", "\t", "\r", "\n", "\f", "\v")


def validate_subject(subject: str, *, wildcards: bool) -> bytes:
    """Check a subject and return it encoded; raise :class:`BadSubjectError` naming it.

    Subjects are dot-separated, non-empty tokens without whitespace. With ``wildcards`` (for
    subscriptions) ``*`` may stand for a token and ``>`` for the rest as the last token; without
    (publish and reply subjects) neither may appear as a token.
    """
    if not isinstance(subject, str):
        raise BadSubjectError(f"subject must be a str, not {type(subject).__name__}: {subject!r}")
    if not subject:
        raise BadSubjectError("subject must not be empty")
    for ch in _WHITESPACE:
        if ch in subject:
            raise BadSubjectError(f"subject {subject!r} contains whitespace")
    tokens = subject.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            raise BadSubjectError(f"subject {subject!r} has an empty token")
        if token == ">" or token == "*":
            if not wildcards:
                raise BadSubjectError(
                    f"subject {subject!r} contains wildcard {token!r}; publish needs a literal subject"
                )
            if token == ">" and i != last:
                raise BadSubjectError(f"subject {subject!r}: '>' may only be the last token")
    # surrogateescape: a subject received with bytes that are not UTF-8 goes back unchanged
    return subject.encode("utf-8", "surrogateescape")


def validate_queue(queue: str) -> bytes:
    """Check a queue group name (non-empty, no whitespace) and return it encoded."""
    if not isinstance(queue, str) or not queue:
        raise BadSubjectError(f"queue group must be a non-empty str, not {queue!r}")
    for ch in _WHITESPACE:
        if ch in queue:
            raise BadSubjectError(f"queue group {queue!r} contains whitespace")
    return queue.encode()


# --- encoders ---------------------------------------------------------------------------------


def encode_connect(options: Mapping[str, Any]) -> bytes:
    """The CONNECT frame for ``options`` (keys as the protocol names them)."""
    return b"CONNECT " + json.dumps(dict(options), separators=(",", ":")).encode() + CRLF


#: Above this payload size frames are joined rather than %-formatted: ``bytes % ...`` is
#: faster for small payloads but copies large ones several times (0.9 ms for 1 MiB).
LARGE_PAYLOAD = 4096


def pub_head(subject: bytes, size: int, reply: Optional[bytes] = None) -> bytes:
    """The control line of a PUB frame (the payload and CRLF follow)."""
    if reply is None:
        return b"PUB %s %d\r\n" % (subject, size)
    return b"PUB %s %s %d\r\n" % (subject, reply, size)


def hpub_head(subject: bytes, hlen: int, total: int, reply: Optional[bytes] = None) -> bytes:
    """The control line of an HPUB frame (the header block, payload and CRLF follow)."""
    if reply is None:
        return b"HPUB %s %d %d\r\n" % (subject, hlen, total)
    return b"HPUB %s %s %d %d\r\n" % (subject, reply, hlen, total)


def encode_pub(subject: bytes, payload: bytes, reply: Optional[bytes] = None) -> bytes:
    """A PUB frame. ``subject``/``reply`` must already be validated and encoded."""
    n = len(payload)
    if n > LARGE_PAYLOAD:
        return b"".join((pub_head(subject, n, reply), payload, CRLF))
    if reply is None:
        return b"PUB %s %d\r\n%s\r\n" % (subject, n, payload)
    return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, n, payload)


def encode_hpub(subject: bytes, header_block: bytes, payload: bytes, reply: Optional[bytes] = None) -> bytes:
    """An HPUB frame: ``header_block`` from :func:`encode_headers`, then ``payload``."""
    hlen = len(header_block)
    head = hpub_head(subject, hlen, hlen + len(payload), reply)
    return b"".join((head, header_block, payload, CRLF))


def encode_sub(subject: bytes, sid: int, queue: Optional[bytes] = None) -> bytes:
    """A SUB frame."""
    if queue is None:
        return b"SUB %s %d\r\n" % (subject, sid)
    return b"SUB %s %s %d\r\n" % (subject, queue, sid)


def encode_unsub(sid: int, max_msgs: Optional[int] = None) -> bytes:
    """An UNSUB frame; with ``max_msgs`` the server unsubscribes after that many messages."""
    if max_msgs is None:
        return b"UNSUB %d\r\n" % sid
    return b"UNSUB %d %d\r\n" % (sid, max_msgs)


HeaderValue = Union[str, Sequence[str]]


def encode_headers(headers: Mapping[str, HeaderValue]) -> bytes:
    """The header block for an HPUB: ``NATS/1.0`` then ``Key: Value`` lines and a blank line.

    A value may be a list of strings (the key is repeated). Keys with whitespace or ``:`` and
    values with CR or LF raise ``ValueError`` naming them: they would corrupt the frame.
    """
    parts = [HEADER_VERSION]
    for key, value in headers.items():
        if not isinstance(key, str) or not key or any(c in key for c in ": \t\r\n"):
            raise ValueError(f"invalid header name {key!r}")
        if isinstance(value, str):
            values: Sequence[Any] = (value,)
        elif isinstance(value, (list, tuple)):
            values = value
            if not values:
                raise ValueError(f"header {key!r} has an empty list of values")
        else:
            raise TypeError(f"header {key!r} value must be str or a list of str, not {type(value).__name__}")
        for v in values:
            if not isinstance(v, str):
                raise TypeError(f"header {key!r} value must be str, not {type(v).__name__}")
            if "\r" in v or "\n" in v:
                raise ValueError(f"header {key!r} value contains CR or LF: {v!r}")
            parts.append(f"{key}: {v}".encode())
    parts.append(b"")
    parts.append(b"")
    return CRLF.join(parts)


def parse_headers(block: bytes) -> Tuple[Optional[int], str, Dict[str, str]]:
    """Split a received header block into ``(status, description, headers)``.

    ``status`` is the inline status code (e.g. 503 for no responders) or None. A key repeated in
    the block keeps every value, joined with ``", "`` (HTTP's rule for repeated fields).
    """
    lines = block.decode("utf-8", "replace").split("\r\n")
    first = lines[0]
    if not first.startswith("NATS/1.0"):
        raise ProtocolError(f"header block does not start with NATS/1.0: {first[:40]!r}")
    status: Optional[int] = None
    description = ""
    rest = first[8:].strip()
    if rest:
        code, _, description = rest.partition(" ")
        try:
            status = int(code)
        except ValueError:
            raise ProtocolError(f"bad status in header line {first!r}") from None
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"header line without ':' {line[:40]!r}")
        key = key.strip()
        value = value.strip()
        if key in headers:
            headers[key] = headers[key] + ", " + value
        else:
            headers[key] = value
    return status, description.strip(), headers
