"""Notebook helpers: a live plot of a numeric telemetry field that updates in place in its cell.

Needs matplotlib (the ``plot`` or ``notebook`` extra); it draws with matplotlib's Agg canvas
(no pyplot, no GUI backend, safe off the main thread) and updates one IPython display in place.
Outside a notebook it still collects the values; :meth:`LivePlot.figure` draws them.
"""

from __future__ import annotations

import contextvars
import io
import logging
import threading
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Deque, List, Optional, Tuple

from .errors import Error
from .message import Message
from .options import CALL, check_seconds, is_int
from .progress import in_notebook

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .client import MessageBus

log = logging.getLogger("telestion_sync.notebook")


def field_value(data: Any, field: str) -> Any:
    """``data["a"]["b"]`` for ``field="a.b"`` (a top-level key with dots wins); KeyError."""
    if isinstance(data, dict) and field in data:
        return data[field]
    value = data
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(field)
        value = value[part]
    return value


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        from .dataframe import MissingExtraError

        raise MissingExtraError(
            "live plots need matplotlib, an optional extra: pip install 'telestion-sync[plot]'"
        ) from exc
    return matplotlib


class LivePlot:
    """A plot of ``field`` (dotted for nested dicts; None: the whole value) of the messages on
    ``subject``, the last ``window`` points, redrawn at most every ``interval`` seconds in
    the cell that created it. Stop it with :meth:`stop` (or use it as a context manager);
    messages without a numeric ``field`` are counted in ``skipped``."""

    def __init__(
        self,
        bus: MessageBus,
        subject: str,
        field: Optional[str] = None,
        *,
        window: int = 200,
        interval: float = 0.5,
        title: Optional[str] = None,
        display: Optional[bool] = None,
    ) -> None:
        _require_matplotlib()
        if field is not None and (not isinstance(field, str) or not field):
            raise TypeError(f"field must be a field name (str) or None, not {field!r}")
        if not is_int(window) or window < 2:
            raise ValueError(f"window must be a whole number of points >= 2, not {window!r}")
        self.interval = check_seconds("interval", interval, errors=CALL) or 0.5
        self.subject = subject
        self.field = field
        self.title = title or (f"{subject} {field}" if field else subject)
        self.points: Deque[Tuple[datetime, float]] = deque(maxlen=window)
        self.skipped = 0
        self.renders = 0
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._handle: Any = None
        self._thread: Optional[threading.Thread] = None
        if display is None:
            display = in_notebook()
        if display:
            from IPython.display import Image
            from IPython.display import display as show

            self._handle = show(Image(data=self.png(), format="png"), display_id=True)
            self.renders += 1
        self._sub = bus.subscribe(subject, self._on_msg)
        if self._handle is not None:  # drawn in this cell's context: updates stay in this cell
            ctx = contextvars.copy_context()
            self._thread = threading.Thread(
                target=ctx.run, args=(self._run,), name="telestion_sync-live-plot", daemon=True
            )
            self._thread.start()

    def _on_msg(self, msg: Message) -> None:
        try:
            data = msg.data
            value = data if self.field is None else field_value(data, self.field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"not a number: {value!r}")
        except (Error, KeyError, TypeError):
            self.skipped += 1
            return
        with self._lock:
            self.points.append((datetime.now(timezone.utc), float(value)))
        self._dirty.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._dirty.wait(0.1) and not self._stop.is_set():
                self._dirty.clear()
                self._update()
                self._stop.wait(self.interval)

    def _update(self) -> None:
        from IPython.display import Image

        try:
            self._handle.update(Image(data=self.png(), format="png"))
            self.renders += 1
        except Exception:
            log.exception("updating the live plot of %r failed", self.subject)

    @property
    def values(self) -> List[float]:
        """The values in the window, oldest first."""
        with self._lock:
            return [v for _, v in self.points]

    def figure(self) -> Figure:
        """The plot as a matplotlib Figure (Agg canvas)."""
        from matplotlib.figure import Figure

        with self._lock:
            points = list(self.points)
        fig = Figure(figsize=(7, 3), dpi=80)
        ax = fig.add_subplot()
        if points:
            ax.plot([t for t, _ in points], [v for _, v in points], marker=".")  # type: ignore[arg-type]
            fig.autofmt_xdate()
        else:
            ax.text(0.5, 0.5, f"waiting for {self.subject}", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(self.title)
        ax.grid(True, alpha=0.3)
        return fig

    def png(self) -> bytes:
        """The plot as PNG bytes."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = self.figure()
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe, stop redrawing and draw the final state (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._sub.unsubscribe()
        except Error:
            pass
        t = self._thread
        if t is not None:
            t.join(timeout)
        if self._handle is not None:
            self._update()

    def __enter__(self) -> LivePlot:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stop.is_set() else "live"
        return f"<LivePlot {state} {self.subject!r} field={self.field!r} points={len(self.points)}>"

    def _repr_png_(self) -> Optional[bytes]:
        return None if self._handle is not None else self.png()


def live_plot(
    bus: MessageBus,
    subject: str,
    field: Optional[str] = None,
    *,
    window: int = 200,
    interval: float = 0.5,
    title: Optional[str] = None,
) -> LivePlot:
    """Plot ``field`` of the telemetry on ``subject`` live in this notebook cell; returns the
    :class:`LivePlot` (call ``stop()`` when done). Needs matplotlib."""
    return LivePlot(bus, subject, field, window=window, interval=interval, title=title)
