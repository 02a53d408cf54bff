"""The trainer: any strategy, the same loop.

One optimizer step = `grad_accum` micro-batches of `batch_size` samples (per rank). The loss of
the step is the sum of token losses over ALL its micro-batches divided by the number of target
tokens of the whole step (across ranks), so N micro-batches give the same gradient as one
batch of the same samples (REFERENCE section 6) whatever the sequence lengths.

State that a resume needs is explicit in `TrainState` and `state_dict()`: weights, optimizer,
scheduler, RNG and the data position.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from s2s.checkpoint import save_checkpoint
from s2s.metrics import evaluate, token_loss_sums


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
    eval_every: int = field(default=200, metadata={"range": (1, None)})
    eval_batch_size: int = field(default=8, metadata={"range": (1, None)})
    checkpoint_every: int = field(default=0, metadata={"range": (0, None)})  # 0 = at the end only
    seed: int = 0
    out_dir: str = "outputs"
    progress: bool = True


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    cursor: int = 0  # position inside this epoch's sample order


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

    def __init__(self, cfg: TrainConfig, model, train_items: list, eval_items: list, collate: Callable,
                 log: Callable[[dict, int], None] = lambda m, s: None, meta: Callable[[], dict] = dict,
                 on_eval: Callable[[int, dict], None] = lambda s, m: None):
        self.cfg, self.model, self.collate, self.log, self.meta = cfg, model, collate, log, meta
        self.on_eval = on_eval
        self.train_items, self.eval_items = train_items, eval_items
        self.rank, self.world = _rank_world()
        self.params = [p for p in model.parameters() if p.requires_grad]
        groups = model.param_groups(cfg.lr) if hasattr(model, "param_groups") else [{"params": self.params}]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_step = cfg.batch_size * cfg.grad_accum * self.world
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_items) / per_step))
        warmup = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda(cfg.schedule, warmup, self.total_steps))
        self.state = TrainState()
        self.device = next(iter(self.params)).device
        torch.manual_seed(cfg.seed)

    # --- data order ------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.train_items), generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch))

    def _next_micro_batches(self) -> list:
        """The `grad_accum` micro-batches of this rank for the next step; advances the data position."""
        need = self.cfg.batch_size * self.cfg.grad_accum * self.world
        picked = []
        while len(picked) < need:
            order = self._epoch_order(self.state.epoch)
            take = order[self.state.cursor: self.state.cursor + need - len(picked)].tolist()
            picked += take
            self.state.cursor += len(take)
            if self.state.cursor >= len(order):
                self.state.epoch, self.state.cursor = self.state.epoch + 1, 0
        bs = self.cfg.batch_size
        mine = [picked[(j * self.world + self.rank) * bs:(j * self.world + self.rank + 1) * bs]
                for j in range(self.cfg.grad_accum)]
        return [self.collate([self.train_items[i] for i in idx]) for idx in mine]

    # --- one step ----------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def accumulate_gradients(self, micro_batches: list) -> dict[str, float]:
        """Backward over all micro-batches of one step, each token weighted 1 / (tokens of the step)."""
        n_tokens = torch.tensor(float(sum(self.model.count_targets(b) for b in micro_batches)), device=self.device)
        if self.world > 1:
            dist.all_reduce(n_tokens)
        loss_sum = nll_sum = 0.0
        for batch in micro_batches:
            with self._autocast():
                out = self.model(batch)
            loss, nll = token_loss_sums(out, self.cfg.label_smoothing)
            (loss / n_tokens).backward()
            loss_sum += loss.item()
            nll_sum += nll.item()
        n = n_tokens.item()
        return {"train/loss": loss_sum / n, "train/nll": nll_sum / n, "train/tokens": n}

    def train_step(self, micro_batches: list) -> dict[str, float]:
        """One optimizer step over `micro_batches`; returns train metrics of the step."""
        metrics = self.accumulate_gradients(micro_batches)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return {**metrics, "train/grad_norm": float(norm), "train/lr": self.scheduler.get_last_lr()[0]}

    def evaluate(self) -> dict[str, float]:
        with self._autocast():
            return evaluate(self.model, self.eval_items, self.collate, self.cfg.eval_batch_size)

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"train_state": asdict(self.state), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def save(self, name: str | None = None) -> Path | None:
        if self.rank != 0:
            return None
        directory = Path(self.cfg.out_dir) / (name or f"step-{self.state.step:07d}")
        meta = {**self.meta(), "step": self.state.step, "total_steps": self.total_steps}
        return save_checkpoint(directory, self.model.trainable_state_dict(), meta, self.state_dict())

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to `total_steps`, evaluating at step 0, every `eval_every` and at the end."""
        cfg = self.cfg
        self.model.train()
        history, start = [], time.time()
        last_eval = self.evaluate()
        self.log(last_eval, self.state.step)
        history.append((self.state.step, last_eval))
        self.on_eval(self.state.step, last_eval)
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", disable=not cfg.progress)
        checkpoint = None
        while self.state.step < self.total_steps:
            metrics = self.train_step(self._next_micro_batches())
            metrics["train/epoch"] = self.state.epoch + self.state.cursor / max(1, len(self.train_items))
            step = self.state.step
            evaluated = step % cfg.eval_every == 0 or step == self.total_steps
            if evaluated:
                last_eval = self.evaluate()
                metrics.update(last_eval)
                history.append((step, last_eval))
            self.log(metrics, step)
            if evaluated:
                self.on_eval(step, last_eval)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['train/nll']:.3f}", eval=f"{last_eval['eval/loss']:.3f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.total_steps:
                self.save()
        bar.close()
        checkpoint = self.save("final")
        return {"eval_history": history, "final_eval": last_eval, "checkpoint": checkpoint,
                "wall_seconds": time.time() - start, "steps": self.state.step}
