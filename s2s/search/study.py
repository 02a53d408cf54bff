"""The Optuna side of a search: storage, study, pruner and sampler, and recovery from dead workers.

A worker that dies stops sending heartbeats; its trial is marked FAILED and queued again
(at most MAX_RETRY times). s2s/search/objective.py runs the trials, session.py the MLflow runs.
"""
from __future__ import annotations

import datetime
import json
import sys
import warnings
from typing import TYPE_CHECKING

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from s2s.config import ConfigError
from s2s.search.space import space_to_dict
from s2s.stores import database_problem, one_line, redact
from s2s.tracking import open_client

if TYPE_CHECKING:
    from s2s.search.objective import Search

METRIC = "eval/loss"  # the default objective: the final eval loss (nats per target token), minimized
MAX_RETRY = 2  # times a dead worker's trial is re-run before it stays FAILED
ORPHAN_S = 600  # a RUNNING trial that never started its objective this long is failed (see _fail_orphans)
FINISHED = ("COMPLETE", "PRUNED")
BUDGET = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  # trials that use one of the requested slots


def make_pruner(s: Search):
    eval_every = s.cfg.train.eval_every
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=s.cfg.train.max_steps or "auto",
                                              reduction_factor=3)
    # Median: wait for a few finished trials; judge a trial from its first (tiny) or second evaluation after step 0.
    tiny = s.cfg.preset == "tiny"
    return optuna.pruners.MedianPruner(n_startup_trials=2 if tiny else 5,
                                       n_warmup_steps=eval_every if tiny else 2 * eval_every)


def make_sampler(s: Search, n_existing: int):
    # Offset the seed by the worker and the trials already run, so that parallel workers and a
    # resumed search do not redraw the same random start-up points.
    seed = None if s.seed is None else s.seed + 1000 * s.worker_index + n_existing
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


class _RetryDeadWorkers:
    """Heartbeat-stale trial callback: re-queue the trial (Optuna's retry callback) and end its MLflow run."""

    def __init__(self, tracking_uri: str):
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        self.tracking_uri = tracking_uri

    def __call__(self, study, trial) -> None:
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        print(f"trial {trial.number}: its worker stopped sending heartbeats; marked FAILED and queued again "
              f"(at most {MAX_RETRY} retries)", file=sys.stderr)
        if run_id:
            try:
                client = open_client(self.tracking_uri)
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_tag(run_id, "s2s.failure", "worker died (no heartbeat); the trial was retried")
                    client.set_terminated(run_id, "KILLED")
            except Exception as e:  # tracking is best effort here: the study state is what matters
                print(f"could not end MLflow run {run_id} of dead trial {trial.number}: {e}", file=sys.stderr)


def open_storage(s: Search, tracking_uri: str):
    """The study's RDBStorage; ConfigError (one line, the URL's password hidden) if it cannot be used."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"cannot open the Optuna storage '{redact(s.storage_url)}' ({why}). Give a database URL "
                           f"such as sqlite:////abs/path/optuna.db or postgresql://user@host:5432/db (the database "
                           f"created, the server reachable from every worker) with --storage")

    why = database_problem(s.storage_url)  # in seconds, before Optuna's own multi-line driver errors
    if why:
        raise bad(why)
    if s.storage_url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:  # a trial can keep a worker's pooled connection idle for hours; servers and firewalls drop those
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(s.storage_url, engine_kwargs=engine_kwargs, heartbeat_interval=s.heartbeat,
                                          heartbeat_stale_trial_callback=_RetryDeadWorkers(tracking_uri))
    except Exception as e:
        raise bad(one_line(e)) from None


def open_study(s: Search, storage):
    """Create the study or load it; a study made with another fixed config or space is an error."""
    study = optuna.create_study(study_name=s.study_name, storage=storage, direction=s.goal.direction,
                                load_if_exists=True, pruner=make_pruner(s), sampler=make_sampler(s, 0))
    study.sampler = make_sampler(s, len(study.get_trials(deepcopy=False)))
    attrs = study.user_attrs
    fixed = json.loads(json.dumps(s.fixed, default=str))
    space = space_to_dict(s.space)
    if "s2s.space" not in attrs:
        study.set_user_attr("s2s.strategy", s.cfg.strategy_name)
        study.set_user_attr("s2s.preset", s.cfg.preset)
        study.set_user_attr("s2s.fixed_config", fixed)
        study.set_user_attr("s2s.space", space)
        study.set_user_attr("s2s.objective", s.goal.metric)
        return study
    before = attrs.get("s2s.fixed_config", {})
    diffs = sorted((k for k in set(fixed) | set(before) if fixed.get(k) != before.get(k)),
                   key=lambda k: (k not in fixed or k not in before, k))  # changed values first
    if attrs["s2s.space"] != json.loads(json.dumps(space)):
        diffs.append("the search space")
    if attrs.get("s2s.objective", METRIC) != s.goal.metric:
        diffs.append(f"the objective ({attrs.get('s2s.objective', METRIC)}, now {s.goal.metric})")
    if diffs:
        raise ConfigError(f"study '{s.study_name}' in {redact(s.storage_url)} was started with another setup "
                          f"(differs in: {', '.join(diffs[:10])}). Resume it with its original settings, or give a new "
                          f"--study name")
    return study


def load_study(s: Search, storage):
    """The study as it is now in the storage (after other workers' trials)."""
    return optuna.load_study(study_name=s.study_name, storage=storage)


def counts(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def fail_stale(study) -> None:
    """Mark the trials of dead workers FAILED (their retries are queued by _RetryDeadWorkers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    _fail_orphans(study)


def _fail_orphans(study) -> None:
    """A worker killed between creating a trial and its first heartbeat leaves a RUNNING trial that
    never goes stale; fail such trials (no s2s.worker attribute, started long ago) so nobody waits forever."""
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if "s2s.worker" not in t.user_attrs and age > ORPHAN_S:
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except Exception:  # another worker did it first
                pass
