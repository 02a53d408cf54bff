"""Prepare a dataset ahead of training: SNAC targets (and Whisper states when cached) into shards.

    python -m experiments.prepare                          # the tiny preset
    python -m experiments.prepare --preset full            # the card's 500 h of MLS es + it
    python -m experiments.prepare --preset full data.max_hours=50 data.num_workers=8

Training prepares whatever is missing itself; preparing first lets a GPU job start training at
once, and shows the progress with an ETA. Interrupt it at any time: finished shards stay, and
the same command continues where it stopped (s2s/shards.py).
"""
from __future__ import annotations

import argparse
import sys

from s2s.errors import UserError
from s2s.experiment import prepare_dataset
from s2s.experiment_config import PRESETS, ExperimentConfig, build_config
from s2s.progress import quiet_library_bars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.max_hours=10")
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--config", action="append", default=[], help="extra YAML config file(s)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_intermixed_args(argv)
    quiet_library_bars()
    try:
        # Preparation does not depend on the strategy: any registered one resolves the shared sections.
        cfg = build_config(ExperimentConfig.strategy_name, args.preset, args.overrides, args.config)
        summary = prepare_dataset(cfg, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; run the same command again to continue", file=sys.stderr)
        return 130
    hours, seconds = summary["train_hours"], summary["seconds"]
    print(f"train: {summary['train_samples']} utterances, {hours:.2f} h of audio; eval: {summary['eval_samples']}")
    print(f"skipped: {summary['skipped']['skipped/total']} "
          f"({', '.join(f'{k[8:]}={v}' for k, v in summary['skipped'].items() if v and k != 'skipped/total') or 'none'})")
    print(f"shards: {', '.join(summary['shard_dirs'])} ({summary['disk_bytes'] / 2**30:.2f} GiB on disk)")
    print(f"took {seconds:.1f} s ({seconds / max(hours, 1e-9) / 60:.1f} min per hour of audio; "
          f"shards that were already there cost nothing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
