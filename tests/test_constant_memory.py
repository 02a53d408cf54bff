"""Training memory does not grow with the dataset: a short run on 8x more utterances peaks within 15%
of the RSS of the same run on N (each run its own process: a peak is per process).

The data is prepared first, by `experiments.prepare` in a process of its own, so that the peak is
training's.

The peak is the child's own (VmHWM, bench/_common.py), not its ru_maxrss: on Linux a child's
ru_maxrss starts at its parent's peak (exec keeps the high-water mark of the memory it replaces), and
this test's parent, pytest, holds the tiny core and builds the 8N noise set in process, so it
peaks ~2.4 GB just before the 8N run. That was the "35-45% higher under pytest, within 5% by hand"
of issue 12's note: the training runs themselves peaked at 1524 and 1538 MB (anonymous ~800 MB,
file-backed ~715 MB in both), and the same two runs from a shell have a tiny parent.

Before the shards (s2s/shards.py) the loader held every decoded utterance (~0.16 MB per second of
audio): here 8N x 10 s would add ~400 MB to a run of about 1.5 GB, far past the margin."""
from __future__ import annotations

import subprocess
import sys

from bench._common import noise_dataset, peak_rss_of_run
from tests.core_fixtures import short_run
from tests.run_fixtures import REPO

N, SECONDS = 32, 10.0


def _peak_rss_mb(tmp_path, n: int, tiny_backbone_cfg) -> float:
    source = noise_dataset(tmp_path / "data", n, SECONDS, seed=n)
    overrides = short_run(source, tiny_backbone_cfg, tmp_path / "cache", tmp_path / "mlruns", tmp_path / "out",
                          **{"cache.shard_rows": 32, "cache.cache_speech_states": "false", "train.max_steps": 3,
                             "train.eval_every": 100, "data.num_workers": 1})
    prepare = [a for a in overrides if a.split("=")[0].split(".")[0] in ("data", "cache", "backbones")]
    done = subprocess.run([sys.executable, "-m", "experiments.prepare", *prepare, "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return peak_rss_of_run("adapter_stage1", overrides)


def test_eight_times_the_data_does_not_raise_peak_rss_by_15_percent(tmp_path, tiny_backbone_cfg, tiny_core):
    small = _peak_rss_mb(tmp_path / "small", N, tiny_backbone_cfg)
    large = _peak_rss_mb(tmp_path / "large", 8 * N, tiny_backbone_cfg)
    print(f"peak RSS of the run: {small:.0f} MB on {N} utterances, {large:.0f} MB on {8 * N}")  # -rP shows it
    assert large <= 1.15 * small, f"peak RSS {large:.0f} MB on {8 * N} utterances vs {small:.0f} MB on {N}"
    held_before = 8 * N * SECONDS * 0.16  # MB the in-memory loader would have held for the large set
    assert held_before > 0.15 * small, f"{small:.0f} MB: the test cannot tell the two designs apart"
