"""Shared stores: PostgreSQL behind an `mlflow server` (the tracking store) and as the Optuna storage,
with two search workers on one study through them, as on two machines (README, "Scaling out").

Opt-in (`-m postgres`; `make test-stores`, which .ci/run runs): it starts a throwaway PostgreSQL
cluster and an MLflow server (tests/store_servers.py), which takes about half a minute before the
first trial. The trials train the tiny preset on the session's synth data (tests/core_fixtures.py).
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
from tests.store_servers import mlflow_server, postgres_cluster

pytestmark = pytest.mark.postgres
STRATEGY = "adapter_stage1"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{"pg": the cluster, "optuna": its Optuna database URL, "mlflow": the server's http URI, "artifacts": the
    directory the server keeps artifacts in}."""
    tmp = tmp_path_factory.mktemp("stores")
    with postgres_cluster(["mlflow", "optuna"]) as pg:
        with mlflow_server(pg.url("mlflow"), tmp / "artifacts", tmp / "mlflow-server.log") as uri:
            yield {"pg": pg, "optuna": pg.url("optuna"), "mlflow": uri, "artifacts": tmp / "artifacts"}


@pytest.fixture
def overrides(tmp_path, synth_dataset, tiny_backbone_cfg, prepared_items, prepared_cache_dir, monkeypatch):
    """A short tiny run's overrides; local files (checkpoints, search summaries) under tmp_path. One torch
    thread per process: two workers share two cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return short_run(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, tmp_path / "mlruns", tmp_path / "out")


def _client(stores):
    from mlflow.tracking import MlflowClient

    return MlflowClient(stores["mlflow"])


def _runs(stores, experiment: str) -> list:
    client = _client(stores)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _sql(stores, database: str, query: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(stores["pg"].url(database)) as conn:
        return conn.execute(query).fetchall()


def test_two_workers_share_one_study_through_postgres_and_an_mlflow_server(stores, overrides, tmp_path):
    """`--workers 2` on PostgreSQL + the server; one worker is SIGKILLed in the middle of a trial. The other
    notices it by heartbeat, retries that trial and finishes the study; every trial that trained has exactly
    one MLflow run, and no run is left RUNNING."""
    import optuna

    name = "shared"
    experiment = "stores-search"  # its own experiment: the module's other tests log to the same server
    env = {**os.environ, "MLFLOW_TRACKING_URI": stores["mlflow"], "OMP_NUM_THREADS": "1"}
    args = [STRATEGY, "--trials", "3", "--workers", "2", "--study", name, "--storage", stores["optuna"],
            "--pruner", "none", "--heartbeat", "2", "--no-progress", *overrides, f"tracking.experiment={experiment}",
            "train.max_steps=12"]  # long enough a trial to be killed in the middle of
    log = tmp_path / "search.log"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.search", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    victim, deadline = None, time.time() + 420
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name=name, storage=stores["optuna"]).get_trials()
            except KeyError:  # the launcher has not created the study yet
                continue
            started = [t for t in trials if t.state.name == "RUNNING" and 0 < len(t.intermediate_values) <= 6
                       and "mlflow_run_id" in t.user_attrs and "s2s.worker" in t.user_attrs]  # well before its end
            if started:
                victim = started[0]
                os.kill(int(victim.user_attrs["s2s.worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        assert victim is not None, log.read_text()[-3000:]
        rc = proc.wait(timeout=max(60, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert rc == 0, out[-3000:]
    assert "warning: worker exit codes" in out and "-9" in out  # the launcher saw its worker die

    study = optuna.load_study(study_name=name, storage=stores["optuna"])
    trials = {t.number: t for t in study.get_trials()}
    assert trials[victim.number].state.name == "FAIL"  # failed by the survivor's heartbeat check ...
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"  # ... and run again, once
    assert retries[0].params == victim.params
    assert retries[0].user_attrs["s2s.worker"] != victim.user_attrs["s2s.worker"]
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 3
    assert not [t for t in trials.values() if t.state.name in ("RUNNING", "WAITING")]
    others = [t for t in trials.values() if t.state.name == "FAIL" and t.number != victim.number]
    assert all(t.user_attrs.get("s2s.surplus") and "mlflow_run_id" not in t.user_attrs for t in others)
    # the trials live in PostgreSQL, not in a SQLite file beside the runs
    assert _sql(stores, "optuna", "SELECT count(*) FROM trials")[0][0] == len(trials)
    assert not list(tmp_path.rglob("*.db"))

    runs = _runs(stores, experiment)
    parents = [r for r in runs if r.data.tags.get("s2s.search") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) + 1 == len(runs)  # nothing else was logged
    trained = {t.user_attrs["mlflow_run_id"]: t for t in trials.values() if "mlflow_run_id" in t.user_attrs}
    assert len(trained) == 4  # three complete trials and the killed one
    assert sorted(r.info.run_id for r in children) == sorted(trained)  # one run per trial: none twice, no orphan
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for r in children:
        t = trained[r.info.run_id]
        assert r.data.tags["s2s.trial"] == str(t.number)
        if t.number == victim.number:
            assert r.info.status == "KILLED" and "worker died" in r.data.tags["s2s.failure"]
        else:
            assert r.info.status == "FINISHED" and r.data.metrics["eval/loss"] == pytest.approx(t.value)
    retry_run = next(r for r in children if r.info.run_id == retries[0].user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["s2s.retry_of_trial"] == str(victim.number)
    assert _sql(stores, "mlflow", "SELECT count(*) FROM runs JOIN experiments USING (experiment_id) WHERE "
                f"runs.lifecycle_stage = 'active' AND experiments.name = '{experiment}'")[0][0] == len(runs)

    # the parent's summary went through the server into its artifact directory; the storage password-free
    best = json.loads(next(stores["artifacts"].rglob(f"{parents[0].info.run_id}/artifacts/best.json")).read_text())
    assert best["complete"] == 3 and best["storage"] == stores["optuna"]
    assert f"open the MLflow UI: {stores['mlflow']} in a browser" in out


def test_compare_against_the_server_uri(stores, overrides, tmp_path, monkeypatch, capsys):
    """`compare` with MLFLOW_TRACKING_URI=http://...: its runs, metrics and report go to the server, and a
    second identical compare finds the finished run there again (a tag query through the REST API)."""
    from experiments import compare

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stores["mlflow"])
    args = [STRATEGY, *overrides, "--seeds", "1", "--score", "0", "--out", str(tmp_path / "report"), "--no-progress"]
    assert compare.main(args) == 0
    out = capsys.readouterr().out
    assert f"open the UI: {stores['mlflow']} in a browser" in out
    parent_id = out.split("MLflow parent run: ")[1].split()[0]
    client = _client(stores)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["s2s.compare"] == STRATEGY
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"comparison.md", "eval_loss.png", "results.json"}
    assert next(stores["artifacts"].rglob(f"{parent_id}/artifacts/comparison.md")).is_file()
    child = json.loads((tmp_path / "report" / "results.json").read_text())[0]
    assert client.get_run(child["run_id"]).info.status == "FINISHED"
    assert not list(tmp_path.rglob("*.db"))  # nothing went to a local SQLite store

    assert compare.main(args) == 0
    assert f"reusing finished run {child['run_id']}" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--storage", "tracking.uri"])
def test_a_bad_database_url_is_one_line_naming_it_without_its_password(stores, overrides, tmp_path, flag, capsys,
                                                                       monkeypatch):
    """A database that does not exist on a running server: one `error:` line in seconds (MLflow alone
    retries for ~100 s), naming the URL with its password hidden, before anything is written."""
    from experiments import search

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bad = f"postgresql://s2s:hunter2@127.0.0.1:{stores['pg'].port}/nosuchdb"
    extra = ["--storage", bad] if flag == "--storage" else [f"tracking.uri={bad}"]
    started = time.time()
    rc = search.main([STRATEGY, "--trials", "1", "--no-progress", *overrides, *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and time.time() - started < 30
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert bad.replace("hunter2", "***") in err[0] and "hunter2" not in err[0]
    assert 'database "nosuchdb" does not exist' in err[0]
    assert not (tmp_path / "out").exists()
