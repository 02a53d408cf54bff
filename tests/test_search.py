"""Hyperparameter search (experiments.search): space checks, pruning, MLflow layout, workers, resume.

The searches train the tiny preset for a few steps on the session's 12-utterance synth dataset with
the session's tiny backbones and prepared-item cache (tests/conftest.py, tests/core_fixtures.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.core_fixtures import short_run
import yaml

from experiments import search
from s2s.config import ConfigError
from s2s.search.objective import Search
from s2s.search.report import summarize
from s2s.search.space import Param, merge_specs, parse_param, parse_space

STRATEGY = "adapter_stage1"


@pytest.fixture(autouse=True)
def optuna_logs_to_pytest():
    """Optuna's own handler binds sys.stderr when first used, i.e. one test's capture buffer, closed by
    the next test: route Optuna's records through the root logger (pytest's log capture) instead."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    yield
    optuna.logging.disable_propagation()
    optuna.logging.enable_default_handler()


# --- the search-space declarations (no training) --------------------------------------------------

def test_parse_param_kinds():
    assert parse_param("train.lr", {"type": "float", "low": 1e-5, "high": "1e-2", "log": True}) == \
        Param("train.lr", "float", 1e-5, 1e-2, True)
    assert parse_param("strategy.expansion_blocks", {"type": "int", "low": 1, "high": 4}) == \
        Param("strategy.expansion_blocks", "int", 1, 4)
    assert parse_param("train.schedule", ["linear", "cosine"]) == \
        Param("train.schedule", "categorical", choices=("linear", "cosine"))
    p = parse_param("train.warmup_ratio", {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05})
    assert parse_param(p.name, p.to_dict()) == p


def test_space_file_extends_drops_and_nests():
    default = {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
               "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2}}
    merged = merge_specs(default, {"train": {"label_smoothing": None, "weight_decay": {"type": "float", "low": 0,
                                                                                       "high": 0.1}}})
    assert set(merged) == {"train.lr", "train.weight_decay"}
    assert set(merge_specs(default, {"train.weight_decay": [0.0, 0.01]}, replace=True)) == {"train.weight_decay"}
    assert set(parse_space(merged)) == {"train.lr", "train.weight_decay"}


@pytest.mark.parametrize("spec, message", [
    ({"type": "float", "low": 0.1, "high": 0.01}, "low (0.1) is above high (0.01)"),
    ({"type": "float", "low": 0.0, "high": 0.01, "log": True}, "log range must be positive"),
    ({"type": "float", "low": -1e-3, "high": 0.01, "log": True}, "log range must be positive"),
    ({"type": "floot", "low": 0.0, "high": 0.01}, "unknown type 'floot'. Did you mean 'float'?"),
    ({"low": 0.0, "high": 0.01}, "missing 'type'"),
    ({"type": "float", "low": 0.0, "hi": 0.01}, "unknown field 'hi'. Did you mean 'high'?"),
    ({"type": "int", "low": 1, "high": 2.5}, "whole number"),
    ({"type": "categorical", "choices": []}, "non-empty list"),
])
def test_parse_param_errors(spec, message):
    with pytest.raises(ConfigError) as e:
        parse_param("train.lr", spec)
    assert message in str(e.value) and "'train.lr'" in str(e.value)


def _cli_error(capsys, tmp_path, space: dict, *extra: str) -> str:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    rc = search.main([STRATEGY, "--trials", "2", "--space", str(tmp_path / "space.yaml"),
                      f"tracking.root={tmp_path / 'mlruns'}", *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error: search space: ")
    assert not (tmp_path / "mlruns" / "optuna.db").exists()  # no study, so no trial started
    return err


@pytest.mark.parametrize("space, message", [
    ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-5, "log": True}}, "low (0.01) is above high (1e-05)"),
    ({"train.lrate": {"type": "float", "low": 1e-5, "high": 1e-2}}, "unknown config key 'train.lrate'. Did you mean "
                                                                    "'train.lr'?"),
    ({"strategy.expansion_block": {"type": "int", "low": 1, "high": 4}}, "Did you mean 'strategy.expansion_blocks'?"),
    ({"train.lr": {"type": "float", "low": 0, "high": 1e-2, "log": True}}, "log range must be positive"),
    ({"train.lr": {"type": "uniform", "low": 1e-5, "high": 1e-2}}, "unknown type 'uniform'"),
    ({"train.lr": {"type": "float", "low": 1e-5, "high": 2.0}}, "out of range: allowed [0.0, 1.0]"),
    ({"strategy.expansion_blocks": {"type": "float", "low": 1, "high": 4}}, "is an int: declare it with type: int"),
    ({"train.schedule": ["linear", "exponential"]}, "choose one of linear, cosine, constant"),
])
def test_bad_space_is_a_clear_error_before_any_trial(capsys, tmp_path, space, message):
    assert message in _cli_error(capsys, tmp_path, space)


def test_everything_pinned_is_an_error(capsys, tmp_path):
    err = _cli_error(capsys, tmp_path, {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
                     "--replace-space", "train.lr=1e-3")
    assert "no parameters to search" in err


def test_default_spaces_of_every_strategy_are_valid():
    from s2s.experiment_config import build_config
    from s2s.search.space import check_space
    from s2s.strategies import STRATEGIES

    for name, cls in STRATEGIES.items():
        space = parse_space(cls.Config.SEARCH_SPACE)
        assert "train.lr" in space and space["train.lr"].log
        check_space(space, build_config(name, "tiny"))


def test_summary_with_one_complete_trial_skips_importances(tmp_path):
    import optuna

    class FakeParent:
        def __init__(self):
            self.artifacts, self.tags = [], {}

        def log_artifact(self, path):
            self.artifacts.append(Path(path).name)

        def log_metrics(self, metrics, step):
            pass

        def set_tags(self, tags):
            self.tags.update(tags)

    study = optuna.create_study(direction="minimize")
    study.optimize(lambda t: t.suggest_float("train.lr", 1e-5, 1e-2, log=True), n_trials=1)
    s = Search(cfg=None, space={}, n_trials=1, study_name="x", storage_url="mem", pruner="median", seed=None,
               heartbeat=10, progress=False)
    parent = FakeParent()
    summary = summarize(s, study, parent, tmp_path)
    assert "param_importances.png" not in parent.artifacts
    assert {"best.json", "optimization_history.png"} <= set(parent.artifacts)
    assert any("at least 2 complete trials" in n for n in summary["notes"])
    assert summary["best"]["trial"] == 0 and "best.train.lr" in parent.tags


# --- real searches on the tiny preset --------------------------------------------------------------

@pytest.fixture
def env(monkeypatch, tmp_path, synth_dataset, tiny_backbone_cfg, prepared_items, prepared_cache_dir):
    """Overrides of a tiny search in tmp_path (tracking root, outputs), sharing the session's data,
    backbones and prepared cache; no MLFLOW_TRACKING_URI from outside. One torch thread per process:
    the tiny models are too small to gain from more, and on a busy 2-core machine extra threads only
    contend (a trial ran ~10x slower); the launcher gives its workers the same share."""
    import torch

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _env(tmp_path, synth_dataset, tiny_backbone_cfg, prepared_cache_dir)
    torch.set_num_threads(threads)


def _env(tmp_path, synth_dataset, tiny_backbone_cfg, prepared_cache_dir) -> dict:
    root = tmp_path / "mlruns"
    overrides = short_run(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, root, tmp_path / "out")
    return {"overrides": overrides, "root": root,
            "storage": f"sqlite:///{root / 'optuna.db'}", "tracking": f"sqlite:///{root / 'mlflow.db'}"}


def _load(env, name):
    import optuna

    return optuna.load_study(study_name=name, storage=env["storage"])


def _states(study) -> dict[str, int]:
    out = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _runs(env):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["tracking"])
    exp = client.get_experiment_by_name("s2s")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("s2s.search") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return client, parents, children


def test_median_pruner_prunes_and_mlflow_holds_parent_and_children(env, capsys):
    """lr is fixed per trial (enqueued): two trials with useful learning rates finish, then a trial with
    an exploding lr is clearly worse than their median at its first evaluation and is pruned. (A vanishing
    lr no longer serves: the miniature's first steps at a useful lr do not yet beat the untrained model.)"""
    import optuna

    name = "prune"
    space = env["root"].parent / "lr.yaml"
    space.write_text(yaml.safe_dump({"train.lr": {"type": "float", "low": 1e-8, "high": 1.0, "log": True}}))
    env["root"].mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=env["storage"], direction="minimize")
    for lr in (3e-3, 1e-3, 1.0):
        study.enqueue_trial({"train.lr": lr})
    args = [STRATEGY, "--trials", "3", "--study", name, "--space", str(space), "--replace-space",
            "--heartbeat", "5", *env["overrides"]]

    assert search.main(args) == 0
    out = capsys.readouterr().out
    study = _load(env, name)
    trials = study.get_trials()
    assert len(trials) == 3 and _states(study) == {"COMPLETE": 2, "PRUNED": 1}
    pruned = next(t for t in trials if t.state.name == "PRUNED")
    assert pruned.params["train.lr"] == pytest.approx(1.0) and max(pruned.intermediate_values) < 3
    assert "best trial #" in out and "optuna-dashboard 'sqlite:////" in out and "mlflow ui --backend-store-uri" in out

    client, parents, children = _runs(env)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["s2s.study"] == name
    assert len(children) == 3 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_trial = {int(c.data.params["optuna.trial_number"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 2]
    for t in trials:
        run = by_trial[t.number]
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"])
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        if t.state.name == "PRUNED":
            assert run.info.status == "KILLED" and run.data.tags["s2s.pruned"] == "true"
            assert "s2s.failure" not in run.data.tags
        else:
            assert run.info.status == "FINISHED" and "s2s.pruned" not in run.data.tags
    best = study.best_trial
    assert parent.data.tags["s2s.best_trial"] == str(best.number)
    assert float(parent.data.tags["best.train.lr"]) == pytest.approx(best.params["train.lr"])
    assert parent.data.metrics["best/eval/loss"] == pytest.approx(best.value)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best.json", "optimization_history.png", "param_importances.png", "intermediate_values.png",
            "search_space.yaml", "base_config.yaml"} <= artifacts
    summary = json.loads((env["root"] / "search" / name / "best.json").read_text())
    assert summary["best"]["trial"] == best.number and summary["pruned"] == 1

    # the same command again: nothing to run, the same study and the same parent run
    assert search.main(args) == 0
    assert "resumed: 3 finished" in capsys.readouterr().out
    _, parents, children = _runs(env)
    assert len(parents) == 1 and len(children) == 3 and len(_load(env, name).get_trials()) == 3


def test_resuming_with_another_setup_is_an_error(env, capsys):
    import optuna

    env["root"].mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=env["storage"], direction="minimize")
    study.set_user_attr("s2s.space", {})
    study.set_user_attr("s2s.fixed_config", {"train.max_steps": 999})
    rc = search.main([STRATEGY, "--trials", "1", "--study", "s", *env["overrides"]])
    err = capsys.readouterr().err
    assert rc == 2 and "was started with another setup" in err and "train.max_steps" in err


def _worker(env, args, log: Path) -> subprocess.Popen:
    e = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-m", "experiments.search", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=e, cwd=Path(__file__).resolve().parents[1])


def test_two_workers_share_one_study(env, capsys):
    name = "pair"
    args = [STRATEGY, "--trials", "4", "--study", name, "--workers", "2", "--pruner", "none", "--heartbeat", "5",
            *env["overrides"]]
    assert search.main(args) == 0, capsys.readouterr()
    study = _load(env, name)
    finished = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    numbers = [t.number for t in finished]
    assert len(finished) == 4 and len(set(numbers)) == 4
    assert not [t for t in study.get_trials() if t.state.name in ("RUNNING", "WAITING")]
    assert len({t.user_attrs["s2s.worker"] for t in finished}) == 2  # both workers ran trials
    _, parents, children = _runs(env)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trained = [c for c in children if c.data.params.get("optuna.trial_number") is not None]
    assert sorted(int(c.data.params["optuna.trial_number"]) for c in trained) == sorted(numbers)


def test_resume_after_a_worker_is_killed_mid_trial(env, tmp_path, capsys):
    """One trial finishes; a worker process of the same command (2 trials) is SIGKILLed in the middle
    of the second; the same command again keeps the first, notices the dead one and retries it."""
    name = "killed"
    args = [STRATEGY, "--trials", "2", "--study", name, "--pruner", "none", "--heartbeat", "2", "--no-progress",
            *env["overrides"], "train.max_steps=10"]  # a longer trial: a wider window to kill it in
    assert search.main([*args, "--trials", "1"]) == 0
    before = {t.number: t.value for t in _load(env, name).get_trials()}
    assert len(before) == 1

    proc = _worker(env, args, tmp_path / "worker.log")
    deadline = time.time() + 300
    victim = None
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            running = [t for t in _load(env, name).get_trials() if t.state.name == "RUNNING"
                       and t.intermediate_values and "mlflow_run_id" in t.user_attrs]  # training has begun
            if running:
                victim = running[0]
                proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None and victim is None:
            proc.kill()
        proc.wait()
    assert victim is not None, (tmp_path / "worker.log").read_text()[-3000:]
    assert _load(env, name).get_trials()[victim.number].state.name == "RUNNING"  # dead, not yet noticed

    assert search.main(args) == 0
    study = _load(env, name)
    trials = {t.number: t for t in study.get_trials()}
    assert {n: trials[n].value for n in before} == before  # no finished trial lost
    assert trials[victim.number].state.name == "FAIL"
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == victim.params
    assert _states(study) == {"COMPLETE": 2, "FAIL": 1}

    client, parents, children = _runs(env)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    dead = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert dead.info.status == "KILLED" and "worker died" in dead.data.tags["s2s.failure"]
    assert len(children) == 3  # trial 0, the killed trial, its retry


def test_search_maximizes_a_scored_metric_of_the_final_checkpoint(env, capsys):
    """--metric eval/spk_sim: each trial's final checkpoint is scored (speaker similarity on 2 eval utterances,
    logged to the trial's run); the study maximizes it, and nothing is pruned since it exists only at the end."""
    import optuna

    name = "spk"
    args = [STRATEGY, "--trials", "2", "--study", name, "--metric", "eval/spk_sim", "--score", "2", "--seed", "0",
            "--heartbeat", "5", "score.generation.max_new_tokens=21", *env["overrides"]]
    assert search.main(args) == 0
    out = capsys.readouterr().out
    assert "maximize eval/spk_sim, none pruner" in out
    study = _load(env, name)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and _states(study) == {"COMPLETE": 2}
    client, parents, children = _runs(env)
    for t in study.get_trials():
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert t.value == pytest.approx(run.data.metrics["eval/spk_sim"]) and -1 <= t.value <= 1
        assert not t.intermediate_values  # scored at the end only
    best = max(study.get_trials(), key=lambda t: t.value)
    assert parents[0].data.metrics["best/eval/spk_sim"] == pytest.approx(best.value)
    assert f"best trial #{best.number}: eval/spk_sim" in out


@pytest.mark.parametrize("extra, message", [
    (["--metric", "eval/spk"], "unknown scored figure 'eval/spk'. Did you mean 'eval/spk_sim'"),
    (["--metric", "eval/wer", "--pruner", "median"], "nothing to prune on: drop --pruner median"),
    (["--metric", "eval/loss", "score.n=3"], "score.* settings apply to scored metrics"),
    (["--metric", "loss"], "give eval/loss (default), eval/acc"),
])
def test_bad_objectives_are_clear_errors_before_any_trial(capsys, tmp_path, extra, message):
    rc = search.main([STRATEGY, "--trials", "1", *extra, f"tracking.root={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
