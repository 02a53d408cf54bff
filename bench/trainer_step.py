"""Trainer step time vs a bare PyTorch loop over the same tiny model and the same batches.

    .venv/bin/python -m bench.trainer_step [--quick] [--threads N] [--batches N] [--rounds N] [--profile]

(a) `Trainer.train_step([batch])` (grad_accum 1), and (b) the bare loop

    out = model(batch); loss = F.cross_entropy(out.logits, out.labels, reduction="sum",
                                               label_smoothing=0.1) / n
    loss.backward(); clip_grad_norm_; opt.step(); sched.step(); opt.zero_grad()

with the same AdamW / LambdaLR, on two copies of the tiny-preset adapter_stage1 strategy built
from the same seed, over the same pre-collated micro-batches (collation is in neither timing).
The two are interleaved step by step: each batch is stepped by both sides back to back (A B,
then B A, ...) after warm-up steps, and the headline is the median over these pairs of
time(A) / time(B), which cancels most of the load drift of a shared machine (target <= 1.10).
The median step time of each side is printed too. Both copies see the same batches in the same order, so their
weights must stay equal: the max parameter difference at the end is printed as a check.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bench._common import add_threads_arg, apply_threads, header, load_train_examples, loadavg, tiny_config
from s2s.backbones import FrozenCore
from s2s.experiment import build_strategy
from s2s.prepare import CacheConfig, make_batch, prepare
from s2s.trainer import Trainer, lr_lambda

TARGET = 1.10


def build_model(cfg, core, seed: int):
    torch.manual_seed(seed)
    return build_strategy(cfg, core)


class BareLoop:
    """The minimal training step the trainer is measured against."""

    def __init__(self, model, tcfg, total_steps: int):
        self.model, self.cfg = model, tcfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        warmup = math.ceil(tcfg.warmup_ratio * total_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(tcfg.schedule, warmup, total_steps))

    def step(self, batch) -> None:
        out = self.model(batch)
        n = out.labels.numel()
        loss = F.cross_entropy(out.logits, out.labels, reduction="sum",
                               label_smoothing=self.cfg.label_smoothing) / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 micro-batches, 2 rounds")
    p.add_argument("--batches", type=int, default=None, help="micro-batches of 8 per round (default 4, --quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="timed passes over the batches (default 6, --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per side (default 3, --quick 2)")
    p.add_argument("--profile", action="store_true", help="also profile a few steps of each side")
    add_threads_arg(p)
    args = p.parse_args(argv)
    apply_threads(args)
    n_batches = args.batches or (2 if args.quick else 4)
    rounds = args.rounds or (2 if args.quick else 6)
    warm = args.warmup if args.warmup is not None else (2 if args.quick else 3)

    header("trainer step vs bare PyTorch loop (tiny preset, adapter_stage1)")
    cfg = tiny_config(n_batches * 8, ["train.batch_size=8"])
    cfg.train.grad_accum = 1
    t0 = time.perf_counter()
    core = FrozenCore(cfg.backbones)
    # The benchmark's own prepared cache: a rerun skips the SNAC/Whisper passes.
    items = prepare(load_train_examples(cfg), core, CacheConfig(dir=".cache/bench/prepared"), progress=False)
    bs = cfg.train.batch_size
    batches = [make_batch(items[i:i + bs], core) for i in range(0, len(items) - bs + 1, bs)]
    setup_s = time.perf_counter() - t0

    model_a, model_b = build_model(cfg, core, cfg.train.seed), build_model(cfg, core, cfg.train.seed)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "the two model copies differ at start"
    trainer = Trainer(cfg.train, model_a, items, [], lambda its: make_batch(its, core))
    bare = BareLoop(model_b, cfg.train, trainer.total_steps)
    model_a.train(), model_b.train()

    targets = [model_a.count_targets(b) for b in batches]
    seq = [max(len(s) for s in b.speech_tokens) for b in batches]
    print(f"sizes   : {len(items)} items, {len(batches)} micro-batches of {bs} (pre-collated), "
          f"target tokens/batch median {statistics.median(targets):.0f} (min {min(targets)}, max {max(targets)}), "
          f"longest speech span/batch median {statistics.median(seq):.0f}; vocab {core.llm.config.vocab_size}; "
          f"trainable params {model_a.n_trainable():,}; LLM {core.llm.config.num_hidden_layers}x"
          f"{core.llm_dim}; lr schedule {cfg.train.schedule} over {trainer.total_steps} steps")
    print(f"timing  : {warm} warm-up steps per side untimed, then {rounds} rounds x {len(batches)} steps per "
          f"side, paired per step; setup (load + prepare) took {setup_s:.1f} s")

    a_step = lambda b: trainer.train_step([b])  # noqa: E731
    b_step = bare.step
    # Warm-up: the same batches, interleaved, so both copies stay in lockstep.
    for i in range(warm):
        a_step(batches[i % len(batches)])
        b_step(batches[i % len(batches)])

    step_a, step_b = [], []  # paired: step_a[i] and step_b[i] ran back to back on the same batch
    for r in range(rounds):
        for j, b in enumerate(batches):  # A B, B A, A B, ... so neither side always goes first
            got = {}
            for name, fn in ((("a", a_step), ("b", b_step)) if (r + j) % 2 == 0 else (("b", b_step), ("a", a_step))):
                t0 = time.perf_counter()
                fn(b)
                got[name] = time.perf_counter() - t0
            step_a.append(got["a"])
            step_b.append(got["b"])

    med = statistics.median
    med_a, med_b = med(step_a), med(step_b)
    ratios = sorted(a / b for a, b in zip(step_a, step_b))
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(model_a.parameters(), model_b.parameters()))
    print(f"load    : {loadavg()} at end")
    print(f"trainer : median {med_a * 1e3:8.1f} ms/step  (min {min(step_a) * 1e3:.1f}, max {max(step_a) * 1e3:.1f})")
    print(f"bare    : median {med_b * 1e3:8.1f} ms/step  (min {min(step_b) * 1e3:.1f}, max {max(step_b) * 1e3:.1f})")
    print(f"check   : max |param_trainer - param_bare| after {trainer.state.step} steps each = {diff:.3g}")
    ratio = med(ratios)
    print(f"ratio of median step times = {med_a / med_b:.3f}; ratio of fastest steps = "
          f"{min(step_a) / min(step_b):.3f}")
    print(f"RATIO trainer/bare = {ratio:.3f} (median of {len(ratios)} paired steps, IQR {q1:.3f}-{q3:.3f}); "
          f"target <= {TARGET:.2f}: {'MET' if ratio <= TARGET else 'MISSED'}")

    if args.profile:
        for name, fn in (("trainer", a_step), ("bare", b_step)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for b in batches[:4]:
                    fn(b)
            print(f"\n--- profile: {name}, 4 steps ---")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
