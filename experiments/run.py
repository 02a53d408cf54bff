"""Train one strategy, tracked in MLflow.

    python -m experiments.run adapter_stage1                    # tiny offline preset
    python -m experiments.run adapter_stage1 --preset full train.lr=1e-4
    python -m experiments.run adapter_stage1 train.checkpoint_every=50 resume=outputs/adapter_stage1/<run id>
    python -m experiments.run --list

Ctrl-C / SIGTERM save a checkpoint and print the command that resumes (s2s/stop.py, s2s/resume.py).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from s2s.brackets import FLOOR, TOPLINE, bracket, fraction_to_topline, summary_line
from s2s.errors import UserError
from s2s.progress import quiet_library_bars
from s2s.experiment import train
from s2s.experiment_config import PRESETS, build_config
from s2s.stop import Interrupted
from s2s.strategies import STRATEGIES
from s2s.tracking import ui_command


def resume_command(args, checkpoint) -> str:
    """The command line that continues an interrupted run from `checkpoint`."""
    parts = ["python -m experiments.run", args.strategy]
    if args.preset != "tiny":
        parts += ["--preset", args.preset]
    parts += [f"--config {shlex.quote(c)}" for c in args.config]
    parts += [shlex.quote(o) for o in args.overrides if not o.startswith("resume=")]
    parts.append(f"resume={shlex.quote(str(checkpoint))}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategy", nargs="?", help="strategy name (see --list)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=1e-4")
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--config", action="append", default=[], help="extra YAML config file(s)")
    parser.add_argument("--list", action="store_true", help="list the strategies and exit")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_intermixed_args(argv)
    quiet_library_bars()

    if args.list or not args.strategy:
        for name, cls in STRATEGIES.items():
            print(f"{name:20s} {cls.summary}")
        return 0 if args.list else 2
    try:
        cfg = build_config(args.strategy, args.preset, args.overrides, args.config)
        if args.no_progress:
            cfg.train.progress = False
        result = train(cfg, progress=not args.no_progress)
    except UserError as e:  # says what was wrong and how to fix it; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # SIGINT/SIGTERM: a clean exit with the way back in
        if e.checkpoint is not None:
            print(f"\n{e}. Resume with:\n  {resume_command(args, e.checkpoint)}", file=sys.stderr)
        else:
            print(f"\n{e}: interrupted before training started; run the same command again", file=sys.stderr)
        return e.exit_code
    if result.get("rank"):  # under torchrun: rank 0 reports
        return 0
    final = result["final_eval"]
    step0, first = result["eval_history"][0]
    print(f"\neval loss (nats/target token): {first['eval/loss']:.4f} at step {step0} -> {final['eval/loss']:.4f} "
          f"at step {result['steps']} (k0: {first.get('eval/loss_k0', float('nan')):.4f} -> "
          f"{final.get('eval/loss_k0', float('nan')):.4f})")
    print(f"MLflow run: {result['run_id']}")
    print(f"checkpoint: {result['checkpoint']}")
    print(f"open the UI: {ui_command(result['tracking_uri'])}")
    if result["brackets"]:  # last, so that a script reads it with `tail -1`
        floor, topline = (bracket(result["brackets"], name) for name in (FLOOR, TOPLINE))
        way = fraction_to_topline(final["eval/loss"], floor["eval/loss"], topline["eval/loss"])
        print(f"the frozen LM alone scores {floor['eval/loss']:.4f} given no text and {topline['eval/loss']:.4f} "
              f"given the transcript: this run went {way:.0%} of the way from the first to the second")
        print(summary_line(result["brackets"], final, "miniature" if cfg.preset == "tiny" else "brackets"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
