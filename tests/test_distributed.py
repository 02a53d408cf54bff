"""Several processes under torchrun (gloo on CPU): 2 ranks x k accumulation steps make the update of
1 rank x 2k over the same samples; only rank 0 tracks; a rank that dies ends the run with an error
on the other, and the run resumes from its last checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.core_fixtures import short_run
from tests.run_fixtures import REPO


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the same CPU kernels in every process
    return env


def _torchrun(nproc: int, overrides: list[str], **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "experiments.run", "adapter_stage1", *overrides, "--no-progress"]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **popen)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


@pytest.fixture
def overrides(tmp_path, synth_dataset, tiny_backbone_cfg, prepared_cache_dir, prepared_items):
    def make(name: str, **extra) -> list[str]:
        return short_run(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, tmp_path / "mlruns", tmp_path / name,
                         **{"train.eval_every": 100, **extra})
    return make


def _runs(tmp_path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_two_ranks_make_the_update_of_one_rank_with_twice_the_accumulation(tmp_path, overrides):
    two = _torchrun(2, overrides("two", **{"train.max_steps": 2, "train.grad_accum": 2}))
    out = _finish(two)
    assert two.returncode == 0, out[-3000:]
    assert "global batch 2 x 2 x 2 = 8 samples per optimizer step" in out
    one = _torchrun(1, overrides("one", **{"train.max_steps": 2, "train.grad_accum": 4}))
    out1 = _finish(one)
    assert one.returncode == 0, out1[-3000:]
    a = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        # 1e-5: float noise of the summation order, which Adam amplifies where gradients are tiny (1.3e-6 seen),
        # is far below one update (lr 1e-3): a wrong normalization would move weights by about that much
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, float((a[k] - b[k]).abs().max()))
    runs = _runs(tmp_path)
    assert len(runs) == 2 and {r.data.params.get("world_size") for r in runs} == {"2", None}  # rank 1 logged nothing
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_dead_rank_ends_the_run_with_an_error_and_it_resumes(tmp_path, overrides):
    # 300 steps: the miniature's short utterances train 60 in a few seconds, and the kill must come mid-run
    args = overrides("dead", **{"train.max_steps": 300, "train.checkpoint_every": 2, "train.batch_size": 1})
    proc = _torchrun(2, args, start_new_session=True)
    deadline = time.time() + 300
    saved = lambda: any((tmp_path / "dead").glob("step-*"))  # noqa: E731 (old ones are pruned as new ones come)
    while not saved() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not saved():  # say why: the run's own output, or that it was still running
        detail = _finish(proc, timeout=60)[-3000:] if proc.poll() is not None else "still running after 300 s"
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        pytest.fail(f"no checkpoint was written: {detail}")
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                              text=True).stdout.split()]  # torchrun's children: the ranks
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)  # the younger worker: rank 1
    t0 = time.time()
    out = _finish(proc, timeout=240)
    assert proc.returncode != 0 and time.time() - t0 < 240
    assert "FAILED" in out or "Error" in out  # torchrun reports the failed rank
    steps = sorted(p.name for p in (tmp_path / "dead").glob("step-*"))
    assert steps, out[-2000:]
    assert not (tmp_path / "dead" / "final").exists(), "the run ended before the kill"
    resumed = _torchrun(2, [*args, f"resume={tmp_path / 'dead'}"])
    out2 = _finish(resumed)
    assert resumed.returncode == 0, out2[-3000:]
    assert "resuming MLflow run" in out2
    assert (tmp_path / "dead" / "final").is_dir()
