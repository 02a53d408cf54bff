"""The multi-process machinery on CPU: the tiny preset trained by 1 and by 2 gloo processes.

    .venv/bin/python -m bench.distributed [--steps N]

Each side runs `torchrun --standalone --nproc-per-node P -m experiments.run <the benchmarks' strategy>` twice,
for 2 and for 2 + N optimizer steps, with the same micro-batch (2) and accumulation (2) per process;
the difference of the trainer's wall time (`time/wall_seconds` in MLflow) over N is the time of one
step, free of start-up and evaluation. 2 processes handle twice the samples per step, so the printed
ratio is the per-sample throughput of 2 processes over 1. On 2 shared cores this is a smoke test of
the machinery, not a speed claim. The communication per step is analytic: DDP all-reduces the
float32 gradients of the trainable parameters once per optimizer step (a ring all-reduce sends
2 (P - 1) / P times their size per process).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import BENCH_CACHE, header, loadavg, tiny_config

REPO = Path(__file__).resolve().parents[1]


def wall_seconds(strategy: str, nproc: int, steps: int, base: list[str], root: Path) -> tuple[float, int]:
    """The trainer's wall time of one torchrun of `steps` optimizer steps."""
    from mlflow.tracking import MlflowClient

    store = root / f"p{nproc}-s{steps}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "experiments.run", strategy, *base, f"train.max_steps={steps}", "train.eval_every=100000",
           f"tracking.root={store}/mlruns", f"train.out_dir={store}/out", "--no-progress"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    client = MlflowClient(f"sqlite:///{store}/mlruns/mlflow.db")
    run = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])][0]
    return run.data.metrics["time/wall_seconds"], int(run.data.params["n_trainable_params"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per side (default 8)")
    args = p.parse_args(argv)
    header("1 vs 2 gloo processes, tiny preset, CPU (a smoke test of the machinery)")
    cfg = tiny_config(64)
    base = [f"data.sources=[{cfg.data.sources[0]}]", f"data.eval_size={cfg.data.eval_size}", "listen=0",
            "train.batch_size=2", "train.grad_accum=2", f"cache.dir={BENCH_CACHE / 'prepared'}",
            *(f"backbones.{k}={getattr(cfg.backbones, k)}" for k in ("whisper", "orpheus", "snac"))]
    per_step = {}
    with tempfile.TemporaryDirectory(prefix="s2s-bench-ddp-") as tmp:
        for nproc in (1, 2):
            short, n_params = wall_seconds(cfg.strategy_name, nproc, 2, base, Path(tmp))
            long, _ = wall_seconds(cfg.strategy_name, nproc, 2 + args.steps, base, Path(tmp))
            per_step[nproc] = (long - short) / args.steps
            print(f"{nproc} process{'es' if nproc > 1 else ''}: {per_step[nproc]:.3f} s per optimizer step of "
                  f"{2 * 2 * nproc} samples")
    bytes_grad = 4 * n_params
    print(f"communication: {n_params:,} trainable parameters -> {bytes_grad / 1e6:.2f} MB of float32 gradients "
          f"all-reduced once per step; a ring sends {bytes_grad / 1e6:.2f} MB per process per step with 2 processes")
    ratio = (2 * per_step[1]) / per_step[2]
    print(f"RATIO samples/s, 2 processes over 1 = {ratio:.2f}x (step time ratio {per_step[2] / per_step[1]:.2f}x)")
    print(f"load    : {loadavg()} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
