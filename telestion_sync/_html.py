"""Small HTML tables for Jupyter's rich display (``_repr_html_``) of messages, subscriptions and
JetStream results. Plain escaped HTML, no styles a notebook theme would fight with."""

from __future__ import annotations

import dataclasses
import html
import json
from datetime import datetime
from typing import Any, Iterable, Optional, Tuple

_MAX = 300  # characters of a value shown


def _short(value: Any) -> str:
    if isinstance(value, datetime):
        text = value.isoformat()
    elif isinstance(value, (bytes, bytearray)):
        text = repr(bytes(value[:120])) + ("..." if len(value) > 120 else "")
    elif isinstance(value, (dict, list)):
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):
            text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= _MAX else text[:_MAX] + "..."


def table(title: str, rows: Iterable[Tuple[str, Any]]) -> str:
    """A two-column table under a bold title."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'><code>{html.escape(_short(v))}</code></td></tr>"
        for k, v in rows
    )
    return f"<b>{html.escape(title)}</b><table>{body}</table>"


def message_html(msg: Any, title: str = "Message") -> str:
    """Subject, reply, headers and the decoded data (or the payload) of a message."""
    rows = [("subject", msg.subject)]
    if getattr(msg, "reply", None):
        rows.append(("reply", msg.reply))
    for k, v in (msg.headers or {}).items():
        rows.append((f"header {k}", v))
    try:
        rows.append(("data", msg.data))
    except Exception:
        rows.append(("payload", msg.payload))
    rows.append(("size", f"{len(msg.payload)} bytes"))
    return table(title, rows)


def subscription_html(sub: Any) -> str:
    """A subscription's subject, kind and counters."""
    rows = [
        ("subject", sub.subject),
        ("queue", sub.queue or "-"),
        ("kind", "callback" if sub._callback is not None else "pull"),
        ("state", "active" if sub.is_valid else "closed"),
        ("pending", sub.pending),
        ("delivered", sub.delivered),
        ("dropped", sub.dropped),
    ]
    return table(f"Subscription {sub.sid}", rows)


def dataclass_html(obj: Any, title: Optional[str] = None, depth: int = 0) -> str:
    """The fields of a dataclass that are set; nested ones one level down, dotted."""
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or value == {} or value == [] or f.name == "extra":
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and depth == 0:
            for g in dataclasses.fields(value):
                inner = getattr(value, g.name)
                if inner is not None and inner != {} and inner != [] and g.name != "extra":
                    rows.append((f"{f.name}.{g.name}", inner))
        else:
            rows.append((f.name, value))
    return table(title or type(obj).__name__, rows)
