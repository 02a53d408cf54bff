"""Training adapter_stage1 at the REAL dimensions, on random weights: step time, memory and FLOPs, measured
beside the analytic model, with gradient checkpointing on and off.

    .venv/bin/python -m bench.full_size                 # both settings; 2 busy CPU cores: 16-22 min (+2 to build)
    .venv/bin/python -m bench.full_size --quick         # checkpointing on only, 1.5 s utterances
    .venv/bin/python -m bench.full_size --device cuda --steps 5 --seconds 9
    .venv/bin/python -m bench.full_size --reduced       # small widths, the same code path (the test's)

Whisper-large-v3's encoder, Orpheus 3B (vocab 156,940, the real Orpheus token layout) and SNAC 24 kHz
are built once with random weights into --cache (~8 GB, s2s/full_size_build.py). Each setting then trains
in a fresh process (so its peak memory is its own) through the normal full-preset path:
`build_config("adapter_stage1", "full", overrides)` + `s2s.experiment.train`, batch 2 of synthesized
es/it utterances of about --seconds s, grad_accum 1, bf16 backbones: 1 warm-up step, then --steps
timed ones. A step's time is the interval between the trainer's metric logs, so it includes collating
the batch (Whisper runs there: the full preset does not cache its states) and the optimizer step; the
last step's time ends where the evaluation after it begins.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench._common import BENCH_CACHE, header, loadavg
from s2s.costs import (CARD, PROMPT_POSITIONS, SNAC_TOKENS_PER_SECOND, Dims, Sample, card_projection,
                       expansion_checkpointing, param_counts, peak_bf16, step_flops, step_memory, utterance)
from s2s.full_size import reduced_strategy_overrides, run_isolated
from s2s.full_size_build import MARKER, backbones_dir, dataset_seconds, ensure_dataset

GIB = 2 ** 30
H200_PEAK, TARGET_MFU = 989e12, 0.40


def summarize(r: dict) -> dict:
    """Medians, rates and the analytic figures of one measured setting (`s2s.full_size.measure`'s dict)."""
    d, steps, cuda = Dims(**r["dims"]), r["steps"], r["device"].startswith("cuda")
    batches = [[Sample(*x) for x in s["samples"]] for s in steps]
    flops = [step_flops(d, b, r["checkpointing"], s["whisper_utterances"]) for b, s in zip(batches, steps)]
    largest = max(batches, key=lambda b: len(b) * max(x.L for x in b))  # memory: the largest padded batch
    seconds, tokens = sum(s["seconds"] for s in steps), sum(s["tokens"] for s in steps)
    act_bytes = 2 if cuda else 4  # trainable modules' saved activations: bf16 under CUDA autocast, else fp32
    return {"median": statistics.median(s["seconds"] for s in steps), "times": [s["seconds"] for s in steps],
            "whisper": statistics.median(s["whisper_seconds"] for s in steps), "batch": largest,
            "tokens": statistics.median(s["tokens"] for s in steps), "rate": tokens / seconds,
            "targets": tokens / len(steps), "flops": {k: sum(f[k] for f in flops) / len(flops) for k in flops[0]},
            "flop_rate": sum(f["total"] for f in flops) / seconds, "act_bytes": act_bytes,
            "memory": step_memory(d, largest, r["checkpointing"], 2, act_bytes, r["snac_params"])}


def report(r: dict, s: dict) -> None:
    name = f"checkpointing {'on' if r['checkpointing'] else 'off'}"
    b, m, f = s["batch"], s["memory"], s["flops"]
    per_token = {k: v / s["targets"] for k, v in f.items()}
    print(f"{name:<17}: step {s['median']:.2f} s median (steps {', '.join(f'{t:.2f}' for t in s['times'])}; "
          f"Whisper {s['whisper']:.2f} s of it) | {s['tokens']:.0f} target tokens/step -> {s['rate']:.2f} target "
          f"tokens/s | B={len(b)}, L={max(x.L for x in b)} (per sample {'/'.join(str(x.L) for x in b)}), "
          f"Ta {'/'.join(str(x.Ta) for x in b)}")
    what = "CUDA max allocated" if r["device"].startswith("cuda") else "peak RSS"
    since = "from the end of loading" if r["peak_from_load_end"] else "whole process"
    # transformers maps safetensors files: weights are read on first use (the untimed steps), not at load
    mapped = r["rss_loaded"] - r["rss_start"] < m["frozen_weights"] / 2 and not r["device"].startswith("cuda")
    print(f"  measured       : {what} {r['peak'] / GIB:.2f} GiB ({since}); load phase peak {r['load_peak'] / GIB:.2f}, "
          f"resident after load {r['rss_loaded'] / GIB:.2f}, at start {r['rss_start'] / GIB:.2f} GiB; "
          f"load {r['load_seconds']:.0f} s" + (" (weights memory-mapped: paged in at first use)" if mapped else ""))
    runtime = 0 if r["device"].startswith("cuda") else r["rss_start"]
    print(f"  analytic       : {(m['total'] + runtime) / GIB:.2f} GiB = {m['total'] / GIB:.2f} model "
          + (f"+ {runtime / GIB:.2f} runtime (RSS at start) " if runtime else "")
          + "| " + " | ".join(f"{k.replace('_', ' ')} {v / GIB:.3f}" for k, v in m.items() if k != "total"))
    peak = peak_bf16(r["device_name"])
    mfu = f"MFU {s['flop_rate'] / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else \
        f"peak unknown ({r['device_name']})"
    print(f"  FLOPs          : {f['total'] / 1e12:.2f} TFLOP/step = {per_token['total'] / 1e9:.2f} GFLOP/target token "
          f"(" + ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.2f}" for k, v in per_token.items() if k != "total")
          + f") -> {s['flop_rate'] / 1e12:.3f} TFLOP/s achieved; {mfu}")
    if r["skipped_steps"]:
        print(f"  warning        : {r['skipped_steps']:.0f} step(s) skipped as non-finite")


def ratios(results: dict, summaries: dict) -> None:
    """Checkpointing on / off: step time, FLOPs, measured and analytic peak memory."""
    on, off = summaries[True], summaries[False]
    # Whisper's part of a step is the same work in both settings: the rest of the step in Whisper-times
    # corrects the ratio for a machine that was busier during one setting than during the other.
    rest = [x["median"] - x["whisper"] for x in (on, off)]
    gauged = [r / x["whisper"] if x["whisper"] else float("nan") for r, x in zip(rest, (on, off))]
    no_whisper = [x["flops"]["total"] - x["flops"]["whisper"] for x in (on, off)]
    memory = [results[True]["peak"] / results[False]["peak"], on["memory"]["total"] / off["memory"]["total"]]
    print(f"ratio on/off     : step time {on['median'] / off['median']:.3f}x; without Whisper "
          f"{rest[0] / rest[1]:.3f}x, in units of each step's Whisper time (the same work in both: a gauge of the "
          f"load) {gauged[0] / gauged[1]:.3f}x, by FLOPs {no_whisper[0] / no_whisper[1]:.3f}x | peak memory "
          f"{memory[0]:.3f}x (analytic {memory[1]:.3f}x) | FLOPs {on['flops']['total'] / off['flops']['total']:.3f}x")


def expansion_verdict(d: Dims, batch: list[Sample], act_bytes: int) -> None:
    """Would checkpointing the ExpansionBlocks pay, by the analytic model, at this batch and the card's?"""
    for label, b in (("this batch", batch), (f"2 x {CARD['hours'] * 3600 / CARD['utterances']:.0f} s (card mean)",
                                             [utterance(CARD["hours"] * 3600 / CARD["utterances"])] * 2)):
        mem, x = step_memory(d, b, True, 2, act_bytes), expansion_checkpointing(d, b, act_bytes)
        extra = x["extra_flops"] / step_flops(d, b, True, len(b))["total"]
        share = x["saved_bytes"] / mem["total"]
        print(f"  {label:<22}: blocks keep {x['activations'] / GIB:.2f} GiB vs the checkpointed LLM's "
              f"{mem['llm_activations'] / GIB:.2f} (+ {mem['backward_working_set'] / GIB:.2f} working set); "
              f"checkpointing them saves {x['saved_bytes'] / GIB:.2f} GiB ({share:.1%} of the analytic peak) for "
              f"+{extra:.1%} FLOPs -> {'pays' if share > extra else 'does not pay'} where memory binds; the "
              f"float32 logits at the targets take {mem['logits'] / GIB:.2f} GiB ({mem['logits'] / mem['total']:.1%})")


def projection(d: Dims, s: dict, checkpointing: bool, whisper_cached: bool, device: str) -> None:
    """The card's training by formula (s2s.costs.card_projection): on an H200 at 40% MFU, and on this
    device at the measured target tokens/s and at the measured FLOP/s."""
    p = card_projection(d, checkpointing, whisper_cached)
    hours, utts, epochs, mean = CARD["hours"], CARD["utterances"], CARD["epochs"], p["seconds_per_utterance"]
    snac = f"{SNAC_TOKENS_PER_SECOND:.2f}"
    print(f"projection (the card: {epochs} epochs x {hours} h in {utts:,} utterances of {mean:.1f} s; checkpointing "
          f"{'on' if checkpointing else 'off'}, Whisper {'cached' if whisper_cached else 'run per batch'}):")
    print(f"  LLM positions = {epochs} x ({hours} h x 3600 x ({snac} SNAC tokens + 10 adapter frames per s) + "
          f"{utts:,} x {PROMPT_POSITIONS} prompt positions) = {p['llm_positions'] / 1e9:.3f} B;  targets = {epochs} x "
          f"({hours} x 3600 x {snac} + {utts:,}) = {p['targets'] / 1e9:.3f} B")
    print(f"  FLOPs = {epochs} x {utts:,} x {p['flops_per_utterance'] / 1e12:.2f} TFLOP per {mean:.0f} s utterance = "
          f"{p['flops']:.3g} -> H200 at {TARGET_MFU:.0%} MFU ({TARGET_MFU} x {H200_PEAK / 1e12:.0f} TFLOP/s): "
          f"{p['flops'] / (TARGET_MFU * H200_PEAK) / 3600:.1f} h")
    card = [utterance(mean)] * 2
    on, off = (step_memory(d, card, c, 2, 2)["total"] / GIB for c in (True, False))
    print(f"  analytic peak of its micro-batch (2 x {mean:.0f} s) on a GPU (bf16 autocast activations, CUDA context "
          f"not counted): checkpointing on {on:.2f} GiB, off {off:.2f} GiB")
    by_tokens = p["targets"] / s["rate"] / 3600
    by_flops = p["flops"] / s["flop_rate"] / 3600
    print(f"  this device ({device}): targets / measured {s['rate']:.2f} target tokens/s = {by_tokens:,.0f} h "
          f"({by_tokens / 24:,.0f} days); FLOPs / measured {s['flop_rate'] / 1e12:.3f} TFLOP/s = {by_flops:,.0f} h "
          f"(the FLOP-based figure accounts for the card's longer utterances, which spread Whisper's fixed 30 s "
          f"per utterance over more targets)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.full_size", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="checkpointing on only, 1.5 s utterances (unless given)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per setting after 1 warm-up step "
                   "(default 3 on a GPU, 1 on a CPU: a step of 2 x 2 s takes 2-4 minutes on 2 cores)")
    p.add_argument("--seconds", type=float, default=None, help="utterance length (default 2; --quick 1.5)")
    p.add_argument("--checkpointing", choices=("on", "off", "both"), default=None, help="default both (--quick on)")
    p.add_argument("--cache", default=str(BENCH_CACHE / "full_size"),
                   help="backbones, data, logs (default %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--reduced", action="store_true", help="small widths, the same code path and token layout")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0: one per core; the "
                   "full-size run needs them all to fit in ~20 min on 2 cores, unlike the tiny benchmarks' 1)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    steps = max(1, args.steps or (3 if cuda else 1))
    seconds = args.seconds or (1.5 if args.quick else 2.0)
    which = args.checkpointing or ("on" if args.quick else "both")
    settings = {"on": [True], "off": [False], "both": [True, False]}[which]
    cache, t_start = Path(args.cache), time.perf_counter()

    header(f"adapter_stage1 training steps at {'REDUCED' if args.reduced else 'real'} dimensions, random weights, "
           f"bf16 backbones")
    (cache / "logs").mkdir(parents=True, exist_ok=True)
    if not (backbones_dir(cache, args.reduced) / MARKER).is_file():
        print(f"building : random backbones into {backbones_dir(cache, args.reduced)} (once; real size: ~8 GB of disk, "
              f"~7.5 GB of RAM, 1.5-3 min) ...", flush=True)
    built = run_isolated("build", log=cache / "logs" / "build.log", cache=str(cache), reduced=args.reduced)
    n_train = 2 * (steps + 1)
    data = ensure_dataset(cache, seconds, n_train + 1)
    durations = dataset_seconds(data)
    how = f"built in {built['seconds']:.0f} s" if built["seconds"] else "reused"
    print(f"backbones: {built['root']} ({how}); "
          f"data: {data} ({len(durations)} utterances, {min(durations):.2f}-{max(durations):.2f} s, "
          f"mean {statistics.mean(durations):.2f} s; {n_train} train + 1 eval)")
    print(f"config   : adapter_stage1, preset full + backbones.*=<cache> backbones.dtype=bfloat16 "
          f"backbones.device={args.device} backbones.gradient_checkpointing=<setting> train.batch_size=2 "
          f"train.grad_accum=1 train.max_steps={steps + 1} data.*=<this data> data.dedup_frames=false listen=0"
          + (" strategy.*=<tiny-preset dims>" if args.reduced else "") + " (s2s.full_size.overrides)")
    print(f"timing   : per setting a fresh process; 1 warm-up step, then {steps} timed (the last up to its "
          f"evaluation); logs and results in {cache / 'logs'}")
    results = {}
    for ckpt in settings:
        print(f"running  : checkpointing {'on' if ckpt else 'off'} ...", flush=True)
        name = cache / "logs" / f"checkpointing-{'on' if ckpt else 'off'}"
        with tempfile.TemporaryDirectory(prefix="s2s-full-size-run-") as work:
            results[ckpt] = run_isolated(
                "measure", log=name.with_suffix(".log"),
                backbones=built["root"], data=str(data), n_train=n_train, steps=steps, checkpointing=ckpt,
                device=args.device, work=work, cache=str(cache / "prepared"), threads=args.threads,
                extra=reduced_strategy_overrides() if args.reduced else [])
        name.with_suffix(".json").write_text(json.dumps(results[ckpt], indent=1))  # the raw measurement, kept

    first = next(iter(results.values()))
    d = Dims(**first["dims"])
    pc = param_counts(d)
    print(f"sizes    : Whisper encoder {pc['whisper_encoder'] / 1e6:.1f}M ({d.w_layers}x{d.w_dim}, {d.w_mels} mels, "
          f"{d.w_frames} frames), Orpheus {pc['llm'] / 1e9:.3f}B ({d.layers}x{d.hidden}, vocab {d.vocab:,}, "
          f"{'tied' if d.tied else 'untied'}), SNAC {first['snac_params'] / 1e6:.1f}M; trainable "
          f"{first['n_trainable'] / 1e6:.1f}M (adapter {pc['adapter'] / 1e6:.1f}M + expansion "
          f"{pc['expansion'] / 1e6:.1f}M); device {first['device']} ({first['device_name']}), "
          f"{first['threads']} threads")
    summaries = {ckpt: summarize(r) for ckpt, r in results.items()}
    for ckpt, r in results.items():
        report(r, summaries[ckpt])
    if len(results) == 2:
        ratios(results, summaries)
    print("ExpansionBlocks checkpointing (analytic; the LLM checkpointed; not implemented, s2s/expansion.py):")
    expansion_verdict(d, summaries[settings[0]]["batch"], summaries[settings[0]]["act_bytes"])
    ckpt = True in results  # the full preset's setting, when it was measured
    projection(d, summaries[ckpt], ckpt, first["whisper_cached"], first["device"])
    print(f"load     : {loadavg()} at end; wall {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
