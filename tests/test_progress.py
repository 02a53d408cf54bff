"""s2s.progress: whole lines now and then in a log, tqdm's usual in-place bar on a terminal."""
from __future__ import annotations

import io
import re

import pytest
import tqdm.std as tqdm_std
from tqdm import tqdm

from s2s.progress import LineBar, progress_bar


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(text: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


@pytest.fixture
def clock(monkeypatch):
    """tqdm's clock, advanced by hand: t[0] seconds."""
    t = [1000.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: t[0])
    return t


def _train_like(bar, n: int, clock=None, seconds_per_step: float = 0.0) -> None:
    """What the trainer does each step: postfix, then one step."""
    for i in range(n):
        if clock is not None:
            clock[0] += seconds_per_step
        bar.set_postfix(loss=f"{10 - i / 100:.3f}", refresh=False)
        bar.update(1)
    bar.close()


def test_a_log_gets_few_whole_lines_and_the_final_count():
    out = io.StringIO()
    bar = progress_bar(total=300, desc="train", file=out)
    assert isinstance(bar, LineBar)
    _train_like(bar, 300)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = _lines(text)
    assert len(lines) < 30
    assert "300/300" in lines[-1] and "loss=7.010" in lines[-1]
    assert text.endswith("\n") and "\n\n" not in text


def test_a_slow_run_gets_a_line_per_five_percent(clock):
    out = io.StringIO()
    _train_like(progress_bar(total=300, desc="train", file=out), 300, clock, seconds_per_step=2.0)
    lines = _lines(out.getvalue())
    assert 20 <= len(lines) <= 22  # the first, one per 15 steps (30 s), the final one
    assert sum("300/300" in line for line in lines) == 1
    assert "0/300" in lines[0] and "15/300" in lines[1]


def test_a_fast_run_gets_a_line_per_half_minute_at_most(clock):
    out = io.StringIO()
    _train_like(progress_bar(total=300, desc="train", file=out), 300, clock, seconds_per_step=0.5)
    lines = _lines(out.getvalue())
    assert 6 <= len(lines) <= 8  # 150 s: the first, one per 30 s (60 steps), the final one
    assert "60/300" in lines[1]


def test_a_very_slow_run_still_shows_it_is_alive(clock):
    out = io.StringIO()
    bar = progress_bar(total=10_000, desc="train", file=out)
    _train_like(bar, 20, clock, seconds_per_step=60.0)  # 0.2% of the total in 20 minutes
    lines = _lines(out.getvalue())
    assert 5 <= len(lines) <= 7  # the first, one per 5 minutes, the final one


def test_a_quick_loop_over_an_iterable_prints_first_and_final_state():
    out = io.StringIO()
    assert sum(progress_bar(range(240), desc="loading", unit="utt", file=out)) == sum(range(240))
    lines = _lines(out.getvalue())
    assert len(lines) == 2 and "240/240" in lines[-1]


def test_unknown_total_and_disabled_bars():
    out = io.StringIO()
    for _ in progress_bar(iter(range(50)), desc="x", file=out):
        pass
    assert len(_lines(out.getvalue())) == 2
    out = io.StringIO()
    _train_like(progress_bar(total=300, file=out, disable=True), 300)
    assert out.getvalue() == ""


def test_tqdm_write_and_leave_false_add_no_carriage_returns():
    out = io.StringIO()
    bar = progress_bar(total=10, desc="x", file=out, leave=False)
    tqdm.write("a message", file=out)
    bar.update(10)
    bar.close()
    assert "\r" not in out.getvalue() and "a message" in out.getvalue()


def test_a_terminal_gets_the_usual_in_place_bar():
    out = FakeTTY()
    bar = progress_bar(total=300, desc="train", file=out, mininterval=0)
    assert type(bar) is tqdm
    _train_like(bar, 300)
    text = out.getvalue()
    assert text.count("\r") > 100  # redrawn in place, step after step
    assert "300/300" in text.rsplit("\r", 1)[-1]


def test_lines_follow_the_five_percent_marks_closely(clock):
    out = io.StringIO()
    _train_like(progress_bar(total=300, desc="train", file=out), 300, clock, seconds_per_step=2.5)
    lines = _lines(out.getvalue())
    assert "15/300" in lines[1] and "30/300" in lines[2]  # 37.5 s apart, not 60 (two 30 s checks)
