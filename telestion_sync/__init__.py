"""telestion_sync: a synchronous, thread-based client for the Telestion NATS message bus.

For plain scripts, Jupyter notebooks and legacy tools that will never be async::

    import telestion_sync as ts

    with ts.connect("localhost:4222") as bus:
        bus.publish("telemetry.temp", {"celsius": 21.5})
        answer = bus.request("svc.add", {"a": 1, "b": 2}, timeout=2.0)

The connection runs on background threads; every method is blocking and thread-safe.
"""

from ._version import __version__
from .client import MessageBus, Stats, connect
from .codecs import CBORCodec, Codec, JSONCodec, RawCodec
from .config import Config, load_config
from .connection import State
from .dataframe import MissingExtraError, history_dataframe, to_dataframe
from .errors import (
    AuthenticationError,
    BadSubjectError,
    ConfigError,
    ConnectionClosedError,
    DecodeError,
    Error,
    MaxPayloadError,
    NoRespondersError,
    NoServersError,
    OutboundBufferFullError,
    PermissionViolationError,
    ProtocolError,
    ServiceError,
    SlowConsumerError,
    TimeoutError,
    TLSError,
    WebSocketError,
)
from .jetstream import (
    ClusterInfo,
    ConsumeContext,
    Consumer,
    ConsumerConfig,
    ConsumerDeletedError,
    ConsumerExistsError,
    ConsumerInfo,
    ConsumerNotFoundError,
    InvalidArgumentError,
    JetStream,
    JetStreamError,
    JetStreamMessage,
    JetStreamNotEnabledError,
    MessageNotFoundError,
    MessagesIterator,
    MsgAlreadyAckedError,
    MsgMetadata,
    NoHeartbeatError,
    NotAckableError,
    OrderedConsumer,
    PubAck,
    StoredMessage,
    StreamConfig,
    StreamInfo,
    StreamMismatchError,
    StreamNameInUseError,
    StreamNotFoundError,
    StreamSource,
    StreamState,
    WrongLastMsgIdError,
    WrongLastSequenceError,
)
from .message import Message
from .notebook import LivePlot, live_plot
from .operator import Waiter
from .progress import Progress
from .recording import (
    RecordedMessage,
    Recorder,
    Recording,
    RecordingWarning,
    ReplaySummary,
    load_recording,
    replay,
)
from .service import Service, discover_services, start_service
from .subscription import Subscription, SubscriptionClosedError

__all__ = [
    "__version__",
    "connect",
    "MessageBus",
    "Stats",
    "start_service",
    "Service",
    "discover_services",
    "Config",
    "load_config",
    "State",
    "Message",
    "Subscription",
    "Codec",
    "JSONCodec",
    "CBORCodec",
    "RawCodec",
    "Error",
    "AuthenticationError",
    "BadSubjectError",
    "ConfigError",
    "ConnectionClosedError",
    "DecodeError",
    "MaxPayloadError",
    "NoRespondersError",
    "NoServersError",
    "OutboundBufferFullError",
    "PermissionViolationError",
    "ProtocolError",
    "ServiceError",
    "SlowConsumerError",
    "SubscriptionClosedError",
    "TimeoutError",
    "TLSError",
    "WebSocketError",
    # JetStream
    "JetStream",
    "Consumer",
    "OrderedConsumer",
    "ConsumeContext",
    "MessagesIterator",
    "JetStreamMessage",
    "StoredMessage",
    "StreamConfig",
    "StreamInfo",
    "StreamState",
    "StreamSource",
    "ClusterInfo",
    "ConsumerConfig",
    "ConsumerInfo",
    "MsgMetadata",
    "PubAck",
    "JetStreamError",
    "JetStreamNotEnabledError",
    "StreamNotFoundError",
    "StreamNameInUseError",
    "StreamMismatchError",
    "ConsumerNotFoundError",
    "ConsumerExistsError",
    "ConsumerDeletedError",
    "WrongLastSequenceError",
    "WrongLastMsgIdError",
    "MessageNotFoundError",
    "MsgAlreadyAckedError",
    "NoHeartbeatError",
    "NotAckableError",
    "InvalidArgumentError",
    # operators and notebooks
    "Waiter",
    "Recorder",
    "Recording",
    "RecordedMessage",
    "RecordingWarning",
    "ReplaySummary",
    "load_recording",
    "replay",
    "to_dataframe",
    "history_dataframe",
    "MissingExtraError",
    "live_plot",
    "LivePlot",
    "Progress",
]
