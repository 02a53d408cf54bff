"""Progress bars that read well wherever the output goes.

On a terminal (or in a Jupyter notebook, which renders '\\r' in place) `progress_bar` is a plain
tqdm bar, redrawn in place. Anywhere else (CI, `> log 2>&1`, a pipe) tqdm would still redraw
with '\\r' ten times a second: a log file holds thousands of bar states in one "line" that
editors and `less` show as a wall of text. There the bar prints whole lines instead: the first
state, one line per `EVERY` of the total but at most one per `MIN_GAP` seconds, one after
`HEARTBEAT` seconds without a line if it moved at all, and the final state. A bar prints at most
about 20 lines plus one per `HEARTBEAT`, however fast or slow the loop:

    train:   0%|          | 0/300 [00:00<?, ?step/s]
    train:  10%|#         | 30/300 [00:31<04:39,  1.04s/step, eval=5.464, loss=5.459]
    ...
    train: 100%|##########| 300/300 [05:12<00:00,  1.04s/step, eval=4.103, loss=4.074]
"""
from __future__ import annotations

import sys
from typing import Iterable

import datasets
import transformers
from tqdm import tqdm

EVERY = 0.05  # a line per 5% of the total...
MIN_GAP = 30.0  # ...but not more often: a loop of a few seconds shows only its first and final state
HEARTBEAT = 300.0  # a loop whose 5% take longer still shows it is alive


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


class LineBar(tqdm):
    """A tqdm bar for logs: every update it shows is a line of its own (no '\\r', no cursor moves).

    Which updates it shows: see the module docstring. Same constructor as tqdm plus `every`,
    `min_gap` and `heartbeat`; `miniters`/`mininterval` are set from them.
    """

    monitor_interval = 0  # tqdm's monitor thread only lowers `miniters`, which this bar keeps at 1

    def __init__(self, *args, every: float = EVERY, min_gap: float = MIN_GAP, heartbeat: float = HEARTBEAT,
                 **kwargs):
        # Set before tqdm's constructor, which already displays the first state.
        self._every, self._min_gap, self._heartbeat = every, min_gap, heartbeat
        self._line_n, self._line_t, self._line_postfix, self._final = None, 0.0, None, False
        self._keep = kwargs.get("leave", True) is not False
        # tqdm offers display() a state at most every `mininterval` seconds (and on every refreshing
        # set_postfix); display() decides whether it is worth a line. Offered only every `min_gap`,
        # a state just short of the next 5% would put two gaps between lines.
        kwargs.update(miniters=1, mininterval=min(1.0, min_gap))
        kwargs.setdefault("ascii", True)  # log viewers and CI consoles do not all render block characters
        super().__init__(*args, **kwargs)

    @staticmethod
    def status_printer(file):
        def print_status(s: str) -> None:
            file.write(s + "\n")
            getattr(file, "flush", lambda: None)()
        return print_status

    def display(self, msg=None, pos=None) -> bool:
        if msg is not None:  # tqdm erasing the bar (leave=False): a log keeps what it printed
            return False
        now = self._time()
        if self._line_n is not None and not self._final:
            if self.total and self.n >= self.total:
                return False  # the final line is close()'s, with the last postfix and the average rate
            dn, dt = self.n - self._line_n, now - self._line_t
            by_progress = bool(self.total) and dn >= self._every * self.total and dt >= self._min_gap
            if not (by_progress or (dn > 0 and dt >= self._heartbeat)):
                return False
        self.sp(self.__str__())
        self._line_n, self._line_t, self._line_postfix = self.n, now, self.postfix
        return True

    def clear(self, nolock=False) -> None:
        pass  # nothing to erase: tqdm.write() and friends just add their lines between the bar's

    def moveto(self, n) -> None:
        pass  # nested bars share the log line by line, not by screen position

    def close(self) -> None:
        if not self.disable and self._keep and self._line_n is not None and (
                self.n != self._line_n or self.postfix != self._line_postfix):
            with self._lock:
                self._ema_dt = lambda: None  # the final line shows the average rate, as tqdm's own does
                self._final = True
                self.display()
        self.leave = False  # the final line is written already; tqdm's close would add an empty one
        super().close()


def progress_bar(iterable: Iterable | None = None, total: float | None = None, desc: str | None = None,
                 unit: str = "it", disable: bool = False, initial: float = 0, file=None, **kwargs) -> tqdm:
    """A tqdm progress bar over `iterable` (or updated by hand up to `total`) that suits its output.

    When `file` (default: stderr) is a terminal, or in a notebook, it is tqdm's usual bar redrawn
    in place; otherwise a `LineBar`, which prints whole lines only now and then (see the module
    docstring), so a log of a long run stays short and readable. Other keyword arguments go to tqdm.
    """
    stream = sys.stderr if file is None else file
    cls = tqdm if _is_terminal(stream) or (file is None and _in_notebook()) else LineBar
    return cls(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial, file=file, **kwargs)


def quiet_library_bars(stream=None) -> None:
    """When `stream` (stderr) is not a terminal, turn off the bars that transformers ("Loading
    weights") and datasets ("Saving the dataset") draw with '\\r' on their own: a log keeps ours only.
    The command lines call this once at start."""
    if _is_terminal(stream if stream is not None else sys.stderr) or _in_notebook():
        return
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
