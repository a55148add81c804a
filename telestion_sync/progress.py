"""A small progress bar for long work (replay, record, big object transfers), terminal and
notebook aware: an HTML bar updated in place under the running cell inside Jupyter, a one-line
``\\r`` bar on a terminal, nothing otherwise. Thread-safe; redraws at most every
``min_interval`` seconds, so updating per message costs next to nothing.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from typing import Any, Optional, TextIO


def in_notebook() -> bool:
    """True inside a Jupyter (ipykernel) kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _size(n: float, unit: str) -> str:
    if unit == "B":
        for name in ("B", "KiB", "MiB", "GiB"):
            if abs(n) < 1024 or name == "GiB":
                return f"{n:,.0f} {name}" if name == "B" else f"{n:,.1f} {name}"
            n /= 1024
    return f"{n:,.0f} {unit}"


class Progress:
    """``with Progress(total, desc="replay", unit="msgs") as p: p.update(1)``.

    ``total`` None draws a counter without a bar. ``enabled``: None picks by the place (a
    notebook, or a terminal on ``stream``), False draws nothing, True draws in a notebook or on
    ``stream`` even when it is not a terminal.
    """

    def __init__(
        self,
        total: Optional[float] = None,
        *,
        desc: str = "",
        unit: str = "msgs",
        enabled: Optional[bool] = None,
        stream: Optional[TextIO] = None,
        min_interval: float = 0.2,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done: float = 0
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._closed = False
        self._handle: Any = None
        self.mode = "off"
        if enabled is not False:
            if in_notebook():
                self.mode = "notebook"
            elif enabled or getattr(self.stream, "isatty", lambda: False)():
                self.mode = "terminal"
        if self.mode == "notebook":
            from IPython.display import HTML, display

            self._handle = display(HTML(self._html()), display_id=True)

    # --- drawing -----------------------------------------------------------------------------

    def text(self) -> str:
        """The state as one line: ``replay 120/500 msgs 24% 1,000 msgs/s``."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [self.desc] if self.desc else []
        if self.total:
            parts.append(f"{_size(self.done, self.unit)} of {_size(self.total, self.unit)}")
            parts.append(f"{100 * self.done / self.total:3.0f}%")
        else:
            parts.append(_size(self.done, self.unit))
        parts.append(f"{_size(rate, self.unit)}/s")
        return " ".join(parts)

    def _html(self) -> str:
        bar = ""
        if self.total:
            bar = f'<progress value="{self.done}" max="{self.total}" style="width:40ex"></progress> '
        return f"<div>{bar}<code>{html.escape(self.text())}</code></div>"

    def _bar(self) -> str:
        if not self.total:
            return self.text()
        width = 30
        filled = min(width, int(width * self.done / self.total))
        return f"[{'#' * filled}{'.' * (width - filled)}] {self.text()}"

    def _draw(self, final: bool = False) -> None:
        if self.mode == "notebook" and self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(self._html()))
        elif self.mode == "terminal":
            self.stream.write("\r" + self._bar() + ("\n" if final else ""))
            self.stream.flush()

    # --- updating ----------------------------------------------------------------------------

    def update(self, n: float = 1) -> None:
        """Add ``n`` to what is done; redraw when ``min_interval`` passed."""
        self.set(self.done + n)

    def set(self, done: float, total: Optional[float] = None) -> None:
        """Set what is done (and the total, when it became known)."""
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            if self.mode == "off" or self._closed:
                return
            now = time.monotonic()
            if now - self._last_draw < self.min_interval:
                return
            self._last_draw = now
            self._draw()

    def close(self) -> None:
        """Draw the final state (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.mode != "off":
                self._draw(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
