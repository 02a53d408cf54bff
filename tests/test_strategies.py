"""The strategies: the interleaved layout and its targets, LoRA on/off, stage-2 gate fusion
(step-0 equivalence, frozen/trained stage 1, checkpoints, errors), and for every registered
strategy (`STRATEGIES`, built by the generic fixtures of tests/core_fixtures.py) one Trainer and a
checkpoint round trip. The shuffled-audio ablation is in test_ablation.py, generation in test_generate.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from s2s.experiment_config import as_dict, build_config
from s2s.backbones import FrozenCore
from s2s.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from s2s.config import ConfigError
from s2s.strategies import AdapterStage1, GateFusionStage2, IstlmInterleaved
from s2s.strategies.base import pad_states
from s2s.strategies.gatefusion_stage2 import GateFusionStage2Config
from s2s.strategies.istlm_interleaved import interleave_layout
from s2s.tokens import FRAME, text_ids
from s2s.trainer import TrainConfig, Trainer
from tests.core_fixtures import clip


# --- helpers --------------------------------------------------------------------------------

def train_cfg(**overrides) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-3, "max_steps": 3, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.0,
                          "label_smoothing": 0.0, "schedule": "constant", "progress": False, **overrides})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def optimizer_ids(trainer: Trainer) -> set[int]:
    return {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


def run_meta(name: str, overrides=()) -> dict:
    """Checkpoint metadata as `experiments.run.train` writes it (strategy + resolved config)."""
    return {"strategy": name, "config": as_dict(build_config(name, "tiny", list(overrides)))}


@pytest.fixture
def capture(monkeypatch):
    """capture(core) -> dict filled by every `core.hidden_states` call with the LLM's input
    embeddings `x`, `mask` and output `hidden`."""
    def install(core):
        seen = {}
        original = core.hidden_states

        def wrapped(x, mask):
            hidden = original(x, mask)
            seen.update(x=x.detach(), mask=mask.detach(), hidden=hidden.detach())
            return hidden
        monkeypatch.setattr(core, "hidden_states", wrapped)
        return seen
    return install


@pytest.fixture(scope="module")
def istlm_cfg():
    return build_config("istlm_interleaved", "tiny").strategy


@pytest.fixture(scope="module")
def own_core_cfg(tiny_core, tiny_backbone_cfg):
    """The tiny backbone config, for tests that need a FrozenCore of their own (LoRA changes its LLM).
    Depends on tiny_core so that the directories are built before."""
    return tiny_backbone_cfg


# --- 1. the interleaved layout --------------------------------------------------------------

def test_interleave_layout_hand_computed():
    assert interleave_layout(10, 40, 4, 12) == [
        ("input", 0, 4), ("speech", 0, 12), ("input", 4, 8), ("speech", 12, 24), ("input", 8, 10),
        ("speech", 24, 40)]  # once the input is used up, ALL remaining speech follows
    # input ending on a chunk boundary: the last input chunk is followed by all the rest
    assert interleave_layout(8, 30, 4, 12) == [("input", 0, 4), ("speech", 0, 12), ("input", 4, 8),
                                               ("speech", 12, 30)]
    # 1:3 chunks of another size
    assert interleave_layout(5, 20, 2, 6) == [("input", 0, 2), ("speech", 0, 6), ("input", 2, 4),
                                              ("speech", 6, 12), ("input", 4, 5), ("speech", 12, 20)]
    assert interleave_layout(3, 5, 4, 12) == [("input", 0, 3), ("speech", 0, 5)]
    assert interleave_layout(0, 7, 4, 12) == [("speech", 0, 7)]
    # speech shorter than the input (a short answer to a long question): the rest of the input follows
    assert interleave_layout(10, 5, 4, 3) == [("input", 0, 4), ("speech", 0, 3), ("input", 4, 8),
                                              ("speech", 3, 5), ("input", 8, 10)]


@pytest.mark.parametrize("n_input,n_speech,ic,sc", [(37, 300, 4, 12), (7, 7, 1, 3), (50, 20, 4, 12), (1, 1, 4, 12)])
def test_interleave_layout_covers_everything_once_in_order(n_input, n_speech, ic, sc):
    plan = interleave_layout(n_input, n_speech, ic, sc)
    for kind, n in (("input", n_input), ("speech", n_speech)):
        spans = [(a, b) for k, a, b in plan if k == kind]
        assert [i for a, b in spans for i in range(a, b)] == list(range(n))
        assert all(b > a for a, b in spans)
    assert all(b - a <= ic for k, a, b in plan if k == "input")
    # a speech chunk is `sc` long unless it is the last one
    speech = [(a, b) for k, a, b in plan if k == "speech"]
    assert all(b - a == sc for a, b in speech[:-1])


def _expected_positions(prompt_len, n_input, n_speech, cfg):
    """Sequence positions of the input and speech rows for this layout."""
    input_pos, speech_pos, pos = [], [], prompt_len
    for kind, a, b in interleave_layout(n_input, n_speech, cfg.input_chunk, cfg.speech_chunk):
        (input_pos if kind == "input" else speech_pos).extend(range(pos, pos + b - a))
        pos += b - a
    return input_pos, speech_pos, pos


@pytest.mark.parametrize("case", ["respeak", "short_answer"])
def test_istlm_sequence_targets_and_labels(tiny_core, istlm_cfg, prepared_items, make_batch, capture, case):
    """The embedded sequence is prompt | I_1 S_1 | I_2 S_2 | ...; every speech token is predicted by the
    position right before it and end_of_speech by the last speech token; nothing else is a target.
    `short_answer`: targets much shorter than the input, so input chunks follow the last speech token."""
    torch.manual_seed(0)
    model = IstlmInterleaved(istlm_cfg, tiny_core).eval()
    items = [prepared_items[i] for i in (0, 1, 10)]  # lengths differ: padding is exercised
    if case == "short_answer":
        items = clip(items, 3, 2)
    batch = make_batch(items)
    seen = capture(tiny_core)
    with torch.no_grad():
        out = model(batch)
        audio, alens = model.adapter(*pad_states(batch.states, tiny_core.device))
    layout = tiny_core.layout
    prompt = [layout.start_of_human, layout.start_of_text, layout.end_of_text, layout.end_of_human,
              layout.start_of_ai, layout.start_of_speech]
    x, mask, hidden = seen["x"], seen["mask"], seen["hidden"]
    assert len(out.labels) == len(out.sample) == len(out.groups) == len(out.logits) == \
        sum(len(s) + 1 for s in batch.speech_tokens) == model.count_targets(batch)
    interleaved = trailing_input = False
    for i, speech in enumerate(batch.speech_tokens):
        n_in, n_sp = int(alens[i]), len(speech)
        input_pos, speech_pos, length = _expected_positions(len(prompt), n_in, n_sp, istlm_cfg)
        assert length == len(prompt) + n_in + n_sp
        assert mask[i, :length].all() and not mask[i, length:].any()
        assert torch.equal(x[i, :len(prompt)], tiny_core.embed(torch.tensor(prompt)))
        assert torch.equal(x[i, input_pos], audio[i, :n_in])
        assert torch.equal(x[i, speech_pos], tiny_core.embed(speech))
        interleaved |= speech_pos[0] < input_pos[-1]
        trailing_input |= input_pos[-1] > speech_pos[-1]

        sel = out.sample == i
        targets = [p - 1 for p in speech_pos] + [speech_pos[-1]]
        assert torch.equal(out.labels[sel], torch.cat([speech, torch.tensor([layout.end_of_speech])]))
        torch.testing.assert_close(out.logits[sel], tiny_core.logits(hidden[i, targets]), rtol=0, atol=1e-6)
        groups = out.groups[sel]
        assert groups[:-1].tolist() == [k % FRAME for k in range(n_sp)] and int(groups[-1]) == FRAME
    assert interleaved  # the batch really has several input chunks between speech chunks
    assert trailing_input == (case == "short_answer")


def test_istlm_text_source_interleaves_transcript_embeddings(own_core_cfg, istlm_cfg, prepared_items, make_batch,
                                                              capture):
    """interleave_source=text (with LoRA, on a core of its own): the inputs are the transcript's token
    embeddings, and audio_order permutes which transcript a sample gets."""
    core = FrozenCore(own_core_cfg)
    cfg = dataclasses.replace(istlm_cfg, interleave_source="text", lora_rank=2)
    model = IstlmInterleaved(cfg, core).eval()
    assert model.adapter is None
    items = clip([prepared_items[i] for i in (2, 4)], 0, 6)
    batch = make_batch(items)
    seen = capture(core)
    for order in (None, torch.tensor([1, 0])):
        with torch.no_grad():
            model(batch, audio_order=order)
        for i, speech in enumerate(batch.speech_tokens):
            j = i if order is None else int(order[i])
            text = torch.tensor(text_ids(core.tokenizer, batch.texts[j], core.layout)[1:])
            input_pos, speech_pos, _ = _expected_positions(len(model.prompt), len(text), len(speech), cfg)
            assert torch.equal(seen["x"][i, input_pos], core.embed(text))
            assert torch.equal(seen["x"][i, speech_pos], core.embed(speech))


# --- 2. LoRA off / on -------------------------------------------------------------------------

def test_istlm_without_lora_leaves_the_llm_untouched(tiny_core, istlm_cfg, short_items, make_batch):
    assert istlm_cfg.lora_rank == 0
    torch.manual_seed(0)
    model = IstlmInterleaved(istlm_cfg, tiny_core)
    assert not getattr(tiny_core, "adapted_by", None)
    frozen = {name: snapshot(getattr(tiny_core, name)) for name in ("llm", "whisper")}
    adapter_before = snapshot(model)
    trainer = Trainer(train_cfg(lr=3e-3), model, short_items, [], make_batch)
    frozen_ids = {id(p) for name in ("llm", "whisper") for p in getattr(tiny_core, name).parameters()}
    assert not optimizer_ids(trainer) & frozen_ids
    assert optimizer_ids(trainer) == {id(p) for p in model.parameters() if p.requires_grad}
    assert set(model.trainable_state_dict()) == {n for n, _ in model.adapter.named_parameters(prefix="adapter")}
    for _ in range(3):
        trainer.train_step(trainer._next_micro_batches())
    for name, before in frozen.items():
        after = dict(getattr(tiny_core, name).named_parameters())
        assert before.keys() == after.keys()
        changed = [n for n in before if not torch.equal(before[n], after[n])]
        assert not changed, f"{name} weights changed: {changed[:5]}"
    assert all(not torch.equal(adapter_before[n], p) for n, p in model.named_parameters())  # it did train


def test_istlm_with_lora_trains_only_the_low_rank_weights(own_core_cfg, tiny_core, istlm_cfg, short_items,
                                                          make_batch):
    core = FrozenCore(own_core_cfg)  # LoRA goes into this core's LLM, never into the shared one
    rank = 4
    torch.manual_seed(0)
    plain_count = IstlmInterleaved(istlm_cfg, tiny_core).n_trainable()
    model = IstlmInterleaved(dataclasses.replace(istlm_cfg, lora_rank=rank), core)
    assert core.adapted_by == "istlm_interleaved"
    assert not getattr(tiny_core, "adapted_by", None)

    lora = dict(model.lora.named_parameters(prefix="lora"))  # the LoRA layers inside core.llm, registered here
    c = core.llm.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_layer = rank * (c.hidden_size + c.num_attention_heads * head_dim) + \
        rank * (c.hidden_size + c.num_key_value_heads * head_dim)  # q_proj and v_proj: A [r, in] + B [out, r]
    assert {id(p) for p in lora.values()} == {id(p) for n, p in core.llm.named_parameters() if "lora_" in n}
    assert len(lora) == 4 * c.num_hidden_layers  # lora_A and lora_B of q_proj and v_proj per layer
    assert all(p.requires_grad for p in lora.values())
    assert sum(p.numel() for p in lora.values()) == c.num_hidden_layers * per_layer
    assert model.n_trainable() == plain_count + c.num_hidden_layers * per_layer
    assert set(lora) <= set(model.trainable_state_dict())  # checkpoints hold them

    base = {n: p.detach().clone() for n, p in core.llm.named_parameters() if "lora_" not in n}
    assert not any(p.requires_grad for n, p in core.llm.named_parameters() if "lora_" not in n)
    lora_before = {n: p.detach().clone() for n, p in lora.items()}
    trainer = Trainer(train_cfg(lr=3e-3), model, short_items, [], make_batch)
    assert {id(p) for p in lora.values()} <= optimizer_ids(trainer)

    # LoRA B starts at zero: the adapted LLM computes exactly what the plain one does
    x = torch.randn(1, 9, c.hidden_size)
    ones = torch.ones(1, 9, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(core.hidden_states(x, ones), tiny_core.hidden_states(x, ones))
    for _ in range(2):  # lora_A gets gradient only once lora_B is non-zero
        trainer.train_step(trainer._next_micro_batches())
    unchanged = [n for n, p in lora.items() if torch.equal(lora_before[n], p)]
    assert not unchanged, f"LoRA weights did not train: {unchanged[:5]}"
    changed = [n for n, p in core.llm.named_parameters() if "lora_" not in n and not torch.equal(base[n], p)]
    assert not changed, f"frozen LLM weights changed: {changed[:5]}"
    with torch.no_grad():
        assert not torch.allclose(core.hidden_states(x, ones), tiny_core.hidden_states(x, ones))
    # an adapted core cannot silently serve another strategy
    with pytest.raises(ConfigError, match="LoRA"):
        AdapterStage1(build_config("adapter_stage1", "tiny").strategy, core)


def test_istlm_text_source_without_lora_is_a_clear_error(tiny_core, istlm_cfg):
    with pytest.raises(ConfigError, match=r"interleave_source=text.*lora_rank"):
        IstlmInterleaved(dataclasses.replace(istlm_cfg, interleave_source="text", lora_rank=0), tiny_core)
    assert not getattr(tiny_core, "adapted_by", None)


# --- 3. gatefusion_stage2 ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1(tiny_core, tiny_strategy_cfg, short_items, make_batch, tmp_path_factory):
    """(checkpoint dir, model) of an adapter_stage1 trained 2 steps, its expansion out_proj perturbed
    first so that its output is not the identity."""
    torch.manual_seed(0)
    model = AdapterStage1(tiny_strategy_cfg, tiny_core)
    with torch.no_grad():
        model.expansion.out_proj.weight.normal_(0.0, 0.05)
        model.expansion.out_proj.bias.normal_(0.0, 0.05)
    out = tmp_path_factory.mktemp("stage1")
    trainer = Trainer(train_cfg(out_dir=str(out), max_steps=2), model, short_items, [], make_batch,
                      meta=lambda: run_meta("adapter_stage1"))
    for _ in range(2):
        trainer.train_step(trainer._next_micro_batches())
    return trainer.save("final"), model.eval()


def test_gatefusion_starts_exactly_where_stage1_ended(tiny_core, stage1, short_items, make_batch):
    ckpt, stage1_model = stage1
    model = GateFusionStage2(GateFusionStage2Config(init_from=str(ckpt)), tiny_core).eval()
    batch = make_batch(short_items[:3])
    with torch.no_grad():
        e, h, _ = stage1_model.expand(batch)
        assert float((h - e).abs().max()) > 1e-2  # stage 1 really changes the sequence
        a, b = stage1_model(batch), model(batch)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.sample, b.sample)
    assert float((a.logits - b.logits).abs().max()) <= 1e-5
    # and the gate is in the path: a non-zero scale changes the logits
    with torch.no_grad():
        model.scale.fill_(0.5)
        assert float((model(batch).logits - a.logits).abs().max()) > 1e-3


def test_gatefusion_trains_gate_with_stage1_frozen(tiny_core, stage1, short_items, make_batch, tmp_path):
    ckpt, _ = stage1
    weights, _ = load_checkpoint(ckpt)
    model = GateFusionStage2(GateFusionStage2Config(init_from=str(ckpt)), tiny_core)
    assert not any(p.requires_grad for p in model.stage1.parameters())
    assert model.n_trainable() == 2 * tiny_core.llm_dim ** 2 + 2 * tiny_core.llm_dim  # gate W, b and scale
    before = snapshot(model)
    trainer = Trainer(train_cfg(out_dir=str(tmp_path), lr=3e-3), model, short_items, [], make_batch,
                      meta=lambda: run_meta("gatefusion_stage2", [f"strategy.init_from={ckpt}"]))
    assert len(trainer.optimizer.param_groups) == 1
    assert optimizer_ids(trainer) == {id(p) for p in (*model.gate.parameters(), model.scale)}
    for _ in range(3):  # the gate gets gradient once the scale is non-zero (from step 2)
        trainer.train_step(trainer._next_micro_batches())
    after = dict(model.named_parameters())
    for n in ("gate.weight", "gate.bias", "scale"):
        assert not torch.equal(before[n], after[n]), n
    for n, p in model.stage1.named_parameters():
        assert torch.equal(p, weights[n]), n  # stage 1 stays exactly the checkpoint

    saved = trainer.save("final")
    state, meta = load_checkpoint(saved)
    assert meta["strategy"] == "gatefusion_stage2"
    assert set(state) == {n for n, _ in model.named_parameters()}  # stage-1 weights too: self-contained
    reloaded = GateFusionStage2(GateFusionStage2Config(init_from=str(ckpt)), tiny_core)
    reloaded.load_trainable_state_dict(state)
    batch = make_batch(short_items[:2])
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(batch).logits, model.eval()(batch).logits)


def test_gatefusion_trains_stage1_at_its_own_lr(tiny_core, stage1, short_items, make_batch, tmp_path):
    ckpt, _ = stage1
    cfg = GateFusionStage2Config(init_from=str(ckpt), train_stage1=True, stage1_lr=1e-4)
    model = GateFusionStage2(cfg, tiny_core)
    before = snapshot(model)
    trainer = Trainer(train_cfg(out_dir=str(tmp_path), lr=1e-3), model, short_items, [], make_batch,
                      meta=lambda: {"strategy": "gatefusion_stage2"})
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in (*model.gate.parameters(), model.scale)}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.stage1.parameters()}
    assert model.n_trainable() == sum(p.numel() for p in model.parameters())

    trainer.train_step(trainer._next_micro_batches())
    # Adam's first update is about lr * sign(grad): the step size shows which lr each group got
    step = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert step["scale"] == pytest.approx(1e-3, rel=1e-2)
    stage1_steps = [v for n, v in step.items() if n.startswith("stage1.")]
    assert max(stage1_steps) == pytest.approx(1e-4, rel=1e-2)
    assert sum(v > 0 for v in stage1_steps) > len(stage1_steps) // 2  # stage 1 trains

    state, _ = load_checkpoint(trainer.save("final"))
    reloaded = GateFusionStage2(cfg, tiny_core)
    reloaded.load_trainable_state_dict(state)
    for n, p in reloaded.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n]), n


def test_gatefusion_errors_name_the_problem(tiny_core, stage1, istlm_cfg, tmp_path):
    ckpt, _ = stage1
    with pytest.raises(ConfigError, match="init_from"):
        GateFusionStage2(GateFusionStage2Config(), tiny_core)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an s2s checkpoint"):
        GateFusionStage2(GateFusionStage2Config(init_from=str(tmp_path / "empty")), tiny_core)

    torch.manual_seed(0)
    other = save_checkpoint(tmp_path / "istlm", IstlmInterleaved(istlm_cfg, tiny_core).trainable_state_dict(),
                            run_meta("istlm_interleaved"))
    with pytest.raises(CheckpointError, match="'istlm_interleaved' checkpoint.*'adapter_stage1'"):
        GateFusionStage2(GateFusionStage2Config(init_from=str(other)), tiny_core)

    weights, meta = load_checkpoint(ckpt)
    hidden = weights["adapter.proj.0.weight"].shape[0]
    weights["adapter.proj.0.weight"] = torch.zeros(hidden, 5 * 1280)  # as if from a Whisper-large core
    wrong = save_checkpoint(tmp_path / "wrong_dims", weights, meta)
    with pytest.raises(CheckpointError, match=r"does not match this core's dimensions.*adapter\.proj\.0\.weight"):
        GateFusionStage2(GateFusionStage2Config(init_from=str(wrong)), tiny_core)
