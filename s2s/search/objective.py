"""A resolved search (`Search`: the fixed config, the space, the study) and what one trial does.

`resolve` turns the command's choices into a checked `Search` before anything is opened; the
objective trains one config of the usual trainer (s2s.experiment.train) per trial, reports the
objective at every evaluation so the pruner can stop it, and tags the trial's MLflow run.

What a trial is judged by is a `Goal`: the final eval loss by default (or another figure of the
trainer's evaluation, e.g. eval/acc), or a figure of the final checkpoint's scored speech (eval/wer,
eval/spk_sim), which the command hands in as a callback since s2s does not import evaluation/.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from s2s.config import ConfigError, flatten, get_value, load_yaml
from s2s.experiment import train
from s2s.experiment_config import ExperimentConfig, as_dict, build_config, strategy_class
from s2s.resume import result_keys
from s2s.search.space import Param, apply_params, check_space, merge_specs, parse_space, space_to_dict
from s2s.search.study import BUDGET, FINISHED, METRIC, counts, fail_stale

PRUNERS = ("median", "hyperband", "none")


@dataclass
class Goal:
    """The objective: `metric` (an MLflow name), to `direction` ("minimize"/"maximize").

    score: None when the trainer's evaluation gives the metric (reported at every evaluation, so the
    pruner can act); else a callback (checkpoint dir, trial's MLflow run id) -> value, run on the final
    checkpoint only, so nothing can be pruned. settings: what decides a scored value (part of the
    study's identity)."""

    metric: str = METRIC
    direction: str = "minimize"
    score: Callable[[str, str], float] | None = None
    settings: dict = field(default_factory=dict)


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
    pinned: tuple[str, ...] = ()  # searched by default, fixed by a key=value override
    goal: Goal = field(default_factory=Goal)

    @property
    def fixed(self) -> dict[str, Any]:
        return fixed_config(self.cfg, self.space)


def fixed_config(cfg: ExperimentConfig, space: dict[str, Param]) -> dict[str, Any]:
    """The flattened config keys that define what every trial trains, minus the searched ones."""
    return {k: v for k, v in result_keys(flatten(as_dict(cfg))).items() if k not in space}


def default_study_name(cfg: ExperimentConfig, space: dict[str, Param], goal: Goal) -> str:
    """<strategy>-<preset>-<hash of the fixed config, the space and the objective>: the same command, the
    same study."""
    ident = {"fixed": fixed_config(cfg, space), "space": space_to_dict(space)}
    if goal.metric != METRIC:  # (so that loss-objective studies keep the names they had)
        ident["objective"] = {"metric": goal.metric, **goal.settings}
    ident = json.dumps(ident, sort_keys=True, default=str)
    return f"{cfg.strategy_name}-{cfg.preset}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


def default_storage(cfg: ExperimentConfig) -> str:
    root = Path(cfg.tracking.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'optuna.db'}"  # an absolute path: four slashes


def resolve(strategy: str, overrides: list[str] = (), *, preset: str = "tiny", config_files: list[str] = (),
            space_file: str | None = None, replace_space: bool = False, trials: int = 20, workers: int = 1,
            study: str | None = None, storage: str | None = None, pruner: str | None = None, seed: int | None = None,
            heartbeat: int = 10, progress: bool = False, worker_index: int = 0, goal: Goal | None = None) -> Search:
    """Build the fixed config and the search space; ConfigError if anything is off (nothing is opened).

    `space_file` (YAML) extends or overrides the strategy's `SEARCH_SPACE` (`replace_space`: it alone);
    a searched key given in `overrides` is fixed instead (listed in `Search.pinned`). `workers` is
    only checked here: the command starts the worker processes. `pruner` None: median, or none when
    the goal is scored on the final checkpoint (nothing to prune on)."""
    goal = goal or Goal()
    if pruner is None:
        pruner = "none" if goal.score is not None else "median"
    elif goal.score is not None and pruner != "none":
        raise ConfigError(f"--metric {goal.metric} is scored on each trial's final checkpoint only, so there is nothing "
                          f"to prune on: drop --pruner {pruner} (or search --metric eval/loss)")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if heartbeat < 1:
        raise ConfigError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner '{pruner}': one of {', '.join(PRUNERS)}")
    cfg = build_config(strategy, preset, list(overrides), list(config_files))
    if cfg.resume:
        raise ConfigError("resume= continues one run of experiments.run; a search resumes when you run the same "
                          "command again (finished trials are kept, a dead worker's trial is retried): drop resume=")
    up = strategy_class(cfg.strategy_name).requires
    if up and not get_value(cfg, up.key):
        raise ConfigError(f"{cfg.strategy_name} trains on a {up.strategy} checkpoint: give {up.key}=<checkpoint "
                          f"directory of a {up.strategy} run>")
    default = getattr(strategy_class(strategy).Config, "SEARCH_SPACE", {})
    from_file = load_yaml(space_file) if space_file else None
    if replace_space and not space_file:
        raise ConfigError("--replace-space needs --space FILE.yaml")
    specs = merge_specs(default, from_file, replace=replace_space)
    pinned = [k for k in specs if any(o.split("=", 1)[0].strip() == k for o in overrides)]
    for k in pinned:  # a key=value override fixes a searched key
        specs.pop(k)
    space = parse_space(specs)
    check_space(space, cfg)
    cfg.train.progress = progress
    return Search(cfg=cfg, space=space, n_trials=trials, study_name=study or default_study_name(cfg, space, goal),
                  storage_url=storage or default_storage(cfg), pruner=pruner, seed=seed, heartbeat=heartbeat,
                  progress=progress, worker_index=worker_index, pinned=tuple(pinned), goal=goal)


def make_objective(s: Search, study, parent_id: str):
    """The Optuna objective: train the fixed config with the trial's sampled values as a child run
    of `parent_id`; the goal's value (the final eval loss by default)."""
    metric = s.goal.metric

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
        cfg.tracking.run_name = f"{s.study_name}/trial-{trial.number}"
        max_steps = cfg.train.max_steps
        retry_of = next(t for t in trials if t.number == trial.number).system_attrs.get("failed_trial")
        def on_run(run) -> None:  # the trial's child run, as soon as it exists
            trial.set_user_attr("mlflow_run_id", run.run_id)
            tags = {"s2s.study": s.study_name, "s2s.search": "trial", "s2s.trial": str(trial.number),
                    "s2s.sampled": json.dumps(values, default=str)}
            if retry_of is not None:
                tags["s2s.retry_of_trial"] = str(retry_of)
            run.set_tags(tags)
            run.log_params({"optuna.trial_number": trial.number, "optuna.study": s.study_name})

        worst = float("inf") if s.goal.direction == "minimize" else float("-inf")

        def on_eval(step: int, metrics: dict) -> None:
            if s.goal.score is not None:  # scored on the final checkpoint only
                return
            if metric not in metrics:
                raise ConfigError(f"--metric {metric}: the trainer's evaluation has no such figure; it has "
                                  f"{', '.join(sorted(metrics))}")
            if step == 0:
                # The untrained model: the median pruner compares each trial's BEST value so far, and where the
                # first steps raise the loss (the miniature's adapters do) step 0 would stay every trial's best,
                # so that no trial could ever be pruned.
                return
            value = float(metrics[metric])
            trial.report(value if math.isfinite(value) else worst, step)
            if (max_steps is None or step < max_steps) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {metric} {value:.4f} is worse than the median "
                                         f"of finished trials" if s.pruner == "median" else
                                         f"pruned at step {step} ({s.pruner}): {metric} {value:.4f}")

        result = train(cfg, parent_run_id=parent_id, progress=s.progress, on_eval=on_eval, on_run=on_run)
        checkpoint = str(Path(result["checkpoint"]).resolve())
        trial.set_user_attr("mlflow_run_id", result["run_id"])
        trial.set_user_attr("checkpoint", checkpoint)
        if s.goal.score is not None:
            value = float(s.goal.score(checkpoint, result["run_id"]))
            return value if math.isfinite(value) else worst
        return float(result["final_eval"][metric])

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
