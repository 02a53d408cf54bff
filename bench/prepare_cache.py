"""One epoch of training data with the prepared cache vs recomputing the frozen features.

    .venv/bin/python -m bench.prepare_cache [--quick] [--threads N] [--repeats N]

(a) recompute: `prepare(examples, core, CacheConfig(enabled=False))` runs SNAC on every
    target and the Whisper encoder on every input (the tiny preset's backbones), then the
    epoch's micro-batches are collated with `make_batch`;
(b) cached: `prepare(examples, core, CacheConfig(dir=<filled cache>))` reads the codes and
    the encoder states back from the safetensors files on disk, then the same collation.

Both start from the same loaded `Example`s (audio decoding and resampling are in neither).
The cache directory is a fresh temporary one, filled by an untimed warm-up epoch, so (b)
reads files that are in the OS page cache: this is the steady state of epoch 2+ of a run,
not a cold disk. The two are interleaved (A B, B A, ...); medians over repeats; printed ratio
recompute / cached (target >= 3).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench._common import add_threads_arg, apply_threads, header, load_train_examples, loadavg, tiny_config
from s2s.backbones import FrozenCore
from s2s.prepare import CacheConfig, make_batch, prepare

TARGET = 3.0


def epoch(examples, core, cache_cfg, batch_size: int):
    items = prepare(examples, core, cache_cfg, progress=False)
    return [make_batch(items[i:i + batch_size], core) for i in range(0, len(items), batch_size)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 8 utterances, 2 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs per side (default 3, --quick 2)")
    add_threads_arg(p)
    args = p.parse_args(argv)
    apply_threads(args)
    n_items = 8 if args.quick else 64
    repeats = args.repeats or (2 if args.quick else 3)

    header("prepared cache vs recomputing SNAC codes + Whisper states (tiny preset)")
    cfg = tiny_config(n_items)
    examples = load_train_examples(cfg)
    core = FrozenCore(cfg.backbones)
    bs = cfg.train.batch_size
    secs = [len(e.wave16k) / 16000 for e in examples]
    print(f"sizes   : {len(examples)} utterances, {sum(secs):.1f} s of audio (mean {statistics.mean(secs):.2f} s), "
          f"micro-batches of {bs}; Whisper {core.whisper.config.encoder_layers}x{core.whisper_dim} "
          f"(30 s padded input), SNAC codebook {core.snac.quantizer.codebook_size}")

    with tempfile.TemporaryDirectory(prefix="s2s-bench-cache-") as tmp:
        recompute = CacheConfig(dir=tmp, enabled=False, cache_speech_states=True)
        cached = CacheConfig(dir=tmp, enabled=True, cache_speech_states=True)
        # Warm-up, untimed: the epoch that fills the cache (the one a real run pays for) runs the
        # same SNAC/Whisper code as (a); then one read-back epoch warms (b).
        t_fill = time.perf_counter()
        epoch(examples, core, cached, bs)
        t_fill = time.perf_counter() - t_fill
        epoch(examples, core, cached, bs)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors"))
        print(f"timing  : untimed warm-up: 1 cache-filling epoch ({t_fill:.2f} s, "
              f"{size / 1e6:.2f} MB on disk) + 1 read-back epoch; then {repeats} timed epochs per side, "
              "alternating which side goes first")

        times, last = {"a": [], "b": []}, {}
        for r in range(repeats):
            order = ("a", "b") if r % 2 == 0 else ("b", "a")
            for side in order:
                c = recompute if side == "a" else cached
                t0 = time.perf_counter()
                last[side] = epoch(examples, core, c, bs)
                times[side].append(time.perf_counter() - t0)

        # Both sides must give the same batches (prepare rounds states to float16 either way).
        ref, fresh = last["b"], last["a"]
        same_tokens = all(torch.equal(x, y) for b1, b2 in zip(ref, fresh)
                          for x, y in zip(b1.speech_tokens, b2.speech_tokens))
        state_err = max((x - y).abs().max().item() for b1, b2 in zip(ref, fresh) for x, y in zip(b1.states, b2.states))

    med_a, med_b = statistics.median(times["a"]), statistics.median(times["b"])
    print(f"load     : {loadavg()} at end")
    n = len(examples)
    print(f"recompute: median {med_a:8.3f} s/epoch = {med_a / n * 1e3:8.2f} ms/utt  "
          f"(min {min(times['a']):.3f}, max {max(times['a']):.3f})")
    print(f"cached   : median {med_b:8.3f} s/epoch = {med_b / n * 1e3:8.2f} ms/utt  "
          f"(min {min(times['b']):.3f}, max {max(times['b']):.3f})")
    print(f"check    : cached speech tokens identical to recomputed: {same_tokens}; "
          f"max |cached - recomputed| encoder state = {state_err:.3g}")
    ratio = med_a / med_b
    print(f"RATIO recompute/cached = {ratio:.1f}x; target >= {TARGET:.0f}x: {'MET' if ratio >= TARGET else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
