"""Length-grouped micro-batches (train.group_by_length) and training from prepared shards through
DataLoader workers: less padding, every sample once per epoch, the loss normalization exact, and a
resumed run bit for bit the uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from s2s.data.loader import DataConfig
from s2s.prepare import CacheConfig
from s2s.shards import prepare_split
from s2s.batching import group_by_length
from s2s.trainer import TrainConfig, Trainer
from tests.test_trainer import grads, make_model, max_abs_diff


def test_grouping_keeps_every_sample_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 1500, size=1000)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(1000, generator=g)
    grouped = group_by_length(order, lengths, batch_size=4, window=50, generator=g)
    assert sorted(grouped.tolist()) == list(range(1000))

    def padded(o):
        batches = [lengths[o[i:i + 4].numpy()] for i in range(0, len(o), 4)]
        return 1 - sum(b.sum() for b in batches) / sum(b.max() * len(b) for b in batches)
    assert padded(order) > 0.3 and padded(grouped) < 0.05
    lengths_of_first = [int(lengths[grouped[i * 4:(i + 1) * 4].numpy()].max()) for i in range(50)]
    assert lengths_of_first != sorted(lengths_of_first, reverse=True)  # batches come in random order


def _trainer(model, items, make_batch, **kw):
    cfg = TrainConfig(**{"lr": 3e-3, "max_steps": 4, "batch_size": 2, "grad_accum": 2, "warmup_ratio": 0.0,
                         "progress": False, "group_by_length": True, "group_window": 2, "eval_every": 100, **kw})
    return Trainer(cfg, model, items, [], make_batch)


def _epoch_padding(trainer) -> float:
    state, micro = trainer.state, []
    for _ in range(2):  # 8 items = 2 steps of 2 x 2
        step, state = trainer._plan_step(state)
        micro += step
    return trainer.padded_fraction(micro)


def test_grouped_micro_batches_keep_the_step_loss_exact(tiny_core, tiny_strategy_cfg, prepared_items, make_batch):
    items = prepared_items[:8]
    model = make_model(tiny_core, tiny_strategy_cfg)
    trainer = _trainer(model, items, make_batch)
    assert _epoch_padding(trainer) < _epoch_padding(_trainer(model, items, make_batch, group_by_length=False))
    micro, _ = trainer._plan_step(trainer.state)
    batches = [make_batch([items[i] for i in idx]) for idx in micro]
    m_acc = trainer.accumulate_gradients(batches)
    g_acc = grads(model)
    model.zero_grad(set_to_none=True)
    m_big = trainer.accumulate_gradients([make_batch([items[i] for idx in micro for i in idx])])
    assert m_acc["train/loss"] == pytest.approx(m_big["train/loss"], rel=1e-5)
    assert m_acc["train/tokens"] == m_big["train/tokens"]
    assert max_abs_diff(g_acc, grads(model)) < 1e-5


def test_training_from_shards_with_workers_resumes_bit_for_bit(tiny_core, tiny_strategy_cfg, synth_dataset,
                                                                make_batch, tmp_path):
    split = prepare_split(DataConfig(sources=[str(synth_dataset)], eval_size=2),
                          CacheConfig(dir=str(tmp_path / "cache"), cache_speech_states=False, shard_rows=3),
                          tiny_core, "train", progress=False)
    assert split[0].states is None  # audio decoded per batch, in the workers

    def run(steps_first: int | None, workers: int):
        model = make_model(tiny_core, tiny_strategy_cfg)
        cfg = TrainConfig(lr=3e-3, max_steps=4, batch_size=2, grad_accum=2, warmup_ratio=0.0, progress=False,
                          group_by_length=True, group_window=2, eval_every=100, out_dir=str(tmp_path / f"o{workers}"))
        trainer = Trainer(cfg, model, split, [split[0]], make_batch, num_workers=workers)
        if steps_first is None:
            for _ in range(4):
                trainer.train_step(trainer._next_micro_batches())
            return model
        for _ in range(steps_first):
            trainer.train_step(trainer._next_micro_batches())
        state = trainer.state_dict()
        weights = model.trainable_state_dict()
        model2 = make_model(tiny_core, tiny_strategy_cfg, seed=99)
        model2.load_trainable_state_dict(weights)
        again = Trainer(cfg, model2, split, [split[0]], make_batch, num_workers=workers)
        again.load_state_dict(state)
        again.history = [(0, {"eval/loss": 0.0})]  # the step-0 evaluation happened in the first process
        again.fit()
        return model2

    whole = run(None, workers=0).trainable_state_dict()
    for workers in (0, 2):
        resumed = run(2, workers).trainable_state_dict()
        for k in whole:
            assert torch.equal(whole[k], resumed[k]), (workers, k)
