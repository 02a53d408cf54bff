"""Training memory does not grow with the dataset: a short run on 8x more utterances peaks within 15%
of the RSS of the same run on N (each run its own process: `ru_maxrss` is a per-process peak).

Before the shards (s2s/shards.py) the loader held every decoded utterance (~0.16 MB per second of
audio): here 8N x 10 s would add ~400 MB to a run of about 2 GB, far past the margin."""
from __future__ import annotations

from bench._common import noise_dataset, peak_rss_of_run
from tests.core_fixtures import short_run

N, SECONDS = 32, 10.0


def _peak_rss_mb(tmp_path, n: int, tiny_backbone_cfg) -> float:
    source = noise_dataset(tmp_path / "data", n, SECONDS, seed=n)
    overrides = short_run(source, tiny_backbone_cfg, tmp_path / "cache", tmp_path / "mlruns", tmp_path / "out",
                          **{"cache.shard_rows": 32, "cache.cache_speech_states": "false", "train.max_steps": 3,
                             "train.eval_every": 100, "data.num_workers": 1})
    return peak_rss_of_run("adapter_stage1", overrides)


def test_eight_times_the_data_does_not_raise_peak_rss_by_15_percent(tmp_path, tiny_backbone_cfg, tiny_core):
    small = _peak_rss_mb(tmp_path / "small", N, tiny_backbone_cfg)
    large = _peak_rss_mb(tmp_path / "large", 8 * N, tiny_backbone_cfg)
    assert large <= 1.15 * small, f"peak RSS {large:.0f} MB on {8 * N} utterances vs {small:.0f} MB on {N}"
    held_before = 8 * N * SECONDS * 0.16  # MB the in-memory loader would have held for the large set
    assert held_before > 0.15 * small, f"{small:.0f} MB: the test cannot tell the two designs apart"
