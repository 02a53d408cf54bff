"""What holds for every registered strategy, parametrized over the registry (a new strategy is covered
without editing this file): it trains through the one trainer, and its checkpoints rebuild it exactly.
The other per-strategy checks live beside their subject: tests/test_generate.py (decoder equals the
training forward, caches equal recomputation) and tests/test_ablation.py (shuffled audio)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from s2s.backbones import FrozenCore
from s2s.checkpoint import load_checkpoint, save_checkpoint
from s2s.experiment import load_trained
from s2s.experiment_config import as_dict
from s2s.strategies import STRATEGIES
from s2s.trainer import Trainer
from tests.core_fixtures import build_tiny_model, checkpoint_meta


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_through_the_same_trainer(name, tiny_core, tiny_backbone_cfg, short_items, make_batch,
                                                        tmp_path):
    # A model of its own (it trains), as a run starts it: freshly initialised; an upstream stage it
    # requires is built and checkpointed first (tests/core_fixtures.py).
    cfg, model = build_tiny_model(name, tiny_backbone_cfg, tmp_path / "upstream", perturb=False)
    model.train()
    assert isinstance(model, STRATEGIES[name])
    items = short_items[:4]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    logged = []
    tcfg = dataclasses.replace(cfg.train, lr=3e-3, max_steps=4, batch_size=4, eval_every=2, eval_batch_size=4,
                               label_smoothing=0.0, out_dir=str(tmp_path / "out"), progress=False)
    trainer = Trainer(tcfg, model, items, items, make_batch, log=lambda m, s: logged.append((s, m)),
                      meta=lambda: checkpoint_meta(cfg, model))
    result = trainer.fit()

    assert result["steps"] == 4 and [s for s, _ in result["eval_history"]] == [0, 2, 4]
    first, last = result["eval_history"][0][1]["eval/loss"], result["final_eval"]["eval/loss"]
    assert last < first, (name, first, last)  # eval set == train set here: the train loss went down
    train_losses = [m["train/loss"] for _, m in logged if "train/loss" in m]
    assert len(train_losses) == 4 and train_losses[-1] < train_losses[0]
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert changed == set(before), f"{name}: untrained parameters {sorted(set(before) - changed)[:5]}"
    weights, meta = load_checkpoint(result["checkpoint"])
    assert meta["strategy"] == name and set(weights) == set(model.trainable_state_dict())


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_checkpoint_round_trip(name, tiny_model, short_items, make_batch, tmp_path):
    """trainable_state_dict -> save_checkpoint -> load_trained rebuilds config, core and strategy from the
    checkpoint alone, and the rebuilt model computes the same logits bit for bit."""
    cfg, model = tiny_model(name)
    ckpt = save_checkpoint(tmp_path / "final", model.trainable_state_dict(), checkpoint_meta(cfg, model))
    weights, _ = load_checkpoint(ckpt)
    assert set(weights) == model.saved_names() and model.n_trainable() > 0
    cfg2, _, loaded, meta = load_trained(str(ckpt))
    assert type(loaded) is type(model) and meta["strategy"] == name
    assert as_dict(cfg2) == as_dict(cfg)
    batch = make_batch(short_items[:3])
    with torch.no_grad():
        a, b = model(batch), loaded.eval()(batch)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.sample, b.sample) and torch.equal(a.groups, b.groups)
    assert torch.equal(a.logits, b.logits)
    # not vacuous: the same strategy rebuilt without the checkpoint's weights computes other logits
    torch.manual_seed(1)
    untrained = type(model).from_checkpoint(cfg2.strategy, FrozenCore(cfg2.backbones), meta).eval()
    with torch.no_grad():
        assert not torch.equal(untrained(batch).logits, a.logits)


def test_run_list_prints_each_strategy_on_one_line(capsys):
    from experiments.run import main

    assert main(["--list"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert sorted(line.split()[0] for line in lines) == sorted(STRATEGIES)
    for line in lines:
        assert STRATEGIES[line.split()[0]].summary in line
