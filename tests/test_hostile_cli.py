"""Hostile settings at the command lines (experiments.run / search / compare): an unreachable MLflow
tracking store fails in seconds with one `error:` line naming the URI and the fix, before anything
is trained or written; typos and out-of-range values of the crash-safety keys are caught with a
suggestion; `resume=` where it does not belong is refused."""
from __future__ import annotations

import time

import pytest

from experiments import compare, run, search
from s2s.experiment_config import build_config
from s2s.config import ConfigError

DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def base(run_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here, and is checked
    return run_env.overrides(tmp_path / "out")


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("command", ["run", "search", "compare"])
def test_unreachable_tracking_uri_fails_fast_before_anything_runs(command, base, tmp_path, capsys):
    args = {
        "run": lambda: run.main(["adapter_stage1", *base, f"tracking.uri={DEAD}", "--no-progress"]),
        "search": lambda: search.main(["adapter_stage1", "--trials", "1", *base, f"tracking.uri={DEAD}",
                                       "--no-progress"]),
        "compare": lambda: compare.main(["adapter_stage1", *base, f"tracking.uri={DEAD}", "--seeds", "1",
                                         "--out", str(tmp_path / "report"), "--no-progress"]),
    }[command]
    started = time.time()
    rc = args()
    elapsed = time.time() - started
    assert rc in (1, 2) and elapsed < 30, (rc, elapsed)  # MLflow alone retries for ~4 minutes
    msg = one_error_line(capsys)
    assert f"cannot reach the MLflow tracking store '{DEAD}'" in msg and "Connection refused" in msg
    assert "tracking.uri=" in msg and "MLFLOW_TRACKING_URI" in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()
    assert not list(tmp_path.rglob("optuna.db")) and not (tmp_path / "outputs").exists()


def test_unreachable_uri_from_the_environment(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DEAD)
    assert run.main(["adapter_stage1", *base, "--no-progress"]) == 2
    assert DEAD in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri, why", [
    ("postgresql://u:pw@127.0.0.1:9/db", "Connection refused"),  # MLflow alone retries this for ~100 s
    ("postgresql+psycopg2://u:pw@127.0.0.1:9/db", "pip install 'psycopg2-binary'"),  # a driver s2s does not ship
])
def test_unusable_database_store_is_a_clear_error(base, capsys, uri, why):
    started = time.time()
    assert run.main(["adapter_stage1", *base, f"tracking.uri={uri}", "--no-progress"]) == 2
    msg = one_error_line(capsys)
    assert time.time() - started < 30
    assert uri.replace(":pw@", ":***@") in msg and "pw@" not in msg and why in msg and "tracking.uri=" in msg


@pytest.mark.parametrize("override, message", [
    ("train.keep_checkpoint=2", "Did you mean 'train.keep_checkpoints'"),
    ("train.max_bad_step=2", "Did you mean 'train.max_bad_steps'"),
    ("resum=outputs/x", "Did you mean 'resume'"),
    ("train.keep_checkpoints=-1", r"'train.keep_checkpoints' = -1 is out of range: allowed \[0, inf\]"),
    ("train.max_bad_steps=0", r"'train.max_bad_steps' = 0 is out of range: allowed \[1, inf\]"),
    ("train.max_bad_steps=two", "expects int, got 'two'"),
    ("train.checkpoint_every=1.5", "'train.checkpoint_every' expects int, got '1.5'"),
])
def test_crash_safety_keys_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("adapter_stage1", "tiny", [override])


def test_cli_config_typo_is_one_line_exit_2(base, capsys):
    assert run.main(["adapter_stage1", *base, "train.keep_checkpoint=2"]) == 2
    assert "train.keep_checkpoints" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["search", "compare"])
def test_resume_belongs_to_experiments_run(command, base, tmp_path, capsys):
    argv = ["adapter_stage1", *base, f"resume={tmp_path}", "--no-progress"]
    rc = search.main([*argv, "--trials", "1"]) if command == "search" else compare.main([*argv, "--seeds", "1"])
    assert rc == 2
    msg = one_error_line(capsys)
    assert "resume= continues one run of experiments.run" in msg and "run the same command again" in msg
