"""Hyperparameter search with Optuna: every trial is a training run of the usual trainer, tracked in MLflow.

    python -m experiments.search adapter_stage1 --trials 20                  # tiny preset
    python -m experiments.search adapter_stage1 --trials 6 train.max_steps=60 train.eval_every=10
    python -m experiments.search istlm_interleaved --trials 40 --workers 2 --pruner hyperband
    python -m experiments.search adapter_stage1 --space my_space.yaml --trials 30 --preset full
    python -m experiments.search adapter_stage1 --trials 100 --study s1 --storage postgresql://u@db/optuna

The search space is the strategy's default (`SEARCH_SPACE` on its Config dataclass, e.g. learning
rate log-uniform, warmup ratio, label smoothing, expansion depth or LoRA rank); `--space FILE.yaml`
extends or overrides it (`key: null` drops a key; `--replace-space` uses the file alone; format
in s2s/search/space.py). `key=value` overrides fix every other key, and pin a searched key.

Each trial reports the eval loss at every evaluation (train.eval_every); the pruner (median by
default, or hyperband) stops unpromising trials early. The objective is the final eval loss
(nats per target token), minimized; `--metric` picks another:
- a figure of the trainer's evaluation (eval/acc is maximized, eval/loss_k0 minimized, ...);
- a figure of the final checkpoint's generated speech, scored as evaluation.score does on the first
  `--score N` eval utterances (default 8; `score.KEY=VALUE` sets the scoring, e.g.
  score.speaker.backend=wavlm): eval/wer (corpus WER), eval/wer_mean, eval/cer, eval/spk_sim,
  eval/mos_dnsmos, ... in the direction its metric says (WER minimized, similarity and MOS
  maximized). It exists only at the end of a trial, so nothing is pruned (--pruner none).

    python -m experiments.search adapter_stage1 --trials 10 --metric eval/spk_sim --score 16

The study lives in `--storage` (default: SQLite at <tracking.root>/optuna.db). Re-running the
same command resumes it: finished (complete or pruned) trials are kept and only the missing
number run. Several workers share one study: `--workers K` starts K processes on this machine,
and the same command on other machines with the same `--storage` database URL (and `--study`)
joins in. A worker that dies is noticed through its heartbeat (`--heartbeat` seconds; stale
after twice that) and its trial is retried by another worker. Across machines, share both stores:

    MLFLOW_TRACKING_URI=http://mlflow-host:5000 python -m experiments.search adapter_stage1 --trials 40 \
        --study s1 --storage postgresql://s2s@db-host:5432/optuna      # the same line on every machine

MLflow: one parent run per study (tag s2s.study=<name>), one child run per trial; the best
trial, the optimization history, the intermediate values and the parameter importances (PNG)
are artifacts of the parent.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from evaluation.scoring import ScoreConfig, chosen_metrics, figure_named, score
from s2s.config import ConfigError, apply_overrides, validate
from s2s.errors import UserError
from s2s.progress import quiet_library_bars
from s2s.experiment_config import PRESETS
from s2s.search.objective import PRUNERS, Goal, Search, resolve
from s2s.search.session import finish, open_search, run_trials
from s2s.search.study import METRIC
from s2s.stores import redact
from s2s.tracking import ui_command

EXIT = {"FINISHED": 0, "FAILED": 1, "KILLED": 130}
SCORE_PREFIX = "score."


def make_goal(metric: str, n: int, score_overrides: list[str]) -> Goal:
    """The objective for `--metric`: a figure of the trainer's evaluation (eval/loss..., eval/acc...), or one
    of the generated speech of the final checkpoint, scored by evaluation.scoring on its first n eval
    utterances and logged to the trial's run."""
    trainer_figure = metric.startswith(("eval/loss", "eval/acc"))
    if trainer_figure or not metric.startswith("eval/"):
        if score_overrides:
            raise ConfigError(f"'{SCORE_PREFIX}{score_overrides[0]}': score.* settings apply to scored metrics "
                              f"(--metric eval/wer, eval/spk_sim, ...), not to {metric}")
        if not trainer_figure:
            raise ConfigError(f"--metric {metric}: give eval/loss (default), eval/acc, eval/loss_k0 ..., or a scored "
                              f"figure such as eval/wer, eval/spk_sim, eval/mos_dnsmos")
        return Goal(metric, "maximize" if "acc" in metric else "minimize")
    spec, key = figure_named(metric)
    if n < 1:
        raise ConfigError(f"--score must be at least 1 utterance to score {metric}, got {n}")
    cfg = ScoreConfig(n=n, teacher_forced=False, toplines=False, metrics=[spec.name])
    cfg.generation.temperature = 0.0  # greedy: trials differ only by their model
    apply_overrides(cfg, score_overrides)
    validate(cfg)
    chosen_metrics(cfg)  # an unknown name in score.metrics fails now, not after the first trial

    def scored(checkpoint: str, run_id: str) -> float:
        summary = score(checkpoint, (), dataclasses.replace(cfg, out=str(Path(checkpoint).parent / "score")),
                        progress=False)["summary"]
        return summary["scores"]["generated"][key]

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
    return Goal(metric, "maximize" if spec.higher_is_better else "minimize", scored, {"score": settings})


def _spawn_workers(s: Search, argv: list[str], k: int) -> list[int]:
    """Run k worker processes of this same command (each with --workers 1) and wait for them."""
    base = [sys.executable, "-m", "experiments.search", *argv, "--study", s.study_name, "--storage", s.storage_url,
            "--workers", "1", "--no-summary", "--no-progress"]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the CPU cores: k workers with all cores each slow each other down
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // k))
    procs = [subprocess.Popen(base + ["--worker-index", str(i)], env=env) for i in range(k)]
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them end their runs
        return [p.wait() for p in procs]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m experiments.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategy", help="strategy name (python -m experiments.run --list)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides fixed for every trial, and "
                        "score.key=value for a scored --metric")
    parser.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials wanted")
    parser.add_argument("--study", default=None, help="study name (default: <strategy>-<preset>-<config hash>)")
    parser.add_argument("--storage", default=None, help="Optuna database URL (default: sqlite under tracking.root)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--config", action="append", default=[], help="extra YAML config file(s)")
    parser.add_argument("--space", default=None, help="YAML search space extending/overriding the default")
    parser.add_argument("--replace-space", action="store_true", help="use --space alone, not the default space")
    parser.add_argument("--pruner", default=None, choices=PRUNERS,
                        help="default: median; none when --metric is scored on the final checkpoint")
    parser.add_argument("--metric", default=METRIC, help="the objective (default eval/loss); see above")
    parser.add_argument("--score", type=int, default=8, metavar="N",
                        help="eval utterances a scored --metric is measured on (default 8)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (reproducible with one worker)")
    parser.add_argument("--heartbeat", type=int, default=10,
                        help="seconds between worker heartbeats; a trial silent for twice this is retried")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # spawned workers
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    quiet_library_bars()
    overrides = [o for o in args.overrides if not o.startswith(SCORE_PREFIX)]
    score_overrides = [o[len(SCORE_PREFIX):] for o in args.overrides if o.startswith(SCORE_PREFIX)]
    try:  # everything is checked and opened before any trial
        goal = make_goal(args.metric, args.score, score_overrides)
        s = resolve(args.strategy, overrides, preset=args.preset, config_files=args.config,
                    space_file=args.space, replace_space=args.replace_space, trials=args.trials,
                    workers=args.workers, study=args.study, storage=args.storage, pruner=args.pruner,
                    seed=args.seed, heartbeat=args.heartbeat, worker_index=args.worker_index, goal=goal,
                    progress=not args.no_progress and args.workers == 1 and sys.stderr.isatty())
        if s.pinned:
            print(f"fixed by overrides, not searched: {', '.join(s.pinned)}")
        session = open_search(s)
    except UserError as e:  # says what was wrong and how to fix it; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_summary:
        state = "new" if session.new else f"resumed: {session.finished_before} finished trial(s)"
        print(f"study '{s.study_name}' ({state}) in {redact(s.storage_url)}\nsearching {', '.join(s.space)} for "
              f"{s.n_trials} trial(s) with {args.workers} worker(s), {s.goal.direction} {s.goal.metric}, "
              f"{s.pruner} pruner; MLflow parent run "
              f"{session.parent.run_id} ({'created' if session.created else 'found again'})")

    started = time.time()
    launch = (lambda: _spawn_workers(s, argv, args.workers)) if args.workers > 1 else None
    outcome = run_trials(s, session, launch)
    if outcome.status == "KILLED":
        print("interrupted: re-run the same command to resume the study", file=sys.stderr)
    elif outcome.error is not None:
        e = outcome.error
        if isinstance(e, UserError):  # ours say what was wrong and how to fix it; no traceback
            print(f"error: {e}", file=sys.stderr)
        else:
            traceback.print_exception(type(e), e, e.__traceback__)
        print("a trial failed; fix the cause and re-run the same command to resume the study", file=sys.stderr)
    if args.no_summary:
        return EXIT[outcome.status]

    summary = finish(s, session, outcome.status)
    done = summary["complete"] + summary["pruned"]
    print(f"\nstudy '{s.study_name}': {done} of {s.n_trials} trial(s) finished ({summary['complete']} complete, "
          f"{summary['pruned']} pruned), {summary['failed']} failed; {time.time() - started:.0f} s this session")
    if "best" in summary:
        b = summary["best"]
        print(f"best trial #{b['trial']}: {b['metric']} = {b['value']:.4f}")
        for k, v in b["params"].items():
            print(f"  {k}={v:.4g}" if isinstance(v, float) else f"  {k}={v}")
        print(f"  its run: {b['mlflow_run_id']}, checkpoint: {b['checkpoint']}")
    else:
        print("no complete trial yet")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"logged to MLflow parent run {session.parent.run_id} (experiment '{s.cfg.tracking.experiment}', "
          f"{redact(session.uri)}): {', '.join(summary['artifacts'])}; local copies in {summary['out_dir']}/")
    print(f"open the Optuna dashboard: optuna-dashboard '{redact(s.storage_url)}'   (pip install optuna-dashboard)")
    print(f"open the MLflow UI: {ui_command(session.uri)}")
    if any(outcome.worker_codes):
        print(f"warning: worker exit codes {outcome.worker_codes}; re-run the same command to finish the study",
              file=sys.stderr)
    return EXIT[summary["status"]]


if __name__ == "__main__":
    sys.exit(main())
