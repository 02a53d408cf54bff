"""`python -m evaluation.score`: a trained tiny checkpoint scored end to end, and hostile checkpoints."""
from __future__ import annotations

import csv
import json
import pickle
import shutil

import pytest
import soundfile as sf
import torch

from evaluation.score import main as score_main
from tests.core_fixtures import train_tiny
from tests.test_run_mlflow import overrides as run_overrides

SCORE_ARGS = ["--n", "3", "--no-progress", "generation.max_new_tokens=21", "generation.batch_size=2"]


class Payload:
    """Unpickling this creates `path`: the proof that a loader executed code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_dataset, tiny_backbone_cfg, tiny_core, prepared_cache_dir):
    """(checkpoint dir, run id, tracking uri) of a 2-step adapter_stage1 run on the tiny preset."""
    result = train_tiny(tmp_path_factory, synth_dataset, tiny_backbone_cfg, prepared_cache_dir, "score")
    return result["checkpoint"], result["run_id"], result["tracking_uri"]


@pytest.fixture(scope="module")
def scored(trained, tmp_path_factory, capsys_module):
    """Score a copy of the checkpoint that also holds a booby-trapped trainer_state.pt."""
    ckpt, run_id, uri = trained
    copy = tmp_path_factory.mktemp("ckpt") / "final"
    shutil.copytree(ckpt, copy)
    marker = copy.parent / "executed"
    (copy / "trainer_state.pt").write_bytes(pickle.dumps(Payload(marker)))
    out = tmp_path_factory.mktemp("scored") / "report"
    code = score_main([str(copy / "model.safetensors"), *SCORE_ARGS, "--out", str(out)])  # the file works too
    return code, out, marker, capsys_module.readouterr()


@pytest.fixture(scope="module")
def capsys_module():
    """Module-scoped stdout/stderr capture (pytest's capsys is function-scoped)."""
    import io
    import sys

    class Capture:
        def __init__(self):
            self.out, self.err = io.StringIO(), io.StringIO()

        def readouterr(self):
            return type("Captured", (), {"out": self.out.getvalue(), "err": self.err.getvalue()})()

    cap = Capture()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", cap.out)
        mp.setattr(sys, "stderr", cap.err)
        yield cap


def test_score_writes_summary_rows_wavs_and_report(scored):
    code, out, marker, captured = scored
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["strategy"] == "adapter_stage1" and summary["step"] == 2
    assert summary["checkpoint"].endswith("final")
    assert set(summary["scores"]) == {"generated", "reference", "snac_roundtrip", "other_speaker"}
    for system in ("generated", "reference", "snac_roundtrip"):
        assert {"wer_pooled", "wer_mean", "cer_pooled", "cer_mean", "mos_dnsmos_mean"} <= set(summary["scores"][system])
        assert summary["scores"][system]["n"] == 3
    # Speaker similarity compares two different waves: not the reference with itself; the floor has it alone.
    assert "spk_sim_mean" in summary["scores"]["generated"] and "spk_sim_mean" in summary["scores"]["snac_roundtrip"]
    assert "spk_sim_mean" not in summary["scores"]["reference"]
    assert set(summary["scores"]["other_speaker"]) == {"n", "spk_sim_mean", "spk_sim_std"}
    assert {"eval/tf/loss", "eval/tf/acc_k0"} <= set(summary["teacher_forced"])
    rows = list(csv.DictReader(open(out / "utterances.csv", encoding="utf-8")))
    assert len(rows) == 3
    for row in rows:
        wave, sr = sf.read(out / row["wav"])
        assert sr == 24000 and len(wave) == 2048 * (int(row["generated_tokens"]) // 7)
        assert int(row["generated_tokens"]) <= 21 and row["reference_text"]
        reference, sr = sf.read(out / row["reference_wav"])
        assert sr == 24000 and abs(len(reference) - float(row["reference_seconds"]) * 24000) <= 12  # ms rounding
        assert float(row["generated_wer"]) >= 0
    assert (out / "scores.png").stat().st_size > 0
    assert "reference via SNAC (topline)" in captured.out and "WER, whisper normalizer" in captured.out
    assert "speaker similarity, resemblyzer" in captured.out and "MOS (DNSMOS OVRL), speechmos" in captured.out
    assert "another speaker's utterance (floor)" in captured.out
    assert "tiny preset: random backbones and a tiny random Whisper as ASR" in captured.out  # labelled honestly


def test_score_never_unpickles_the_checkpoint_trainer_state(scored):
    _, _, marker, _ = scored
    assert not marker.exists()


def test_score_logs_eval_metrics_and_outputs_to_the_training_run(scored, trained):
    from mlflow.tracking import MlflowClient

    _, out, _, _ = scored
    _, run_id, uri = trained
    client = MlflowClient(uri)
    history = client.get_metric_history(run_id, "eval/wer")
    assert [m.step for m in history] == [2]
    summary = json.loads((out / "summary.json").read_text())
    assert history[0].value == pytest.approx(summary["scores"]["generated"]["wer_pooled"])
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval/spk_sim"] == pytest.approx(summary["scores"]["generated"]["spk_sim_mean"])
    assert metrics["eval/mos_dnsmos"] == pytest.approx(summary["scores"]["generated"]["mos_dnsmos_mean"])
    assert metrics["eval/other_speaker/spk_sim_mean"] == pytest.approx(summary["scores"]["other_speaker"]["spk_sim_mean"])
    assert client.get_run(run_id).data.metrics["eval/tf/loss"] == pytest.approx(summary["teacher_forced"]["eval/tf/loss"])
    artifacts = [a.path for a in client.list_artifacts(run_id, f"eval/{out.name}")]
    assert f"eval/{out.name}/summary.json" in artifacts and f"eval/{out.name}/utterances.csv" in artifacts
    assert client.get_run(run_id).info.status == "FINISHED"  # scoring does not reopen or re-end the run


# --- hostile checkpoints: a clear error, nothing executed --------------------------------------

def run_score(args, capsys):
    code = score_main([*args, "--no-progress"])
    return code, capsys.readouterr().err


def test_a_pickle_file_is_refused_without_running_its_payload(tmp_path, capsys):
    marker = tmp_path / "executed"
    evil = tmp_path / "ckpt.pt"
    torch.save({"state": Payload(marker)}, evil)
    code, err = run_score([str(evil)], capsys)
    assert code == 2 and "not an s2s checkpoint" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_pickle_disguised_as_safetensors_is_refused(trained, tmp_path, capsys):
    marker = tmp_path / "executed"
    bad = tmp_path / "final"
    shutil.copytree(trained[0], bad)
    (bad / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    code, err = run_score([str(bad)], capsys)
    assert code == 2 and "model.safetensors" in err and "safetensors" in err
    assert not marker.exists()


def test_truncated_weights_are_a_clear_error(trained, tmp_path, capsys):
    bad = tmp_path / "final"
    shutil.copytree(trained[0], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, err = run_score([str(bad)], capsys)
    assert code == 2 and "damaged" in err


def _edit_meta(src, dst, edit):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    edit(meta)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def test_unknown_strategy_names_the_available_ones(trained, tmp_path, capsys):
    bad = _edit_meta(trained[0], tmp_path / "final", lambda m: m["config"].update(strategy_name="adapter_stage2"))
    code, err = run_score([str(bad)], capsys)
    assert code == 2 and "unknown strategy 'adapter_stage2'" in err and "adapter_stage1" in err


def test_weights_of_another_strategy_are_refused(trained, tmp_path, capsys):
    from s2s.experiment_config import as_dict, build_config

    def as_istlm(meta):  # a coherent istlm config (same backbones and data) over adapter_stage1 weights
        istlm = as_dict(build_config("istlm_interleaved", "tiny"))
        meta["config"] = {**meta["config"], "strategy_name": "istlm_interleaved", "strategy": istlm["strategy"]}
    bad = _edit_meta(trained[0], tmp_path / "final", as_istlm)
    code, err = run_score([str(bad)], capsys)
    assert code == 2 and "does not fit strategy 'istlm_interleaved'" in err and "unexpected ['expansion." in err


def test_a_config_that_does_not_fit_its_strategy_is_named(trained, tmp_path, capsys):
    bad = _edit_meta(trained[0], tmp_path / "final", lambda m: m["config"].update(strategy_name="istlm_interleaved"))
    code, err = run_score([str(bad)], capsys)
    assert code == 2 and "config in meta.json cannot be rebuilt" in err and "strategy.expansion_width" in err


def test_mis_shaped_tensor_names_expected_and_found(trained, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "final"
    shutil.copytree(trained[0], bad)
    weights = load_file(str(bad / "model.safetensors"))
    name = "adapter.proj.0.weight"
    weights[name] = weights[name][:, :-5].contiguous()
    save_file(weights, str(bad / "model.safetensors"))
    code, err = run_score([str(bad)], capsys)
    assert code == 2 and name in err and "checkpoint (" in err and "vs model (" in err
    del weights[name]
    save_file(weights, str(bad / "model.safetensors"))
    code, err = run_score([str(bad)], capsys)
    assert code == 2 and f"missing ['{name}']" in err


def test_override_typo_suggests_a_key_of_either_config(trained, capsys):
    code, err = run_score([str(trained[0]), "generation.temprature=0"], capsys)
    assert code == 2 and "generation.temperature" in err
    code, err = run_score([str(trained[0]), "data.eval_sise=3"], capsys)
    assert code == 2 and "data.eval_size" in err


def test_unknown_asr_backend_is_a_clear_error(trained, capsys):
    code, err = run_score([str(trained[0]), "--asr", "whisperx", "--n", "1", "generation.max_new_tokens=7"], capsys)
    assert code == 2 and "unknown ASR backend 'whisperx'" in err and "whisper" in err


def test_an_unreachable_store_fails_before_any_generation(trained, tmp_path, capsys):
    bad = _edit_meta(trained[0], tmp_path / "final", lambda m: m.update(mlflow_run_id="0" * 32))  # run not there
    out = tmp_path / "report"
    code, err = run_score([str(bad), "tracking.uri=http://127.0.0.1:9", "--out", str(out)], capsys)
    assert code == 2 and "http://127.0.0.1:9" in err and "Traceback" not in err
    assert not out.exists()  # nothing was generated


def test_a_missing_data_source_is_named(trained, tmp_path, capsys):
    code, err = run_score([str(trained[0]), "--data", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and str(tmp_path / "nowhere") in err and "Traceback" not in err


def test_a_gatefusion_checkpoint_loads_without_its_stage1_checkpoint(trained, tmp_path, synth_dataset,
                                                                    tiny_backbone_cfg, prepared_cache_dir):
    """Its weights hold stage 1 and its meta stage 1's architecture: init_from may be gone."""
    from safetensors.torch import load_file

    from s2s.experiment_config import build_config
    from s2s.experiment import load_trained, train

    stage1 = tmp_path / "stage1"
    shutil.copytree(trained[0], stage1)
    cfg = build_config("gatefusion_stage2", "tiny", run_overrides(
        synth_dataset, tiny_backbone_cfg, prepared_cache_dir, tmp_path / "mlruns", tmp_path / "out",
        **{"train.max_steps": 1, "strategy.init_from": stage1}))
    ckpt = train(cfg, progress=False)["checkpoint"]
    shutil.rmtree(stage1)
    _, _, model, _ = load_trained(str(ckpt))
    saved = load_file(str(ckpt / "model.safetensors"))
    assert any(k.startswith("stage1.expansion.") for k in saved)
    for name, tensor in model.trainable_state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_toplines_transcribe_the_reference_and_its_snac_round_trip(synth_examples, prepared_items, tiny_core,
                                                                   monkeypatch):
    """With an ASR that 'transcribes' a wave as its length and language, each system gets its own audio:
    the generated wave, the reference, and the reference's SNAC codes decoded (whole 2048-sample frames);
    the other-speaker floor gets another speaker's reference and no transcript."""
    import dataclasses

    import evaluation.scoring as scoring
    from evaluation.metrics import METRICS
    from evaluation.scoring import ScoreConfig, scored_systems
    from s2s.tokens import codes_to_tokens

    class LengthASR:
        def transcribe(self, waves, sample_rate, languages):
            assert sample_rate == 24000
            return [f"{len(w)} {lang}" for w, lang in zip(waves, languages)]

    monkeypatch.setattr(scoring, "_asr", lambda *a: LengthASR())
    examples = [dataclasses.replace(e, speaker=v) for e, v in zip(synth_examples[1][:3], ["es+m1", "es+m1", "it+f2"])]
    items = prepared_items[8:11]
    generated = [{"wave": torch.zeros(2048 * 3)}, {"wave": torch.zeros(0)}, {"wave": torch.zeros(2048)}]
    metrics = list(METRICS.values())
    systems, how = scored_systems(examples, items, generated, tiny_core, ScoreConfig(), metrics, None, progress=False)
    hyps = {name: s.texts for name, s in systems.items()}
    assert hyps["generated"] == [f"6144 {examples[0].language}", "", f"2048 {examples[2].language}"]  # empty: no ASR
    assert hyps["reference"] == [f"{len(e.target24k)} {e.language}" for e in examples]
    frames = [len(it.speech_tokens) // 7 for it in items]
    assert hyps["snac_roundtrip"] == [f"{2048 * n} {e.language}" for n, e in zip(frames, examples)]
    assert [len(w) for w in systems["snac_roundtrip"].waves] == [2048 * n for n in frames]
    # the floor: each reference against the next utterance by another speaker; no transcript, pairs only
    floor = systems["other_speaker"]
    assert floor.texts is None and floor.pairs_only
    assert [w is examples[j].target24k for w, j in zip(floor.waves, [2, 2, 0])] == [True] * 3
    assert "different speaker" in how and not systems["reference"].paired
    # the prepared targets are SNAC's codes of the reference: decoding them is the encode/decode round trip
    # (SNAC's decoder adds noise, so the codes are compared, not the waves)
    assert torch.equal(items[0].speech_tokens, codes_to_tokens(tiny_core.encode_codes(examples[0].target24k),
                                                               tiny_core.layout))
    alone, _ = scored_systems(examples, items, generated, tiny_core, ScoreConfig(toplines=False), metrics, None, False)
    assert set(alone) == {"generated"}
    # no text metric chosen: nothing is transcribed
    wer_free = [METRICS["spk_sim"]]
    monkeypatch.setattr(scoring, "_asr", lambda *a: pytest.fail("ASR built though no metric reads text"))
    quiet, _ = scored_systems(examples, items, generated, tiny_core, ScoreConfig(), wer_free, None, False)
    assert all(s.texts is None for s in quiet.values())


def test_other_speaker_choice():
    from types import SimpleNamespace

    from evaluation.scoring import other_speaker

    ex = lambda *speakers: [SimpleNamespace(speaker=s) for s in speakers]  # noqa: E731
    assert other_speaker(ex("a", "a", "b", "c"))[0] == [2, 2, 3, 0]
    idx, how = other_speaker(ex("a", "a"))
    assert idx is None and "every eval utterance is by speaker a" in how
    idx, how = other_speaker(ex("", "", ""))
    assert idx == [1, 2, 0] and "speakers unknown (set data.speaker_column)" in how
    assert other_speaker(ex("a"))[0] is None
