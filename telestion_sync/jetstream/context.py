"""``JetStream``: streams, publishing with acknowledgement, consumers, history.

Built on the public :class:`~telestion_sync.MessageBus` API only (``request``, ``publish``,
``subscribe``, ``new_inbox``, ``add_status_listener``), as nats.go's ``jetstream`` package uses
only a ``*nats.Conn``. Every call is blocking, thread-safe and bounded by a timeout.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import re
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Union

from .. import codecs as _codecs
from ..errors import NoRespondersError, TimeoutError
from .errors import (
    BucketNotFoundError,
    InvalidArgumentError,
    JetStreamError,
    JetStreamNotEnabledError,
    MessageNotFoundError,
    StreamNotFoundError,
    api_error,
)
from .message import _DIRECT_HEADERS, JetStreamMessage, StoredMessage, parse_header_block
from .models import (
    DELIVER_POLICIES,
    ConsumerConfig,
    ConsumerInfo,
    PubAck,
    StreamConfig,
    StreamInfo,
    from_json,
    parse_time,
    to_json,
)
from .publish import DEFAULT_MAX_PENDING, AsyncPublisher, parse_pub_ack

if TYPE_CHECKING:  # pragma: no cover
    from ..client import MessageBus
    from .consumer import Consumer
    from .kv import KeyValue, KeyValueStatus
    from .object_store import ObjectStore, ObjectStoreStatus
    from .ordered import OrderedConsumer

log = logging.getLogger("telestion_sync.jetstream")

DEFAULT_API_PREFIX = "$JS.API"
_BAD_NAME = re.compile(r"[.*>/\\\s]")

MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"


def check_name(value: Any, param: str) -> str:
    """A stream or consumer name: a non-empty string without ``.``, ``*``, ``>``, slashes or
    whitespace (they would change the API subject it is used in)."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{param} must be a non-empty string, got {value!r}")
    if _BAD_NAME.search(value):
        raise InvalidArgumentError(f"{param} {value!r} must not contain '.', '*', '>', slashes or whitespace")
    return value


def check_timeout(value: Any, param: str = "timeout") -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidArgumentError(f"{param} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def check_count(value: Any, param: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{param} must be an integer >= {minimum}, got {value!r}")
    return value


def new_name() -> str:
    """A random consumer name (22 characters, as nats.go's NUIDs are)."""
    return secrets.token_urlsafe(16).replace("-", "A").replace("_", "B")[:22]


class JetStream:
    """JetStream through one bus: ``bus.jetstream(domain=None, api_prefix=None, timeout=5.0)``.

    ``domain`` reaches the JetStream of another domain (``$JS.<domain>.API``, e.g. a leaf
    node's hub), ``api_prefix`` an explicitly imported API; ``timeout`` is the default for
    every API call.
    """

    def __init__(
        self,
        bus: MessageBus,
        *,
        domain: Optional[str] = None,
        api_prefix: Optional[str] = None,
        timeout: float = 5.0,
        publish_async_max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if domain is not None and api_prefix is not None:
            raise InvalidArgumentError("give domain or api_prefix, not both")
        if domain is not None:
            check_name(domain, "domain")
            prefix = f"$JS.{domain}.API"
        elif api_prefix is not None:
            if not isinstance(api_prefix, str) or not api_prefix.strip(". ") or " " in api_prefix:
                raise InvalidArgumentError(f"api_prefix must be a subject prefix, got {api_prefix!r}")
            prefix = api_prefix.rstrip(".")
        else:
            prefix = DEFAULT_API_PREFIX
        self.bus = bus
        self.domain = domain
        self.api_prefix = prefix
        self.timeout = check_timeout(timeout)
        if self.timeout <= 0:  # every API call is a request, which needs time to wait
            raise InvalidArgumentError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self._publisher = AsyncPublisher(
            self, check_count(publish_async_max_pending, "publish_async_max_pending")
        )
        from .consumer import _InboxPool

        # Reply inboxes for fetches, shared by all consumers of this context (any pull request
        # may answer to any inbox; the pool is bounded, so consumer objects never leak them).
        self._inbox_pool = _InboxPool(bus)
        self._direct: Dict[str, bool] = {}  # stream -> allow_direct, learnt from infos
        self._direct_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<JetStream api={self.api_prefix!r} bus={self.bus!r}>"

    # --- the API ------------------------------------------------------------------------------

    def _timeout(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else check_timeout(timeout)

    def api(
        self, subject: str, body: Optional[Mapping[str, Any]] = None, timeout: Optional[float] = None
    ) -> Any:
        """Send a JetStream API request (``subject`` after the API prefix) and return the
        parsed JSON reply; an error reply raises the matching :class:`JetStreamError`."""
        payload = b"" if body is None else json.dumps(body).encode()
        full = f"{self.api_prefix}.{subject}"
        try:
            msg = self.bus.request(full, payload, timeout=self._timeout(timeout))
        except NoRespondersError:
            raise JetStreamNotEnabledError(
                f"JetStream not available: nobody answers {full!r} (not enabled, wrong domain, or starting)",
                503,
            ) from None
        try:
            resp = json.loads(msg.payload)
        except ValueError as exc:
            raise JetStreamError(f"invalid reply to {full!r}: {msg.payload[:80]!r}") from exc
        if isinstance(resp, dict) and resp.get("error"):
            raise api_error(resp["error"])
        return resp

    def account_info(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The account's JetStream usage and limits (the API's ``INFO`` reply)."""
        resp = self.api("INFO", None, timeout)
        resp.pop("type", None)
        return dict(resp)

    # --- streams ------------------------------------------------------------------------------

    def _stream_config(self, name: Union[str, StreamConfig], options: Dict[str, Any]) -> StreamConfig:
        if isinstance(name, StreamConfig):
            if options:
                raise InvalidArgumentError("give a StreamConfig or keyword options, not both")
            cfg = name
        else:
            try:
                cfg = StreamConfig(name=name, **options)
            except TypeError as exc:
                raise InvalidArgumentError(f"unknown stream option: {exc}") from None
        check_name(cfg.name, "stream name")
        if isinstance(cfg.subjects, str):
            raise InvalidArgumentError("subjects must be a list of subjects, not a string")
        return cfg

    def _stream_info(self, resp: Dict[str, Any]) -> StreamInfo:
        resp.pop("type", None)
        info = from_json(StreamInfo, resp)
        if info.config is not None:
            with self._direct_lock:
                self._direct[info.config.name] = bool(info.config.allow_direct)
        return info

    def create_stream(
        self, name: Union[str, StreamConfig], *, timeout: Optional[float] = None, **options: Any
    ) -> StreamInfo:
        """Create a stream (``create_stream("T", subjects=["t.>"], max_age=3600)`` or with a
        :class:`StreamConfig`). Creating it again with the same configuration is fine; with
        another it raises :class:`StreamNameInUseError`."""
        cfg = self._stream_config(name, options)
        return self._stream_info(self.api(f"STREAM.CREATE.{cfg.name}", to_json(cfg), timeout))

    def update_stream(
        self, name: Union[str, StreamConfig], *, timeout: Optional[float] = None, **options: Any
    ) -> StreamInfo:
        """Change a stream's configuration (the full configuration, as in ``create_stream``;
        :class:`StreamNotFoundError` when it does not exist)."""
        cfg = self._stream_config(name, options)
        return self._stream_info(self.api(f"STREAM.UPDATE.{cfg.name}", to_json(cfg), timeout))

    def create_or_update_stream(
        self, name: Union[str, StreamConfig], *, timeout: Optional[float] = None, **options: Any
    ) -> StreamInfo:
        """Update the stream, or create it when it does not exist."""
        cfg = self._stream_config(name, options)
        try:
            return self._stream_info(self.api(f"STREAM.UPDATE.{cfg.name}", to_json(cfg), timeout))
        except StreamNotFoundError:
            return self._stream_info(self.api(f"STREAM.CREATE.{cfg.name}", to_json(cfg), timeout))

    def stream_info(
        self,
        name: str,
        *,
        subjects_filter: Optional[str] = None,
        deleted_details: bool = False,
        timeout: Optional[float] = None,
    ) -> StreamInfo:
        """A stream's configuration and state (``subjects_filter`` fills ``state.subjects``)."""
        check_name(name, "stream")
        body: Dict[str, Any] = {}
        if subjects_filter:
            body["subjects_filter"] = subjects_filter
        if deleted_details:
            body["deleted_details"] = True
        return self._stream_info(self.api(f"STREAM.INFO.{name}", body or None, timeout))

    def _paged(self, subject: str, key: str, body: Dict[str, Any], timeout: Optional[float]) -> Iterator[Any]:
        offset = 0
        while True:
            resp = self.api(subject, {**body, "offset": offset}, timeout)
            items = resp.get(key) or []
            yield from items
            offset += len(items)
            if not items or offset >= int(resp.get("total", 0)):
                return

    def stream_names(self, subject: Optional[str] = None, *, timeout: Optional[float] = None) -> List[str]:
        """Names of all streams (only those capturing ``subject`` if given)."""
        body = {"subject": subject} if subject else {}
        return list(self._paged("STREAM.NAMES", "streams", body, timeout))

    def streams(self, subject: Optional[str] = None, *, timeout: Optional[float] = None) -> List[StreamInfo]:
        """Infos of all streams (only those capturing ``subject`` if given)."""
        body = {"subject": subject} if subject else {}
        return [self._stream_info(s) for s in self._paged("STREAM.LIST", "streams", body, timeout)]

    def purge_stream(
        self,
        name: str,
        *,
        subject: Optional[str] = None,
        keep: Optional[int] = None,
        seq: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> int:
        """Remove messages: all, those on ``subject``, all but the last ``keep``, or those
        below sequence ``seq``. Returns how many were purged."""
        check_name(name, "stream")
        if keep is not None and seq is not None:
            raise InvalidArgumentError("give keep or seq, not both")
        body: Dict[str, Any] = {}
        if subject is not None:
            body["filter"] = subject
        if keep is not None:
            body["keep"] = check_count(keep, "keep", 0)
        if seq is not None:
            body["seq"] = check_count(seq, "seq")
        resp = self.api(f"STREAM.PURGE.{name}", body or None, timeout)
        return int(resp.get("purged", 0))

    def delete_stream(self, name: str, *, timeout: Optional[float] = None) -> None:
        """Delete a stream and its messages (:class:`StreamNotFoundError` if there is none)."""
        check_name(name, "stream")
        self.api(f"STREAM.DELETE.{name}", None, timeout)
        with self._direct_lock:
            self._direct.pop(name, None)

    def _allow_direct(self, stream: str, timeout: Optional[float]) -> bool:
        known = self._direct.get(stream)
        if known is None:
            known = bool(self.stream_info(stream, timeout=timeout).config.allow_direct)
        return known

    def get_msg(
        self, stream: str, seq: int, *, direct: Optional[bool] = None, timeout: Optional[float] = None
    ) -> StoredMessage:
        """The message stored at ``seq`` (:class:`MessageNotFoundError` if there is none).
        Read with a direct get when the stream allows it (any replica answers)."""
        check_name(stream, "stream")
        check_count(seq, "seq")
        return self._get(stream, {"seq": seq}, None, direct, timeout)

    def get_last_msg_for_subject(
        self, stream: str, subject: str, *, direct: Optional[bool] = None, timeout: Optional[float] = None
    ) -> StoredMessage:
        """The last message stored on ``subject`` (:class:`MessageNotFoundError` if none)."""
        check_name(stream, "stream")
        if not isinstance(subject, str) or not subject or " " in subject:
            raise InvalidArgumentError(f"subject must be a subject, got {subject!r}")
        return self._get(stream, {"last_by_subj": subject}, subject, direct, timeout)

    def _get(
        self,
        stream: str,
        body: Dict[str, Any],
        last_subject: Optional[str],
        direct: Optional[bool],
        timeout: Optional[float],
    ) -> StoredMessage:
        if direct is None:
            direct = self._allow_direct(stream, timeout)
        if direct:
            return self._direct_get(stream, body, last_subject, timeout)
        what = f"seq {body['seq']}" if "seq" in body else f"last message on {last_subject!r}"
        try:
            resp = self.api(f"STREAM.MSG.GET.{stream}", body, timeout)
        except MessageNotFoundError as exc:
            raise MessageNotFoundError(f"stream {stream!r}: no {what}", exc.code, exc.err_code) from None
        m = resp["message"]
        hdrs = m.get("hdrs")
        headers = parse_header_block(base64.b64decode(hdrs)) if hdrs else {}
        return StoredMessage(
            stream,
            m["subject"],
            int(m["seq"]),
            parse_time(m["time"]) if m.get("time") else None,
            base64.b64decode(m.get("data") or b""),
            headers,
        )

    def _direct_get(
        self, stream: str, body: Dict[str, Any], last_subject: Optional[str], timeout: Optional[float]
    ) -> StoredMessage:
        if last_subject is not None:
            subject, payload = f"{self.api_prefix}.DIRECT.GET.{stream}.{last_subject}", b""
            what = f"last message on {last_subject!r}"
        else:
            subject, payload = f"{self.api_prefix}.DIRECT.GET.{stream}", json.dumps(body).encode()
            what = f"seq {body['seq']}"
        try:
            msg = self.bus.request(subject, payload, timeout=self._timeout(timeout))
        except NoRespondersError:
            raise StreamNotFoundError(
                f"stream {stream!r} not found (no direct get responders)", 404, 10059
            ) from None
        if msg.status is not None:
            if msg.status == 404:
                raise MessageNotFoundError(f"stream {stream!r}: no {what}", 404, 10037)
            raise JetStreamError(f"direct get from {stream!r}: {msg.description}", msg.status)
        h = msg.headers
        headers = {k: v for k, v in h.items() if k not in _DIRECT_HEADERS}
        ts = h.get("Nats-Time-Stamp")
        return StoredMessage(
            h.get("Nats-Stream", stream),
            h.get("Nats-Subject", ""),
            int(h.get("Nats-Sequence", "0")),
            parse_time(ts) if ts else None,
            msg.payload,
            headers,
        )

    def delete_msg(
        self, stream: str, seq: int, *, erase: bool = False, timeout: Optional[float] = None
    ) -> None:
        """Remove the message at ``seq`` (``erase`` overwrites it on disk)."""
        check_name(stream, "stream")
        check_count(seq, "seq")
        body: Dict[str, Any] = {"seq": seq} if erase else {"seq": seq, "no_erase": True}
        try:
            self.api(f"STREAM.MSG.DELETE.{stream}", body, timeout)
        except JetStreamError as exc:
            if exc.err_code in (10057, 10037):
                raise MessageNotFoundError(
                    f"stream {stream!r}: no seq {seq}", exc.code, exc.err_code
                ) from None
            raise

    # --- publishing ---------------------------------------------------------------------------

    @staticmethod
    def _pub_headers(
        headers: Optional[Mapping[str, Any]],
        msg_id: Optional[str],
        expected_stream: Optional[str],
        expected_last_seq: Optional[int],
        expected_last_subject_seq: Optional[int],
        expected_last_msg_id: Optional[str],
    ) -> Optional[Dict[str, Any]]:
        h: Dict[str, Any] = dict(headers) if headers else {}
        if msg_id is not None:
            if not isinstance(msg_id, str) or not msg_id:
                raise InvalidArgumentError(f"msg_id must be a non-empty string, got {msg_id!r}")
            h[MSG_ID] = msg_id
        if expected_stream is not None:
            h[EXPECTED_STREAM] = check_name(expected_stream, "expected_stream")
        if expected_last_seq is not None:
            h[EXPECTED_LAST_SEQ] = str(check_count(expected_last_seq, "expected_last_seq", 0))
        if expected_last_subject_seq is not None:
            h[EXPECTED_LAST_SUBJECT_SEQ] = str(
                check_count(expected_last_subject_seq, "expected_last_subject_seq", 0)
            )
        if expected_last_msg_id is not None:
            h[EXPECTED_LAST_MSG_ID] = expected_last_msg_id
        return h or None

    def publish(
        self,
        subject: str,
        data: Any = b"",
        *,
        msg_id: Optional[str] = None,
        expected_stream: Optional[str] = None,
        expected_last_seq: Optional[int] = None,
        expected_last_subject_seq: Optional[int] = None,
        expected_last_msg_id: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
        retry_attempts: int = 2,
        retry_wait: float = 0.25,
    ) -> PubAck:
        """Publish to a stream and wait for its acknowledgement.

        ``msg_id`` deduplicates within the stream's duplicate window; the ``expected_*``
        preconditions make the publish fail (:class:`WrongLastSequenceError`...) unless the
        stream is as expected. While nobody answers (a stream leader being elected) the publish
        is retried ``retry_attempts`` times ``retry_wait`` seconds apart, within ``timeout``;
        then :class:`~telestion_sync.NoRespondersError` (no stream captures the subject).
        """
        timeout = self._timeout(timeout)
        check_count(retry_attempts, "retry_attempts", 0)
        hdrs = self._pub_headers(
            headers,
            msg_id,
            expected_stream,
            expected_last_seq,
            expected_last_subject_seq,
            expected_last_msg_id,
        )
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self.bus.request(subject, data, timeout=max(left, 0.0), headers=hdrs, codec=codec)
                return parse_pub_ack(msg, subject)
            except NoRespondersError:
                attempt += 1
                left = deadline - time.monotonic()
                if attempt > retry_attempts or left <= retry_wait:
                    raise
                log.debug("publish to %r: no responders, retry %d", subject, attempt)
                time.sleep(retry_wait)

    def publish_async(
        self,
        subject: str,
        data: Any = b"",
        *,
        msg_id: Optional[str] = None,
        expected_stream: Optional[str] = None,
        expected_last_seq: Optional[int] = None,
        expected_last_subject_seq: Optional[int] = None,
        expected_last_msg_id: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
    ) -> concurrent.futures.Future[PubAck]:
        """Publish without waiting: the future resolves to the :class:`PubAck` (or fails with
        the error, or ``ts.TimeoutError`` when no ack came within ``timeout``). Blocks while
        ``publish_async_max_pending`` acks are outstanding, at most ``timeout`` seconds."""
        timeout = self._timeout(timeout)
        if (
            headers is None
            and msg_id is None
            and expected_stream is None
            and expected_last_seq is None
            and expected_last_subject_seq is None
            and expected_last_msg_id is None
        ):
            return self._publisher.publish(subject, data, None, codec, timeout)  # the common case
        hdrs = self._pub_headers(
            headers,
            msg_id,
            expected_stream,
            expected_last_seq,
            expected_last_subject_seq,
            expected_last_msg_id,
        )
        return self._publisher.publish(subject, data, hdrs, codec, timeout)

    def publish_async_complete(self, timeout: Optional[float] = None) -> None:
        """Wait until every ``publish_async`` is acknowledged (or failed); ``ts.TimeoutError``
        names how many are still outstanding when ``timeout`` passes."""
        self._publisher.complete(self._timeout(timeout))

    @property
    def publish_async_pending(self) -> int:
        """Asynchronous publishes whose ack has not arrived yet."""
        return self._publisher.pending

    # --- consumers ----------------------------------------------------------------------------

    def _consumer_config(self, config: Optional[ConsumerConfig], options: Dict[str, Any]) -> ConsumerConfig:
        if config is not None:
            if options:
                raise InvalidArgumentError("give a ConsumerConfig or keyword options, not both")
            if not isinstance(config, ConsumerConfig):
                raise InvalidArgumentError(f"config must be a ConsumerConfig, not {type(config).__name__}")
            return config
        if "durable" in options:
            options["durable_name"] = options.pop("durable")
        policy = options.get("deliver_policy")
        if policy is not None and policy not in DELIVER_POLICIES:
            raise InvalidArgumentError(
                f"deliver_policy must be one of {', '.join(DELIVER_POLICIES)}; got {policy!r}"
            )
        try:
            return ConsumerConfig(**options)
        except TypeError as exc:
            raise InvalidArgumentError(f"unknown consumer option: {exc}") from None

    def _upsert_consumer(
        self,
        stream: str,
        config: Optional[ConsumerConfig],
        options: Dict[str, Any],
        action: str,
        timeout: Optional[float],
    ) -> Consumer:
        from .consumer import Consumer

        check_name(stream, "stream")
        cfg = self._consumer_config(config, options)
        if cfg.durable_name is not None:
            check_name(cfg.durable_name, "durable")
            if cfg.name is not None and cfg.name != cfg.durable_name:
                raise InvalidArgumentError(f"name {cfg.name!r} and durable {cfg.durable_name!r} differ")
            name = cfg.durable_name
        elif cfg.name is not None:
            name = check_name(cfg.name, "name")
        else:
            name = new_name()
            cfg.name = name
        if cfg.ack_policy is None:
            cfg.ack_policy = "explicit"
        if isinstance(cfg.filter_subjects, str):
            raise InvalidArgumentError("filter_subjects must be a list of subjects, not a string")
        policy = cfg.deliver_policy
        if policy == "by_start_sequence" and not cfg.opt_start_seq:
            raise InvalidArgumentError("deliver_policy 'by_start_sequence' needs opt_start_seq")
        if policy == "by_start_time" and cfg.opt_start_time is None:
            raise InvalidArgumentError("deliver_policy 'by_start_time' needs opt_start_time")
        if cfg.opt_start_seq is not None and policy is None:
            cfg.deliver_policy = "by_start_sequence"
        if cfg.opt_start_time is not None and policy is None:
            cfg.deliver_policy = "by_start_time"
        body: Dict[str, Any] = {"stream_name": stream, "config": to_json(cfg)}
        if action:
            body["action"] = action
        resp = self.api(f"CONSUMER.CREATE.{stream}.{name}", body, timeout)
        resp.pop("type", None)
        return Consumer(self, stream, name, from_json(ConsumerInfo, resp))

    def create_consumer(
        self,
        stream: str,
        config: Optional[ConsumerConfig] = None,
        *,
        timeout: Optional[float] = None,
        **options: Any,
    ) -> Consumer:
        """Create a pull consumer: ``durable=`` (or ``durable_name=``) for a durable one,
        ``name=`` or nothing for an ephemeral one (removed after ``inactive_threshold``).
        The ack policy defaults to explicit. :class:`ConsumerExistsError` when one with
        that name exists with another configuration."""
        return self._upsert_consumer(stream, config, options, "create", timeout)

    def update_consumer(
        self,
        stream: str,
        config: Optional[ConsumerConfig] = None,
        *,
        timeout: Optional[float] = None,
        **options: Any,
    ) -> Consumer:
        """Change a consumer (:class:`ConsumerNotFoundError` when it does not exist)."""
        return self._upsert_consumer(stream, config, options, "update", timeout)

    def create_or_update_consumer(
        self,
        stream: str,
        config: Optional[ConsumerConfig] = None,
        *,
        timeout: Optional[float] = None,
        **options: Any,
    ) -> Consumer:
        """Create the consumer, or update it when it exists."""
        return self._upsert_consumer(stream, config, options, "", timeout)

    def consumer_info(self, stream: str, name: str, *, timeout: Optional[float] = None) -> ConsumerInfo:
        """A consumer's configuration and state (:class:`ConsumerNotFoundError`)."""
        check_name(stream, "stream")
        check_name(name, "consumer")
        resp = self.api(f"CONSUMER.INFO.{stream}.{name}", None, timeout)
        resp.pop("type", None)
        return from_json(ConsumerInfo, resp)

    def consumer(self, stream: str, name: str, *, timeout: Optional[float] = None) -> Consumer:
        """An existing consumer, e.g. a durable one made by another client."""
        from .consumer import Consumer

        return Consumer(self, stream, name, self.consumer_info(stream, name, timeout=timeout))

    def delete_consumer(self, stream: str, name: str, *, timeout: Optional[float] = None) -> None:
        """Delete a consumer (:class:`ConsumerNotFoundError` if there is none)."""
        check_name(stream, "stream")
        check_name(name, "consumer")
        self.api(f"CONSUMER.DELETE.{stream}.{name}", None, timeout)

    def consumer_names(self, stream: str, *, timeout: Optional[float] = None) -> List[str]:
        """Names of the stream's consumers."""
        check_name(stream, "stream")
        return list(self._paged(f"CONSUMER.NAMES.{stream}", "consumers", {}, timeout))

    def consumers(self, stream: str, *, timeout: Optional[float] = None) -> List[ConsumerInfo]:
        """Infos of the stream's consumers."""
        check_name(stream, "stream")
        out = []
        for c in self._paged(f"CONSUMER.LIST.{stream}", "consumers", {}, timeout):
            c.pop("type", None)
            out.append(from_json(ConsumerInfo, c))
        return out

    def ordered_consumer(
        self,
        stream: str,
        *,
        filter_subjects: Optional[List[str]] = None,
        deliver_policy: Optional[str] = None,
        opt_start_seq: Optional[int] = None,
        opt_start_time: Optional[datetime] = None,
        headers_only: bool = False,
        replay_policy: Optional[str] = None,
        inactive_threshold: float = 300.0,
        name_prefix: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> OrderedConsumer:
        """A consumer that hands out a stream (or filtered subjects) in order, exactly once,
        resetting itself (a new ephemeral consumer from the last sequence seen + 1) on gaps,
        missed heartbeats, a lost consumer and reconnects. Offers fetch, next, consume and
        messages. Nothing to acknowledge."""
        from .ordered import OrderedConsumer

        check_name(stream, "stream")
        if isinstance(filter_subjects, str):
            raise InvalidArgumentError("filter_subjects must be a list of subjects, not a string")
        if deliver_policy is not None and deliver_policy not in DELIVER_POLICIES:
            raise InvalidArgumentError(
                f"deliver_policy must be one of {', '.join(DELIVER_POLICIES)}; got {deliver_policy!r}"
            )
        if name_prefix is not None:
            check_name(name_prefix, "name_prefix")
        template = ConsumerConfig(
            deliver_policy=deliver_policy,
            opt_start_seq=opt_start_seq,
            opt_start_time=opt_start_time,
            headers_only=headers_only or None,
            replay_policy=replay_policy,
            inactive_threshold=inactive_threshold,
        )
        if filter_subjects:
            template.filter_subjects = list(filter_subjects)
        oc = OrderedConsumer(self, stream, template, name_prefix or new_name()[:12])
        oc._reset(self._timeout(timeout))
        return oc

    def find_stream(self, subject: str, *, timeout: Optional[float] = None) -> str:
        """The name of the stream that stores ``subject`` (:class:`StreamNotFoundError`)."""
        names = self.stream_names(subject, timeout=timeout)
        if not names:
            raise StreamNotFoundError(f"no stream captures subject {subject!r}", 404, 10059)
        return str(names[0])

    def history(
        self,
        subject: str,
        start: Union[timedelta, datetime, None] = None,
        end: Union[timedelta, datetime, None] = None,
        *,
        stream: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> List[JetStreamMessage]:
        """The messages stored on ``subject`` (wildcards allowed) between ``start`` and
        ``end``, oldest first. ``start``/``end``: an aware datetime, or a timedelta meaning
        "that long ago"; None: from the first / up to the last stored. ``stream`` defaults to
        the stream that captures ``subject``. ``timeout`` bounds each wait for more messages."""
        now = datetime.now(timezone.utc)
        t_start = now - start if isinstance(start, timedelta) else start
        t_end = now - end if isinstance(end, timedelta) else end
        for value, param in ((t_start, "start"), (t_end, "end")):
            if value is not None:
                if not isinstance(value, datetime):
                    raise InvalidArgumentError(
                        f"{param} must be a datetime, a timedelta or None, not {value!r}"
                    )
                if value.tzinfo is None:
                    raise InvalidArgumentError(
                        f"{param} must be an aware datetime (e.g. tzinfo=timezone.utc)"
                    )
        wait = self._timeout(timeout)
        name = check_name(stream, "stream") if stream is not None else self.find_stream(subject, timeout=wait)
        oc = self.ordered_consumer(
            name,
            filter_subjects=[subject],
            deliver_policy="by_start_time" if t_start is not None else "all",
            opt_start_time=t_start,
            timeout=wait,
        )
        from ..dataframe import MessageList

        out: List[JetStreamMessage] = MessageList()  # a list with .to_dataframe()
        try:
            if oc._initial_pending == 0:
                return out
            while True:
                batch = oc.fetch(1000, timeout=wait)
                if not batch:
                    raise TimeoutError(f"history of {subject!r}: no more messages within {wait} s")
                for m in batch:
                    meta = m.metadata
                    if t_end is not None and meta.timestamp > t_end:
                        return out
                    out.append(m)
                    if meta.num_pending == 0:
                        return out
        finally:
            oc.close()

    # --- Key-Value and Object Store -----------------------------------------------------------

    def create_key_value(
        self,
        bucket: str,
        *,
        history: int = 1,
        ttl: Union[float, timedelta, None] = None,
        max_value_size: Optional[int] = None,
        max_bytes: Optional[int] = None,
        storage: Optional[str] = None,
        replicas: int = 1,
        compression: bool = False,
        description: Optional[str] = None,
        allow_msg_ttl: bool = False,
        limit_marker_ttl: Union[float, timedelta, None] = None,
        metadata: Optional[Dict[str, str]] = None,
        codec: _codecs.CodecSpec = None,
        timeout: Optional[float] = None,
    ) -> KeyValue:
        """Create a Key-Value bucket (stream ``KV_<bucket>``, as nats.go lays it out).
        ``history``: revisions kept per key (1-64); ``ttl``: how long values live;
        ``allow_msg_ttl``: per-key TTLs (``kv.put(k, v, ttl=)``, server 2.11+);
        ``limit_marker_ttl``: keep markers for keys removed by TTLs that long. Creating it again
        with the same settings is fine; with others it raises :class:`StreamNameInUseError`."""
        from .kv import KeyValue, bucket_config

        cfg = bucket_config(
            bucket,
            history=history,
            ttl=ttl,
            max_value_size=max_value_size,
            max_bytes=max_bytes,
            storage=storage,
            replicas=replicas,
            compression=compression,
            description=description,
            allow_msg_ttl=allow_msg_ttl,
            limit_marker_ttl=limit_marker_ttl,
            metadata=metadata,
        )
        info = self.create_stream(cfg, timeout=timeout)
        return KeyValue(self, bucket, info, codec)

    def key_value(
        self, bucket: str, *, codec: _codecs.CodecSpec = None, timeout: Optional[float] = None
    ) -> KeyValue:
        """An existing bucket (:class:`BucketNotFoundError` when there is none)."""
        from .kv import KeyValue

        info = self._on_bucket(self.stream_info, "KV_", "bucket", bucket, timeout)
        return KeyValue(self, bucket, info, codec)

    def delete_key_value(self, bucket: str, *, timeout: Optional[float] = None) -> None:
        """Delete a bucket and everything in it (:class:`BucketNotFoundError`)."""
        self._on_bucket(self.delete_stream, "KV_", "bucket", bucket, timeout)

    def _on_bucket(self, call: Any, prefix: str, what: str, bucket: str, timeout: Optional[float]) -> Any:
        """``call`` on the stream behind a bucket (``KV_``/``OBJ_`` + its name): a bad name is
        an error before anything is sent, a missing stream :class:`BucketNotFoundError`."""
        from .kv import check_bucket

        check_bucket(bucket)
        try:
            return call(f"{prefix}{bucket}", timeout=timeout)
        except StreamNotFoundError:
            raise BucketNotFoundError(f"{what} {bucket!r} not found", 404, 10059) from None

    def key_value_names(self, *, timeout: Optional[float] = None) -> List[str]:
        """The names of all Key-Value buckets, sorted."""
        names = self.stream_names("$KV.*.>", timeout=timeout)
        return sorted(n[3:] for n in names if n.startswith("KV_"))

    def key_values(self, *, timeout: Optional[float] = None) -> List[KeyValueStatus]:
        """The status of every Key-Value bucket, sorted by name."""
        from .kv import status_of

        infos = self.streams("$KV.*.>", timeout=timeout)
        out = [status_of(i.config.name[3:], i) for i in infos if i.config.name.startswith("KV_")]
        return sorted(out, key=lambda s: s.bucket)

    def create_object_store(
        self,
        bucket: str,
        *,
        description: Optional[str] = None,
        ttl: Union[float, timedelta, None] = None,
        max_bytes: Optional[int] = None,
        storage: Optional[str] = None,
        replicas: int = 1,
        compression: bool = False,
        metadata: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> ObjectStore:
        """Create an Object Store (stream ``OBJ_<bucket>``, as nats.go lays it out)."""
        from .object_store import ObjectStore, store_config

        cfg = store_config(
            bucket,
            description=description,
            ttl=ttl,
            max_bytes=max_bytes,
            storage=storage,
            replicas=replicas,
            compression=compression,
            metadata=metadata,
        )
        return ObjectStore(self, bucket, self.create_stream(cfg, timeout=timeout))

    def object_store(self, bucket: str, *, timeout: Optional[float] = None) -> ObjectStore:
        """An existing Object Store (:class:`BucketNotFoundError` when there is none)."""
        from .object_store import ObjectStore

        info = self._on_bucket(self.stream_info, "OBJ_", "object store", bucket, timeout)
        return ObjectStore(self, bucket, info)

    def delete_object_store(self, bucket: str, *, timeout: Optional[float] = None) -> None:
        """Delete an Object Store and every object in it (:class:`BucketNotFoundError`)."""
        self._on_bucket(self.delete_stream, "OBJ_", "object store", bucket, timeout)

    def object_store_names(self, *, timeout: Optional[float] = None) -> List[str]:
        """The names of all Object Stores, sorted."""
        names = self.stream_names("$O.*.C.>", timeout=timeout)
        return sorted(n[4:] for n in names if n.startswith("OBJ_"))

    def object_stores(self, *, timeout: Optional[float] = None) -> List[ObjectStoreStatus]:
        """The status of every Object Store, sorted by name."""
        from .object_store import ObjectStoreStatus

        infos = self.streams("$O.*.C.>", timeout=timeout)
        out = [ObjectStoreStatus.of(i.config.name[4:], i) for i in infos if i.config.name.startswith("OBJ_")]
        return sorted(out, key=lambda s: s.bucket)
