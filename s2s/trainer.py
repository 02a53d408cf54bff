"""The trainer: any strategy, the same loop.

One optimizer step = `grad_accum` micro-batches of `batch_size` samples (per rank). The loss of
the step is the sum of token losses over ALL its micro-batches divided by the number of target
tokens of the whole step (across ranks), so N micro-batches give the same gradient as one
batch of the same samples (REFERENCE section 6) whatever the sequence lengths.

State that a resume needs is explicit in `TrainState` and `state_dict()`: weights, optimizer,
scheduler, RNG, the data position, the eval history and the fault counters; `load_state_dict`
restores all of it, and a resumed `fit` continues bit for bit where the checkpoint left off.

Faults: a step whose loss or gradient norm is NaN or infinite is skipped: its gradients are
dropped, the optimizer and the scheduler do not move and the step counter does not advance, but
the data position does (that batch is passed over, so a bad sample cannot stall the run, and
the run still makes exactly `total_steps` updates on the schedule it planned). Skips are counted
(`train/skipped_steps`); `max_bad_steps` in a row stop the run with `NonFiniteError`.
SIGINT/SIGTERM during `fit` finish the current step, save a checkpoint and raise
`s2s.stop.Interrupted`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from s2s.backbones import autocast
from s2s.batching import Plan, group_by_length
from s2s.checkpoint import prune_checkpoints, save_checkpoint
from s2s.errors import UserError
from s2s.metrics import evaluate, token_loss_sums
from s2s.progress import progress_bar
from s2s.stop import Interrupted, StopSignals

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    lr: float = field(default=5e-5, metadata={"range": (0.0, 1.0)})
    epochs: float = field(default=3.0, metadata={"range": (0.0, None)})
    max_steps: int | None = field(default=None, metadata={"range": (1, None)})  # overrides epochs
    batch_size: int = field(default=2, metadata={"range": (1, None)})
    grad_accum: int = field(default=16, metadata={"range": (1, None)})
    warmup_ratio: float = field(default=0.05, metadata={"range": (0.0, 1.0)})
    schedule: str = field(default="linear", metadata={"choices": ("linear", "cosine", "constant")})
    weight_decay: float = field(default=0.0, metadata={"range": (0.0, None)})
    label_smoothing: float = field(default=0.1, metadata={"range": (0.0, 1.0)})
    max_grad_norm: float = field(default=1.0, metadata={"range": (0.0, None)})  # 0 = no clipping
    # Micro-batches of samples of similar length (less padding): each epoch's shuffled order is cut
    # into windows of `group_window` micro-batches, sorted by length inside a window, and the
    # window's micro-batches shuffled. The loss normalization is unchanged (tokens of the step).
    group_by_length: bool = False
    group_window: int = field(default=50, metadata={"range": (1, None)})
    eval_every: int = field(default=200, metadata={"range": (1, None)})
    eval_batch_size: int = field(default=8, metadata={"range": (1, None)})
    checkpoint_every: int = field(default=0, metadata={"range": (0, None)})  # 0 = at the end only
    keep_checkpoints: int = field(default=3, metadata={"range": (0, None)})  # newest step-* kept; 0 = all
    max_bad_steps: int = field(default=5, metadata={"range": (1, None)})  # non-finite steps in a row before stopping
    seed: int = 0
    out_dir: str = "outputs"
    progress: bool = True


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    cursor: int = 0  # position inside this epoch's sample order


class NonFiniteError(UserError):
    """Too many steps in a row with a NaN/infinite loss or gradient: training cannot go on."""


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup over `warmup` steps, then linear/cosine decay to 0 at `total` (or constant)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


class Trainer:
    """Trains `model` (a Strategy: forward(batch) -> TargetLogits, count_targets, trainable_state_dict).

    `collate(list_of_items) -> batch`; `log(metrics, step)` receives every metric (tracking is
    the caller's business); `meta()` returns the metadata written into every checkpoint;
    `on_eval(step, eval_metrics)` is called after every evaluation (once logged): an exception it
    raises (e.g. optuna.TrialPruned) stops training and propagates out of `fit`.
    """

    def __init__(self, cfg: TrainConfig, model, train_items: Sequence, eval_items: list, collate: Callable,
                 log: Callable[[dict, int], None] = lambda m, s: None, meta: Callable[[], dict] = dict,
                 on_eval: Callable[[int, dict], None] = lambda s, m: None, num_workers: int = 0):
        self.cfg, self.model, self.collate, self.log, self.meta = cfg, model, collate, log, meta
        self.on_eval = on_eval
        self.train_items, self.eval_items = train_items, eval_items
        self.num_workers = num_workers
        # Target tokens per item, what micro-batches pad: from the items' own `lengths()` (a PreparedSplit)
        # or their token lists.
        self.lengths = (np.asarray(train_items.lengths()) if hasattr(train_items, "lengths") else
                        np.array([len(getattr(it, "speech_tokens", ())) for it in train_items]))
        if cfg.group_by_length and not self.lengths.any():
            raise UserError("train.group_by_length=true needs items with target tokens (speech_tokens) to group by")
        self._orders: dict[int, torch.Tensor] = {}
        self._batches = None  # the DataLoader iterator, from the current data position
        self.rank, self.world = _rank_world()
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Several processes: gradients are averaged by DDP over the trainable parameters (the frozen
        # core is no submodule of the strategy, so it is never wrapped); `forward` goes through it.
        self.forward = model if self.world == 1 else DistributedDataParallel(
            model, device_ids=[self.params[0].device] if self.params[0].device.type == "cuda" else None)
        groups = model.param_groups(cfg.lr) if hasattr(model, "param_groups") else [{"params": self.params}]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_step = cfg.batch_size * cfg.grad_accum * self.world
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_items) / per_step))
        warmup = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda(cfg.schedule, warmup, self.total_steps))
        self.state = TrainState()
        self.history: list[tuple[int, dict]] = []  # (step, eval metrics) of every evaluation
        self.skipped = self.bad_streak = 0  # non-finite steps: in total, and in a row now
        self.wall_before = 0.0  # seconds trained by earlier processes of this run (resume)
        self._started: float | None = None
        self._saved_state: TrainState | None = None  # the position of the last step-* save
        self.device = next(iter(self.params)).device
        torch.manual_seed(cfg.seed)

    # --- data order ------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The sample order of `epoch`: a seeded permutation, length-grouped with `group_by_length`."""
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.train_items), generator=g)
            if self.cfg.group_by_length:
                order = group_by_length(order, self.lengths, self.cfg.batch_size, self.cfg.group_window, g)
            self._orders = {epoch: order, **{e: o for e, o in self._orders.items() if e == epoch - 1}}
        return self._orders[epoch]

    def _plan_step(self, state: TrainState) -> tuple[list[list[int]], TrainState]:
        """(this rank's `grad_accum` micro-batches of item indices, the data position after them)."""
        need = self.cfg.batch_size * self.cfg.grad_accum * self.world
        state, picked = TrainState(**asdict(state)), []
        while len(picked) < need:
            order = self._epoch_order(state.epoch)
            take = order[state.cursor: state.cursor + need - len(picked)].tolist()
            picked += take
            state.cursor += len(take)
            if state.cursor >= len(order):
                state.epoch, state.cursor = state.epoch + 1, 0
        bs = self.cfg.batch_size
        return [picked[(j * self.world + self.rank) * bs:(j * self.world + self.rank + 1) * bs]
                for j in range(self.cfg.grad_accum)], state

    def _planned(self, state: TrainState):
        """Every micro-batch from `state` on, for the DataLoader (which reads ahead of the trainer)."""
        while True:
            micro, state = self._plan_step(state)
            yield from micro

    def padded_fraction(self, micro: list[list[int]]) -> float:
        """Share of the target-token slots of these micro-batches that are padding."""
        real = sum(int(self.lengths[idx].sum()) for idx in micro)
        slots = sum(int(self.lengths[idx].max()) * len(idx) for idx in micro)
        return 1.0 - real / slots if slots else 0.0

    def _next_micro_batches(self) -> list:
        """The `grad_accum` micro-batches of this rank for the next step; advances the data position.

        Items are read by a DataLoader (`num_workers` processes decode audio ahead of the step) over
        the planned index lists, from the current position: the order is the plan's, whatever the
        workers, so a resumed run reads exactly what the uninterrupted one would."""
        micro, after = self._plan_step(self.state)
        if self._batches is None:
            loader = DataLoader(self.train_items, batch_sampler=Plan(self._planned(TrainState(**asdict(self.state)))),
                                collate_fn=list, num_workers=self.num_workers,
                                prefetch_factor=2 if self.num_workers else None,
                                # Its own generator: drawing the workers' base seed must not move the global
                                # RNG (dropout's), or a resumed run would draw differently from the original.
                                generator=torch.Generator().manual_seed(self.cfg.seed))
            self._batches = iter(loader)
        self.state.epoch, self.state.cursor = after.epoch, after.cursor
        self.last_padded_fraction = self.padded_fraction(micro)
        return [self.collate(next(self._batches)) for _ in micro]

    # --- one step ----------------------------------------------------------------------------
    def accumulate_gradients(self, micro_batches: list) -> dict[str, float]:
        """Backward over all micro-batches of one step, each token weighted 1 / (tokens of the step)."""
        n_tokens = torch.tensor(float(sum(self.model.count_targets(b) for b in micro_batches)), device=self.device)
        if self.world > 1:
            dist.all_reduce(n_tokens)
        # Sums stay on the device: one host sync per step, not two per micro-batch.
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro_batches):
            # DDP all-reduces once per step, with the last micro-batch's backward, and AVERAGES over
            # ranks: scaled by the world size, each token still weighs 1 / (tokens of the step).
            last = i == len(micro_batches) - 1
            with (contextlib.nullcontext() if self.world == 1 or last else self.forward.no_sync()):
                with autocast(self.device):
                    out = self.forward(batch)
                loss, nll = token_loss_sums(out, self.cfg.label_smoothing)
                (loss * self.world / n_tokens).backward()
            sums += torch.stack([loss.detach(), nll.detach()]).double()
        if self.world > 1:
            dist.all_reduce(sums)  # the step's loss over every rank's tokens, for the log
        loss_sum, nll_sum, n = torch.cat([sums, n_tokens.double().view(1)]).tolist()
        return {"train/loss": loss_sum / n, "train/nll": nll_sum / n, "train/tokens": n}

    def _finite_norm(self, loss: float, norm: torch.Tensor) -> tuple[bool, float]:
        """(loss and gradient norm finite on every rank, the norm as a float) in one host sync."""
        ok = (torch.isfinite(norm) & math.isfinite(loss)).float()
        if self.world > 1:  # every rank skips, or none: the replicas must stay identical
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        ok, norm = torch.stack([ok, norm.float()]).tolist()
        return ok == 1.0, norm

    def train_step(self, micro_batches: list) -> dict[str, float]:
        """One optimizer step over `micro_batches`; returns train metrics of the step.

        A non-finite loss or gradient norm skips the update (see the module docstring): the step
        counter stays, `train/skipped_steps` counts it; `max_bad_steps` in a row raise NonFiniteError.
        """
        metrics = self.accumulate_gradients(micro_batches)
        finite, norm = self._finite_norm(metrics["train/loss"], torch.nn.utils.clip_grad_norm_(
            self.params, self.cfg.max_grad_norm or float("inf")))
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.bad_streak += 1
            what = f"loss {metrics['train/loss']}, grad norm {norm}"
            if self.bad_streak >= self.cfg.max_bad_steps:
                raise NonFiniteError(
                    f"{self.bad_streak} steps in a row had a non-finite loss or gradient (last at step "
                    f"{self.state.step + 1}: {what}; {self.skipped} skipped in total). Training stopped: lower "
                    f"train.lr, raise train.label_smoothing or check the data; train.max_bad_steps="
                    f"{self.cfg.max_bad_steps} sets how many in a row are tolerated")
            log.warning("step %d: %s; batch skipped (%d in a row, train.max_bad_steps=%d)", self.state.step + 1,
                        what, self.bad_streak, self.cfg.max_bad_steps)
            return {**metrics, "train/grad_norm": norm, "train/skipped_steps": self.skipped}
        self.bad_streak = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return {**metrics, "train/grad_norm": norm, "train/lr": self.scheduler.get_last_lr()[0],
                "train/skipped_steps": self.skipped}

    def evaluate(self) -> dict[str, float]:
        with autocast(self.device):
            return evaluate(self.model, self.eval_items, self.collate, self.cfg.eval_batch_size)

    # --- checkpoints -------------------------------------------------------------------------
    def wall_seconds(self) -> float:
        return self.wall_before + (time.time() - self._started if self._started is not None else 0.0)

    def state_dict(self) -> dict:
        """Everything besides the weights that continuing this run needs (plain data and tensors only)."""
        return {"train_state": asdict(self.state), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "eval_history": [[step, dict(m)] for step, m in self.history],
                "faults": {"skipped": self.skipped, "bad_streak": self.bad_streak},
                "wall_seconds": self.wall_seconds()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved; ValueError naming the part that does not fit."""
        part = "train_state"
        try:
            self.state = TrainState(**state["train_state"])
            if self.state.step > self.total_steps:
                raise ValueError(f"it is at step {self.state.step}, past this run's {self.total_steps} steps")
            part = "optimizer"
            self.optimizer.load_state_dict(state["optimizer"])
            part = "scheduler"
            self.scheduler.load_state_dict(state["scheduler"])
            part = "eval_history"
            self.history = [(int(step), dict(m)) for step, m in state.get("eval_history", [])]
            part = "faults"
            faults = state.get("faults", {})
            self.skipped, self.bad_streak = int(faults.get("skipped", 0)), int(faults.get("bad_streak", 0))
            self.wall_before = float(state.get("wall_seconds", 0.0))
            self._saved_state = TrainState(**asdict(self.state))  # a stop right here need not rewrite it
            part = "torch_rng"  # last: nothing after this may draw random numbers before training goes on
            torch.set_rng_state(state["torch_rng"])
            if torch.cuda.is_available() and len(state.get("cuda_rng") or []) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ValueError(f"trainer state '{part}' does not fit this run "
                             f"({type(e).__name__}: {str(e)[:200]})") from None
        self._batches = None  # the loader starts again from the restored position

    def save(self, name: str | None = None) -> Path | None:
        """Write a checkpoint (`step-XXXXXXX` unless named) into out_dir; older step-* beyond
        `keep_checkpoints` are deleted once the new one is complete."""
        if self.rank != 0:
            return None
        directory = Path(self.cfg.out_dir) / (name or f"step-{self.state.step:07d}")
        meta = {**self.meta(), "step": self.state.step, "total_steps": self.total_steps}
        path = save_checkpoint(directory, self.model.trainable_state_dict(), meta, self.state_dict())
        if name is None:
            self._saved_state = TrainState(**asdict(self.state))
            prune_checkpoints(self.cfg.out_dir, self.cfg.keep_checkpoints)
        return path

    # --- the loop ----------------------------------------------------------------------------
    def _evaluate_and_log(self, step: int, metrics: dict | None = None) -> dict:
        if self.rank != 0:  # rank 0 evaluates and logs for the run; the others go on to the next step
            self.history.append((step, {}))
            return {}
        ev = self.evaluate()
        self.history.append((step, ev))
        self.log({**(metrics or {}), **ev}, step)
        self.on_eval(step, ev)
        return ev

    def _stop(self, signum: int) -> Interrupted:
        """Save where training stands (unless the last step-* save is exactly here) -> the exception to raise."""
        here = self._saved_state == self.state
        path = Path(self.cfg.out_dir) / f"step-{self.state.step:07d}" if here else self.save()
        return Interrupted(signum, path, self.state.step)

    def fit(self) -> dict:
        """Train to `total_steps`, evaluating at step 0, every `eval_every` and at the end.

        After `load_state_dict` it continues the restored run: the step-0 evaluation is not
        repeated (its result is in the restored history, and the RNG state is the one saved after
        it), so a resumed run draws exactly the random numbers the uninterrupted one would.
        """
        cfg = self.cfg
        self.model.train()
        self._started = time.time()
        with StopSignals() as stop:
            if not self.history:
                self._evaluate_and_log(self.state.step)
            last_eval = self.history[-1][1]
            bar = progress_bar(total=self.total_steps, initial=self.state.step, desc="train", unit="step",
                               disable=not cfg.progress)
            while self.state.step < self.total_steps and not stop.requested:
                before = self.state.step
                metrics = self.train_step(self._next_micro_batches())
                metrics["train/epoch"] = self.state.epoch + self.state.cursor / max(1, len(self.train_items))
                metrics["train/padded_fraction"] = self.last_padded_fraction
                if self.state.step == before:  # skipped (non-finite): logged at the step it was meant to be
                    self.log(metrics, before + 1)
                    continue
                step = self.state.step
                if step % cfg.eval_every == 0 or step == self.total_steps:
                    last_eval = self._evaluate_and_log(step, metrics)
                else:
                    self.log(metrics, step)
                # Postfix first: a log shows only some updates, and those should carry this step's loss.
                bar.set_postfix(loss=f"{metrics['train/nll']:.3f}", eval=f"{last_eval.get('eval/loss', math.nan):.3f}",
                                refresh=False)
                bar.update(1)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.total_steps:
                    self.save()
            bar.close()
            self._batches = None  # ends the loader's workers
            if self.state.step < self.total_steps:  # stopped by a signal
                raise self._stop(stop.signum)
            checkpoint = self.save("final")
        return {"eval_history": list(self.history), "final_eval": last_eval, "checkpoint": checkpoint,
                "wall_seconds": self.wall_seconds(), "steps": self.state.step}
