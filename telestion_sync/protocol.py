"""Sans-I/O NATS client protocol: a parser fed bytes, the protocol's state, pure encoders.

Nothing here touches a socket, a thread or a clock of its own (time is passed in), so it can be
tested and fuzzed on its own, as websockets' ``Protocol`` is. The parser turns the server's byte
stream into events (tuples, for speed on the receive hot path); :class:`ClientProtocol` holds the
state of one connection: the handshake steps, the automatic PONG, outstanding pings and stale
detection, INFO merging and the sorting of ``-ERR`` texts into exceptions; the encoders build the
client's frames. Reference: the NATS client protocol ("INFO", "CONNECT", "PUB", "HPUB", "SUB",
"UNSUB", "MSG", "HMSG", "PING", "PONG", "+OK", "-ERR").
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import (
    AuthenticationError,
    BadSubjectError,
    Error,
    PermissionViolationError,
    ProtocolError,
    WebSocketError,
)

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
                    try:
                        size = int(args[-1])
                    except ValueError:
                        raise _bad_line(data[pos:end]) from None
                    if size < 0 or size > self.max_payload:
                        size = self._size(args[-1], data, pos, end)  # raises the right error
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


# --- the state of one connection ----------------------------------------------------------


def server_error(text: str, url: str) -> Error:
    """The exception for a server ``-ERR`` text: a permission violation (with the operation,
    subject and queue), a refusal of the credentials, or another server error."""
    low = text.lower()
    if low.startswith("permissions violation"):
        # 'Permissions Violation for Publish to "x"' or
        # 'Permissions Violation for Subscription to "x" using queue "q"'
        operation = "subscribe" if "subscription" in low else "publish"
        quoted = text.split('"')[1::2]
        subject = quoted[0] if quoted else ""
        queue = quoted[1] if len(quoted) > 1 and "queue" in low else None
        return PermissionViolationError(operation, subject, f"{text} (server {url})", queue)
    if "authorization" in low or "authentication" in low or "user" in low and "expired" in low:
        return AuthenticationError(f"server {url} refused the credentials: {text}", text)
    return Error(f"server {url} reported: {text}")


#: Handshake steps of :class:`ClientProtocol`.
AWAIT_INFO = "await-info"  # connected; the server speaks first
GOT_INFO = "got-info"  # the caller may upgrade to TLS now, then sends connect_frame()
AWAIT_PONG = "await-pong"  # CONNECT and PING sent: the PONG (or -ERR) says whether we are in
OPEN = "open"

#: How many of the first bytes received are kept while awaiting INFO: enough for an HTTP
#: status line and the start of its body (Go's "Client sent an HTTP request to an HTTPS server").
_HTTP_HEAD = 256

#: What :meth:`ClientProtocol.keepalive` says.
PING_DUE = "ping"
STALE = "stale"


class ClientProtocol:
    """The client side of one NATS connection, without I/O.

    Handshake: feed the server's bytes to :meth:`receive_handshake` until ``state`` is
    ``GOT_INFO`` (``info`` is then the server's INFO and the parser is bounded by its
    ``max_payload``), send :meth:`connect_frame`, feed bytes again until ``state`` is ``OPEN``;
    a refusal raises the sorted error at once, and events after the PONG wait in ``early``.
    Answers the protocol owes (PONGs to the server's PINGs) collect in :meth:`data_to_send`.
    A server that stays silent where NATS sends INFO may be asked :meth:`http_probe`: an HTTP
    answer then raises :class:`WebSocketError` (a WebSocket port), an INFO :class:`ProtocolError`
    (a slow NATS server, which rejects the probe: that connection cannot be used).

    Once open, the caller parses with ``parser.feed`` on its hot path and hands the rarer events
    here: :meth:`on_ping` (the PONG to send), :meth:`on_pong`, :meth:`on_info` (merged, with
    lame-duck mode seen), :meth:`on_err` (the sorted exception). :meth:`keepalive` is called with
    the current time: it says when a PING is due, and that the connection is stale after
    ``max_outstanding_pings`` unanswered ones (nats.go's rule).
    """

    def __init__(
        self,
        url: str = "",
        *,
        ping_interval: float = 120.0,
        max_outstanding_pings: int = 2,
        now: float = 0.0,
    ) -> None:
        self.url = url
        self.parser = Parser()
        self.state = AWAIT_INFO
        self.info: Dict[str, Any] = {}
        self.early: List[Event] = []
        self.ping_interval = ping_interval
        self.max_outstanding_pings = max_outstanding_pings
        self.pings_out = 0
        self.next_ping = now + ping_interval
        self.probed = False  # http_probe() was sent
        self._head = b""  # the first bytes received, while awaiting INFO (HTTP is told by them)
        self._out = bytearray()

    # handshake

    def http_probe(self, host: str) -> bytes:
        """A minimal HTTP request for a server that says nothing where NATS sends INFO at once:
        a WebSocket (or other HTTP) port answers it with a status line, which
        :meth:`receive_handshake` turns into a :class:`WebSocketError` naming the fix. A NATS
        server rejects it (``-ERR``), so after the probe an INFO raises :class:`ProtocolError`.
        ``host`` is the ``Host`` header (``host:port``)."""
        self.probed = True
        return b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host.encode("ascii", "replace")

    def receive_handshake(self, data: bytes) -> None:
        """Feed bytes received during the handshake; advances ``state``."""
        if self.state == AWAIT_INFO and len(self._head) < _HTTP_HEAD:
            self._head += data[: _HTTP_HEAD - len(self._head)]  # a prefix split over reads too
            if self._head.startswith(b"HTTP/"):
                raise self._http_answer()
        for ev in self.parser.feed(data):
            kind = ev[0]
            if self.state == OPEN:
                self.early.append(ev)  # delivered by the caller once it runs
            elif kind == PING:
                self._out += PONG_FRAME
            elif kind == OK:
                pass
            elif kind == ERR:
                raise server_error(ev[1], self.url)
            elif kind == INFO and self.state == AWAIT_INFO:
                if self.probed:  # before the -ERR the probe earns: that is no refusal of ours
                    raise ProtocolError(
                        f"server {self.url} sent INFO only after the HTTP probe: a slow NATS "
                        "server, which rejects the probe (this connection cannot be used)"
                    )
                self._accept_info(ev[1])
                self.state = GOT_INFO
            elif kind == INFO:
                self.info.update(ev[1])
            elif kind == PONG and self.state == AWAIT_PONG:
                self.state = OPEN
            else:
                raise ProtocolError(f"unexpected {ev!r} during the handshake with {self.url}")

    def _http_answer(self) -> WebSocketError:
        """The error for a server that answered with HTTP: a WebSocket port (``wss://`` when
        the answer says the port wants TLS, as Go's HTTPS servers do)."""
        status = self._head.split(b"\r\n", 1)[0][:80].decode("ascii", "replace")
        scheme = "wss://" if b"HTTPS" in self._head else "ws://"
        return WebSocketError(
            f"server {self.url} answered with HTTP ({status}), not NATS: this looks like a "
            f"WebSocket/HTTP port; use a {scheme} URL for it",
            retryable=False,
        )

    def _accept_info(self, info: Dict[str, Any]) -> None:
        self.info = info
        max_payload = info.get("max_payload")
        if isinstance(max_payload, int) and max_payload > 0:
            # nats-server allows at most 64 MiB; a bigger claim must not lift the bound
            self.parser.max_payload = min(max_payload, DEFAULT_MAX_PAYLOAD)

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (its INFO, bounded), or the default before."""
        return self.parser.max_payload

    def connect_frame(self, options: Mapping[str, Any]) -> bytes:
        """CONNECT with ``options`` and the PING whose PONG completes the handshake."""
        if self.state != GOT_INFO:
            raise ProtocolError(f"CONNECT before the server's INFO (state {self.state})")
        self.state = AWAIT_PONG
        return encode_connect(options) + PING_FRAME

    def data_to_send(self) -> bytes:
        """What the protocol owes the server (PONGs during the handshake), once."""
        out, self._out = bytes(self._out), bytearray()
        return out

    # an open connection

    def on_ping(self) -> bytes:
        """The server's PING: the PONG to send (the caller queues it; never sent from here)."""
        return PONG_FRAME

    def on_pong(self) -> None:
        """The server answered a PING: the link is alive."""
        self.pings_out = 0

    def on_info(self, info: Dict[str, Any]) -> bool:
        """Merge an INFO sent on an open connection; True when it says lame duck mode."""
        self.info.update(info)
        return bool(info.get("ldm"))

    def on_err(self, text: str) -> Error:
        """The exception a ``-ERR`` stands for (see :func:`server_error`)."""
        return server_error(text, self.url)

    def keepalive(self, now: float) -> Optional[str]:
        """``PING_DUE`` when a keep-alive PING is to be sent now (it counts as outstanding),
        ``STALE`` when ``max_outstanding_pings`` went unanswered, else None."""
        if now < self.next_ping:
            return None
        self.next_ping = now + self.ping_interval
        if self.pings_out >= self.max_outstanding_pings:
            return STALE
        self.pings_out += 1
        return PING_DUE


# --- subjects -------------------------------------------------------------------------------

_WHITESPACE = (" ", "\t", "\r", "\n", "\f", "\v")
# Dot-separated tokens with no whitespace, '*' or '>' at all: valid for publish and subscribe
# alike, told in one regex match (the token-by-token check below is for the rest).
_PLAIN_SUBJECT = re.compile(r"[^ \t\r\n\f\v.*>]+(?:\.[^ \t\r\n\f\v.*>]+)*")


def validate_subject(subject: str, *, wildcards: bool) -> bytes:
    """Check a subject and return it encoded; raise :class:`BadSubjectError` naming it.

    Subjects are dot-separated, non-empty tokens without whitespace. With ``wildcards`` (for
    subscriptions) ``*`` may stand for a token and ``>`` for the rest as the last token; without
    (publish and reply subjects) neither may appear as a token.
    """
    if type(subject) is str and _PLAIN_SUBJECT.fullmatch(subject) is not None:
        return subject.encode("utf-8", "surrogateescape")
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
