"""The card-scale data pipeline against the one before it, on the tiny preset: three ratios.

    .venv/bin/python -m bench.data_pipeline [--quick] [--threads N] [--skip-memory]

(1) cold preparation of the train split, from a fresh cache each time:
    before: `load_examples` in one process, then SNAC one utterance at a time and one safetensors
            file per example (the encoder states batched by 16, as before);
    now:    `s2s.shards.prepare_split`: rows decoded in `data.num_workers` (2) DataLoader workers,
            SNAC in exact same-length batches, one Arrow shard per `cache.shard_rows` rows.
    Interleaved, medians over repeats. Target: now >= 2x faster.
(2) training steps per second on the prepared split with `train.group_by_length` vs without (same
    items, same number of steps, batch 8), and the share of padded target slots of each.
(3) peak RSS of a short training run (its own process) on N vs 8N utterances of 10 s noise.
    Target: within 15%. The largest part of the time: it prepares 8N x 10 s of audio.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench._common import (BENCH_CACHE, add_threads_arg, apply_threads, header, loadavg, noise_dataset,
                           peak_rss_of_run, tiny_config)
from s2s.backbones import FrozenCore
from s2s.data.loader import load_examples
from s2s.experiment import build_strategy
from s2s.prepare import CacheConfig, make_batch
from s2s.shards import prepare_split
from s2s.tokens import codes_to_tokens
from s2s.trainer import Trainer

PREP_TARGET, RSS_MARGIN = 2.0, 0.15


def prepare_before(cfg, core, directory: Path) -> int:
    """The pipeline before the shards: decode everything in one process, SNAC per utterance, a file each."""
    examples = load_examples(cfg.data, "train", progress=False)
    for start in range(0, len(examples), 16):
        chunk = examples[start:start + 16]
        for ex, st in zip(chunk, core.encode_speech([ex.wave16k for ex in chunk])):
            save_file({"states": st.half()}, str(directory / f"{ex.key}.states.safetensors"))
        for ex in chunk:
            tokens = codes_to_tokens(core.encode_codes(ex.target24k), core.layout)
            save_file({"tokens": tokens}, str(directory / f"{ex.key}.snac.safetensors"))
    return len(examples)


def prepare_now(cfg, core, directory: Path) -> int:
    return len(prepare_split(cfg.data, CacheConfig(dir=str(directory)), core, "train", progress=False))


def cold_preparation(cfg, core, repeats: int) -> float:
    times = {"before": [], "now": []}
    for r in range(repeats):
        for side in (("before", "now") if r % 2 == 0 else ("now", "before")):
            with tempfile.TemporaryDirectory(prefix="s2s-bench-prep-") as tmp:
                t0 = time.perf_counter()
                n = (prepare_before if side == "before" else prepare_now)(cfg, core, Path(tmp))
                times[side].append(time.perf_counter() - t0)
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"(1) cold preparation of {n} utterances: before {before:.2f} s, now {now:.2f} s (medians of {repeats}); "
          f"RATIO before/now = {before / now:.2f}x; target >= {PREP_TARGET:.0f}x: "
          f"{'MET' if before / now >= PREP_TARGET else 'MISSED'}")
    return before / now


def steps_per_second(cfg, core, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="s2s-bench-steps-") as tmp:
        split = prepare_split(cfg.data, CacheConfig(dir=tmp), core, "train", progress=False)
        result = {}
        for grouped in (False, True, False, True):  # interleaved: load falls on both
            cfg.train.group_by_length = grouped
            torch.manual_seed(0)
            model = build_strategy(cfg, core)
            trainer = Trainer(cfg.train, model, split, [], lambda items: make_batch(items, core))
            trainer.train_step(trainer._next_micro_batches())  # warm-up
            padded, t0 = [], time.perf_counter()
            for _ in range(steps):
                trainer.train_step(trainer._next_micro_batches())
                padded.append(trainer.last_padded_fraction)
            result.setdefault(grouped, []).append((steps / (time.perf_counter() - t0), statistics.mean(padded)))
    (flat, pad_flat), (grp, pad_grp) = [[statistics.median(x) for x in zip(*result[g])] for g in (False, True)]
    print(f"(2) training, batch {cfg.train.batch_size}, {steps} steps: without grouping {flat:.2f} steps/s, "
          f"padded {pad_flat:.1%}; grouped {grp:.2f} steps/s, padded {pad_grp:.1%}; RATIO grouped/plain = "
          f"{grp / flat:.2f}x")


def peak_memory(cfg, n: int) -> None:
    root = BENCH_CACHE / "data_pipeline"
    base = [f"backbones.{k}={getattr(cfg.backbones, k)}" for k in ("whisper", "orpheus", "snac")]
    peaks = {}
    for size in (n, 8 * n):
        source = root / f"noise-n{size}-10s"
        if not (source / "dataset_info.json").exists():
            noise_dataset(source, size, 10.0, seed=size)
        with tempfile.TemporaryDirectory(prefix="s2s-bench-rss-") as tmp:
            peaks[size] = peak_rss_of_run(cfg.strategy_name, [
                *base, f"data.sources=[{source}]", "data.eval_size=4", "data.speaker_column=null", "listen=0",
                f"cache.dir={tmp}/cache", "cache.cache_speech_states=false", "cache.shard_rows=32",
                "data.num_workers=1", "train.max_steps=3", "train.batch_size=2", "train.eval_every=100",
                f"tracking.root={tmp}/mlruns", f"train.out_dir={tmp}/out", "synth_if_missing=0"])
    ratio = peaks[8 * n] / peaks[n]
    print(f"(3) peak RSS of a 3-step run: {peaks[n]:.0f} MB on {n} utterances, {peaks[8 * n]:.0f} MB on {8 * n} "
          f"(10 s each); RATIO = {ratio:.3f}; target <= {1 + RSS_MARGIN:.2f}: "
          f"{'MET' if ratio <= 1 + RSS_MARGIN else 'MISSED'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 16 utterances, 1 repeat, N=8")
    p.add_argument("--skip-memory", action="store_true", help="leave out (3), the slowest part")
    add_threads_arg(p)
    args = p.parse_args(argv)
    apply_threads(args)
    n_items = 16 if args.quick else 64
    header("card-scale data pipeline vs the one before it (tiny preset)")
    cfg = tiny_config(n_items, ["data.num_workers=2", "train.batch_size=8", "train.grad_accum=1"])
    core = FrozenCore(cfg.backbones)
    print(f"sizes   : {n_items} train utterances of the benchmark set; 2 decoding workers")
    cold_preparation(cfg, core, 1 if args.quick else 3)
    steps_per_second(cfg, core, 4 if args.quick else 16)
    if not args.skip_memory:
        peak_memory(cfg, 8 if args.quick else 32)
    print(f"load    : {loadavg()} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
