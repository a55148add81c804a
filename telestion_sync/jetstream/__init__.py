"""JetStream for the blocking bus: streams, acknowledged publishes, pull and ordered consumers.

Start with ``js = bus.jetstream()``. Built on the public :class:`~telestion_sync.MessageBus`
API only, following nats.go's ``jetstream`` package and ADR-37.
"""

from .consumer import ConsumeContext, Consumer, MessagesIterator
from .context import JetStream
from .errors import (
    ConsumerDeletedError,
    ConsumerExistsError,
    ConsumerNotFoundError,
    InvalidArgumentError,
    JetStreamError,
    JetStreamNotEnabledError,
    MessageNotFoundError,
    MsgAlreadyAckedError,
    NoHeartbeatError,
    NotAckableError,
    StreamMismatchError,
    StreamNameInUseError,
    StreamNotFoundError,
    WrongLastMsgIdError,
    WrongLastSequenceError,
)
from .message import JetStreamMessage, StoredMessage
from .models import (
    ClusterInfo,
    ConsumerConfig,
    ConsumerInfo,
    ExternalStream,
    MsgMetadata,
    PeerInfo,
    PubAck,
    SequenceInfo,
    SequencePair,
    StreamConfig,
    StreamInfo,
    StreamSource,
    StreamSourceInfo,
    StreamState,
)
from .ordered import OrderedConsumer

__all__ = [
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
    "StreamSourceInfo",
    "ExternalStream",
    "ClusterInfo",
    "PeerInfo",
    "ConsumerConfig",
    "ConsumerInfo",
    "SequenceInfo",
    "SequencePair",
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
]
