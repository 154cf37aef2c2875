"""Progress that shows on a terminal and in a log file alike.

:func:`progress` returns a tqdm bar when stderr is a terminal, and otherwise a
:class:`LogProgress`, which writes one line to the ``gradtune.progress`` logger every
``interval`` seconds or every ``step`` of the total (whichever comes first), then a
last line when it closes: the count, the total, the rate and the elapsed time. Both
support ``update(n)``, ``set_postfix(**values)``, iteration over a wrapped iterable and
use as a context manager.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["LogProgress", "progress"]

logger = logging.getLogger("gradtune.progress")


class LogProgress:
    """Periodic one-line progress reports on a logger (for a stderr that is no terminal).

    Parameters
    ----------
    iterable : iterable, optional
        Items to pass through, one ``update(1)`` each.
    total : int, optional
        The expected count (default ``len(iterable)`` when it has one); without it only
        the time interval triggers a line.
    desc : str
        What is counted, the start of every line.
    unit : str
        The name of one item, for the rate.
    interval : float, default=10.0
        Seconds between two lines at most (when the count moves).
    step : float or None, default=0.1
        Fraction of ``total`` between two lines at most; None: only the time interval.
    clock : callable () -> float, default=time.monotonic
        The time source (seconds).
    log : logging.Logger, optional
        Where the lines go (default the ``gradtune.progress`` logger).
    final : bool, default=True
        Log a last line when closing (off where the caller logs its own summary).
    silent : bool, default=False
        Count only, log nothing (progress turned off).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", interval: float = 10.0, step: float | None = 0.1,
                 clock: Callable[[], float] = time.monotonic, log: logging.Logger | None = None,
                 final: bool = True, silent: bool = False) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval, self.step, self.clock, self.final = float(interval), step, clock, final
        self.log = log or logger
        self.silent = silent
        self.n = 0
        self.lines = 0
        self.postfix = ""
        self._start = self._last_time = clock()
        self._last_n = 0
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LogProgress wraps no iterable; call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line, e.g. ``loss=0.41``."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; log a line if ``interval`` seconds or ``step`` of the total passed."""
        self.n += int(n)
        now = self.clock()
        due = now - self._last_time >= self.interval
        if self.total and self.step is not None:
            due = due or (self.n - self._last_n) >= self.step * self.total
        if due and self.n < (self.total or float("inf")):
            self._emit(now, done=False)

    def close(self) -> None:
        """Log the last line (once), if anything was counted."""
        if self._closed:
            return
        self._closed = True
        if self.n and self.final:
            self._emit(self.clock(), done=True)

    def _emit(self, now: float, done: bool) -> None:
        self._last_time, self._last_n = now, self.n
        if self.silent:
            return
        elapsed = max(now - self._start, 1e-9)
        count = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else str(self.n)
        tail = f"; {self.postfix}" if self.postfix else ""
        self.log.info("%s: %s%s, %.1f %s/s, %.0f s%s", self.desc, "done, " if done else "", count,
                      self.n / elapsed, self.unit, elapsed, tail)
        self.lines += 1


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, interval: float = 10.0, step: float | None = 0.1, final: bool = True) -> Any:
    """A tqdm bar on a terminal, a :class:`LogProgress` off one, or a silent counter when not ``enabled``.

    ``interval``, ``step`` and ``final`` are those of :class:`LogProgress`.

    Returns
    -------
    object
        Supports ``update``, ``set_postfix``, iteration (when ``iterable`` is given) and ``with``.
    """
    if enabled and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
        else:
            return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    if enabled:
        return LogProgress(iterable, total=total, desc=desc, unit=unit, interval=interval, step=step, final=final)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, silent=True)
