"""End to end: a short real run of `experiments.run.train` on the tiny preset, read back from MLflow."""

import json
import re

from pathlib import Path

import pytest

from tests.core_fixtures import short_run
import yaml

from s2s.experiment_config import build_config
from s2s.experiment import train


def overrides(synth_dataset, tiny_backbone_cfg, cache_dir, root, out_dir, **extra):
    return short_run(synth_dataset, tiny_backbone_cfg, cache_dir, root, out_dir,
                     **{"train.eval_every": 2, "train.progress": "false", **extra})


@pytest.fixture(scope="module")
def tracking_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow_root")


@pytest.fixture(scope="module")
def no_env_uri():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="module")
def finished_run(no_env_uri, tracking_root, tmp_path_factory, synth_dataset, tiny_backbone_cfg, tiny_core,
                 prepared_cache_dir):
    out = tmp_path_factory.mktemp("run_out") / "out"
    cfg = build_config("adapter_stage1", "tiny", overrides(synth_dataset, tiny_backbone_cfg, prepared_cache_dir,
                                                           tracking_root, out, **{"tracking.run_name": "ok",
                                                                                  "listen": 2}))
    result = train(cfg, progress=False)
    from mlflow.tracking import MlflowClient

    return result, MlflowClient(result["tracking_uri"]), out


def test_store_lives_under_tracking_root(finished_run, tracking_root):
    result, _, _ = finished_run
    db = tracking_root / "mlflow.db"
    assert result["tracking_uri"] == f"sqlite:///{db}"
    assert result["tracking_uri"].startswith("sqlite:////")
    assert db.is_file()


def test_run_finished_with_params_and_tags(finished_run, tiny_backbone_cfg):
    result, client, _ = finished_run
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert float(params["train.lr"]) == pytest.approx(1e-3)
    assert params["train.max_steps"] == "3" and params["train.batch_size"] == "2"
    assert params["strategy.expansion_width"] == "64" and params["strategy_name"] == "adapter_stage1"
    assert int(params["n_trainable_params"]) == result["n_trainable"] > 0
    assert tags["s2s.strategy"] == "adapter_stage1" and tags["s2s.preset"] == "tiny"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"]), tags["mlflow.source.git.commit"]
    assert tags["s2s.backbone.whisper"] == tiny_backbone_cfg.whisper
    assert tags["s2s.backbone.orpheus"] == tiny_backbone_cfg.orpheus
    assert tags["s2s.backbone.snac"] == tiny_backbone_cfg.snac
    assert tags["mlflow.runName"] == "ok"


def test_the_final_model_can_be_heard_from_the_run(finished_run):
    """listen=2: two eval utterances spoken greedily by the final model, beside their SNAC-decoded targets,
    are artifacts of the run (listen/), so runs can be listened to side by side in the MLflow UI."""
    import soundfile as sf

    result, client, _ = finished_run
    names = sorted(a.path for a in client.list_artifacts(result["run_id"], "listen"))
    keys = [it.key for it in result["eval_items"][:2]]
    assert names == sorted(f"listen/{i:02d}-{k}-{kind}.wav" for i, k in enumerate(keys)
                           for kind in ("generated", "target"))
    local = Path(client.download_artifacts(result["run_id"], "listen"))
    longest = max(len(it.speech_tokens) for it in result["eval_items"][:2])  # bounds generation, batched
    for i, it in enumerate(result["eval_items"][:2]):
        target, sr = sf.read(local / f"{i:02d}-{it.key}-target.wav")
        assert sr == 24000 and len(target) == 2048 * (len(it.speech_tokens) // 7)
        generated, _ = sf.read(local / f"{i:02d}-{it.key}-generated.wav")
        assert len(generated) % 2048 == 0 and 0 < len(generated) <= 2048 * ((2 * longest) // 7 + 4)


def test_run_follows_mlflow_conventions(finished_run, synth_dataset):
    """Source tags a client-created run lacks by itself, and the data as run inputs."""
    result, client, _ = finished_run
    run = client.get_run(result["run_id"])
    tags = run.data.tags
    assert tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    inputs = run.inputs.dataset_inputs
    contexts = sorted(next(t.value for t in i.tags if t.key == "mlflow.data.context") for i in inputs)
    assert contexts == ["evaluation", "training"]
    for i in inputs:
        assert i.dataset.name == synth_dataset.name and str(synth_dataset.resolve()) in i.dataset.source


def test_params_and_meta_name_the_folder_really_used(no_env_uri, tracking_root, synth_dataset, tiny_backbone_cfg,
                                                    prepared_cache_dir, tmp_path, monkeypatch):
    """With the default out_dir, the run's folder is outputs/<strategy>/<run id>: the logged config
    and meta.json say so (they once said "outputs" while the checkpoints went one level down)."""
    monkeypatch.chdir(tmp_path)
    cfg = build_config("adapter_stage1", "tiny", overrides(synth_dataset, tiny_backbone_cfg, prepared_cache_dir,
                                                           tracking_root, "outputs", **{"train.max_steps": 1}))
    result = train(cfg, progress=False)
    from mlflow.tracking import MlflowClient

    folder = f"outputs/adapter_stage1/{result['run_id']}"
    run = MlflowClient(result["tracking_uri"]).get_run(result["run_id"])
    assert run.data.params["train.out_dir"] == folder
    assert run.data.tags["mlflow.runName"] == "adapter_stage1 tiny seed0"  # readable, not MLflow's random name
    meta = json.loads((tmp_path / folder / "final" / "meta.json").read_text())
    assert meta["config"]["train"]["out_dir"] == folder


def test_metric_histories(finished_run):
    result, client, _ = finished_run
    rid = result["run_id"]

    def steps(key):
        return sorted(m.step for m in client.get_metric_history(rid, key))

    assert result["steps"] == 3
    assert steps("train/loss") == [1, 2, 3]
    assert steps("train/lr") == [1, 2, 3] and steps("train/grad_norm") == [1, 2, 3]
    assert steps("eval/loss") == [0, 2, 3]  # step 0, every eval_every=2, and the end
    assert steps("eval/loss_k0") == [0, 2, 3]
    for bracket in ("no_text", "text"):  # the frozen LM's brackets, scored once before training
        assert steps(f"brackets/{bracket}/loss") == [0] and steps(f"brackets/{bracket}/loss_k0") == [0]
    assert result["brackets"]["brackets/text/loss"] != result["brackets"]["brackets/no_text/loss"]
    loss = client.get_metric_history(rid, "train/loss")
    assert all(0 < m.value < 50 for m in loss)
    # skipped-sample counts and data sizes, logged once before training
    data = client.get_run(rid).data.metrics
    assert data["skipped/total"] == 0 and "skipped/unreadable" in data
    assert data["data/train_samples"] == 8 and data["data/eval_samples"] == 4
    assert data["eval/tokens"] > 0 and "time/wall_seconds" in data
    final = result["final_eval"]
    assert data["eval/loss"] == pytest.approx(final["eval/loss"])


def test_artifacts_hold_config_and_checkpoint(finished_run, tmp_path):
    import mlflow

    result, client, out = finished_run
    rid, uri = result["run_id"], result["tracking_uri"]
    top = {f.path for f in client.list_artifacts(rid)}
    assert {"config.yaml", "checkpoint"} <= top
    ckpt = {f.path for f in client.list_artifacts(rid, "checkpoint")}
    assert {"checkpoint/model.safetensors", "checkpoint/meta.json"} <= ckpt

    config = yaml.safe_load(open(mlflow.artifacts.download_artifacts(
        run_id=rid, artifact_path="config.yaml", dst_path=str(tmp_path), tracking_uri=uri)))
    assert config["strategy_name"] == "adapter_stage1" and config["train"]["max_steps"] == 3

    meta = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=rid, artifact_path="checkpoint/meta.json", dst_path=str(tmp_path), tracking_uri=uri)).read())
    assert meta["mlflow_run_id"] == rid
    assert meta["strategy"] == "adapter_stage1" and meta["step"] == 3
    assert meta["tracking_uri"] == uri

    # the local checkpoint is the one logged, and it loads
    from s2s.checkpoint import load_checkpoint

    assert result["checkpoint"] == out / "final"
    weights, local_meta = load_checkpoint(result["checkpoint"])
    assert local_meta == meta
    assert sum(t.numel() for t in weights.values()) == result["n_trainable"]


def test_failed_data_ends_the_run_failed(no_env_uri, tracking_root, tmp_path, tiny_backbone_cfg, synth_dataset,
                                         prepared_cache_dir):
    missing = tmp_path / "no_such_dataset"
    cfg = build_config("adapter_stage1", "tiny", overrides(synth_dataset, tiny_backbone_cfg, prepared_cache_dir,
                                                           tracking_root, tmp_path / "out",
                                                           **{"data.sources": missing, "tracking.run_name": "bad"}))
    from s2s.data.loader import DataSourceError

    with pytest.raises(DataSourceError, match="no_such_dataset"):
        train(cfg, progress=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracking_root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s2s")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'bad'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert "DataSourceError" in run.data.tags["s2s.failure"] and "no_such_dataset" in run.data.tags["s2s.failure"]
    assert not (tmp_path / "out").exists()  # nothing trained, nothing saved
