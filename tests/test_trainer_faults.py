"""The trainer under faults, on a toy model (fast, no backbones): non-finite losses and gradients,
signals, checkpoint pruning and atomic writes, and exact continuation from a saved state.

The toy model has dropout, so a resumed run only matches when the RNG state is restored too.
"""
from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

from s2s import checkpoint as ckpt_mod
from s2s.checkpoint import (checkpoints_in, load_checkpoint, load_trainer_state, prune_checkpoints, save_checkpoint,
                            set_aside_after)
from s2s.stop import Interrupted
from s2s.strategies.base import TargetLogits
from s2s.trainer import NonFiniteError, TrainConfig, Trainer

N_ITEMS, DIM, VOCAB = 24, 6, 11


class Toy(nn.Module):
    """Linear classifier with dropout; a batch is (features [B, DIM], labels [B])."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.lin = nn.Linear(DIM, VOCAB)
        self.grad_scale = 1.0  # set to inf to make the gradient (not the loss) non-finite

    def forward(self, batch) -> TargetLogits:
        x, y = batch
        logits = self.lin(self.drop(x))
        if self.grad_scale != 1.0 and logits.requires_grad:
            logits.register_hook(lambda g: g * self.grad_scale)
        return TargetLogits(logits, y, torch.zeros_like(y), torch.arange(len(y)))

    def count_targets(self, batch) -> int:
        return len(batch[1])

    def trainable_state_dict(self) -> dict:
        return {n: p.detach().clone() for n, p in self.named_parameters()}


def items(poison: set[int] = frozenset()):
    """Toy samples; those in `poison` have NaN features (a broken sample that got through)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N_ITEMS, DIM, generator=g), torch.randint(0, VOCAB, (N_ITEMS,), generator=g)
    x[sorted(poison)] = float("nan")
    return [(x[i], y[i]) for i in range(N_ITEMS)]


def collate(batch):
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def make(tmp_path, data=None, seed=0, **overrides):
    cfg = TrainConfig(**{"lr": 0.05, "max_steps": 8, "batch_size": 3, "grad_accum": 2, "warmup_ratio": 0.25,
                         "eval_every": 4, "eval_batch_size": 8, "progress": False, "out_dir": str(tmp_path),
                         "seed": seed, **overrides})
    torch.manual_seed(seed)
    model = Toy()
    logged = []
    trainer = Trainer(cfg, model, data or items(), items()[:6], collate, log=lambda m, s: logged.append((s, m)),
                      meta=lambda: {"strategy": "toy"})
    return trainer, model, logged


def weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


# --- non-finite loss or gradient --------------------------------------------------------------

def _poisoned_step(trainer) -> int:
    """Index (0-based) of the first step whose batches hold a poisoned sample, without training."""
    probe = Trainer(trainer.cfg, Toy(), trainer.train_items, [], collate)
    for k in range(trainer.total_steps):
        batches = probe._next_micro_batches()
        if any(torch.isnan(b[0]).any() for b in batches):
            return k
    raise AssertionError("no poisoned step")


def test_nan_batch_is_skipped_counted_and_the_data_moves_on(tmp_path):
    trainer, model, logged = make(tmp_path / "a", data=items(poison={5}))
    bad = _poisoned_step(trainer)
    for _ in range(bad):
        trainer.train_step(trainer._next_micro_batches())
    before, opt_steps = weights(model), trainer.scheduler.last_epoch
    position = (trainer.state.epoch, trainer.state.cursor)
    m = trainer.train_step(trainer._next_micro_batches())
    assert m["train/skipped_steps"] == 1 and trainer.skipped == 1 and trainer.bad_streak == 1
    assert_same(weights(model), before)  # no update
    assert all(p.grad is None for p in model.parameters())  # the NaN gradients are dropped
    assert trainer.state.step == bad and trainer.scheduler.last_epoch == opt_steps  # no step, no schedule move
    assert (trainer.state.epoch, trainer.state.cursor) != position  # that batch is passed over
    trainer.train_step(trainer._next_micro_batches())
    assert trainer.state.step == bad + 1 and trainer.bad_streak == 0  # a good step resets the streak
    assert not torch.equal(weights(model)["lin.weight"], before["lin.weight"])


def test_fit_with_a_poisoned_sample_still_makes_every_update(tmp_path):
    trainer, model, logged = make(tmp_path / "a", data=items(poison={5}), max_steps=12)
    result = trainer.fit()
    assert result["steps"] == 12 and trainer.scheduler.last_epoch == 12
    skipped = [(s, m["train/skipped_steps"]) for s, m in logged if "train/lr" not in m and "train/loss" in m]
    assert skipped and trainer.skipped == len(skipped) >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_trainer_state(result["checkpoint"])["faults"]["skipped"] == trainer.skipped


def test_consecutive_bad_steps_stop_with_a_clear_error(tmp_path):
    trainer, model, _ = make(tmp_path / "a", data=items(poison=set(range(N_ITEMS))), max_bad_steps=3)
    with pytest.raises(NonFiniteError, match=r"3 steps in a row.*non-finite.*train\.lr.*train\.max_bad_steps=3"):
        trainer.fit()
    assert trainer.state.step == 0 and trainer.skipped == 3


def test_infinite_gradient_with_finite_loss_is_skipped(tmp_path):
    trainer, model, _ = make(tmp_path / "a")
    before = weights(model)
    model.grad_scale = float("inf")
    m = trainer.train_step(trainer._next_micro_batches())
    assert torch.isfinite(torch.tensor(m["train/loss"])) and not torch.isfinite(torch.tensor(m["train/grad_norm"]))
    assert trainer.skipped == 1 and trainer.state.step == 0
    assert_same(weights(model), before)
    model.grad_scale = 1.0
    trainer.train_step(trainer._next_micro_batches())
    assert trainer.state.step == 1


# --- exact continuation ---------------------------------------------------------------------

def test_resumed_fit_is_bitwise_the_uninterrupted_one(tmp_path):
    full, full_model, full_log = make(tmp_path / "full", checkpoint_every=2, keep_checkpoints=0)
    result = full.fit()
    assert [d.name for d in checkpoints_in(tmp_path / "full")] == ["final", "step-0000006", "step-0000004",
                                                                   "step-0000002"]
    for start in ("step-0000002", "step-0000006"):
        torch.manual_seed(12345)  # whatever happened in between: the checkpoint's RNG state wins
        resumed, model, log = make(tmp_path / start, seed=0)
        w, _ = load_checkpoint(tmp_path / "full" / start)
        model.load_state_dict(w)
        resumed.load_state_dict(load_trainer_state(tmp_path / "full" / start))
        out = resumed.fit()
        assert_same(weights(model), weights(full_model))
        assert out["eval_history"] == result["eval_history"]  # step-0 eval restored, not recomputed
        step = int(start[-7:])
        assert [s for s, m in log if "train/loss" in m] == list(range(step + 1, 9))
        assert log == [x for x in full_log if x[0] > step]


def test_load_state_dict_names_the_part_that_does_not_fit(tmp_path):
    trainer, _, _ = make(tmp_path / "a")
    state = trainer.state_dict()
    broken = {**state, "optimizer": {"state": {}, "param_groups": []}}
    with pytest.raises(ValueError, match="'optimizer'"):
        make(tmp_path / "b")[0].load_state_dict(broken)
    with pytest.raises(ValueError, match="'torch_rng'"):
        make(tmp_path / "c")[0].load_state_dict({**state, "torch_rng": torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="past this run's 8 steps"):
        make(tmp_path / "d")[0].load_state_dict({**state, "train_state": {"step": 50, "epoch": 0, "cursor": 0}})


# --- signals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_matches(tmp_path, signum):
    full, full_model, _ = make(tmp_path / "full")
    full.fit()

    trainer, model, logged = make(tmp_path / "stopped")

    def log(metrics, step):
        logged.append((step, metrics))
        if step == 3 and "train/loss" in metrics:
            os.kill(os.getpid(), signum)  # as Ctrl-C or `kill` would, in the middle of the loop
    trainer.log = log
    previous = signal.getsignal(signum)
    with pytest.raises(Interrupted) as e:
        trainer.fit()
    assert signal.getsignal(signum) is previous  # the handlers are put back
    assert e.value.signum == signum and e.value.exit_code == 128 + signum and e.value.step == 3
    assert e.value.checkpoint == tmp_path / "stopped" / "step-0000003"
    assert [d.name for d in checkpoints_in(tmp_path / "stopped")] == ["step-0000003"]  # no final
    assert load_trainer_state(e.value.checkpoint)["train_state"]["step"] == 3

    torch.manual_seed(999)
    resumed, model, _ = make(tmp_path / "stopped")
    w, _ = load_checkpoint(e.value.checkpoint)
    model.load_state_dict(w)
    resumed.load_state_dict(load_trainer_state(e.value.checkpoint))
    resumed.fit()
    assert_same(weights(model), weights(full_model))


def test_second_signal_stops_at_once_without_saving(tmp_path):
    trainer, _, _ = make(tmp_path / "a")

    def log(metrics, step):
        if step == 2 and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    trainer.log = log
    with pytest.raises(Interrupted) as e:
        trainer.fit()
    assert e.value.checkpoint is None and checkpoints_in(tmp_path / "a") == []


# --- checkpoint files ---------------------------------------------------------------------------

def test_only_the_newest_checkpoints_are_kept_and_final_never_pruned(tmp_path):
    trainer, _, _ = make(tmp_path / "k", checkpoint_every=1, keep_checkpoints=2)
    trainer.fit()
    assert [d.name for d in checkpoints_in(tmp_path / "k")] == ["final", "step-0000007", "step-0000006"]
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["final", "step-0000006", "step-0000007"]
    trainer, _, _ = make(tmp_path / "all", checkpoint_every=3, keep_checkpoints=0)
    trainer.fit()
    assert [d.name for d in checkpoints_in(tmp_path / "all")] == ["final", "step-0000006", "step-0000003"]


def test_resuming_from_an_older_checkpoint_sets_the_later_ones_aside_before_pruning(tmp_path):
    """Resumed at step 4 past a damaged step 6 with keep_checkpoints=1: the next save must keep the new
    step 5, not the abandoned (damaged) step 6, and a later resume must never pick step 6."""
    out = tmp_path / "run"
    for step in (2, 4, 6):
        save_checkpoint(out / f"step-{step:07d}", {"a": torch.full((2,), float(step))}, {"step": step})
    (out / ".step-0000007.tmp-x").mkdir()  # the leftover of a write a crash interrupted
    assert [d.name for d in set_aside_after(out, 4)] == ["abandoned-step-0000006"]
    save_checkpoint(out / "step-0000005", {"a": torch.zeros(2)}, {"step": 5})
    prune_checkpoints(out, keep=1)
    assert [d.name for d in checkpoints_in(out)] == ["step-0000005"]
    assert sorted(p.name for p in out.iterdir()) == ["abandoned-step-0000006", "step-0000005"]  # stale tmp gone


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    w = {"a": torch.arange(4.0)}
    d = save_checkpoint(tmp_path / "step-0000002", w, {"step": 2}, {"x": torch.ones(2)})
    mode = d.stat().st_mode & 0o777

    def disk_full(obj, f, *a, **k):
        open(f, "wb").write(b"\x80\x02partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(d, {"a": torch.zeros(4)}, {"step": 2, "new": True}, {"x": torch.zeros(2)})
    weights_, meta = load_checkpoint(d)
    assert torch.equal(weights_["a"], w["a"]) and meta == {"step": 2}  # the old one, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000002"]  # no temporary left over
    assert mode == 0o777 & ~_umask()  # the usual permissions, not mkdtemp's private 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- end to end: the MLflow run ---------------------------------------------------------------

def test_a_run_that_keeps_diverging_ends_failed_with_the_reason(run_env, tmp_path, monkeypatch, capsys):
    """Every step's loss NaN (as from a learning rate far too high): after train.max_bad_steps in a row
    the command stops with one error line, the MLflow run is FAILED with the reason, no checkpoint."""
    from experiments.run import main
    from s2s import trainer as trainer_mod

    real = trainer_mod.token_loss_sums
    monkeypatch.setattr(trainer_mod, "token_loss_sums",
                        lambda out, eps: (real(out, eps)[0] * float("nan"), real(out, eps)[1]))
    out = tmp_path / "out"
    rc = main(["adapter_stage1", *run_env.overrides(out, **{"train.max_bad_steps": 2, "tracking.run_name": "nan"}),
               "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[-1].startswith("error: 2 steps in a row had a non-finite loss or gradient")
    assert "train.max_bad_steps=2" in err[-1] and "Traceback" not in "\n".join(err)
    client = run_env.client()
    (run,) = client.search_runs([client.get_experiment_by_name("s2s").experiment_id],
                                "tags.`mlflow.runName` = 'nan'")
    assert run.info.status == "FAILED"
    assert run.data.tags["s2s.failure"].startswith("NonFiniteError: 2 steps in a row")
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/skipped_steps")] == [(1, 1.0)]
    assert checkpoints_in(out) == []
