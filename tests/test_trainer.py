"""The trainer: token-normalized gradient accumulation (REFERENCE §6), the loss definition, the lr
schedule, the data order, learning, and checkpoints."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from s2s.checkpoint import META_FILE, MODEL_FILE, STATE_FILE, CheckpointError, load_checkpoint, load_trainer_state
from s2s.metrics import token_loss_sum
from s2s.strategies import AdapterStage1
from s2s.tokens import FRAME
from s2s.trainer import TrainConfig, Trainer, lr_lambda


def make_model(core, cfg, seed=0, perturb=True):
    """A tiny AdapterStage1; `perturb` replaces the zero-initialised expansion out_proj with small
    random values so that every trainable parameter receives a gradient."""
    torch.manual_seed(seed)
    model = AdapterStage1(cfg, core)
    if perturb:
        with torch.no_grad():
            model.expansion.out_proj.weight.normal_(0.0, 0.05)
            model.expansion.out_proj.bias.normal_(0.0, 0.05)
    return model


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.fixture(scope="module")
def by_length(prepared_items):
    """The 8 train items with targets cut to 2..8 frames (shortest first): lengths differ a lot.
    (Miniature utterances are 8 or 10 frames long: too alike for the accumulation tests.)"""
    items = [dataclasses.replace(it, speech_tokens=it.speech_tokens[:FRAME * n])
             for it, n in zip(prepared_items[:8], (2, 3, 4, 5, 6, 7, 8, 8))]
    assert len(items[0].speech_tokens) * 1.5 < len(items[-1].speech_tokens)
    return items


def make_trainer(model, train_items, make_batch, **overrides):
    cfg = TrainConfig(**{"lr": 1e-3, "max_steps": 10, "batch_size": 2, "grad_accum": 1, "warmup_ratio": 0.0,
                         "label_smoothing": 0.0, "progress": False, **overrides})
    return Trainer(cfg, model, train_items, [], make_batch)


# --- gradient accumulation ----------------------------------------------------------------

def test_accumulated_gradient_equals_one_big_batch(tiny_core, tiny_strategy_cfg, by_length, make_batch):
    label_smoothing = 0.1  # the card's setting; the equivalence holds for any smoothing
    model = make_model(tiny_core, tiny_strategy_cfg)
    trainer = make_trainer(model, by_length, make_batch, label_smoothing=label_smoothing)
    short, long = by_length[:2], by_length[-2:]  # micro-batches with very different token counts
    assert model.count_targets(make_batch(short)) * 1.5 < model.count_targets(make_batch(long))

    m_big = trainer.accumulate_gradients([make_batch(short + long)])
    g_big = grads(model)
    model.zero_grad(set_to_none=True)
    m_acc = trainer.accumulate_gradients([make_batch(short), make_batch(long)])
    g_acc = grads(model)
    model.zero_grad(set_to_none=True)

    # every trainable parameter takes part (so the comparison covers the whole strategy)
    zero = [n for n, g in g_big.items() if float(g.abs().max()) == 0.0]
    assert not zero, f"parameters without gradient: {zero[:5]}"
    assert max_abs_diff(g_big, g_acc) <= 1e-6
    assert m_big["train/tokens"] == m_acc["train/tokens"]
    assert m_big["train/loss"] == pytest.approx(m_acc["train/loss"], abs=1e-5)

    # the naive scheme (mean loss per micro-batch, averaged over micro-batches) gives another gradient
    for batch in (make_batch(short), make_batch(long)):
        out = model(batch)
        (token_loss_sum(out, label_smoothing) / len(out.labels) / 2).backward()
    g_naive = grads(model)
    model.zero_grad(set_to_none=True)
    scale = max(float(g.abs().max()) for g in g_big.values())
    assert max_abs_diff(g_big, g_naive) > 1e-3 * scale


def test_train_loss_is_summed_token_ce_over_all_tokens_of_the_step(tiny_core, tiny_strategy_cfg, by_length,
                                                                   make_batch):
    model = make_model(tiny_core, tiny_strategy_cfg)
    trainer = make_trainer(model, by_length, make_batch)
    micro = [by_length[:2], by_length[3:6]]
    metrics = trainer.accumulate_gradients([make_batch(m) for m in micro])
    model.zero_grad(set_to_none=True)

    total, n_tokens = 0.0, 0
    with torch.no_grad():
        for items in micro:
            out = model(make_batch(items))
            # targets: every speech token and one end_of_speech per sample
            labels = torch.cat([torch.cat([it.speech_tokens, torch.tensor([tiny_core.layout.end_of_speech])])
                                for it in items])
            assert torch.equal(out.labels.cpu(), labels)
            logp = F.log_softmax(out.logits.double(), dim=-1)
            total += float(-logp[torch.arange(len(labels)), labels].sum())
            n_tokens += sum(len(it.speech_tokens) + 1 for it in items)
    assert metrics["train/tokens"] == n_tokens
    assert metrics["train/loss"] == pytest.approx(total / n_tokens, rel=1e-5)
    assert metrics["train/nll"] == pytest.approx(total / n_tokens, rel=1e-5)


def test_label_smoothing_changes_loss_but_not_nll(tiny_core, tiny_strategy_cfg, by_length, make_batch):
    model = make_model(tiny_core, tiny_strategy_cfg)
    batch = make_batch(by_length[:3])
    plain = make_trainer(model, by_length, make_batch, label_smoothing=0.0).accumulate_gradients([batch])
    smooth = make_trainer(model, by_length, make_batch, label_smoothing=0.1).accumulate_gradients([batch])
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        out = model(batch)
    logp = F.log_softmax(out.logits.double(), dim=-1)
    nll = -logp[torch.arange(len(out.labels)), out.labels]
    by_hand = float((0.9 * nll + 0.1 * -logp.mean(-1)).mean())  # smoothing spreads 0.1 over the vocabulary
    assert smooth["train/loss"] == pytest.approx(by_hand, rel=1e-5)
    assert smooth["train/nll"] == pytest.approx(plain["train/loss"], rel=1e-5) == float(nll.mean())
    assert abs(smooth["train/loss"] - plain["train/loss"]) > 1e-4


# --- lr schedule ----------------------------------------------------------------------------

def test_lr_lambda_warmup_and_decay():
    f = lr_lambda("linear", warmup=4, total=20)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.5)  # half way through the decay
    assert f(20) == pytest.approx(0.0) and f(25) == 0.0
    c = lr_lambda("cosine", warmup=4, total=20)
    assert c(1) == pytest.approx(0.5) and c(4) == pytest.approx(1.0)
    assert c(12) == pytest.approx(0.5) and c(20) == pytest.approx(0.0, abs=1e-12)
    assert c(8) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    k = lr_lambda("constant", warmup=2, total=20)
    assert [k(s) for s in (0, 1, 2, 10, 19)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    assert lr_lambda("linear", warmup=0, total=10)(0) == pytest.approx(1.0)


def test_trainer_schedule_follows_warmup_ratio_and_total_steps():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.01, max_steps=10, warmup_ratio=0.2, schedule="linear", progress=False)
    trainer = Trainer(cfg, model, list(range(4)), [], lambda items: items)
    assert trainer.total_steps == 10
    lrs = []
    for _ in range(10):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert lrs == pytest.approx([0.005, 0.01, 0.01, 0.00875, 0.0075, 0.00625, 0.005, 0.00375, 0.0025, 0.00125])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    # without max_steps: ceil(epochs * samples / (batch * accum)) steps
    cfg = TrainConfig(epochs=3, batch_size=2, grad_accum=2, progress=False)
    assert Trainer(cfg, model, list(range(10)), [], lambda items: items).total_steps == math.ceil(3 * 10 / 4)


# --- data order -----------------------------------------------------------------------------

def _picks(seed, n_items=10, steps=5, batch_size=2, grad_accum=2):
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(seed=seed, max_steps=steps, batch_size=batch_size, grad_accum=grad_accum, progress=False)
    trainer = Trainer(cfg, model, list(range(n_items)), [], lambda items: list(items))
    steps_out = []
    for _ in range(steps):
        micro = trainer._next_micro_batches()
        assert len(micro) == grad_accum and all(len(m) == batch_size for m in micro)
        steps_out.append([i for m in micro for i in m])
    return [i for s in steps_out for i in s], trainer.state


def test_data_order_is_deterministic_and_covers_each_sample_once_per_epoch():
    a, state = _picks(seed=3)
    b, _ = _picks(seed=3)
    assert a == b  # same seed, same order
    assert a[:10] != sorted(a[:10])  # shuffled
    assert sorted(a[:10]) == list(range(10))  # epoch 0: every sample exactly once
    assert sorted(a[10:20]) == list(range(10))  # epoch 1 as well
    assert a[10:20] != a[:10]  # a new order per epoch
    assert (state.epoch, state.cursor) == (2, 0)
    c, _ = _picks(seed=4)
    assert c != a


# --- learning and checkpoints ---------------------------------------------------------------

def test_a_few_steps_lower_the_train_loss(tiny_core, tiny_strategy_cfg, by_length, make_batch):
    model = make_model(tiny_core, tiny_strategy_cfg, perturb=False)  # the real init: out_proj at zero
    trainer = make_trainer(model, by_length, make_batch, lr=3e-3, max_steps=5)
    batches = [make_batch(by_length[:2])]
    model.train()
    losses = [trainer.train_step(batches)["train/loss"] for _ in range(5)]
    with torch.no_grad():
        out = model(batches[0])
        after = float(token_loss_sum(out)) / len(out.labels)
    assert all(math.isfinite(x) for x in losses)
    assert after < losses[0] - 0.5, (losses, after)
    assert after < losses[1], (losses, after)  # still improving after the first step
    assert trainer.state.step == 5


def test_checkpoint_round_trip(tiny_core, tiny_strategy_cfg, by_length, make_batch, tmp_path):
    model = make_model(tiny_core, tiny_strategy_cfg)
    trainer = make_trainer(model, by_length, make_batch, out_dir=str(tmp_path), max_steps=5)
    trainer.meta = lambda: {"strategy": model.name, "backbones": tiny_core.ids()}
    trainer.train_step(trainer._next_micro_batches())
    trainer.train_step(trainer._next_micro_batches())
    path = trainer.save("final")
    assert path == tmp_path / "final"
    assert {p.name for p in path.iterdir()} == {MODEL_FILE, META_FILE, STATE_FILE}

    weights, meta = load_checkpoint(path)
    assert meta["strategy"] == "adapter_stage1" and meta["step"] == 2 and meta["total_steps"] == 5
    assert meta["backbones"] == tiny_core.ids()
    assert json.loads((path / META_FILE).read_text()) == meta
    assert weights.keys() == model.trainable_state_dict().keys()

    fresh = make_model(tiny_core, tiny_strategy_cfg, seed=123)
    before = dict(fresh.named_parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())  # it starts different
    fresh.load_trainable_state_dict(weights)
    for n, p in model.named_parameters():
        assert torch.equal(dict(fresh.named_parameters())[n], p.detach()), n
    # identical weights give identical outputs
    batch = make_batch(by_length[:2])
    with torch.no_grad():
        assert torch.equal(fresh(batch).logits, model(batch).logits)

    state = load_trainer_state(path)
    assert state["train_state"] == {"step": 2, "epoch": 0, "cursor": 4}
    assert "state" in state["optimizer"] and state["scheduler"]["last_epoch"] == 2

    # a checkpoint for another configuration does not load silently
    other = AdapterStage1(type(tiny_strategy_cfg)(**{**vars(tiny_strategy_cfg), "expansion_blocks": 1}), tiny_core)
    with pytest.raises(CheckpointError, match="does not fit"):
        other.load_trainable_state_dict(weights)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_one_softmax_gives_both_losses_exactly(eps):
    """The trainer's single log-softmax must equal PyTorch's smoothed and plain cross-entropy."""
    from s2s.metrics import token_loss_sums
    from s2s.strategies.base import TargetLogits
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 97, generator=g, dtype=torch.float64), torch.randint(0, 97, (40,), generator=g)
    loss, nll = token_loss_sums(TargetLogits(logits, labels, labels, labels), eps)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, reduction="sum", label_smoothing=eps), atol=1e-10)
    assert torch.allclose(nll, F.cross_entropy(logits, labels, reduction="sum"), atol=1e-10)
