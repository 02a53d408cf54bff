"""Session fixtures for the crash-safety tests: one environment for `experiments.run` on the tiny
preset (the session's synth data, tiny backbones and prepared cache, a scratch MLflow store) and
one uninterrupted reference run that interrupted-and-resumed runs must reproduce bit for bit.

The config: 8 steps of batch 2 on the 8 train utterances, a checkpoint every 2 steps, an
evaluation every 4. Every process uses one torch thread: CPU kernels are deterministic for a
given thread count, and the subprocesses must compute exactly what the test process does.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class RunEnv:
    root: Path
    base: dict

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}"

    def overrides(self, out_dir, **extra) -> list[str]:
        return [f"{k}={v}" for k, v in {**self.base, "train.out_dir": out_dir, **extra}.items()]

    def config(self, out_dir, *more: str):
        from s2s.experiment_config import build_config
        return build_config("adapter_stage1", "tiny", self.overrides(out_dir) + list(more))

    def client(self):
        from mlflow.tracking import MlflowClient
        return MlflowClient(self.uri)

    def cli(self, *args: str, **popen) -> subprocess.Popen:
        """`python -m experiments.run adapter_stage1 ARGS --no-progress` in a child process."""
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="default")
        return subprocess.Popen([sys.executable, "-m", "experiments.run", "adapter_stage1", *args, "--no-progress"],
                                cwd=REPO, env=env, text=True, **popen)


@pytest.fixture(scope="session")
def run_env(tmp_path_factory, synth_dataset, tiny_backbone_cfg, prepared_items, prepared_cache_dir):
    import torch

    root = tmp_path_factory.mktemp("runs")
    base = {
        "tracking.root": root / "mlruns", "data.sources": str(synth_dataset), "data.eval_size": 4,
        "synth_if_missing": 0, "backbones.whisper": tiny_backbone_cfg.whisper,
        "backbones.orpheus": tiny_backbone_cfg.orpheus, "backbones.snac": tiny_backbone_cfg.snac,
        "backbones.device": "cpu", "cache.dir": prepared_cache_dir, "train.max_steps": 8, "train.batch_size": 2,
        "train.eval_every": 4, "train.checkpoint_every": 2, "train.progress": "false",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield RunEnv(root, base)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference_run(run_env):
    """The uninterrupted run (in this process): (result, out_dir, final weights)."""
    from safetensors.torch import load_file

    from s2s.experiment import train

    out = run_env.root / "reference"
    result = train(run_env.config(out), progress=False)
    return result, out, load_file(str(out / "final" / "model.safetensors"))


def assert_same_weights(path, expected: dict) -> None:
    """Every tensor of `path` (a model.safetensors) equals `expected`'s bit for bit."""
    import torch
    from safetensors.torch import load_file

    got = load_file(str(path))
    assert got.keys() == expected.keys()
    different = [k for k in got if not torch.equal(got[k], expected[k])]
    assert not different, f"{len(different)} of {len(got)} tensors differ, e.g. {different[:3]}"
