"""Train one strategy, tracked in MLflow.

    python -m experiments.run adapter_stage1                    # tiny offline preset
    python -m experiments.run adapter_stage1 --preset full train.lr=1e-4
    python -m experiments.run adapter_stage1 train.checkpoint_every=50 resume=outputs/adapter_stage1/<run id>
    python -m experiments.run --list

Ctrl-C / SIGTERM save a checkpoint and print the command that resumes (s2s/stop.py, s2s/resume.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.config import ExperimentConfig, as_dict, build_config
from s2s.config import ConfigError, flatten, user_errors


def ensure_synth_data(cfg: ExperimentConfig) -> None:
    """Synthesize `synth_dir` when it is a data source, missing, and `synth_if_missing` asks for it."""
    synth = Path(cfg.synth_dir)
    if cfg.synth_if_missing and cfg.synth_dir in cfg.data.sources and not synth.exists():
        from s2s.data.synth import synthesize_dataset
        print(f"{synth} is missing: synthesizing {cfg.synth_if_missing} es/it utterances with espeak-ng (once)")
        synthesize_dataset(synth, langs=["es", "it"], n=cfg.synth_if_missing, seed=0)


def load_data(cfg: ExperimentConfig, progress: bool = True):
    """Train and eval examples plus the counts of skipped samples."""
    from s2s.data.loader import SkipCounter, load_examples

    ensure_synth_data(cfg)
    skips = SkipCounter()
    train = load_examples(cfg.data, "train", skips, progress=progress)
    evals = load_examples(cfg.data, "eval", skips, progress=progress)
    return train, evals, skips


def prepared_data(cfg: ExperimentConfig, core, progress: bool = True):
    """(train items, eval items, skip counts), targets and features read from the cache when present."""
    from s2s.prepare import prepare
    train_ex, eval_ex, skips = load_data(cfg, progress)
    return (prepare(train_ex, core, cfg.cache, progress, "prepare train"),
            prepare(eval_ex, core, cfg.cache, progress, "prepare eval"), skips)


def build_strategy(cfg: ExperimentConfig, core):
    from experiments.config import strategy_class
    return strategy_class(cfg.strategy_name)(cfg.strategy, core)


def load_trained(checkpoint: str, overrides: list[str] = (), others: list = ()):
    """Rebuild (config, core, strategy, checkpoint meta) from a checkpoint directory; `overrides` as on
    the command line.

    `others`: further configs (dataclasses) that take the overrides whose first section they own.
    """
    from experiments.config import config_from_dict
    from s2s.backbones import FrozenCore
    from s2s.checkpoint import CheckpointError, load_checkpoint
    from s2s.config import apply_overrides_many, validate

    weights, meta = load_checkpoint(checkpoint)
    if not isinstance(meta.get("config"), dict) or "strategy_name" not in meta["config"]:
        raise CheckpointError(f"{checkpoint}: meta.json has no 'config' with a 'strategy_name'; not a checkpoint "
                              f"written by s2s (or written by an incompatible version)")
    try:
        cfg = config_from_dict(meta["config"])
    except ValueError as e:
        raise CheckpointError(f"{checkpoint}: the config in meta.json cannot be rebuilt ({e})") from None
    apply_overrides_many([cfg, *others], list(overrides))
    validate(cfg)
    core = FrozenCore(cfg.backbones)
    from experiments.config import strategy_class
    model = strategy_class(cfg.strategy_name).from_checkpoint(cfg.strategy, core, meta)
    try:
        model.load_trainable_state_dict(weights)
    except ValueError as e:
        raise CheckpointError(f"{checkpoint}: {e}") from None
    return cfg, core, model, meta


def config_hash(cfg: ExperimentConfig) -> str:
    """Identity of what a run trains on and how: the config less s2s.resume.FREE_KEYS (where it logs or
    writes, how it is resumed), plus the backbones' fingerprints."""
    import hashlib
    import json

    from s2s.backbones import fingerprint
    from s2s.resume import result_keys
    d = result_keys(flatten(as_dict(cfg)))
    d["backbone_fingerprints"] = [fingerprint(getattr(cfg.backbones, k)) for k in ("whisper", "orpheus", "snac")]
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_point(cfg: ExperimentConfig):
    """The checked checkpoint `cfg.resume` names (s2s/resume.py); ResumeError/CheckpointError otherwise."""
    from s2s.resume import check_resumable, locate
    from s2s.tracking import tracking_uri

    point = locate(cfg.resume, tracking_uri(cfg.tracking))
    check_resumable(point, as_dict(cfg))
    return point


def _open_run(cfg: ExperimentConfig, point, parent_run_id: str | None):
    """A new MLflow run, or the resumed checkpoint's own run (in the store it was logged to)."""
    import dataclasses

    from s2s.tracking import Run, git_commit
    if point is not None:  # the store it was logged to, unless tracking.uri says where that store is now
        tracking = dataclasses.replace(cfg.tracking, uri=cfg.tracking.uri or point.meta.get("tracking_uri"))
        return Run(tracking, run_id=point.meta["mlflow_run_id"])
    tags = {"s2s.strategy": cfg.strategy_name, "s2s.preset": cfg.preset, "s2s.git_commit": git_commit(),
            "s2s.config_hash": config_hash(cfg),
            **{f"s2s.backbone.{k}": getattr(cfg.backbones, k) for k in ("whisper", "orpheus", "snac")}}
    return Run(cfg.tracking, tags, parent_run_id=parent_run_id)


def train(cfg: ExperimentConfig, parent_run_id: str | None = None, progress: bool = True,
          on_eval=None) -> dict:
    """Run one experiment end to end; returns the trainer's result plus the run id.

    `on_eval(step, eval_metrics)`, if given, is called after every evaluation (the trainer's hook);
    an exception it raises stops training and ends the run (optuna.TrialPruned: KILLED, tagged pruned).
    With `cfg.resume` the checkpoint's run continues: the same MLflow run (RUNNING again) and
    out_dir, its trainable weights, optimizer, scheduler, RNG and data position, so the result is
    bit for bit that of the uninterrupted run. SIGINT/SIGTERM during training save a checkpoint and
    raise s2s.stop.Interrupted (the run ends KILLED); earlier they raise it at once.
    """
    import contextlib

    import torch

    from s2s.backbones import FrozenCore
    from s2s.checkpoint import STATE_FILE, CheckpointError, set_aside_after
    from s2s.prepare import make_batch
    from s2s.resume import RunLock
    from s2s.stop import StopSignals
    from s2s.trainer import Trainer

    cfg.train.progress = cfg.train.progress and progress
    with contextlib.ExitStack() as stack:
        stack.enter_context(StopSignals(defer=False))  # the trainer defers them while it can save
        point = resume_point(cfg) if cfg.resume else None  # checked before anything is opened or trained
        if point is not None:  # before the run is touched: a run still training elsewhere is left alone
            stack.enter_context(RunLock(point.out_dir))
        run = stack.enter_context(_open_run(cfg, point, parent_run_id))
        if point is not None:
            resolved = point.meta["config"]
        else:
            resolved = as_dict(cfg)
            run.log_params(flatten(resolved))
            run.log_dict(resolved, "config.yaml")
        core = FrozenCore(cfg.backbones)
        train_items, eval_items, skips = prepared_data(cfg, core, progress)
        if point is None:
            run.log_metrics({**skips.as_dict(), "data/train_samples": len(train_items),
                             "data/eval_samples": len(eval_items)}, 0)
        torch.manual_seed(cfg.train.seed)  # the seed decides the initial trainable weights too
        model = build_strategy(cfg, core)
        if point is not None:
            try:
                model.load_trainable_state_dict(point.weights)
            except ValueError as e:
                raise CheckpointError(f"resume: {point.path}: {e}") from None
            cfg.train.out_dir = str(point.out_dir)
        else:
            run.log_params({"n_trainable_params": model.n_trainable()})
            if cfg.train.out_dir == "outputs":  # one folder per run unless the user chose one
                cfg.train.out_dir = str(Path("outputs") / cfg.strategy_name / run.run_id)
            elif parent_run_id:  # one of several runs (a comparison) sharing the chosen folder: one inside it each
                cfg.train.out_dir = str(Path(cfg.train.out_dir) / cfg.strategy_name / run.run_id)
            stack.enter_context(RunLock(cfg.train.out_dir))
            run.set_tags({"s2s.out_dir": str(Path(cfg.train.out_dir).resolve())})  # where resume=<run id> looks
        meta = lambda: {"strategy": cfg.strategy_name, "config": resolved, "backbones": core.ids(),  # noqa: E731
                        "layout": core.layout.to_dict(), "mlflow_run_id": run.run_id, "tracking_uri": run.uri,
                        **model.checkpoint_meta()}
        trainer = Trainer(cfg.train, model, train_items, eval_items, lambda items: make_batch(items, core),
                          log=run.log_metrics, meta=meta, on_eval=on_eval or (lambda step, metrics: None))
        if point is not None:
            try:
                trainer.load_state_dict(point.state)
            except ValueError as e:
                raise CheckpointError(f"resume: {point.path / STATE_FILE}: {e}") from None
            # Only now, with everything loaded, does the run change: RUNNING again, same id, same out_dir.
            for d in set_aside_after(point.out_dir, point.step):
                print(f"set aside {d}: a checkpoint past step {point.step} belongs to the abandoned continuation")
            run.reopen({"s2s.resumed_from": str(point.path.resolve()), "s2s.resumed_at_step": str(point.step)})
            print(f"resuming MLflow run {run.run_id} at step {point.step} from {point.path}")
        result = trainer.fit()
        run.log_metrics({"time/wall_seconds": result["wall_seconds"]}, result["steps"])
        run.log_artifact(result["checkpoint"], "checkpoint")
        run.set_tags({"s2s.checkpoint": str(Path(result["checkpoint"]).resolve())})
        return {**result, "run_id": run.run_id, "tracking_uri": run.uri, "n_trainable": model.n_trainable(),
                "model": model, "eval_items": eval_items, "collate": trainer.collate}


def resume_command(args, checkpoint) -> str:
    """The command line that continues an interrupted run from `checkpoint`."""
    import shlex
    parts = ["python -m experiments.run", args.strategy]
    if args.preset != "tiny":
        parts += ["--preset", args.preset]
    parts += [f"--config {shlex.quote(c)}" for c in args.config]
    parts += [shlex.quote(o) for o in args.overrides if not o.startswith("resume=")]
    parts.append(f"resume={shlex.quote(str(checkpoint))}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from experiments.config import PRESETS
    from s2s.strategies import STRATEGIES

    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategy", nargs="?", help="strategy name (see --list)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=1e-4")
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--config", action="append", default=[], help="extra YAML config file(s)")
    parser.add_argument("--list", action="store_true", help="list the strategies and exit")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_intermixed_args(argv)

    if args.list or not args.strategy:
        for name, cls in STRATEGIES.items():
            print(f"{name:20s} {cls.summary}")
        return 0 if args.list else 2
    try:
        cfg = build_config(args.strategy, args.preset, args.overrides, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.no_progress:
        cfg.train.progress = False
    from s2s.stop import Interrupted
    from s2s.tracking import ui_command
    try:
        result = train(cfg, progress=not args.no_progress)
    except user_errors() as e:  # ours say what was wrong and how to fix it; no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:  # SIGINT/SIGTERM: a clean exit with the way back in
        if e.checkpoint is not None:
            print(f"\n{e}. Resume with:\n  {resume_command(args, e.checkpoint)}", file=sys.stderr)
        else:
            print(f"\n{e}: interrupted before training started; run the same command again", file=sys.stderr)
        return e.exit_code
    final = result["final_eval"]
    step0, first = result["eval_history"][0]
    print(f"\neval loss (nats/target token): {first['eval/loss']:.4f} at step {step0} -> {final['eval/loss']:.4f} "
          f"at step {result['steps']} (k0: {first.get('eval/loss_k0', float('nan')):.4f} -> "
          f"{final.get('eval/loss_k0', float('nan')):.4f})")
    print(f"MLflow run: {result['run_id']}")
    print(f"checkpoint: {result['checkpoint']}")
    print(f"open the UI: {ui_command(result['tracking_uri'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
