"""``MessageBus``: the public, thread-safe facade over one NATS connection.

Publishing encodes a frame and appends it to the connection's write buffer; receiving routes each
message from the reader thread to its subscription's queue. Requests share one wildcard inbox
subscription (``<inbox>.<nuid>.*``) and are resolved on the reader thread itself, so a callback
may call ``request()`` on the same bus without deadlock.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import codecs as _codecs
from ._exit import register_exit
from .auth import Credentials, Secret
from .connection import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_OUTSTANDING_PINGS,
    DEFAULT_MAX_RECONNECT_ATTEMPTS,
    DEFAULT_PING_INTERVAL,
    DEFAULT_RECONNECT_BUF_SIZE,
    DEFAULT_RECONNECT_JITTER,
    DEFAULT_RECONNECT_TIME_WAIT,
    DEFAULT_WRITE_TIMEOUT,
    Connection,
    Handler,
    State,
)
from .dispatch import Dispatcher
from .errors import (
    ConnectionClosedError,
    Error,
    MaxPayloadError,
    PermissionViolationError,
    ServiceError,
    TimeoutError,
)
from .message import (
    Message,
    MessageContext,
)
from .micro import check_reply, respond_error, respond_value
from .options import (
    ConnectOptions,
    check_callback,
    check_max_msgs,
    check_publish,
    check_request,
    check_subject,
    check_subscribe,
    check_timeout,
)
from .pool import parse_servers
from .protocol import (
    CRLF,
    LARGE_PAYLOAD,
    Event,
    encode_headers,
    encode_pub,
    encode_sub,
    encode_unsub,
    hpub_head,
    pub_head,
    validate_queue,
    validate_subject,
)
from .request_mux import CLOSED as REQUEST_CLOSED
from .request_mux import RequestMux
from .status import StatusDispatcher
from .subscription import (
    DEFAULT_PENDING_BYTES_LIMIT,
    DEFAULT_PENDING_MSGS_LIMIT,
    Callback,
    Subscription,
    SubscriptionTable,
    wake_all,
)
from .tls import tls_context

if TYPE_CHECKING:  # pragma: no cover
    from .jetstream import JetStream

log = logging.getLogger("telestion_sync.client")

DEFAULT_SERVER = "nats://127.0.0.1:4222"
DEFAULT_TIMEOUT = 5.0
_SUBJECT_CACHE_SIZE = 4096
_INF = float("inf")

ErrorCallback = Callable[[BaseException], Any]


@dataclass(frozen=True)
class Stats:
    """Counters of a bus since it connected.

    ``unrouted_msgs`` counts messages that arrived for no live subscription (sent by the
    server before it saw an unsubscribe); ``dropped_msgs`` those that subscriptions dropped
    at their pending limits; ``pending_requests`` the requests waiting for a reply now.
    """

    in_msgs: int
    in_bytes: int
    out_msgs: int
    out_bytes: int
    reconnects: int
    errors: int
    unrouted_msgs: int = 0
    dropped_msgs: int = 0
    pending_requests: int = 0


class SubjectCache:
    """Encoded, validated publish subjects, bounded against any stream of unique subjects.

    A subject is admitted on its second use (one-off subjects such as JetStream ack subjects
    never enter), into two generations: the young one, and when that is full it becomes the old
    one (the previous old one is dropped); a subject found in the old one moves back. Subjects
    in steady use stay; a flood of unique subjects costs one validation each and never pushes
    the working set out (a plain "fill once" cache stayed poisoned).
    """

    __slots__ = ("young", "old", "seen", "size")

    def __init__(self, size: int = 4096) -> None:
        self.young: Dict[str, bytes] = {}
        self.old: Dict[str, bytes] = {}
        self.seen: Dict[str, bytes] = {}  # used once so far (bounded: cleared when full)
        self.size = size

    def get(self, subject: str) -> Optional[bytes]:
        """The encoded subject when cached, else None (the hot path reads ``young`` directly)."""
        sb = self.young.get(subject)
        if sb is None:
            sb = self.old.get(subject)
            if sb is not None:
                self._put(subject, sb)
        return sb

    def encode(self, subject: str) -> bytes:
        """The encoded subject, validated and cached on first use."""
        sb = self.get(subject)
        if sb is None:
            sb = self.seen.pop(subject, None)
            if sb is not None:
                self._put(subject, sb)  # the second use: admitted
            else:
                sb = validate_subject(subject, wildcards=False)
                if len(self.seen) >= self.size:
                    self.seen.clear()
                self.seen[subject] = sb
        return sb

    def _put(self, subject: str, sb: bytes) -> None:
        young = self.young
        if len(young) >= self.size:  # the same dict object stays young: the hot path holds it
            self.old = young.copy()
            young.clear()
        young[subject] = sb

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


_live_buses: weakref.WeakSet[MessageBus] = weakref.WeakSet()


def _close_at_exit() -> None:
    """Flush and close buses a script forgot to close, so buffered publishes still go out."""
    for bus in list(_live_buses):
        try:
            bus.close()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            log.debug("closing a bus at exit failed", exc_info=True)


register_exit(_close_at_exit)


class MessageBus(Handler):
    """A connection to the NATS bus with a blocking, thread-safe API.

    Create it with :func:`connect`. Every method may be called from any thread, including from
    inside subscription callbacks. Use it as a context manager (or call :meth:`close`) to send
    what is buffered and stop its threads.
    """

    def __init__(
        self,
        servers: Union[str, Sequence[str]] = DEFAULT_SERVER,
        *,
        name: Optional[str] = None,
        user: Secret = None,
        password: Secret = None,
        token: Secret = None,
        nkey_seed: Secret = None,
        creds: Secret = None,
        tls: Union[bool, ssl.SSLContext, None] = None,
        tls_ca_file: Optional[str] = None,
        tls_cert_file: Optional[str] = None,
        tls_key_file: Optional[str] = None,
        tls_hostname: Optional[str] = None,
        tls_handshake_first: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        max_outstanding_pings: int = DEFAULT_MAX_OUTSTANDING_PINGS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        echo: bool = True,
        inbox_prefix: str = "_INBOX",
        default_codec: _codecs.CodecSpec = "json",
        pending_msgs_limit: int = DEFAULT_PENDING_MSGS_LIMIT,
        pending_bytes_limit: int = DEFAULT_PENDING_BYTES_LIMIT,
        on_error: Optional[ErrorCallback] = None,
        on_disconnect: Optional[Callable[[], Any]] = None,
        on_reconnect: Optional[Callable[[], Any]] = None,
        on_close: Optional[Callable[[], Any]] = None,
        on_discovered_servers: Optional[Callable[[List[str]], Any]] = None,
        on_lame_duck: Optional[Callable[[], Any]] = None,
        allow_reconnect: bool = True,
        max_reconnect_attempts: int = DEFAULT_MAX_RECONNECT_ATTEMPTS,
        reconnect_time_wait: float = DEFAULT_RECONNECT_TIME_WAIT,
        reconnect_jitter: float = DEFAULT_RECONNECT_JITTER,
        reconnect_wait: Optional[Callable[[Any], float]] = None,
        reconnect_buf_size: int = DEFAULT_RECONNECT_BUF_SIZE,
        randomize: bool = True,
        ignore_discovered_servers: bool = False,
        retry_on_failed_connect: bool = False,
        ignore_auth_error_abort: bool = False,
        ws_compression: bool = True,
        http_probe: bool = True,
    ) -> None:
        # Every option checked first, so a bad one fails before anything is opened (ConfigError).
        options = self._options = ConnectOptions.from_locals(locals())
        nkey_seed, creds = options.nkey_seed, options.creds  # os.PathLike/bytes given as str
        tls_ca_file, tls_cert_file = options.tls_ca_file, options.tls_cert_file
        tls_key_file = options.tls_key_file
        self._servers = parse_servers(servers)
        validate_subject(inbox_prefix, wildcards=False)
        self._default_codec = _codecs.get_codec(default_codec, _codecs.JSON)
        self._pending_msgs_limit = pending_msgs_limit
        self._pending_bytes_limit = pending_bytes_limit
        self._on_disconnect = on_disconnect
        self._on_reconnect = on_reconnect
        self._on_discovered = on_discovered_servers
        self._on_lame_duck_cb = on_lame_duck
        self._inbox_prefix = inbox_prefix
        self._conn = Connection(
            self._servers,
            self,
            name=name,
            credentials=Credentials(user, password, token, nkey_seed, creds),
            tls=tls_context(
                tls,
                tls_ca_file,
                tls_cert_file,
                tls_key_file,
                implied=bool(tls_hostname or tls_handshake_first),
            ),
            tls_hostname=tls_hostname,
            tls_handshake_first=tls_handshake_first,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            max_outstanding_pings=max_outstanding_pings,
            write_timeout=write_timeout,
            echo=echo,
            allow_reconnect=allow_reconnect,
            max_reconnect_attempts=max_reconnect_attempts,
            reconnect_time_wait=reconnect_time_wait,
            reconnect_jitter=reconnect_jitter,
            reconnect_wait=reconnect_wait,
            reconnect_buf_size=reconnect_buf_size,
            randomize=randomize,
            ignore_discovered_servers=ignore_discovered_servers,
            retry_on_failed_connect=retry_on_failed_connect,
            ignore_auth_error_abort=ignore_auth_error_abort,
            ws_compression=ws_compression,
            http_probe=http_probe,
        )
        self.name = name
        self._subs = SubscriptionTable()
        self._dispatcher = Dispatcher()
        self._sids = itertools.count(1)
        self._pub_subjects = SubjectCache(_SUBJECT_CACHE_SIZE)
        self._pub_hot = self._pub_subjects.young  # the publish fast path's lookup
        self._write_small = self._conn.write_small  # ... and its write, bound once
        self._touched: List[Subscription] = []
        # Requests: one wildcard subscription, replies matched by the last token.
        self._requests = RequestMux(inbox_prefix, lambda: next(self._sids), MessageContext(self))
        self._gathers: Dict[Subscription, str] = {}  # request_many() inboxes -> request subject
        self._last_server_error: Optional[BaseException] = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._status = StatusDispatcher(on_error, on_close)

    # --- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> None:
        self._conn.connect()
        self._status.start()
        _live_buses.add(self)

    @property
    def status(self) -> State:
        """``State.CONNECTED``, ``RECONNECTING``, ``CONNECTING`` or ``CLOSED``."""
        return self._conn.state

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Block until the bus is connected (True), or closed or ``timeout`` passed (False)."""
        return self._conn.wait_connected(timeout)

    @property
    def servers(self) -> List[str]:
        """The server pool's URLs (given and discovered), without credentials."""
        return [a.url for a in self._conn.servers]

    @property
    def discovered_servers(self) -> List[str]:
        """URLs of the servers the cluster announced."""
        return [a.url for a in self._conn.discovered_servers]

    def __enter__(self) -> MessageBus:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def is_connected(self) -> bool:
        """True while a server connection is up."""
        return self._conn.connected

    @property
    def is_closed(self) -> bool:
        """True once :meth:`close` (or :meth:`drain`) ended the bus."""
        return self._closed

    @property
    def max_payload(self) -> int:
        """The largest message (headers + payload) the server accepts, in bytes."""
        return self._conn.max_payload

    @property
    def connected_url(self) -> Optional[str]:
        """The URL of the connected server, without credentials."""
        addr = self._conn.addr
        return addr.url if addr is not None and self._conn.connected else None

    @property
    def transport(self) -> Dict[str, Any]:
        """How the connection is carried now: ``{"scheme": "ws", "ws_compression": True}`` for
        a WebSocket link (``ws_compression``: permessage-deflate negotiated), ``{"scheme":
        "nats"}`` for TCP; empty while disconnected."""
        return self._conn.transport

    @property
    def server_info(self) -> Dict[str, Any]:
        """The server's INFO (server_id, version, max_payload, ...)."""
        return dict(self._conn.info)

    @property
    def stats(self) -> Stats:
        """Message and byte counters in both directions, reconnects and reported errors."""
        conn = self._conn
        return Stats(
            conn.in_msgs,
            conn.in_bytes,
            conn.out_msgs,
            conn.out_bytes,
            conn.reconnects,
            self._status.errors,
            self._subs.unrouted,
            self._subs.dropped,
            self._requests.pending + len(self._gathers),
        )

    def close(self) -> None:
        """Send what is buffered, stop all threads, end every subscription (idempotent).

        Blocked ``request()`` calls and ``next_msg()`` calls return with
        :class:`ConnectionClosedError`. Takes at most about 2 s (sending what is buffered,
        callbacks running now) plus a second to join the threads.
        """
        self._shutdown(2.0)

    def _shutdown(self, timeout: float) -> None:
        """close() within ``timeout`` seconds (plus joining threads that are ending)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        _live_buses.discard(self)
        self._conn.close(timeout)
        self._requests.fail_all()
        subs = self._subs.all()
        for sub in subs:
            self._remove_sub(sub.sid)
        error = self._closed_error()
        for sub in subs:  # as nats.go: what is pending is not delivered now
            sub._stop(error, wait=0)
        for sub in subs:  # a callback running now returns first (within what is left)
            sub._join(max(0.0, deadline - time.monotonic()))
        self._dispatcher.close(max(0.0, deadline - time.monotonic()))
        self._status.tell(State.CLOSED)
        self._status.close()

    def drain(self, timeout: float = 10.0) -> None:
        """Stop receiving, deliver what is pending to callbacks, send what is buffered, close.

        Callbacks still busy after ``timeout`` seconds are reported to the error handler as a
        :class:`TimeoutError` and get nothing more."""
        check_timeout("timeout", timeout)
        deadline = time.monotonic() + timeout
        subs = self._subs.all()
        try:
            for sub in subs:
                sub._draining = True  # not re-established by a reconnect during the flush
                self._conn.write_control(encode_unsub(sub.sid))
            self.flush(timeout)
            for sub in subs:
                self._remove_sub(sub.sid)
                sub._close()
            late = []
            for sub in subs:
                if sub._callback is None or sub._in_callback():
                    continue
                if not sub.wait_finished(max(0.0, deadline - time.monotonic())):
                    late.append(sub)
            if late:  # as nats.go's ErrDrainTimeout: reported, and their rest is dropped
                for sub in late:
                    sub._stop(wait=0)
                names = ", ".join(repr(sub.subject) for sub in late)
                self._report_error(
                    TimeoutError(f"drain did not finish within {timeout} s; still delivering: {names}")
                )
        finally:
            # what is left of the timeout (at least a moment to send what is buffered)
            self._shutdown(max(0.1, deadline - time.monotonic()))

    # --- publishing --------------------------------------------------------------------------

    def publish(
        self,
        subject: str,
        data: Any = b"",
        *,
        reply: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
        codec: _codecs.CodecSpec = None,
        immediate: bool = False,
    ) -> None:
        """Send ``data`` on ``subject``.

        ``bytes`` go out unchanged; anything else is encoded with ``codec`` (default: the bus's
        ``default_codec``, JSON). CBOR adds ``Content-Type: application/cbor``. Raises
        :class:`BadSubjectError`, :class:`MaxPayloadError`, or ``TypeError``/``ValueError`` from
        the codec, before anything is sent.

        Publishes are batched by the writer thread; ``immediate=True`` sends from the calling
        thread at once (never waiting behind another send), for a message whose answer is
        awaited, such as a JetStream pull request: the writer may wait for the GIL.
        """
        if reply is None and headers is None and codec is None and type(data) is bytes and immediate is False:
            # The hot path: a cached subject and raw bytes, written straight into the buffer.
            sb = self._pub_hot.get(subject)
            n = len(data)
            if sb is not None and n <= self._conn.inline_max:
                self._write_small(b"PUB %s %d\r\n%s\r\n" % (sb, n, data), n)
                return
        if immediate is not False and immediate is not True:
            raise TypeError(f"immediate must be True or False, got {immediate!r}")
        if headers is not None or codec is not None:
            check_publish(None, headers, codec)  # off the fast path, which takes none of these
        rb = None if reply is None else check_subject("reply", reply, wildcards=False)
        self._publish(subject, data, rb, headers, codec, immediate)

    def _publish(
        self,
        subject: str,
        data: Any,
        reply: Optional[bytes],
        headers: Optional[Mapping[str, Any]],
        codec: _codecs.CodecSpec,
        now: bool,
        cache: bool = True,
    ) -> None:
        """Encode and queue a message; ``now`` for calls that wait for an answer (requests,
        replies): sent at once, and never waiting behind another send. ``cache=False`` for
        reply subjects received from the server: used once, so neither cached nor checked
        again."""
        if cache:
            sb = self._pub_hot.get(subject) or self._pub_subjects.encode(subject)
        else:  # a reply subject the server gave us: used once, and valid (the server routed it)
            sb = subject.encode("utf-8", "surrogateescape")
        hb: Optional[bytes] = None
        if type(data) is bytes and codec is None:
            payload = data
        else:
            payload, ctype = self._encode(data, codec)
            if ctype is not None:
                if not headers:
                    hb = _content_type_block(ctype)  # a constant block, built once per type
                elif _codecs.CONTENT_TYPE not in headers:
                    headers = {**headers, _codecs.CONTENT_TYPE: ctype}
        n = len(payload)
        conn = self._conn
        if headers:
            hb = encode_headers(headers)
        if hb is not None:
            size = n + len(hb)
            if size > conn.max_payload:
                raise MaxPayloadError(size, conn.max_payload)
            # Parts go into the write buffer one by one: no extra copy of a large payload.
            conn.write(hpub_head(sb, len(hb), size, reply), 1, n, hb, payload, CRLF, block=not now)
        else:
            if n > conn.max_payload:
                raise MaxPayloadError(n, conn.max_payload)
            if n > LARGE_PAYLOAD:
                conn.write(pub_head(sb, n, reply), 1, n, payload, CRLF, block=not now)
            elif now:
                conn.write_now(encode_pub(sb, payload, reply), n)
                return
            else:
                conn.write(encode_pub(sb, payload, reply), 1, n)
        if now:
            conn.send_now(block=False)

    def _encode(self, data: Any, codec: _codecs.CodecSpec) -> Any:
        c = self._default_codec if codec is None else _codecs.get_codec(codec)
        if isinstance(data, (bytes, bytearray, memoryview)) and (
            codec is None or c is _codecs.RAW or c is _codecs.AUTO
        ):
            return bytes(data), None
        return c.encode(data), c.content_type

    def flush(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Send what is buffered and wait until the server has processed it (PING/PONG)."""
        check_timeout("timeout", timeout)
        self._check_open()
        with self._dispatcher.blocking():  # from a callback: other callbacks go on meanwhile
            self._conn.ping(timeout)

    def _wait(self, lock: threading.Lock, deadline: float) -> bool:
        """Acquire ``lock`` by ``deadline``; on a delivery thread, other callbacks go on
        meanwhile (so callbacks that request from responders on this bus never deadlock)."""
        if lock.acquire(False):
            return True
        if not self._dispatcher.on_worker():
            return lock.acquire(True, max(0.0, deadline - time.monotonic()))
        with self._dispatcher.blocking():
            return lock.acquire(True, max(0.0, deadline - time.monotonic()))

    def rtt(self, timeout: float = DEFAULT_TIMEOUT) -> float:
        """The round-trip time to the server in seconds."""
        check_timeout("timeout", timeout)
        start = time.perf_counter()
        self.flush(timeout)
        return time.perf_counter() - start

    def new_inbox(self) -> str:
        """A unique subject to receive replies on."""
        return f"{self._inbox_prefix}.{secrets.token_hex(11)}"

    def jetstream(
        self, *, domain: Optional[str] = None, api_prefix: Optional[str] = None, timeout: float = 5.0
    ) -> JetStream:
        """A :class:`~telestion_sync.JetStream` context on this bus (streams, acknowledged
        publishes, consumers); ``domain``/``api_prefix`` reach another JetStream domain."""
        from .jetstream import JetStream

        return JetStream(self, domain=domain, api_prefix=api_prefix, timeout=timeout)

    # --- operator helpers (operator.py, recording.py) ----------------------------------------

    def wait_for(
        self,
        subject: str,
        predicate: Optional[Callable[[Message], Any]] = None,
        *,
        timeout: float,
        latest: bool = False,
        stream: Optional[str] = None,
    ) -> Message:
        """Block until a message on ``subject`` (wildcards allowed) arrives for which
        ``predicate(msg)`` is true (any message without one) and return it; raise
        :class:`TimeoutError` naming the subject and the last value seen after ``timeout`` s.

        Only messages that arrive after the call count; ``latest=True`` tests the latest value
        stored in JetStream first (in ``stream``, default: the stream that captures
        ``subject``). A predicate that raises counts as no match; it is logged and named in
        the timeout error. Costs a subscription, no thread; goes on waiting across reconnects.
        """
        from .operator import wait_for

        return wait_for(self, subject, predicate, timeout=timeout, latest=latest, stream=stream)

    def wait_for_many(
        self,
        subject: str,
        count: int,
        predicate: Optional[Callable[[Message], Any]] = None,
        *,
        timeout: float,
        latest: bool = False,
        stream: Optional[str] = None,
    ) -> List[Message]:
        """Like :meth:`wait_for`, for the first ``count`` matching messages (a list)."""
        from .operator import wait_for_many

        return wait_for_many(
            self, subject, count, predicate, timeout=timeout, latest=latest, stream=stream
        )

    def expect(
        self, subject: str, predicate: Optional[Callable[[Message], Any]] = None, *, count: int = 1
    ) -> Any:
        """A :class:`~telestion_sync.operator.Waiter` subscribed now: create it before the
        command whose telemetry you wait for, then ``w.wait(timeout)`` (no race)."""
        from .operator import Waiter

        return Waiter(self, subject, predicate, count=count)

    def record(
        self,
        subjects: Union[str, Sequence[str]],
        path: Any,
        *,
        format: Optional[str] = None,  # noqa: A002 - the documented name
        rotate_bytes: Optional[int] = None,
        rotate_seconds: Optional[float] = None,
        flush_interval: float = 1.0,
    ) -> Any:
        """Record every message on ``subjects`` to ``path`` (``.jsonl`` JSON Lines or
        ``.cbor`` CBOR sequence), byte-exact with receive time, reply and headers.

        Returns a started :class:`~telestion_sync.recording.Recorder`: use it as a context
        manager or call ``stop()``. See :mod:`telestion_sync.recording`."""
        from .recording import Recorder

        return Recorder(
            self,
            subjects,
            path,
            format=format,
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            flush_interval=flush_interval,
        ).start()

    # --- subscribing -------------------------------------------------------------------------

    def subscribe(
        self,
        subject: str,
        callback: Optional[Callback] = None,
        *,
        queue: Optional[str] = None,
        codec: _codecs.CodecSpec = "auto",
        schema: Optional[Callable[[Any], Any]] = None,
        max_msgs: Optional[int] = None,
        pending_msgs_limit: Optional[int] = None,
        pending_bytes_limit: Optional[int] = None,
        own_thread: bool = False,
    ) -> Subscription:
        """Receive messages on ``subject`` (``*`` and ``>`` wildcards allowed).

        With ``callback`` each message is passed to it, in order and never concurrently, on
        the bus's delivery threads (a shared pool that grows while callbacks block and shrinks
        when idle); ``own_thread=True`` gives the subscription a thread of its own instead
        (for a callback that blocks for long). Without a callback, pull messages with
        ``next_msg(timeout)`` or iterate. ``queue``
        joins a queue group (one member gets each message). ``codec`` decodes ``msg.data``;
        ``schema`` (any callable) validates or converts it. ``max_msgs`` auto-unsubscribes.
        ``pending_msgs_limit``/``pending_bytes_limit``: negative for unlimited (0 is an error).
        """
        check_subscribe(
            subject,
            callback,
            queue,
            codec,
            schema,
            max_msgs,
            pending_msgs_limit,
            pending_bytes_limit,
            own_thread,
        )
        self._check_open()
        sb = validate_subject(subject, wildcards=True)
        qb = validate_queue(queue) if queue is not None else None
        c = _codecs.get_codec(codec)
        sid = next(self._sids)
        sub = Subscription(
            self,
            sid,
            subject,
            queue,
            callback,
            c,
            schema,
            pending_msgs_limit or self._pending_msgs_limit,
            pending_bytes_limit or self._pending_bytes_limit,
            self._dispatcher,
            own_thread,
        )
        sub._sub_frame = encode_sub(sb, sid, qb)
        self._subs.add(sub)
        try:
            self._conn.write_control(sub._sub_frame)
        except BaseException:
            self._remove_sub(sid)
            sub._close()
            raise
        if max_msgs is not None:
            sub.auto_unsubscribe(max_msgs)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if self._remove_sub(sub.sid) is not None and not self._closed:
            try:
                self._conn.write_control(encode_unsub(sub.sid))
            except ConnectionClosedError:
                pass

    def _auto_unsubscribe(self, sub: Subscription, max_msgs: int) -> None:
        self._conn.write_control(encode_unsub(sub.sid, max_msgs))

    def _drain_sub(self, sub: Subscription, timeout: Optional[float]) -> None:
        # Marked first: a reconnect while the flush waits must not subscribe it again (the
        # server would route a queue group's share to a member that is going away).
        sub._draining = True
        try:
            self._conn.write_control(encode_unsub(sub.sid))
            self.flush(DEFAULT_TIMEOUT if timeout is None else timeout)
        finally:
            # Ended even when the flush failed: the server has no interest in it any more (the
            # UNSUB, or a reconnect that left it out), so it must not look alive.
            self._remove_sub(sub.sid)

    def _count_unrouted(self) -> None:
        """A message for a subscription that just ended (reader thread only)."""
        self._subs.unrouted += 1

    def _remove_sub(self, sid: int) -> Optional[Subscription]:
        """Take a subscription out of the routing table (its drops stay in ``stats``)."""
        return self._subs.remove(sid)

    @property
    def subscriptions(self) -> List[Subscription]:
        """The active subscriptions."""
        return self._subs.all()

    # --- request / reply ---------------------------------------------------------------------

    def request(
        self,
        subject: str,
        data: Any = b"",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Optional[Mapping[str, Any]] = None,
        codec: _codecs.CodecSpec = None,
    ) -> Message:
        """Send a request and wait for the first reply; return it as a :class:`Message`.

        Raises :class:`NoRespondersError` at once when nobody listens on ``subject``,
        :class:`TimeoutError` after ``timeout`` seconds, and :class:`ServiceError` when the
        responder answered with NATS micro error headers.
        """
        t = type(timeout)
        if (
            headers is not None
            or codec is not None
            or type(subject) is not str
            or subject not in self._pub_hot  # a subject in steady use is valid already
            or not ((t is float or t is int) and 0 < timeout < _INF)
        ):
            check_request(subject, timeout, headers, codec)
        self._check_open()
        mux = self._requests
        if mux.sid <= 0:
            mux.ensure_inbox(self._conn.write_control)
        deadline = time.monotonic() + timeout
        reply, slot = mux.open(subject)
        try:
            self._publish(subject, data, reply, headers, codec, True)
            if not self._wait(slot.lock, deadline):
                raise TimeoutError(f"no reply to request on {subject!r} within {timeout} s")
        finally:
            mux.close_slot(reply)
        msg = slot.value
        if isinstance(msg, BaseException):
            raise msg
        if msg is REQUEST_CLOSED:
            raise self._closed_error(f"the bus closed while waiting for a reply on {subject!r}")
        return check_reply(subject, msg)

    def request_many(
        self,
        subject: str,
        data: Any = b"",
        *,
        timeout: float = 1.0,
        max_msgs: Optional[int] = None,
        headers: Optional[Mapping[str, Any]] = None,
        codec: _codecs.CodecSpec = None,
    ) -> List[Message]:
        """Scatter-gather: send one request, collect every reply until ``timeout`` seconds
        have passed or ``max_msgs`` replies arrived. No responders gives an empty list."""
        check_request(subject, timeout, headers, codec)
        check_max_msgs("max_msgs", max_msgs)
        inbox = self.new_inbox()
        sub = self.subscribe(inbox)
        deadline = time.monotonic() + timeout
        replies: List[Message] = []
        self._gathers[sub] = subject  # so a denied publish fails this call, not a timeout
        try:
            self._publish(subject, data, inbox.encode(), headers, codec, True)
            while max_msgs is None or len(replies) < max_msgs:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = sub.next_msg(left)
                except TimeoutError:
                    break
                if msg.status == 503:
                    break
                replies.append(msg)
        finally:
            self._gathers.pop(sub, None)
            sub.unsubscribe()
        return replies

    def reply(
        self,
        subject: str,
        handler: Callable[[Message], Any],
        *,
        queue: Optional[str] = None,
        codec: _codecs.CodecSpec = "auto",
        schema: Optional[Callable[[Any], Any]] = None,
        **subscribe_options: Any,
    ) -> Subscription:
        """Answer requests on ``subject``: the handler's return value is the reply.

        The reply is encoded with ``codec`` when one is given; in ``"auto"`` mode bytes go out
        raw, a CBOR request gets a CBOR reply, anything else JSON. A handler that raises
        answers with the ``Nats-Service-Error`` headers (code from :class:`ServiceError`, else
        500), which ``request()`` raises as :class:`ServiceError`. A request that fails to
        decode or to pass ``schema`` is answered with code 400 and reported to the error handler.
        A handler that called ``msg.respond()`` itself is not answered twice.
        """
        check_callback("handler", handler, optional=False)  # wrapped below: subscribe sees serve
        c = _codecs.get_codec(codec)

        def serve(msg: Message) -> None:
            try:
                result = handler(msg)
            except ServiceError as exc:
                respond_error(msg, exc.description, exc.code)
                return
            except Exception as exc:
                respond_error(msg, str(exc) or type(exc).__name__, 500)
                raise
            if msg.reply and not msg.responded:
                respond_value(msg, result, c, self._default_codec)

        sub = self.subscribe(subject, serve, queue=queue, codec=c, schema=schema, **subscribe_options)
        sub.on_decode_error = lambda msg, exc: respond_error(msg, str(exc), 400)
        return sub

    # --- reader callbacks (run on the connection's reader thread) ----------------------------

    def _on_msg(self, event: Event) -> None:
        _, subject, sid, reply, payload, hdr = event
        sub = self._subs.get(sid)
        if sub is None:
            if sid == self._requests.sid:
                self._requests.on_reply(subject, payload, hdr)
            else:  # sent before the server saw our UNSUB: counted, not lost unseen
                self._subs.unrouted += 1
            return
        try:
            msg = Message(subject.decode(), payload, reply.decode() if reply else None, None, sub, hdr)
        except UnicodeDecodeError:  # NATS subjects are bytes: keep them, byte for byte
            msg = Message(_text(subject), payload, _text(reply) if reply else None, None, sub, hdr)
        if sub._enqueue(msg, len(payload)) and not sub._touched:
            sub._touched = True
            self._touched.append(sub)

    def _on_batch_end(self) -> None:
        if self._touched:
            wake_all(self._touched)

    def _on_server_error(self, err: Error) -> None:
        self._last_server_error = err
        if isinstance(err, PermissionViolationError):
            self._on_permission_violation(err)
        self._report_error(err)

    def _on_permission_violation(self, err: PermissionViolationError) -> None:
        """Fail what the denial hits: the subscriptions on that subject, or the requests
        published to it (or all requests, when their reply inbox may not be subscribed)."""
        if self._requests.on_permission_violation(err):
            return  # the reply inbox was denied: every request failed
        if err.operation == "subscribe":
            for sub in self._subs.all():
                if sub.subject == err.subject and (err.queue is None or sub.queue == err.queue):
                    self._remove_sub(sub.sid)
                    sub._close(err)
        else:
            for sub, subject in list(self._gathers.items()):
                if subject == err.subject:  # a request_many() to the denied subject
                    self._unsubscribe(sub)
                    sub._close(err)

    def _on_disconnected(self, err: BaseException) -> None:
        if err is not self._last_server_error:  # the server's -ERR was reported already
            self._report_error(
                err if isinstance(err, Error) else ConnectionClosedError(f"connection lost: {err}")
            )
        self._status.post(self._on_disconnect)
        self._status.tell(State.RECONNECTING)

    def _on_reconnected(self) -> None:
        self._status.post(self._on_reconnect)
        self._status.tell(State.CONNECTED)

    def add_status_listener(self, listener: Callable[[State], Any]) -> Callable[[], None]:
        """Call ``listener(state)`` on the status thread whenever the connection is lost
        (``State.RECONNECTING``), back (``State.CONNECTED``) or closed for good
        (``State.CLOSED``). For layers built on the bus (JetStream consumers re-pull after a
        reconnect). Returns a function that removes the listener."""
        return self._status.add_listener(listener)

    def _on_connection_closed(self, err: BaseException) -> None:
        if err is not self._last_server_error:  # a refusal was reported when it came
            self._report_error(err)
        self.close()

    def _on_discovered_servers(self, urls: List[str]) -> None:
        self._status.post(self._on_discovered, urls)

    def _on_lame_duck(self) -> None:
        self._status.post(self._on_lame_duck_cb)

    def _resubscribe_frames(self) -> bytes:
        """SUB frames for every live subscription (with the auto-unsubscribe remainders) and
        the request inbox; sent first on a new connection."""
        return b"".join([self._requests.resubscribe_frame(), *self._subs.resubscribe_frames()])

    # --- status callbacks --------------------------------------------------------------------

    def _report_error(self, err: BaseException) -> None:
        """Count an error and hand it to ``on_error`` on the status thread (or log it);
        bounded and coalesced (see :mod:`telestion_sync.status`)."""
        self._status.report_error(err)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self, text: str = "the bus is closed") -> ConnectionClosedError:
        """What calls on a closed bus raise: the connection's, with the reason it gave up
        (e.g. the refusal that ended reconnecting) as message suffix and ``__cause__``."""
        return self._conn._closed_error(text)

    @property
    def threads(self) -> List[threading.Thread]:
        """Every live thread of this bus (reader, writer, status, subscription threads)."""
        found = list(self._conn.threads)
        status = self._status.thread
        if status is not None:
            found.append(status)
        for sub in self._subs.all():  # a copy: other threads (un)subscribe meanwhile
            if sub._thread is not None and sub._thread.is_alive():
                found.append(sub._thread)
        return found + self._dispatcher.threads

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._conn.connected:
            state = f"connected to {self.connected_url}"
        else:
            state = "disconnected"
        name = f" name={self.name!r}" if self.name else ""
        return f"<MessageBus {state}{name} subscriptions={len(self._subs)}>"

    def _repr_html_(self) -> str:
        import html

        s = self.stats
        return (
            f"<b>{html.escape(repr(self))}</b><br><small>in {s.in_msgs} msgs / {s.in_bytes} B, "
            f"out {s.out_msgs} msgs / {s.out_bytes} B, errors {s.errors}</small>"
        )


_CTYPE_BLOCKS: Dict[str, bytes] = {}


def _content_type_block(ctype: str) -> bytes:
    """The header block carrying only ``Content-Type: ctype`` (CBOR publishes), cached."""
    block = _CTYPE_BLOCKS.get(ctype)
    if block is None:
        block = _CTYPE_BLOCKS[ctype] = encode_headers({_codecs.CONTENT_TYPE: ctype})
    return block


def _text(subject: bytes) -> str:
    """A received subject as text; bytes that are not UTF-8 survive as surrogates, and
    ``validate_subject`` encodes them back unchanged."""
    return subject.decode("utf-8", "surrogateescape")


def connect(servers: Union[str, Sequence[str]] = DEFAULT_SERVER, **options: Any) -> MessageBus:
    """Connect to a NATS server (or the first reachable server of a list) and return the bus.

    ``servers``: a URL, a comma-separated list, or a list; ``host:port`` without a scheme works
    and credentials in a URL are percent-decoded. Fails at once with
    :class:`AuthenticationError` on refused credentials and :class:`NoServersError` when no
    server answers within ``connect_timeout``. See :class:`MessageBus` for the options.
    """
    bus = MessageBus(servers, **options)
    bus._connect()
    return bus
