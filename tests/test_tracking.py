"""s2s.tracking: run names, source tags, dataset inputs and the run look-ups, on a SQLite store."""
from __future__ import annotations

import json
import sys

import pytest
from mlflow.tracking import MlflowClient

from s2s import tracking
from s2s.tracking import (Run, TrackingConfig, find_finished_run, find_study_parent,
                          git_commit)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating one (its schema migrations) takes seconds."""
    return tmp_path_factory.mktemp("mlruns")


@pytest.fixture
def cfg(store, request, monkeypatch):
    """A config with an experiment of its own per test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return TrackingConfig(experiment=request.node.name, root=str(store))


def _client(cfg: TrackingConfig) -> MlflowClient:
    return MlflowClient(tracking.tracking_uri(cfg))


def test_run_name_comes_from_the_config_else_the_argument(cfg):
    with Run(cfg, run_name="adapter_stage1 tiny seed0") as run:
        pass
    assert run.client.get_run(run.run_id).info.run_name == "adapter_stage1 tiny seed0"
    cfg.run_name = "mine"
    with Run(cfg, run_name="adapter_stage1 tiny seed0") as run:
        pass
    assert run.client.get_run(run.run_id).info.run_name == "mine"


def test_a_new_run_has_source_tags_and_explicit_tags_win(cfg):
    with Run(cfg, {"s2s.strategy": "x"}, source="python -m experiments.run") as run:
        pass
    tags = run.client.get_run(run.run_id).data.tags
    assert tags["mlflow.source.name"] == "python -m experiments.run"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["s2s.strategy"] == "x"
    if git_commit() != "unknown":
        assert tags["mlflow.source.git.commit"] == git_commit()
    with Run(cfg, {"mlflow.source.name": "custom"}) as run:
        pass
    assert run.client.get_run(run.run_id).data.tags["mlflow.source.name"] == "custom"


def test_command_name_of_a_module_and_of_a_script(monkeypatch):
    main = type(sys)("__main__")
    main.__spec__ = type("Spec", (), {"name": "experiments.run"})()
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert tracking.command_name() == "python -m experiments.run"
    main.__spec__ = None
    monkeypatch.setattr(sys, "argv", ["scripts/go.py", "--x"])
    assert tracking.command_name() == "scripts/go.py"


def test_log_dataset_records_a_run_input(cfg, tmp_path):
    data = tmp_path / "synth"
    data.mkdir()
    with Run(cfg) as run:
        run.log_dataset("synth es+it", str(data), split="train", n_samples=216)
        run.log_dataset("mls", "facebook/multilingual_librispeech:spanish", split="test", n_samples=50,
                        digest="abc123", context="evaluation")
    inputs = run.client.get_run(run.run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    local, hub = by_name["synth es+it"], by_name["mls"]
    assert local.dataset.source_type == "local"
    assert json.loads(local.dataset.source) == {"uri": str(data.resolve())}
    assert json.loads(local.dataset.profile) == {"split": "train", "num_rows": 216}
    assert {t.key: t.value for t in local.tags} == {"mlflow.data.context": "training"}
    assert len(local.dataset.digest) == 8
    assert hub.dataset.source_type == "hugging_face"
    src = json.loads(hub.dataset.source)
    assert (src["path"], src["config_name"], src["split"]) == ("facebook/multilingual_librispeech", "spanish", "test")
    assert hub.dataset.digest == "abc123"
    assert {t.key: t.value for t in hub.tags} == {"mlflow.data.context": "evaluation"}


def test_the_default_digest_depends_on_split_and_size(tmp_path):
    a = tracking._SplitDataset(tracking.dataset_source(str(tmp_path)), "d", "train", 100)
    assert a.digest == tracking._SplitDataset(tracking.dataset_source(str(tmp_path)), "d", "train", 100).digest
    assert a.digest != tracking._SplitDataset(tracking.dataset_source(str(tmp_path)), "d", "train", 99).digest
    assert a.digest != tracking._SplitDataset(tracking.dataset_source(str(tmp_path)), "d", "eval", 100).digest
    assert tracking.dataset_source("https://example.org/d.tar").to_json() == '{"url": "https://example.org/d.tar"}'


def _finished(cfg, chash: str, checkpoint=None, status="FINISHED") -> str:
    tags = {"s2s.config_hash": chash, **({"s2s.checkpoint": str(checkpoint)} if checkpoint else {})}
    run = Run(cfg, tags)
    run.end(status)
    return run.run_id


def test_find_finished_run_needs_the_hash_the_status_and_the_checkpoint(cfg, tmp_path):
    client = _client(cfg)
    assert find_finished_run(client, "no such experiment", "h") is None
    good = tmp_path / "good"
    good.mkdir()
    (good / "model.safetensors").write_bytes(b"x")
    reusable = _finished(cfg, "h1", good)
    _finished(cfg, "h1", tmp_path / "deleted")  # newer, but its checkpoint is gone
    _finished(cfg, "h1", good, status="FAILED")
    _finished(cfg, "h2", good)
    assert find_finished_run(client, cfg.experiment, "h1").info.run_id == reusable
    assert find_finished_run(client, cfg.experiment, "h3") is None
    _finished(cfg, "h4", tmp_path / "deleted")
    assert find_finished_run(client, cfg.experiment, "h4") is None


def test_find_study_parent_takes_the_earliest_of_two(cfg):
    client = _client(cfg)
    assert find_study_parent(client, cfg.experiment, "s1") is None
    parent = {"s2s.study": "s1", "s2s.search": "parent"}
    first = Run(cfg, parent).run_id
    second = Run(cfg, parent).run_id
    Run(cfg, {"s2s.study": "s1", "s2s.search": "trial"})
    Run(cfg, {"s2s.study": "s2", "s2s.search": "parent"})
    start = {r: client.get_run(r).info.start_time for r in (first, second)}
    expected = min((start[r], r) for r in (first, second))[1]  # the same millisecond: the smaller id
    assert find_study_parent(client, cfg.experiment, "s1").info.run_id == expected
    client.delete_run(expected)  # a worker that lost the race deletes its own
    assert find_study_parent(client, cfg.experiment, "s1").info.run_id == ({first, second} - {expected}).pop()


def test_values_with_quotes_are_searched_literally(cfg):
    client = _client(cfg)
    parent = Run(cfg, {"s2s.study": "it's", "s2s.search": "parent"}).run_id
    assert find_study_parent(client, cfg.experiment, "it's").info.run_id == parent
    with pytest.raises(ValueError):
        find_study_parent(client, cfg.experiment, "both ' and \"")
