"""Generation speed: KV-cached decoding vs full recomputation, real-time factor, first-frame latency.

    .venv/bin/python -m bench.generation [--quick] [--threads N] [--tokens N] [--batch N] [--rounds N]

Both sides run `s2s.generate.generate` greedily on the same tiny-preset adapter_stage1 model and
the same batch of held-out utterances: (a) with KV caches (Orpheus' DynamicCache and the
ExpansionBlocks' self-/cross-attention caches: each step runs the new position only) and (b)
`use_cache=False` (each step re-runs the whole sequence, O(L^2) over a generation). The runs are
interleaved A B / B A; RATIO = median over rounds of time(b) / time(a) = tokens/s of (a) over
tokens/s of (b). It grows with the generated length, so `--tokens` is printed with it. Both
sides must produce identical tokens (checked). Then, for the cached side alone:

- real-time factor: (generation + SNAC decoding time) / seconds of audio produced, batch 1;
- time to first audio frame: from the utterance's encoder states to the first 7 tokens decoded
  to 2048 samples of audio, batch 1 (the latency a streaming system would start speaking at).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench._common import add_threads_arg, apply_threads, header, loadavg, tiny_config
from s2s.backbones import FrozenCore
from s2s.data.loader import load_examples
from s2s.experiment import build_strategy
from s2s.generate import GenerationConfig, generate, tokens_to_audio
from s2s.prepare import CacheConfig, make_batch, prepare


def setup(batch_size: int):
    cfg = tiny_config(max_train=8, extra=["cache.dir=.cache/bench/prepared"])
    core = FrozenCore(cfg.backbones)
    examples = load_examples(cfg.data, "eval", progress=False)[:batch_size]
    items = prepare(examples, core, CacheConfig(dir=".cache/bench/prepared"), progress=False)
    torch.manual_seed(0)
    model = build_strategy(cfg, core).eval()
    with torch.no_grad():  # a trained model's expansion is not the identity; time the real path
        model.expansion.out_proj.weight.normal_(0.0, 0.05)
    return core, model, items, lambda chunk: make_batch(chunk, core)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_threads_arg(parser)
    parser.add_argument("--tokens", type=int, default=280, help="tokens generated per sample (default 280 = 40 frames)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 70 tokens, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds = 70, 1
    apply_threads(args)
    header("generation: KV-cached vs recomputed decoding (tiny preset, adapter_stage1)")
    core, model, items, collate = setup(args.batch)
    batch = collate(items)
    # end_of_speech masked until the end: every sample produces exactly --tokens tokens
    greedy = dict(temperature=0.0, repetition_penalty=1.0, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    cached_cfg, full_cfg = GenerationConfig(**greedy), GenerationConfig(use_cache=False, **greedy)
    print(f"sizes   : batch {len(batch)} utterances, {args.tokens} tokens each, input "
          f"{[round(len(s) / 50, 1) for s in batch.states]} s, vocab {core.llm.config.vocab_size}, "
          f"trainable {model.n_trainable():,}")

    generate(model, batch, GenerationConfig(**{**greedy, "max_new_tokens": 14, "min_new_tokens": 14}))  # warm-up
    cached_t, full_t, same = [], [], True
    for r in range(args.rounds):
        sides = [("a", cached_cfg), ("b", full_cfg)] if r % 2 == 0 else [("b", full_cfg), ("a", cached_cfg)]
        outs = {}
        for name, cfg in sides:
            seconds, outs[name] = timed(lambda: generate(model, batch, cfg))
            (cached_t if name == "a" else full_t).append(seconds)
        same &= all(torch.equal(x, y) for x, y in zip(outs["a"].tokens, outs["b"].tokens))
    produced = sum(len(t) for t in outs["a"].tokens)
    ratios = [f / c for c, f in zip(cached_t, full_t)]
    print(f"(a) cached     : median {statistics.median(cached_t):.3f} s = "
          f"{produced / statistics.median(cached_t):.1f} tokens/s")
    print(f"(b) recomputed : median {statistics.median(full_t):.3f} s = "
          f"{produced / statistics.median(full_t):.1f} tokens/s")
    print(f"identical tokens on both sides: {same} ({produced} tokens, {outs['a'].steps} steps)")
    print(f"RATIO cached/recomputed tokens per second: {statistics.median(ratios):.2f}x "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}; {args.tokens} tokens per sample)")

    one = collate(items[:1])
    seconds, out = timed(lambda: generate(model, one, cached_cfg))
    decode_s, (wave, _) = timed(lambda: tokens_to_audio(core, out.tokens[0]))
    audio_s = len(wave) / core.snac.sampling_rate
    print(f"real-time factor (batch 1, cached): ({seconds:.3f} s generate + {decode_s:.3f} s SNAC) / "
          f"{audio_s:.2f} s audio = {(seconds + decode_s) / audio_s:.3f}")
    first = GenerationConfig(**{**greedy, "max_new_tokens": 7, "min_new_tokens": 7})
    latency, _ = timed(lambda: tokens_to_audio(core, generate(model, one, first).tokens[0]))
    print(f"time to first audio frame (batch 1, cached): {latency * 1000:.1f} ms "
          f"(7 tokens -> {2048 / core.snac.sampling_rate * 1000:.0f} ms of audio)")
    print(f"load    : {loadavg()} at end")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
