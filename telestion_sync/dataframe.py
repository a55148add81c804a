"""Messages as a pandas DataFrame, for analysis in a notebook.

pandas is an optional extra (``pip install telestion-sync[pandas]``); it is imported only when a
DataFrame is asked for. Works on recordings, JetStream histories (``js.history(...)``), stored
and live messages alike.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Union

from .errors import Error

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from .jetstream import JetStream

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_RESERVED = ("subject",)


class MissingExtraError(Error, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require_pandas() -> Any:
    """The pandas module, or :class:`MissingExtraError` naming the extra."""
    try:
        import pandas
    except ImportError as exc:
        raise MissingExtraError(
            "this needs pandas, an optional extra: pip install 'telestion-sync[pandas]'"
        ) from exc
    return pandas


def flatten(value: Dict[str, Any], prefix: str = "", out: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Nested dicts as one level with dotted names: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if out is None:
        out = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flatten(v, key + ".", out)
        else:
            out[key] = v
    return out


def message_time_ns(msg: Any) -> Optional[int]:
    """A message's time in ns since the epoch: the receive time of a recorded message, the
    stream's timestamp of a JetStream message, else None."""
    ns = getattr(msg, "time_ns", None)
    if isinstance(ns, int):
        return ns
    when: Optional[datetime] = None
    meta = None
    try:
        meta = getattr(msg, "metadata", None)  # JetStreamMessage
    except Exception:
        meta = None
    if meta is not None:
        when = meta.timestamp
    else:
        t = getattr(msg, "time", None)  # StoredMessage
        if isinstance(t, datetime):
            when = t
    if when is None:
        return None
    return ((when - _EPOCH) // timedelta(microseconds=1)) * 1000


def to_dataframe(messages: Iterable[Any]) -> pandas.DataFrame:
    """One row per message: a UTC ``DatetimeIndex`` named ``time`` (receive or stored time;
    NaT when a message has none), a ``subject`` column, and the decoded data: a dict's fields
    flattened into columns with dotted names (``pos.lat``), any other JSON value in ``value``,
    bytes (and payloads that do not decode) in ``payload``. A field named like a fixed
    column is prefixed with ``data.``. Needs pandas (the ``pandas`` extra)."""
    pd = require_pandas()
    times: List[Optional[int]] = []
    rows: List[Dict[str, Any]] = []
    for m in messages:
        row: Dict[str, Any] = {"subject": m.subject}
        try:
            data = m.data
        except Exception:
            data = m.payload
        if isinstance(data, dict):
            for k, v in flatten(data).items():
                row[f"data.{k}" if k in _RESERVED else k] = v
        elif isinstance(data, (bytes, bytearray, memoryview)):
            row["payload"] = bytes(data)
        else:
            row["value"] = data
        rows.append(row)
        times.append(message_time_ns(m))
    stamps = pd.to_datetime(pd.Series(times, dtype="Int64"), unit="ns", utc=True)
    index = pd.DatetimeIndex(stamps, name="time")
    df = pd.DataFrame(rows, index=index)
    if "subject" not in df.columns:
        df["subject"] = pd.Series(dtype=object)
    return df


class MessageList(List[Any]):
    """A list of messages (``js.history(...)`` returns one) with :meth:`to_dataframe`."""

    def to_dataframe(self) -> pandas.DataFrame:
        """See :func:`to_dataframe`."""
        return to_dataframe(self)


def history_dataframe(
    js: JetStream,
    subject: str,
    start: Union[timedelta, datetime, None] = None,
    end: Union[timedelta, datetime, None] = None,
    **options: Any,
) -> pandas.DataFrame:
    """``js.history(subject, start, end, ...)`` as a DataFrame (index: the stored times)."""
    return to_dataframe(js.history(subject, start, end, **options))
