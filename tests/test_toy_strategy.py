"""Adding a strategy is one file plus one registry line: tests/toy_strategy.py (a strategy written only
for the tests) is registered here with one `monkeypatch.setitem` and then goes, unchanged and
in-process, through the generic per-strategy checks and every command: `experiments.run`,
`experiments.compare`, `experiments.search` and `evaluation.score`. None of them is edited for it;
their outputs name it (MLflow tag s2s.strategy, meta.json, results.json, summary.json).

Short runs on the session's tiny backbones, 12-utterance synth data and prepared cache.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.core_fixtures import clip, short_run
import torch

import tests.test_ablation as ablation
import tests.test_generate as generation
import tests.test_every_strategy as every
from s2s.strategies import STRATEGIES
from tests.toy_strategy import ToyLinear

NAME = "toy_linear"


@pytest.fixture(scope="module")
def toy():
    """The registry with the toy strategy added: the one line a new strategy adds to s2s/strategies/__init__.py."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STRATEGIES, NAME, ToyLinear)
        yield


@pytest.fixture(scope="module")
def env(toy, tmp_path_factory, synth_dataset, tiny_backbone_cfg, tiny_core, prepared_items, prepared_cache_dir):
    """Overrides for short runs with everything under a tmp dir (also the working directory, so that
    nothing lands in the repo); no MLFLOW_TRACKING_URI from outside; one torch thread."""
    root = tmp_path_factory.mktemp("toy")
    overrides = short_run(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, root / "mlruns", root / "out",
                          **{"train.max_steps": 4, "train.eval_every": 2, "train.eval_batch_size": 4})
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)
        torch.set_num_threads(1)
        yield {"root": root, "overrides": overrides,
               "tracking": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}
        torch.set_num_threads(threads)


def client(env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(env["tracking"])


def all_runs(env):
    c = client(env)
    return c.search_runs([c.get_experiment_by_name("s2s").experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def trained(env):
    """`python -m experiments.run toy_linear ...`, in-process: (run id, checkpoint dir)."""
    from experiments.run import main

    assert main([NAME, *env["overrides"], "--no-progress"]) == 0
    (run,) = all_runs(env)  # the first command of this store
    return run.info.run_id, run.data.tags["s2s.checkpoint"]


# --- the generic per-strategy checks, run on the toy as they run on every registered strategy ----------

def test_generic_strategy_checks_pass_for_the_toy(toy, tiny_model, prepared_items, short_items, make_batch, tmp_path):
    """The checks the generic tests run for each name in STRATEGIES (they are parametrized at collection,
    before this module registers the toy, so they are called here by name)."""
    ragged = [clip([it], 0, n)[0] for it, n in zip(prepared_items[8:11], (3, 5, 6))]
    generation.test_teacher_forced_decoder_equals_forward(NAME, tiny_model, ragged, make_batch)
    generation.test_greedy_with_caches_equals_recomputation(NAME, tiny_model, ragged, make_batch)
    ablation.test_audio_order_gives_each_sample_the_chosen_audio(NAME, tiny_model, prepared_items, make_batch)
    every.test_every_strategy_checkpoint_round_trip(NAME, tiny_model, short_items, make_batch, tmp_path)


def test_run_lists_and_trains_the_toy(env, trained, capsys):
    from experiments.run import main

    assert main(["--list"]) == 0
    assert any(line.split()[0] == NAME and ToyLinear.summary in line
               for line in capsys.readouterr().out.splitlines() if line.strip())
    run_id, ckpt = trained
    run = client(env).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["s2s.strategy"] == NAME and run.data.params["strategy_name"] == NAME
    assert run.data.params["strategy.stack"] == "4"  # the toy's PRESET_VALUES["tiny"]
    meta = json.loads(Path(ckpt, "meta.json").read_text())
    assert meta["strategy"] == NAME and meta["step"] == 4


def test_compare_trains_and_reports_the_toy(env, capsys):
    from experiments.compare import main

    report = env["root"] / "report"
    code = main([NAME, *env["overrides"], "train.max_steps=2", "--seeds", "1", "--score", "1",
                 "score.generation.max_new_tokens=14", "--out", str(report), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    results = json.loads((report / "results.json").read_text())
    assert [r["strategy"] for r in results] == [NAME]
    assert any(line.startswith(f"| {NAME} |") for line in (report / "comparison.md").read_text().splitlines())
    runs = all_runs(env)
    parent = next(r for r in runs if "s2s.compare" in r.data.tags)
    assert parent.data.tags["s2s.compare"] == NAME and parent.info.status == "FINISHED"
    child = client(env).get_run(results[0]["run_id"])
    assert child.data.tags["s2s.strategy"] == NAME and child.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_search_runs_trials_of_the_toy(env, capsys):
    import optuna

    from experiments.search import main

    optuna.logging.disable_default_handler()  # Optuna's handler would bind this test's capture buffer
    try:
        code = main([NAME, "--trials", "2", "--workers", "1", "--study", "toy", "--pruner", "none", "--no-progress",
                     *env["overrides"], "train.max_steps=2", "train.eval_every=1"])
    finally:
        optuna.logging.enable_default_handler()
    out = capsys.readouterr()
    assert code == 0, out.err
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{env['root'] / 'mlruns' / 'optuna.db'}")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    assert all(set(t.params) == {"train.lr"} for t in study.get_trials())  # the toy's own SEARCH_SPACE
    runs = all_runs(env)
    parent = next(r for r in runs if r.data.tags.get("s2s.study") == "toy"
                  and r.data.tags.get("s2s.search") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.data.tags["s2s.strategy"] == NAME for c in children)


def test_score_scores_a_toy_checkpoint(env, trained, capsys):
    from evaluation.score import main

    run_id, ckpt = trained
    out = env["root"] / "scored"
    code = main([ckpt, "--n", "2", "--out", str(out), "--no-progress", "toplines=false",
                 "generation.max_new_tokens=14", "generation.batch_size=2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == NAME and summary["n"] == 2 and summary["step"] == 4
    assert summary["mlflow_run_id"] == run_id  # logged to the toy's training run
    assert "generated" in summary["scores"]
