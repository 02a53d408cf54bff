"""Crash safety end to end on the tiny preset: a run killed (SIGKILL), interrupted (Ctrl-C, SIGTERM)
or resumed from a damaged latest checkpoint ends with exactly the weights of the uninterrupted run,
in the same MLflow run. Setup and the reference run: tests/run_fixtures.py.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from s2s.experiment import train
from s2s.checkpoint import MODEL_FILE, checkpoints_in, step_of
from s2s.stop import Interrupted
from tests.run_fixtures import assert_same_weights


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {path} appeared: "
                                 f"{(proc.communicate()[1] or '')[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def run_id_of(checkpoint: Path) -> str:
    return json.loads((checkpoint / "meta.json").read_text())["mlflow_run_id"]


def logged_steps(client, run_id: str, key: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, key)}


def test_sigkill_then_resume_from_a_damaged_latest_checkpoint_ends_bitwise_equal(run_env, reference_run, tmp_path):
    """The issue's acceptance test: SIGKILL mid-training, the newest checkpoint truncated on top, then
    `resume=<run id>` on the command line: it warns about the damaged file, falls back to the previous
    checkpoint and finishes with the reference weights, in the same MLflow run."""
    _, _, expected = reference_run
    out = tmp_path / "killed"
    proc = run_env.cli(*run_env.overrides(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(out / "step-0000004" / "meta.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists()
    ckpts = checkpoints_in(out)
    assert [step_of(c) for c in ckpts][-2:] == [4, 2], ckpts
    run_id = run_id_of(ckpts[0])
    client = run_env.client()
    assert client.get_run(run_id).info.status == "RUNNING"  # died without a word

    newest, previous = ckpts[0], ckpts[1]
    damaged = newest / MODEL_FILE
    damaged.write_bytes(damaged.read_bytes()[:1000])  # as if the disk filled up / the copy was cut short
    proc = run_env.cli(*run_env.overrides(out), f"resume={run_id}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"skipping damaged checkpoint {newest}" in stderr and str(damaged) in stderr
    assert f"resuming from the older checkpoint {previous}" in stderr
    assert f"resuming MLflow run {run_id} at step {step_of(previous)}" in stdout

    assert_same_weights(out / "final" / MODEL_FILE, expected)
    assert (out / f"abandoned-{newest.name}").is_dir()  # the damaged newer one, set aside, not resumable
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["s2s.resumed_from"] == str(previous)
    assert logged_steps(client, run_id, "train/loss") == set(range(1, 9))
    assert logged_steps(client, run_id, "eval/loss") == {0, 4, 8}
    exp = client.get_experiment_by_name("s2s")
    assert len(client.search_runs([exp.experiment_id], f"tags.`s2s.out_dir` = '{out}'")) == 1  # no new run


def test_ctrl_c_saves_a_checkpoint_ends_killed_and_the_printed_command_resumes(run_env, reference_run, tmp_path):
    _, _, expected = reference_run
    out = tmp_path / "sigint"
    proc = run_env.cli(*run_env.overrides(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(out / "step-0000002" / "meta.json", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "SIGINT: stopping after this step" in stderr and "Resume with:" in stderr
    command = re.search(r"python -m experiments\.run adapter_stage1 .*resume=(\S+)", stderr)
    checkpoint = Path(command.group(1))
    assert checkpoint.parent == out and (checkpoint / MODEL_FILE).is_file() and not (out / "final").exists()
    assert f"train.out_dir={out}" in command.group(0)  # the same overrides, to be run again as printed

    client = run_env.client()
    run_id = run_id_of(checkpoint)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "SIGINT" in run.data.tags["s2s.killed"] and str(checkpoint) in run.data.tags["s2s.killed"]

    result = train(run_env.config(out, f"resume={checkpoint}"), progress=False)
    assert result["run_id"] == run_id
    assert_same_weights(out / "final" / MODEL_FILE, expected)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "s2s.killed" not in run.data.tags
    assert "SIGINT" in run.data.tags["s2s.previously"]
    assert [s for s, _ in result["eval_history"]] == [0, 4, 8]


def test_sigterm_during_the_first_evaluation_then_resume_by_run_id(run_env, reference_run, tmp_path):
    """SIGTERM (what `kill`, schedulers and containers send) while the step-0 evaluation runs: a step-0
    checkpoint, KILLED; `resume=<MLflow run id>` finds the run's out_dir and finishes it."""
    _, _, expected = reference_run
    out = tmp_path / "sigterm"

    def on_eval(step, metrics):
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as e:
        train(run_env.config(out), progress=False, on_eval=on_eval)
    assert e.value.signum == signal.SIGTERM and e.value.exit_code == 143
    assert e.value.checkpoint == out / "step-0000000"
    run_id = run_id_of(e.value.checkpoint)
    client = run_env.client()
    assert client.get_run(run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored

    result = train(run_env.config(out, f"resume={run_id}"), progress=False)
    assert result["run_id"] == run_id and result["steps"] == 8
    assert_same_weights(out / "final" / MODEL_FILE, expected)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert logged_steps(client, run_id, "eval/loss") == {0, 4, 8}
    assert [s for s, _ in result["eval_history"]] == [0, 4, 8]  # step 0's from the checkpoint, not re-run
    assert [step_of(c) for c in checkpoints_in(out)] == [None, 6, 4, 2]  # final + the 3 kept; step 0 pruned
