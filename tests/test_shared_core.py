"""Runs in one process (a comparison, a search) share one frozen core, loaded once; a strategy that
changes the core (LoRA) leaves it to itself, so the next run computes what it would in a fresh process."""
from __future__ import annotations

import pytest
import torch

from s2s import experiment
from s2s.experiment import train
from s2s.experiment_config import build_config
from tests.core_fixtures import short_run


@pytest.fixture
def run(tmp_path, monkeypatch, synth_dataset, tiny_backbone_cfg, prepared_items, prepared_cache_dir):
    """run(strategy, name, **overrides) -> train's result, in tmp_path's MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def go(strategy: str, name: str, **extra):
        overrides = short_run(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, tmp_path / "mlruns",
                              tmp_path / name, **{"train.progress": "false", **extra})
        return train(build_config(strategy, "tiny", overrides), progress=False)

    return go


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result["model"].trainable_state_dict().items()}


def test_runs_share_one_core_and_a_lora_run_leaves_a_fresh_one_to_the_next(run):
    experiment._CORES.clear()
    fresh = run("adapter_stage1", "a1")  # as in a fresh process: the core is loaded now
    again = run("adapter_stage1", "a2")
    assert again["model"].core is fresh["model"].core  # loaded once
    assert all(torch.equal(a, b) for a, b in zip(weights(fresh).values(), weights(again).values()))

    lora = run("istlm_interleaved", "lora", **{"strategy.lora_rank": 4})
    assert lora["model"].core is fresh["model"].core and lora["model"].core.adapted_by == "istlm_interleaved"
    after = run("adapter_stage1", "a3")
    assert after["model"].core is not lora["model"].core and not getattr(after["model"].core, "adapted_by", None)
    assert list(experiment._CORES.values()) == [after["model"].core]  # the tainted one was let go
    expected, got = weights(fresh), weights(after)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert after["final_eval"]["eval/loss"] == fresh["final_eval"]["eval/loss"]


def test_runs_share_one_prepared_dataset(run, monkeypatch):
    from s2s import shards

    experiment._PREPARED.clear()
    calls = []
    real = shards.prepare_split
    monkeypatch.setattr(experiment, "prepare_split", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    first = run("adapter_stage1", "d1")
    second = run("adapter_stage1", "d2", **{"train.lr": 1e-4})  # another run of a comparison or a search
    assert calls == ["train", "eval"]  # prepared (opened) once per process
    assert second["eval_items"] is first["eval_items"]
    run("adapter_stage1", "d3", **{"data.max_samples": 5})  # other data: prepared for itself
    assert calls == ["train", "eval", "train", "eval"]
