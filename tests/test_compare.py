"""`experiments.compare` end to end on the tiny preset: the report, the plot, the MLflow parent/child
runs, reuse of finished runs, and the gatefusion_stage2 prerequisite check."""

import json
import math
import statistics

import pytest

from experiments.compare import main

STRATEGIES = ["adapter_stage1", "istlm_interleaved"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No MLFLOW_TRACKING_URI from outside, and a scratch working directory (nothing lands in the repo)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(tmp_path_factory.mktemp("compare_cwd"))
        yield


@pytest.fixture(scope="module")
def setup(env, tmp_path_factory, synth_dataset, tiny_backbone_cfg, tiny_core, prepared_cache_dir):
    root = tmp_path_factory.mktemp("compare")
    values = {
        "tracking.root": root / "mlruns", "data.sources": f"[{synth_dataset}]", "data.eval_size": 4,
        "synth_if_missing": 0, "backbones.whisper": tiny_backbone_cfg.whisper,
        "backbones.orpheus": tiny_backbone_cfg.orpheus, "backbones.snac": tiny_backbone_cfg.snac,
        "backbones.device": "cpu", "cache.dir": prepared_cache_dir, "train.max_steps": 2, "train.eval_every": 1,
        "train.batch_size": 2, "train.out_dir": root / "checkpoints",  # one folder for all runs: each needs its own
    }
    overrides = [f"{k}={v}" for k, v in values.items()]
    return root, overrides, f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def compare(setup, report: str, *extra: str) -> int:
    root, overrides, _ = setup
    return main([*STRATEGIES, *overrides, *extra, "--seeds", "2", "--out", str(root / report), "--no-progress"])


def runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("s2s")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def first(setup):
    root, _, uri = setup
    assert compare(setup, "report") == 0
    _, all_runs = runs(uri)
    return root / "report", all_runs


def test_report_table(first):
    report, _ = first
    text = (report / "comparison.md").read_text()
    lines = text.splitlines()
    results = json.loads((report / "results.json").read_text())
    for name in STRATEGIES:
        row = [line for line in lines if line.startswith(f"| {name} |")]
        assert len(row) == 1, name
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        assert sum("±" in c for c in cells) >= 5  # train, eval, shuffled, gap, gap k0, acc: mean ± std
        rs = [r for r in results if r["strategy"] == name]
        for column, key in ((1, "train_nll"), (2, "eval_loss"), (3, "shuffled_loss")):  # mean ± std over seeds
            mean, std = (float(v) for v in cells[column].split("±"))
            values = [r[key] for r in rs]
            assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
            assert mean == pytest.approx(statistics.mean(values), abs=1e-4)
            assert std == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert rs[0]["eval_loss"] != rs[1]["eval_loss"]  # two seeds, two different models
    reported = [line for line in lines if "reported" in line]
    assert len(reported) == 2
    assert any("18.68" in line for line in reported) and any("23.94" in line for line in reported)
    assert "ln(156940)" in text and "nats per target token" in text
    assert "2 seed(s), 2 optimizer steps" in text


def test_report_plot_and_json(first, setup):
    report, _ = first
    png = report / "eval_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    results = json.loads((report / "results.json").read_text())
    assert sorted((r["strategy"], r["seed"]) for r in results) == [(n, s) for n in STRATEGIES for s in (0, 1)]
    for r in results:
        assert [step for step, _ in r["history"]] == [0, 1, 2]  # eval every step
        assert r["history"][-1][1] == pytest.approx(r["eval_loss"], rel=1e-5)  # the final checkpoint's eval
    # every run has its own checkpoint, holding its own strategy
    assert len({r["checkpoint"] for r in results}) == 4
    assert all(r["checkpoint"].startswith(str(setup[0] / "checkpoints")) for r in results)  # in the chosen folder
    for r in results:
        meta = json.loads(open(f"{r['checkpoint']}/meta.json").read())
        assert meta["strategy"] == r["strategy"] and meta["config"]["train"]["seed"] == r["seed"]


def test_mlflow_parent_and_children(first, setup):
    report, all_runs = first
    parents = [r for r in all_runs if "s2s.compare" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["s2s.compare"] == " vs ".join(STRATEGIES)
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 == len(all_runs) - 1
    assert sorted((c.data.tags["s2s.strategy"], c.data.params["train.seed"]) for c in children) == \
        [(n, s) for n in STRATEGIES for s in ("0", "1")]
    assert all(c.info.status == "FINISHED" for c in children)
    client, _ = runs(setup[2])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "eval_loss.png", "results.json"} <= artifacts
    assert "adapter_stage1/eval_loss_mean" in parent.data.metrics


def test_second_identical_compare_reuses_finished_runs(first, setup):
    report, before = first
    _, _, uri = setup
    assert compare(setup, "report2") == 0
    _, after = runs(uri)
    new = {r.info.run_id for r in after} - {r.info.run_id for r in before}
    assert len(new) == 1  # only the new parent run: no child was trained again
    (parent,) = [r for r in after if r.info.run_id in new]
    assert "s2s.compare" in parent.data.tags
    assert not [r for r in after if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # the reused runs are the right ones: their checkpoints evaluate exactly as before
    old = {(r["strategy"], r["seed"]): r for r in json.loads((report / "results.json").read_text())}
    again = json.loads((report.parent / "report2" / "results.json").read_text())
    assert len(again) == 4
    for r in again:
        o = old[(r["strategy"], r["seed"])]
        assert r["run_id"] == o["run_id"] and r["checkpoint"] == o["checkpoint"]
        assert r["eval_loss"] == pytest.approx(o["eval_loss"], abs=1e-5)
        assert r["shuffled_loss"] == pytest.approx(o["shuffled_loss"], abs=1e-5)


def test_gatefusion_without_stage1_or_init_from_exits_2(setup, capsys, tmp_path):
    root, overrides, _ = setup
    rc = main(["gatefusion_stage2", "istlm_interleaved", *overrides, "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "gatefusion_stage2 needs strategy.init_from" in err and "adapter_stage1" in err
    assert not (tmp_path / "r").exists()  # it stopped before training or writing anything
