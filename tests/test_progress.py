"""Progress off a terminal: one log line per 10% or per interval, counted by hand with a fake clock."""

from __future__ import annotations

import logging

import pytest

from gradtune._progress import LogProgress, progress


class Clock:
    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gradtune.progress"]


def test_a_line_every_tenth_of_the_total(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="gradtune"):
        bar = LogProgress(range(50), desc="embedding", unit="batch", clock=Clock(0.001))
        assert list(bar) == list(range(50))
    lines = _lines(caplog)
    # 5, 10, ..., 45 of 50 (the 10% steps before the end), then the closing line
    assert len(lines) == 10 and bar.lines == 10
    assert lines[0].startswith("embedding: 5/50 (10%), ") and " batch/s, " in lines[0]
    assert lines[-1].startswith("embedding: done, 50/50 (100%), ")


def test_a_line_every_interval_without_a_total(caplog) -> None:
    clock = Clock(4.0)  # the constructor reads t=4, then each update moves 4 s
    with caplog.at_level(logging.INFO, logger="gradtune"):
        bar = LogProgress(total=None, desc="x", interval=10.0, clock=clock)
        for _ in range(9):
            bar.update(3)
        bar.set_postfix(loss="0.5000")
        bar.close()
        bar.close()  # once
    lines = _lines(caplog)
    # updates at t = 8, 12, ..., 40: lines when >= 10 s passed since the last: t=16, 28, 40; then close
    assert len(lines) == 4
    assert lines[0] == "x: 9, 0.8 it/s, 12 s"  # 9 items in 12 s
    assert lines[-1] == "x: done, 27, 0.7 it/s, 40 s; loss=0.5000"


def test_time_only_and_no_final_line(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="gradtune"):
        bar = LogProgress(total=100, step=None, final=False, interval=10.0, clock=Clock(1.0))
        for _ in range(100):
            bar.update()
        bar.close()
    # start at t=1, update k at t=1+k: lines at k = 10, 20, ..., 90; k=100 ends the count (no final line)
    lines = _lines(caplog)
    assert len(lines) == 9 and lines[0].startswith(": 10/100 (10%), 1.0 it/s, 10 s")


def test_progress_off_a_terminal_logs_and_disabled_is_silent(caplog, monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="gradtune"):
        bar = progress(range(20), desc="on", unit="item")
        assert isinstance(bar, LogProgress)
        assert sum(bar) == sum(range(20))
        off = progress(range(20), desc="off", enabled=False)
        assert sum(off) == sum(range(20))
    lines = _lines(caplog)
    assert lines and all(line.startswith("on: ") for line in lines)


def test_wrapping_nothing_cannot_be_iterated() -> None:
    with pytest.raises(TypeError, match="update"):
        list(LogProgress(total=3))
