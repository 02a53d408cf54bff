"""Stopping on SIGINT (Ctrl-C) and SIGTERM without losing work.

While a `StopSignals` block is active, the first signal either only sets `signum` (`defer=True`:
the training loop finishes its step, saves a checkpoint and raises `Interrupted` itself) or
raises `Interrupted` at once (`defer=False`: nothing to save yet). A second signal always raises
at once, so a second Ctrl-C still gets you out of a slow save. The previous handlers come back
when the block ends. Outside the main thread Python cannot install handlers, and the block
does nothing.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal; `checkpoint` is where it can resume from (None: nothing saved).

    A KeyboardInterrupt, so everything that already handles Ctrl-C (an MLflow run ends KILLED,
    Optuna stops the study) handles SIGTERM the same way."""

    def __init__(self, signum: int, checkpoint: Path | None = None, step: int | None = None):
        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        where = f" at step {step}" if step is not None else ""
        saved = f"; checkpoint saved: {checkpoint}" if checkpoint else "; no checkpoint saved"
        super().__init__(f"stopped by {signal.Signals(signum).name}{where}{saved}")

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum)


class StopSignals:
    """Context manager turning SIGINT/SIGTERM into a stop request (see the module docstring)."""

    def __init__(self, defer: bool = True):
        self.defer = defer
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.defer and self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                  f"(send it again to stop at once, without saving)", file=sys.stderr, flush=True)
            return
        self.signum = self.signum or signum
        raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None
