"""Hyperparameter search with Optuna: every trial is a training run of the usual trainer, tracked in MLflow.

    python -m experiments.search adapter_stage1 --trials 20                  # tiny preset
    python -m experiments.search adapter_stage1 --trials 6 train.max_steps=60 train.eval_every=10
    python -m experiments.search istlm_interleaved --trials 40 --workers 2 --pruner hyperband
    python -m experiments.search adapter_stage1 --space my_space.yaml --trials 30 --preset full
    python -m experiments.search adapter_stage1 --trials 100 --study s1 --storage postgresql://u@db/optuna

The search space is the strategy's default (`SEARCH_SPACE` on its Config dataclass, e.g. learning
rate log-uniform, warmup ratio, label smoothing, expansion depth or LoRA rank); `--space FILE.yaml`
extends or overrides it (`key: null` drops a key; `--replace-space` uses the file alone; format
in s2s/search_space.py). `key=value` overrides fix every other key, and pin a searched key.

Each trial reports the eval loss at every evaluation (train.eval_every); the pruner (median by
default, or hyperband) stops unpromising trials early. The objective is the final eval loss
(nats per target token), minimized.

The study lives in `--storage` (default: SQLite at <tracking.root>/optuna.db). Re-running the
same command resumes it: finished (complete or pruned) trials are kept and only the missing
number run. Several workers share one study: `--workers K` starts K processes on this machine,
and the same command on other machines with the same `--storage` database URL (and `--study`)
joins in. A worker that dies is noticed through its heartbeat (`--heartbeat` seconds; stale
after twice that) and its trial is retried by another worker.

MLflow: one parent run per study (tag s2s.study=<name>), one child run per trial; the best
trial, the optimization history, the intermediate values and the parameter importances (PNG)
are artifacts of the parent.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.config import ExperimentConfig, PRESETS, as_dict, build_config
from s2s.config import ConfigError, flatten, load_yaml, user_errors
from experiments.search_report import METRIC, summarize
from experiments.study import BUDGET, FINISHED, counts, fail_stale, open_storage, open_study
from s2s.search_space import Param, apply_params, check_space, merge_specs, parse_space, space_to_dict

class _SurplusTrial(Exception):
    """A trial created while the requested number was already taken by other workers (never trained)."""


@dataclass
class Search:
    """Everything a worker needs, resolved and checked before any trial starts."""

    cfg: ExperimentConfig  # the fixed config every trial starts from
    space: dict[str, Param]
    n_trials: int
    study_name: str
    storage_url: str
    pruner: str
    seed: int | None
    heartbeat: int
    progress: bool
    worker_index: int = 0

    @property
    def fixed(self) -> dict[str, Any]:
        return fixed_config(self.cfg, self.space)


# --- resolving the command line ----------------------------------------------------------------

def fixed_config(cfg: ExperimentConfig, space: dict[str, Param]) -> dict[str, Any]:
    """The flattened config keys that define what every trial trains, minus the searched ones."""
    from s2s.resume import result_keys  # the keys that decide what a run trains
    return {k: v for k, v in result_keys(flatten(as_dict(cfg))).items() if k not in space}


def default_study_name(cfg: ExperimentConfig, space: dict[str, Param]) -> str:
    """<strategy>-<preset>-<hash of the fixed config and the space>: the same command, the same study."""
    ident = json.dumps({"fixed": fixed_config(cfg, space), "space": space_to_dict(space)}, sort_keys=True,
                       default=str)
    return f"{cfg.strategy_name}-{cfg.preset}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


def default_storage(cfg: ExperimentConfig) -> str:
    root = Path(cfg.tracking.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'optuna.db'}"  # an absolute path: four slashes


def resolve(args) -> Search:
    """Build the fixed config and the search space from the arguments; ConfigError if anything is off."""
    from experiments.config import strategy_class

    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat must be at least 1 second, got {args.heartbeat}")
    cfg = build_config(args.strategy, args.preset, args.overrides, args.config)
    if cfg.resume:
        raise ConfigError("resume= continues one run of experiments.run; a search resumes when you run the same "
                          "command again (finished trials are kept, a dead worker's trial is retried): drop resume=")
    if cfg.strategy_name == "gatefusion_stage2" and not cfg.strategy.init_from:
        raise ConfigError("gatefusion_stage2 needs strategy.init_from=<an adapter_stage1 checkpoint directory>")
    default = getattr(strategy_class(args.strategy).Config, "SEARCH_SPACE", {})
    from_file = load_yaml(args.space) if args.space else None
    if args.replace_space and not args.space:
        raise ConfigError("--replace-space needs --space FILE.yaml")
    specs = merge_specs(default, from_file, replace=args.replace_space)
    pinned = [k for k in specs if any(o.split("=", 1)[0].strip() == k for o in args.overrides)]
    for k in pinned:  # a key=value override fixes a searched key
        specs.pop(k)
    space = parse_space(specs)
    check_space(space, cfg)
    if pinned:
        print(f"fixed by overrides, not searched: {', '.join(pinned)}")
    progress = not args.no_progress and args.workers == 1 and sys.stderr.isatty()
    cfg.train.progress = progress
    return Search(cfg=cfg, space=space, n_trials=args.trials,
                  study_name=args.study or default_study_name(cfg, space),
                  storage_url=args.storage or default_storage(cfg), pruner=args.pruner, seed=args.seed,
                  heartbeat=args.heartbeat, progress=progress, worker_index=args.worker_index)


# --- MLflow ----------------------------------------------------------------------------------

def _find_parent(client, experiment: str, study_name: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`s2s.study` = '{study_name}' and "
                              f"tags.`s2s.search` = 'parent'")
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)) if runs else None


def parent_run(s: Search):
    """The study's parent MLflow run: found again by its tag, or created (once, even with racing workers)."""
    from mlflow.tracking import MlflowClient

    from s2s.tracking import Run, TrackingError, tracking_uri

    uri = tracking_uri(s.cfg.tracking)
    try:
        found = _find_parent(MlflowClient(uri), s.cfg.tracking.experiment, s.study_name)
    except Exception as e:
        raise TrackingError(f"cannot reach the MLflow tracking store '{uri}' ({type(e).__name__}: {str(e)[:200]})")
    if found is not None:
        run = Run(s.cfg.tracking, run_id=found.info.run_id)
        if found.info.status != "RUNNING":
            run.client.update_run(run.run_id, status="RUNNING")
        return run, False
    tracking = copy.deepcopy(s.cfg.tracking)
    tracking.run_name = tracking.run_name or f"search {s.study_name}"
    run = Run(tracking, {"s2s.study": s.study_name, "s2s.search": "parent", "s2s.strategy": s.cfg.strategy_name,
                         "s2s.preset": s.cfg.preset, "s2s.optuna_storage": s.storage_url})
    first = _find_parent(run.client, s.cfg.tracking.experiment, s.study_name)
    if first is not None and first.info.run_id != run.run_id:  # another worker made one at the same moment
        run.client.delete_run(run.run_id)
        return Run(s.cfg.tracking, run_id=first.info.run_id), False
    run.log_params({"strategy": s.cfg.strategy_name, "preset": s.cfg.preset, "study": s.study_name,
                    "optuna_storage": s.storage_url})
    run.log_dict(as_dict(s.cfg), "base_config.yaml")
    run.log_dict(space_to_dict(s.space), "search_space.yaml")
    return run, True


def _child_run_id(client, experiment: str, parent_id: str, run_name: str) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                              f"attributes.run_name = '{run_name}'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None


# --- the worker --------------------------------------------------------------------------------

def make_objective(s: Search, study, parent_id: str, client):
    import optuna

    from experiments.run import train

    def objective(trial) -> float:
        trial.set_user_attr("s2s.worker", f"{socket.gethostname()}:{os.getpid()}")  # first: see _fail_orphans
        trials = study.get_trials(deepcopy=False)
        ahead = sum(1 for t in trials if t.state.name in BUDGET and t.number < trial.number)
        if ahead >= s.n_trials:  # another worker took the last slot a moment before this trial was created
            trial.set_user_attr("s2s.surplus", True)
            raise _SurplusTrial(f"trial {trial.number} not run: the {s.n_trials} requested trials are taken")
        cfg = copy.deepcopy(s.cfg)
        values = {name: p.suggest(trial) for name, p in s.space.items()}
        apply_params(cfg, values)
        run_name = f"{s.study_name}/trial-{trial.number}"
        cfg.tracking.run_name = run_name
        max_steps = cfg.train.max_steps
        retry_of = next(t for t in trials if t.number == trial.number).system_attrs.get("failed_trial")
        state = {"run_id": None}

        def on_eval(step: int, metrics: dict) -> None:
            if state["run_id"] is None:  # the child run exists from the first evaluation (step 0) on
                state["run_id"] = run_id = _child_run_id(client, cfg.tracking.experiment, parent_id, run_name)
                if run_id:
                    trial.set_user_attr("mlflow_run_id", run_id)
                    from mlflow.entities import Param as MlflowParam, RunTag
                    tags = {"s2s.study": s.study_name, "s2s.search": "trial", "s2s.trial": str(trial.number),
                            "s2s.sampled": json.dumps(values, default=str)}
                    if retry_of is not None:
                        tags["s2s.retry_of_trial"] = str(retry_of)
                    client.log_batch(run_id, params=[MlflowParam("optuna.trial_number", str(trial.number)),
                                                     MlflowParam("optuna.study", s.study_name)],
                                     tags=[RunTag(k, v) for k, v in tags.items()])
            value = float(metrics[METRIC])
            trial.report(value if math.isfinite(value) else float("inf"), step)
            if (max_steps is None or step < max_steps) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {METRIC} {value:.4f} is worse than the median "
                                         f"of finished trials" if s.pruner == "median" else
                                         f"pruned at step {step} ({s.pruner}): {METRIC} {value:.4f}")

        result = train(cfg, parent_run_id=parent_id, progress=s.progress, on_eval=on_eval)
        trial.set_user_attr("mlflow_run_id", result["run_id"])
        trial.set_user_attr("checkpoint", str(Path(result["checkpoint"]).resolve()))
        return float(result["final_eval"][METRIC])

    return objective


def work(s: Search, study, objective, poll: float) -> None:
    """Run trials until the study holds `n_trials` finished ones; wait for other workers' last trials
    (a dead worker's trial goes stale, is re-queued and then run here)."""
    while True:
        fail_stale(study)
        c = counts(study)
        done = sum(c.get(k, 0) for k in FINISHED)
        if done >= s.n_trials:
            return
        if c.get("WAITING", 0) or done + c.get("RUNNING", 0) < s.n_trials:
            study.optimize(objective, n_trials=1, catch=(_SurplusTrial,), gc_after_trial=True)
        else:
            time.sleep(poll)


# --- the command -------------------------------------------------------------------------------

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


def _prepare_shared_files(cfg: ExperimentConfig) -> None:
    """Make the synthetic data and tiny backbones once, before parallel workers would race to
    (the same conditions as experiments.run.load_data and FrozenCore)."""
    from experiments.run import ensure_synth_data
    ensure_synth_data(cfg)
    if cfg.backbones.build_tiny:
        from s2s.tiny import ensure_tiny_backbones
        ensure_tiny_backbones(cfg.backbones.whisper, cfg.backbones.orpheus, cfg.backbones.snac)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m experiments.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("strategy", help="strategy name (python -m experiments.run --list)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides fixed for every trial")
    parser.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials wanted")
    parser.add_argument("--study", default=None, help="study name (default: <strategy>-<preset>-<config hash>)")
    parser.add_argument("--storage", default=None, help="Optuna database URL (default: sqlite under tracking.root)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--config", action="append", default=[], help="extra YAML config file(s)")
    parser.add_argument("--space", default=None, help="YAML search space extending/overriding the default")
    parser.add_argument("--replace-space", action="store_true", help="use --space alone, not the default space")
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
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
    try:
        s = resolve(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import optuna
    from optuna.exceptions import ExperimentalWarning

    from s2s.tracking import TrackingError, check_reachable, tracking_uri, ui_command

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    try:
        uri = tracking_uri(s.cfg.tracking)
        check_reachable(uri, root=s.cfg.tracking.root)  # seconds, not MLflow's minutes of retries; before any file
        storage = open_storage(s, uri)
        study = open_study(s, storage)
        parent, created = parent_run(s)
    except (ConfigError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_summary:
        c = counts(study)
        done = sum(c.get(k, 0) for k in FINISHED)
        print(f"study '{s.study_name}' ({'new' if not c else f'resumed: {done} finished trial(s)'}) in "
              f"{s.storage_url}\nsearching {', '.join(s.space)} for {s.n_trials} trial(s) with {args.workers} "
              f"worker(s), {s.pruner} pruner; MLflow parent run {parent.run_id} "
              f"({'created' if created else 'found again'})")

    started = time.time()
    status = "FINISHED"
    worker_codes: list[int] = []
    try:
        if args.workers > 1:
            _prepare_shared_files(s.cfg)
            worker_codes = _spawn_workers(s, argv, args.workers)
        else:
            from mlflow.tracking import MlflowClient
            objective = make_objective(s, study, parent.run_id, MlflowClient(uri))
            work(s, study, objective, poll=min(5.0, max(0.5, s.heartbeat / 2)))
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: re-run the same command to resume the study", file=sys.stderr)
    except Exception as e:  # a trial failed (marked FAIL in the study): stop this worker, keep what finished
        status = "FAILED"
        if isinstance(e, user_errors()):  # ours say what was wrong and how to fix it; no traceback
            print(f"error: {e}", file=sys.stderr)
        else:
            traceback.print_exc()
        print("a trial failed; fix the cause and re-run the same command to resume the study", file=sys.stderr)
    if args.no_summary:
        return {"FINISHED": 0, "FAILED": 1}.get(status, 130)

    study = optuna.load_study(study_name=s.study_name, storage=storage)
    out_dir = Path(s.cfg.tracking.root) / "search" / s.study_name
    summary = summarize(s, study, parent, out_dir)
    done = summary["complete"] + summary["pruned"]
    if status == "FINISHED" and done < s.n_trials:
        status = "FAILED"
    parent.end(status)

    print(f"\nstudy '{s.study_name}': {done} of {s.n_trials} trial(s) finished ({summary['complete']} complete, "
          f"{summary['pruned']} pruned), {summary['failed']} failed; {time.time() - started:.0f} s this session")
    if "best" in summary:
        b = summary["best"]
        print(f"best trial #{b['trial']}: {METRIC} = {b[METRIC]:.4f}")
        for k, v in b["params"].items():
            print(f"  {k}={v:.4g}" if isinstance(v, float) else f"  {k}={v}")
        print(f"  its run: {b['mlflow_run_id']}, checkpoint: {b['checkpoint']}")
    else:
        print("no complete trial yet")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"logged to MLflow parent run {parent.run_id} (experiment '{s.cfg.tracking.experiment}', {uri}): "
          f"{', '.join(summary['artifacts'])}; local copies in {out_dir}/")
    print(f"open the Optuna dashboard: optuna-dashboard '{s.storage_url}'   (pip install optuna-dashboard)")
    print(f"open the MLflow UI: {ui_command(uri)}")
    if any(worker_codes):
        print(f"warning: worker exit codes {worker_codes}; re-run the same command to finish the study",
              file=sys.stderr)
    return 0 if status == "FINISHED" else 1 if status == "FAILED" else 130


if __name__ == "__main__":
    sys.exit(main())
