"""The miniature (s2s/tiny.py, tiny_codec.py, tiny_tts.py) and the brackets every run reports (s2s/brackets.py).

The session's tiny backbones are the preset's cached build (tests/core_fixtures.py), so these tests
check the very models `make demo` trains on.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from s2s.brackets import FLOOR, TOPLINE, PromptedTTS, bracket, fraction_to_topline, score_brackets, summary_line
from s2s.data.loader import DataConfig, load_examples
from s2s.data.sentences import vocabulary
from s2s.data.synth import MINIATURE_VOICES, MINIATURE_WPM, synthesize_dataset
from s2s.prepare import PreparedExample, make_batch
from s2s.tiny import miniature_report
from s2s.tiny_codec import fit_quantizers, spherical_kmeans
from s2s.tokens import codes_to_tokens

LINE = re.compile(r"^miniature: no-text floor (\d+\.\d+), text topline (\d+\.\d+), this run (\d+\.\d+) "
                  r"\(k0: (\d+\.\d+), (\d+\.\d+), (\d+\.\d+)\)$")


@pytest.fixture(scope="module")
def miniature_speech(tmp_path_factory):
    """16 new miniature-style utterances (a seed no build uses) as Examples."""
    path = synthesize_dataset(tmp_path_factory.mktemp("mini") / "speech", ["es", "it"], n=16, seed=99,
                              style="miniature", progress=False)
    return load_examples(DataConfig(sources=[str(path)], eval_size=1), "train", progress=False)


@pytest.fixture(scope="module")
def items(miniature_speech, tiny_core):
    """Those utterances as prepared examples of the tiny core (no Whisper states: brackets do not listen)."""
    return [PreparedExample(e.key, e.text, e.language, codes_to_tokens(tiny_core.encode_codes(e.target24k),
                                                                       tiny_core.layout),
                            torch.zeros(1, tiny_core.whisper_dim), None) for e in miniature_speech]


def test_the_build_measured_a_tts_model_that_reads(tiny_core, tiny_backbone_cfg):
    report = miniature_report(tiny_backbone_cfg.orpheus)
    assert report is not None, "the tiny build writes miniature.json next to the TTS model"
    m = report["measured"]
    assert m["held_out_utterances"] == 200
    floor, topline = m["no_text"], m["text"]
    # the target: the text is worth at least one nat per coarse code
    assert m["text_gap_k0"] == pytest.approx(floor["eval/loss_k0"] - topline["eval/loss_k0"])
    assert m["text_gap_k0"] >= 1.0, m
    assert topline["eval/acc_k0"] > floor["eval/acc_k0"]
    codec = report["codec"]
    assert min(codec["distinct_codes_per_codebook"]) > 128  # the fitted quantizers use their codebooks
    assert math.isfinite(codec["reconstruction_db"])
    assert set(report["build_seconds"]) >= {"corpus", "codec_fit", "encode", "tts_training", "measure", "total"}


def test_the_loaded_tts_model_reads_speech_it_never_saw(items, tiny_core):
    """Through the path every run uses (FrozenCore, score_brackets), on 16 new utterances."""
    metrics = score_brackets(tiny_core, items, batch_size=8)
    floor, topline = bracket(metrics, FLOOR), bracket(metrics, TOPLINE)
    assert floor["eval/loss_k0"] - topline["eval/loss_k0"] > 0.5, (floor, topline)
    assert floor["eval/tokens"] == topline["eval/tokens"] == sum(len(i.speech_tokens) + 1 for i in items)


def test_prompted_tts_scores_the_speech_ids_and_the_end(items, tiny_core):
    batch = make_batch(items[:3], tiny_core)
    with torch.no_grad():
        with_text, no_text = PromptedTTS(tiny_core, True)(batch), PromptedTTS(tiny_core, False)(batch)
    for out in (with_text, no_text):
        assert len(out.labels) == sum(len(t) + 1 for t in batch.speech_tokens)
        assert int((out.labels == tiny_core.layout.end_of_speech).sum()) == 3
    assert torch.equal(with_text.labels, no_text.labels)
    assert not torch.allclose(with_text.logits, no_text.logits)  # the text changes what the model expects


def test_the_miniature_corpus_is_disjoint_from_the_demo_data(tiny_backbone_cfg, tmp_path):
    """The tiny preset's data is synthesized excluding the TTS corpus' texts (s2s/experiment.py)."""
    from s2s.experiment import ensure_synth_data
    from s2s.experiment_config import build_config

    cfg = build_config("adapter_stage1", "tiny", [f"synth_dir={tmp_path / 'synth'}",
                                                  f"data.sources=[{tmp_path / 'synth'}]", "synth_if_missing=40",
                                                  *(f"backbones.{k}={getattr(tiny_backbone_cfg, k)}"
                                                    for k in ("whisper", "orpheus", "snac"))])
    ensure_synth_data(cfg)
    texts = {e.text for split in ("train", "eval")
             for e in load_examples(DataConfig(sources=[str(tmp_path / "synth")], eval_size=4), split, progress=False)}
    corpus = miniature_report(tiny_backbone_cfg.orpheus)["corpus"]
    assert len(texts) == 40
    assert not texts & (set(corpus["train_texts"]) | set(corpus["held_out_texts"]))


def test_miniature_speech_is_one_voice_per_language_at_one_rate(tmp_path):
    import datasets

    path = synthesize_dataset(tmp_path / "m", ["es", "it"], n=6, seed=3, style="miniature", progress=False)
    ds = datasets.load_from_disk(str(path))
    for row in ds.remove_columns("audio"):
        assert row["voice"] == MINIATURE_VOICES[row["language"]]
        assert row["speed"] == pytest.approx(MINIATURE_WPM / 175, abs=1e-3)
        words = row["text"].rstrip(".").lower().replace("'", "' ").split()
        assert set(words) <= set(vocabulary(row["language"]))


def test_fitted_quantizers_use_their_codebooks(tmp_path):
    from snac import SNAC

    from s2s.tiny import SNAC_CONFIG

    path = synthesize_dataset(tmp_path / "speech", ["es", "it"], n=120, seed=98, style="miniature", progress=False)
    speech = load_examples(DataConfig(sources=[str(path)], eval_size=1), "train", progress=False)
    torch.manual_seed(0)
    snac = SNAC(**SNAC_CONFIG).eval()
    waves = [e.target24k.numpy() for e in speech]

    def distinct() -> list[int]:  # codes in use per codebook, each utterance encoded alone (as preparation does)
        with torch.no_grad():
            codes = [snac.encode(torch.from_numpy(w).view(1, 1, -1)) for w in waves]
        return [len(set(torch.cat([c[k].flatten() for c in codes]).tolist())) for k in range(3)]

    before = distinct()
    used = fit_quantizers(snac, waves)
    after = distinct()
    assert min(used) > 200  # the fit's own assignment
    assert after[0] > 3 * before[0] and after[0] >= 64, (before, after)


def test_spherical_kmeans_finds_directions():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3)
    x = torch.cat([c * (1 + 2 * torch.rand(50, 1, generator=g)) + 0.05 * torch.randn(50, 3, generator=g) for c in centres])
    found, assign = spherical_kmeans(x, 3, 10, g)
    assert sorted((found @ centres.T).argmax(1).tolist()) == [0, 1, 2]
    assert all(len(set(assign[i * 50:(i + 1) * 50].tolist())) == 1 for i in range(3))


def test_fraction_and_summary_line():
    assert fraction_to_topline(5.0, 6.0, 4.0) == pytest.approx(0.5)
    assert fraction_to_topline(6.5, 6.0, 4.0) == pytest.approx(-0.25)
    assert math.isnan(fraction_to_topline(5.0, 5.0, 5.0))
    metrics = {f"brackets/{FLOOR}/loss": 5.5, f"brackets/{FLOOR}/loss_k0": 5.2,
               f"brackets/{TOPLINE}/loss": 4.0, f"brackets/{TOPLINE}/loss_k0": 3.1}
    line = summary_line(metrics, {"eval/loss": 4.75, "eval/loss_k0": 4.0})
    assert LINE.match(line).groups() == ("5.500", "4.000", "4.750", "5.200", "3.100", "4.000")


def test_tiny_names_the_brackets_as_brackets_does():
    from s2s.tiny import FLOOR_KEY, TOPLINE_KEY

    assert (FLOOR_KEY, TOPLINE_KEY) == (FLOOR, TOPLINE)  # a copy (an import would be a cycle): kept equal here


def test_run_ends_with_the_miniature_line_and_brackets_are_scored_once(synth_dataset, tiny_backbone_cfg,
                                                                       prepared_cache_dir, tmp_path, capsys,
                                                                       monkeypatch):
    """`python -m experiments.run` (what `make demo` runs) ends with the line a script reads; a second run on
    the same eval data and backbones reuses the brackets instead of scoring the frozen LM again."""
    from experiments import run
    from s2s import experiment
    from tests.core_fixtures import short_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment._BRACKETS.clear()
    calls = []
    score = experiment.score_brackets
    monkeypatch.setattr(experiment, "score_brackets", lambda *a, **k: calls.append(1) or score(*a, **k))
    lines = []
    for seed in (0, 1):
        args = short_run(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, tmp_path / "mlruns",
                         tmp_path / f"out{seed}", **{"train.max_steps": 1, "train.seed": seed})
        assert run.main(["adapter_stage1", *args, "--no-progress"]) == 0
        lines.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(calls) == 1
    floors = [LINE.match(line).groups()[::3] for line in lines]  # (floor, k0 floor) of each run
    assert floors[0] == floors[1]
    x0, y0 = (float(v) for v in LINE.match(lines[0]).groups()[3:5])
    assert x0 > y0
