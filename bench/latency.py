"""Speech-to-speech latency: time to first audio and real-time factor, streamed vs offline, batch 1.

    .venv/bin/python -m bench.latency [--tokens N] [--rounds N] [--chunk-frames N] [--threads N] [--quick]
    .venv/bin/python -m bench.latency --full DIR       # GPU: DIR/whisper, DIR/orpheus, DIR/snac (real shapes)

Both sides run `s2s.infer.Session.run` on the same input (a 3 s voiced sweep, 22.05 kHz: the model
is random, the content does not matter, its length does) with one checkpoint of the benchmarks'
strategy (adapter_stage1, bench/_common.py) with random weights, greedily and for exactly --tokens
speech ids (min_new_tokens keeps end_of_speech out), so both do the same language-model work:

- (a) offline: generate every id, then decode them with SNAC at once; the first audio is the whole answer;
- (b) streamed: SNAC decodes each chunk of `--chunk-frames` frames as soon as the 3 frames after it
  have arrived (s2s/streaming.py: exact context), so the first audio waits for chunk + 3 frames.

The rounds alternate A B / B A. RATIO: median time to first audio of (b) over (a); the real-time
factors (compute seconds / audio seconds) of both and their ratio (streaming decodes each frame
inside a 7-frame window, so it pays more SNAC work). Both sides must produce the same samples.

The bandwidth bound (the issue's): decoding a 3B model in bf16 reads ~6.4 GB of weights per
token; an H100 reads 3.35 TB/s, so >= 1.9 ms/token; SNAC needs ~82 tokens per second of audio,
so the real-time factor is >= ~0.16 from the language model alone. On a GPU the measured time per
token is printed against that bound. `--full` has not been run yet: no GPU where this was written.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from bench._common import BENCH_CACHE, add_threads_arg, apply_threads, header, loadavg, tiny_config
from s2s.backbones import FrozenCore
from s2s.checkpoint import save_checkpoint
from s2s.experiment import build_strategy
from s2s.experiment_config import as_dict, build_config
from s2s.generate import GenerationConfig
from s2s.infer import Session, StreamConfig
from s2s.tokens import FRAME

# The bound for the real model (REFERENCE §2-3): weights read per token, H100 bandwidth.
BOUND_BYTES_PER_TOKEN = 6.4e9
BOUND_BANDWIDTH = 3.35e12
INPUT_RATE = 22050


def voiced_sweep(seconds: float = 3.0, rate: int = INPUT_RATE) -> np.ndarray:
    """A 120-220 Hz harmonic sweep with a little noise: float32 [T]."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 100 * t / seconds) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    return (wave + 0.01 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


def checkpoint(full: str | None) -> tuple[Path, str]:
    """(checkpoint, strategy): the benchmarks' strategy (bench/_common.py) with random weights, its expansion
    output perturbed so the ExpansionBlocks are in the path as in a trained model, over the tiny backbones
    or over the full-size ones in `full` (the full preset's dimensions)."""
    cfg = tiny_config(max_train=8)
    if full:
        cfg = build_config(cfg.strategy_name, "full", [f"backbones.{k}={Path(full) / k}" for k in
                                                       ("whisper", "orpheus", "snac")])
    torch.manual_seed(0)
    model = build_strategy(cfg, FrozenCore(cfg.backbones))
    with torch.no_grad():
        model.expansion.out_proj.weight.normal_(0.0, 0.05)
    meta = {"strategy": cfg.strategy_name, "config": as_dict(cfg), **model.checkpoint_meta()}
    path = save_checkpoint(BENCH_CACHE / "latency" / ("full" if full else "tiny"), model.trainable_state_dict(), meta)
    return path, cfg.strategy_name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_threads_arg(parser)
    parser.add_argument("--tokens", type=int, default=280,
                        help="speech ids per answer (default 280 = 40 frames, 3.4 s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-frames", type=int, default=1, help="frames per streamed chunk (default 1)")
    parser.add_argument("--full", metavar="DIR", help="full-size backbones in DIR/whisper, DIR/orpheus, DIR/snac "
                        "(random weights are fine); meant for a GPU")
    parser.add_argument("--quick", action="store_true", help="smoke run: 70 tokens, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds = 70, 1
    apply_threads(args)
    ckpt, strategy = checkpoint(args.full)
    header(f"latency: streamed vs offline speech-to-speech ({'full-size backbones' if args.full else 'tiny preset'}, "
           f"{strategy}, batch 1)")
    fixed = GenerationConfig(temperature=0.0, repetition_penalty=1.0, max_new_tokens=args.tokens,
                             min_new_tokens=args.tokens)
    session = Session(ckpt, generation=fixed, streaming=StreamConfig(chunk_frames=args.chunk_frames))
    wave = voiced_sweep()
    core = session.core
    print(f"sizes   : input {len(wave) / INPUT_RATE:.1f} s at {INPUT_RATE} Hz -> {args.tokens} speech ids "
          f"({args.tokens // FRAME} frames, {args.tokens // FRAME * 2048 / 24000:.2f} s); LLM "
          f"{sum(p.numel() for p in core.llm.parameters()):,} parameters ({core.dtype}) on {core.device}; "
          f"chunk {args.chunk_frames} frame(s), context 3+3 frames")

    warm = GenerationConfig(**{**vars(fixed), "max_new_tokens": 5 * FRAME, "min_new_tokens": 5 * FRAME})
    session.config.generation = warm
    session.run(wave, INPUT_RATE), session.run(wave, INPUT_RATE, stream=True)  # warm-up: not timed
    session.config.generation = fixed
    sides = {"offline": [], "streamed": []}
    for r in range(args.rounds):
        for name in (["offline", "streamed"] if r % 2 == 0 else ["streamed", "offline"]):
            sides[name].append(session.run(wave, INPUT_RATE, stream=name == "streamed"))
    med = {name: {key: statistics.median(getattr(x, key) for x in runs)
                  for key in ("time_to_first_audio_s", "real_time_factor", "tokens_per_second")}
           for name, runs in sides.items()}
    for name, m in med.items():
        print(f"{'(a)' if name == 'offline' else '(b)'} {name:8s}: "
              f"time to first audio {m['time_to_first_audio_s']:.3f} s"
              f" | real-time factor {m['real_time_factor']:.3f} | {m['tokens_per_second']:.1f} tokens/s "
              f"(median of {args.rounds})")
    a, b = sides["offline"][-1].wave, sides["streamed"][-1].wave
    same = a.shape == b.shape and bool(torch.allclose(a, b, atol=1e-4, rtol=0))
    diff = (a - b).abs().max().item() if a.shape == b.shape else "n/a (lengths differ)"
    print(f"same samples on both sides: {same} (max diff {diff})")
    ttfa = [s.time_to_first_audio_s / o.time_to_first_audio_s for o, s in zip(sides["offline"], sides["streamed"])]
    print(f"RATIO time to first audio, streamed / offline: {statistics.median(ttfa):.3f}x "
          f"(rounds {', '.join(f'{x:.3f}' for x in ttfa)})")
    print(f"real-time factor, streamed / offline: "
          f"{med['streamed']['real_time_factor'] / med['offline']['real_time_factor']:.3f}x")

    per_token = BOUND_BYTES_PER_TOKEN / BOUND_BANDWIDTH
    tokens_per_audio_second = FRAME * core.snac.sampling_rate / 2048
    print(f"bound   : 3B bf16 reads ~{BOUND_BYTES_PER_TOKEN / 1e9:.1f} GB/token; "
          f"H100 {BOUND_BANDWIDTH / 1e12:.2f} TB/s "
          f"-> >= {per_token * 1e3:.2f} ms/token; {tokens_per_audio_second:.1f} tokens per audio second -> "
          f"real-time factor >= {per_token * tokens_per_audio_second:.3f}")
    if core.device.type == "cuda":
        ms = 1e3 / med["offline"]["tokens_per_second"]
        weights = sum(p.numel() * p.element_size() for p in core.llm.parameters())
        print(f"measured: {ms:.2f} ms/token = {ms / (per_token * 1e3):.2f}x the H100 bound "
              f"({torch.cuda.get_device_name()}; this LLM reads {weights / 1e9:.2f} GB of weights per token)")
    else:
        print("measured: no GPU here, so no comparison with the bound (run --full DIR on a GPU)")
    print(f"load    : {loadavg()} at end")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
