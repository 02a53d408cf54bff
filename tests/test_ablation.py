"""The shuffled-audio ablation: every registered strategy's `audio_order` gives each sample the chosen
sample's audio; evaluation scores every sample with another sample's audio (a derangement); and a
trained adapter loses when it hears the wrong audio."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from s2s.metrics import evaluate, token_loss_sum
from s2s.strategies import STRATEGIES, AdapterStage1
from s2s.strategies.base import TargetLogits
from s2s.trainer import Trainer
from tests.core_fixtures import clip
from tests.test_strategies import train_cfg


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_audio_order_gives_each_sample_the_chosen_audio(name, tiny_model, prepared_items, make_batch):
    """forward(batch, audio_order) scores sample i's targets while it hears sample audio_order[i]'s input:
    the identity order changes nothing, a swap changes exactly the swapped samples' logits, and equals
    the forward of a batch whose inputs (Whisper states, transcript) were swapped by hand."""
    model = tiny_model(name)[1]
    batch = make_batch(clip(prepared_items[8:11], 1, 2))  # 3 eval utterances: different audio and lengths
    order = torch.tensor([1, 0, 2])
    swapped_inputs = dataclasses.replace(batch, states=[batch.states[j] for j in order],
                                         texts=[batch.texts[j] for j in order])
    with torch.no_grad():
        plain = model(batch)
        same = model(batch, audio_order=torch.arange(len(batch.keys)))
        swapped = model(batch, audio_order=order)
        by_hand = model(swapped_inputs)
    for out in (same, swapped, by_hand):  # the targets are always each sample's own
        assert torch.equal(out.labels, plain.labels) and torch.equal(out.sample, plain.sample)
        assert torch.equal(out.groups, plain.groups)
    torch.testing.assert_close(same.logits, plain.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(swapped.logits, by_hand.logits, rtol=1e-5, atol=1e-5)
    for i in range(3):
        rows = plain.sample == i
        diff = float((swapped.logits[rows] - plain.logits[rows]).abs().max())
        assert (diff > 1e-3) if i < 2 else (diff < 1e-5), (name, i, diff)


class Recorder(torch.nn.Module):
    """A stand-in model: records what each forward call gets; one target per sample."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, batch, audio_order=None):
        self.calls.append((list(batch.keys), None if audio_order is None else audio_order.tolist()))
        n = len(batch.keys)
        return TargetLogits(torch.zeros(n, 3), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                            torch.arange(n))


def _collate(items):
    return SimpleNamespace(keys=[it.key for it in items])


def test_evaluate_matched_passes_no_audio_order():
    items = [SimpleNamespace(key=f"u{i}") for i in range(7)]
    model = Recorder()
    summary = evaluate(model, items, _collate, batch_size=3)
    assert model.calls == [(["u0", "u1", "u2"], None), (["u3", "u4", "u5"], None), (["u6"], None)]
    assert summary["eval/tokens"] == 7


@pytest.mark.parametrize("n,batch_size", [(7, 3), (2, 8), (12, 4)])
def test_evaluate_shuffled_gives_every_sample_another_samples_audio(n, batch_size):
    items = [SimpleNamespace(key=f"u{i}") for i in range(n)]
    heard_by_seed = []
    for seed in range(4):
        model = Recorder()
        summary = evaluate(model, items, _collate, batch_size=batch_size, prefix="shuffled",
                           shuffle_audio_seed=seed)
        heard = {}  # sample key -> key of the audio it listened to
        for keys, order in model.calls:
            k = len(keys) // 2
            assert order is not None and sorted(order) == list(range(2 * k))
            for i in range(k):
                assert keys[i] not in heard
                heard[keys[i]] = keys[order[i]]
        assert set(heard) == {it.key for it in items}  # every sample scored once ...
        assert all(heard[key] != key for key in heard)  # ... with another sample's audio ...
        assert sorted(heard.values()) == sorted(heard)  # ... each audio used once (a derangement)
        assert summary["shuffled/tokens"] == n  # the partners' own targets are not counted
        heard_by_seed.append(heard)
        model2 = Recorder()
        evaluate(model2, items, _collate, batch_size=batch_size, shuffle_audio_seed=seed)
        assert model2.calls == model.calls  # a fixed derangement per seed
    if n > 2:
        assert len({tuple(sorted(h.items())) for h in heard_by_seed}) > 1


def test_trained_adapter_listens_matched_audio_beats_shuffled(tiny_core, tiny_strategy_cfg, prepared_items,
                                                              make_batch):
    """8 utterances, each with a 2-frame target from its middle: the first target codes can only come
    from the audio, so a model that learned them loses when it hears another sample's audio."""
    items = clip(prepared_items[:8], 5, 2)
    assert len({int(it.speech_tokens[0]) for it in items}) >= 4  # the first code differs between samples
    torch.manual_seed(0)
    model = AdapterStage1(tiny_strategy_cfg, tiny_core)
    trainer = Trainer(train_cfg(lr=3e-3, max_steps=30, batch_size=8), model, items, [], make_batch)
    start = evaluate(model, items, make_batch, 8)["eval/loss"]
    for _ in range(30):  # (seen here: matched 2.34 vs shuffled 3.22 nats after 30 steps, from 12.2)
        trainer.train_step(trainer._next_micro_batches())
    matched = evaluate(model, items, make_batch, 8)
    shuffled = evaluate(model, items, make_batch, 8, prefix="shuffled", shuffle_audio_seed=0)
    assert matched["eval/loss"] < start - 1.0  # it learned the targets
    assert matched["eval/loss"] + 0.2 < shuffled["shuffled/loss"], (matched["eval/loss"], shuffled["shuffled/loss"])
    assert matched["eval/loss_k0"] < shuffled["shuffled/loss_k0"]
    # and the matched evaluation is the model's plain forward on the data
    with torch.no_grad():
        out = model(make_batch(items))
    assert matched["eval/loss"] == pytest.approx(float(token_loss_sum(out)) / len(out.labels), rel=1e-5)
