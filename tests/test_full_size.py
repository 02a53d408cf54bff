"""bench.full_size and its library (s2s/full_size_build.py, s2s/full_size.py): random backbones of the real
architectures in the real formats, the analytic parameter / activation / FLOPs model, and measured training
steps (reduced sizes: small widths, the same code path and the real Orpheus token layout)."""
from __future__ import annotations

import pytest
import torch

from s2s import costs
from s2s import full_size as fs
from s2s import full_size_build as fsb
from s2s.backbones import FrozenCore
from s2s.experiment import build_strategy
from s2s.experiment_config import build_config
from s2s.prepare import Batch
from s2s.tokens import FRAME, TokenLayout, text_ids


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("full_size")


@pytest.fixture(scope="module")
def reduced(cache):
    return fsb.ensure_backbones(cache, reduced=True)[0]


def reduced_config(root, checkpointing: bool = False):
    return build_config("adapter_stage1", "full", [
        *(f"backbones.{k}={root / k}" for k in ("whisper", "orpheus", "snac")), "backbones.dtype=bfloat16",
        "backbones.device=cpu", f"backbones.gradient_checkpointing={checkpointing}", *fs.reduced_strategy_overrides()])


def meta_dims(configs: dict, strategy_overrides: list[str] = ()) -> tuple[costs.Dims, dict]:
    """Dims of `configs` (fsb.REAL or fsb.REDUCED) and the modules' own parameter counts, built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperModel

    from s2s.adapter import SpeechAdapter
    from s2s.expansion import ExpansionBlocks
    strategy = build_config("adapter_stage1", "full", list(strategy_overrides)).strategy
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**configs["orpheus"]))
        whisper = WhisperModel(WhisperConfig(**configs["whisper"]))
        d = costs.Dims.of(llm.config, whisper.config, strategy)
        adapter = SpeechAdapter(d.w_dim, d.hidden, d.adapter_hidden)
        expansion = ExpansionBlocks(d.hidden, d.hidden, d.width, d.blocks, strategy.expansion_heads, d.x_ffn)
    return d, {"llm": n_params(llm), "whisper_encoder": n_params(whisper.encoder), "adapter": n_params(adapter),
               "expansion": n_params(expansion)}


@pytest.mark.parametrize("size", ["real", "reduced"])
def test_parameter_model_is_exact_against_the_modules(size):
    d, counted = meta_dims(fsb.REAL, []) if size == "real" else meta_dims(fsb.REDUCED, fs.reduced_strategy_overrides())
    formula = costs.param_counts(d)
    assert {k: formula[k] for k in counted} == counted
    if size == "real":  # Orpheus 3B (tied, vocab 156,940), Whisper-large-v3's encoder, the card's ~119M trainable
        assert counted["llm"] == pytest.approx(3.30e9, rel=0.01) and d.vocab == 156940 and d.tied
        assert counted["whisper_encoder"] == pytest.approx(0.637e9, rel=0.01)
        assert counted["adapter"] + counted["expansion"] == pytest.approx(113e6, rel=0.01)
        from snac import SNAC
        with torch.device("meta"):
            assert n_params(SNAC(**fsb.SNAC_24K)) == pytest.approx(19.8e6, rel=0.01)


def test_an_interrupted_build_is_redone_and_a_complete_one_reused(tmp_path, monkeypatch):
    real_build = fsb.build_orpheus
    monkeypatch.setattr(fsb, "build_orpheus", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        fsb.ensure_backbones(tmp_path, reduced=True)
    assert (tmp_path / "reduced" / "whisper").is_dir() and not (tmp_path / "reduced" / fsb.MARKER).exists()
    monkeypatch.setattr(fsb, "build_orpheus", real_build)
    root, seconds = fsb.ensure_backbones(tmp_path, reduced=True)
    assert seconds is not None and (root / fsb.MARKER).is_file() and (root / "orpheus" / "config.json").is_file()
    assert fsb.ensure_backbones(tmp_path, reduced=True) == (root, None)


def test_backbones_load_through_frozen_core_with_the_real_orpheus_layout(reduced):
    cfg = reduced_config(reduced)
    core = FrozenCore(cfg.backbones)
    assert core.layout == TokenLayout()  # 128,256 text ids, begin_of_text 128,000, eot 128,009, codebooks of 4096
    assert len(core.tokenizer) == 128256 and core.llm.config.vocab_size == 156940
    assert core.llm.lm_head.weight is core.llm.get_input_embeddings().weight
    ids = text_ids(core.tokenizer, "Mi hermana compra pan en el mercado.", core.layout)
    assert ids[0] == 128000 and all(0 <= i < 128000 for i in ids[1:])
    d = costs.Dims.of(core.llm.config, core.whisper.config, cfg.strategy)
    formula = costs.param_counts(d)
    assert (n_params(core.llm), n_params(core.whisper)) == (formula["llm"], formula["whisper_encoder"])
    frozen = sum(p.numel() * p.element_size() for m in (core.llm, core.whisper, core.snac) for p in m.parameters())
    assert frozen == costs.step_memory(d, [costs.utterance(1)], False, snac_params=n_params(core.snac))["frozen_weights"]
    assert core.feature_extractor.feature_size == 128
    assert core.encode_speech([torch.zeros(16000)])[0].shape == (50, d.w_dim)  # 50 Hz, whatever the 30 s padding


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_model_matches_what_autograd_saves(reduced, checkpointing):
    """The forward's saved tensors (parameters excluded, each storage once), through adapter_stage1's real
    forward over the loaded reduced core, against step_memory's activation terms."""
    cfg = reduced_config(reduced, checkpointing)
    core = FrozenCore(cfg.backbones)
    torch.manual_seed(0)
    model = build_strategy(cfg, core).train()
    frames, speech = [150, 120], [7 * 30, 7 * 24]
    offset = core.layout.audio_offset
    batch = Batch(["a", "b"], ["x", "y"], ["es", "it"], [torch.randn(f, core.whisper_dim) for f in frames],
                  [offset + torch.randint(0, 4096, (n,)) + 4096 * (torch.arange(n) % FRAME) for n in speech])
    params = {p.untyped_storage().data_ptr() for m in (model, core.llm, core.whisper) for p in m.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch)
    assert len(out.labels) == sum(n + 1 for n in speech)
    d = costs.Dims.of(core.llm.config, core.whisper.config, cfg.strategy)
    ta = [-(-f // 5) for f in frames]
    samples = [costs.Sample(costs.PROMPT_POSITIONS + a + n, a, n + 1) for a, n in zip(ta, speech)]
    m = costs.step_memory(d, samples, checkpointing)
    analytic = m["llm_activations"] + m["expansion_activations"] + m["adapter_activations"]
    assert analytic == pytest.approx(sum(saved.values()), rel=0.08)


def test_flops_and_memory_model_scale_as_expected():
    d, _ = meta_dims(fsb.REAL)
    short, long = costs.utterance(3.0), costs.utterance(9.0)
    one, two = costs.step_flops(d, [short], True, 1), costs.step_flops(d, [short, short], True, 2)
    assert all(two[k] == pytest.approx(2 * one[k]) for k in one)  # linear in utterances
    on, off = costs.step_flops(d, [long], True, 1), costs.step_flops(d, [long], False, 1)
    assert off["llm_recompute"] == 0 and 0 < on["llm_recompute"] < on["llm_forward"]
    assert 1.2 < on["total"] / off["total"] < 1.45  # checkpointing: one more forward of the layers
    assert on["llm_backward"] < 1.1 * on["llm_forward"]  # input gradients only: no weight-gradient matmuls
    assert on["whisper"] == one["whisper"]  # 30 s of frames whatever the utterance's length
    assert on["llm_forward"] > long.L / short.L * one["llm_forward"]  # attention grows faster than L
    per_target = on["total"] / long.N
    assert 15e9 < per_target < 40e9  # ~6.6 GFLOP per LLM position and pass, x3 passes, + Whisper, head
    card = costs.card_projection(d)
    assert card["llm_positions"] == pytest.approx(0.5e9, rel=0.02)
    assert card["flops"] == pytest.approx(3 * 200_000 * on["total"], rel=0.01)  # 9 s is the card's mean
    mem_on, mem_off = costs.step_memory(d, [long] * 2, True), costs.step_memory(d, [long] * 2, False)
    assert mem_on["llm_activations"] * 5 < mem_off["llm_activations"]
    assert mem_on["frozen_weights"] == pytest.approx(2 * (3.30e9 + 0.637e9), rel=0.01)
    assert costs.expansion_checkpointing(d, [long] * 2)["saved_bytes"] > 0
    assert costs.peak_bf16("NVIDIA H200") == 989e12 and costs.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert costs.peak_bf16("cpu") is None


def test_bench_runs_measured_steps_at_reduced_size(cache, reduced, monkeypatch, capsys):
    """`python -m bench.full_size --reduced --quick --checkpointing on`: a fresh process trains through
    s2s.experiment.train; the measured step has targets, shapes that add up, a peak and a report."""
    import bench.full_size as front
    results = []

    def recorded(command, **kwargs):
        results.append(fs.run_isolated(command, **kwargs))
        return results[-1]

    monkeypatch.setattr(front, "run_isolated", recorded)
    assert front.main(["--reduced", "--quick", "--checkpointing", "on", "--cache", str(cache)]) == 0
    build, r = results
    assert build == {"root": str(reduced), "seconds": None}  # the module's build, reused
    (step,) = r["steps"]
    samples = [costs.Sample(*s) for s in step["samples"]]
    assert step["tokens"] > 0 and sum(s.N for s in samples) == step["tokens"] and step["seconds"] > 0
    assert all(s.L == costs.PROMPT_POSITIONS + s.Ta + s.N - 1 for s in samples) and step["whisper_utterances"] == 2
    counts = costs.param_counts(costs.Dims(**r["dims"]))
    assert r["checkpointing"] and r["peak"] > 0 and r["dims"]["vocab"] == 156940
    assert r["n_trainable"] == counts["adapter"] + counts["expansion"]
    out = capsys.readouterr().out
    assert "target tokens/s" in out and "GFLOP/target token" in out and "H200 at 40% MFU" in out
