"""Progress of long loops (training, evaluation): a tqdm bar on a terminal, plain lines in logs.

``mode``: ``"bar"`` (tqdm on stderr), ``"log"`` (one plain line on stderr every
``every_s`` seconds, after the first unit and when asked: DVC, Ray and CI capture stderr
into files where a bar is noise), ``"off"``, or ``"auto"``: the bar when stderr is a
terminal, else the lines. The values shown (``loss``, ``beta_eff`` ...) are the ones the
caller hands over with :meth:`Progress.set_values`; this module never reads a tensor.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

PROGRESS_MODES = ("auto", "bar", "log", "off")


def resolve_mode(mode: bool | str | None, stream: IO[str] | None = None) -> str:
    """``True``/``None`` -> ``"auto"``, ``False`` -> ``"off"``; ``"auto"`` -> ``"bar"`` on a terminal,
    else ``"log"``."""
    if mode is None or mode is True:
        mode = "auto"
    elif mode is False:
        mode = "off"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of {PROGRESS_MODES} (or true/false), got {mode!r}")
    if mode == "auto":
        stream = stream if stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "log"
    return mode


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress over ``total`` units (``None``: unknown), starting at ``initial``.

    :meth:`advance` counts units (host only), :meth:`set_values` sets the shown values,
    :meth:`line` prints a plain line now (``log`` mode) and :meth:`close` ends the bar.
    """

    def __init__(
        self,
        mode: bool | str | None,
        desc: str,
        total: int | None,
        *,
        initial: int = 0,
        unit: str = "step",
        every_s: float = 20.0,
        stream: IO[str] | None = None,
        leave: bool = True,
        lines_on_advance: bool = True,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, float(every_s)
        self.n = self._n0 = int(initial)
        self.values: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._last_line: float | None = None
        self._last_line_n: int | None = None
        self._bar = None
        self._lines_on_advance = lines_on_advance
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                desc=desc, total=total, initial=initial, unit=unit, leave=leave, file=self.stream, dynamic_ncols=True
            )

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units; in ``log`` mode print a line when one is due (unless the
        caller prints them itself with :meth:`maybe_line`, after setting fresh values)."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines_on_advance:
            self.maybe_line()

    def maybe_line(self) -> None:
        """``log`` mode: print a line if none was printed yet or the last is ``every_s`` old."""
        if self.mode == "log" and (self._last_line is None or time.monotonic() - self._last_line >= self.every_s):
            self.line()

    def set_values(self, **values: Any) -> None:
        """Values to show (formatted with 4 significant digits); the bar's postfix, the line's fields."""
        self.values.update(values)
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt(v) for k, v in self.values.items()}, refresh=False)

    def rate(self) -> float | None:
        """Units per second since this object was made (``None`` before the first unit)."""
        elapsed = time.monotonic() - self._t0
        done = self.n - self._n0
        return done / elapsed if done > 0 and elapsed > 0 else None

    def format_line(self, note: str = "") -> str:
        parts = [f"{self.desc}: {self.unit} {self.n}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        parts += [f"{k} {_fmt(v)}" for k, v in self.values.items()]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total:
                parts.append(f"ETA {_clock(max(self.total - self.n, 0) / rate)}")
        if note:
            parts.append(note)
        return ", ".join(parts)

    def line(self, note: str = "") -> None:
        """Print a plain progress line now (``log`` mode; the bar shows ``note`` above itself)."""
        if self.mode == "log":
            print(self.format_line(note), file=self.stream, flush=True)
            self._last_line, self._last_line_n = time.monotonic(), self.n
        elif self._bar is not None and note:
            self._bar.write(f"{self.desc}: {note}", file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def track(
    iterable: Iterable,
    mode: bool | str | None,
    desc: str,
    total: int | None = None,
    *,
    unit: str = "batch",
    every_s: float = 20.0,
) -> Iterator:
    """Iterate ``iterable`` with a :class:`Progress` (a final line at the end in ``log`` mode)."""
    if resolve_mode(mode) == "off":
        yield from iterable
        return
    prog = Progress(mode, desc, total, unit=unit, every_s=every_s, leave=False)
    try:
        for item in iterable:
            yield item
            prog.advance()
        if prog._last_line_n != prog.n:  # the end, unless the last line already showed it
            prog.line()
    finally:
        prog.close()
