"""A search's life: open (study and parent MLflow run), run the trials, finish (summary, parent ended).

    session = open_search(s)             # UserError if the tracking store or the study cannot be used
    outcome = run_trials(s, session)     # this process is a worker; or launch=... starts several
    summary = finish(s, session, outcome.status)

MLflow: one parent run per study (tag s2s.study=<name>), found again by that tag when the same
search runs again or on another worker; one child run per trial (objective.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from optuna.exceptions import ExperimentalWarning

from s2s.experiment import ensure_shared_files
from s2s.experiment_config import as_dict
from s2s.search.objective import Search, make_objective, work
from s2s.search.report import summarize
from s2s.search.space import space_to_dict
from s2s.search.study import FINISHED, counts, load_study, open_storage, open_study
from s2s.stores import one_line, redact
from s2s.tracking import Run, TrackingError, check_reachable, find_study_parent, open_client, tracking_uri


def parent_run(s: Search) -> tuple[Run, bool]:
    """The study's parent MLflow run: found again by its tag, or created (once, even with racing workers).
    (run, True when created now)."""
    uri = tracking_uri(s.cfg.tracking)
    try:
        found = find_study_parent(open_client(uri, root=s.cfg.tracking.root), s.cfg.tracking.experiment, s.study_name)
    except Exception as e:
        raise TrackingError(f"cannot reach the MLflow tracking store '{redact(uri)}' ({one_line(e, 200)})") from None
    if found is not None:
        run = Run(s.cfg.tracking, run_id=found.info.run_id)
        if found.info.status != "RUNNING":
            run.client.update_run(run.run_id, status="RUNNING")
        return run, False
    run = Run(s.cfg.tracking, {"s2s.study": s.study_name, "s2s.search": "parent", "s2s.strategy": s.cfg.strategy_name,
                               "s2s.preset": s.cfg.preset, "s2s.optuna_storage": redact(s.storage_url)},
              run_name=f"search {s.study_name}")
    first = find_study_parent(run.client, s.cfg.tracking.experiment, s.study_name)
    if first is not None and first.info.run_id != run.run_id:  # another worker made one at the same moment
        run.client.delete_run(run.run_id)
        return Run(s.cfg.tracking, run_id=first.info.run_id), False
    run.log_params({"strategy": s.cfg.strategy_name, "preset": s.cfg.preset, "study": s.study_name,
                    "optuna_storage": redact(s.storage_url)})
    run.log_dict(as_dict(s.cfg), "base_config.yaml")
    run.log_dict(space_to_dict(s.space), "search_space.yaml")
    return run, True


@dataclass
class Session:
    """An opened search: the tracking store, the Optuna storage and study, the parent run."""

    uri: str  # the MLflow tracking URI
    storage: object  # optuna.storages.RDBStorage
    study: object  # optuna.Study
    parent: Run
    created: bool  # the parent run was made now (not found again)
    finished_before: int  # complete or pruned trials already in the study when it was opened
    new: bool  # the study had no trial at all


def open_search(s: Search) -> Session:
    """Open the study (created, or resumed when its setup matches) and the parent run; UserError
    (TrackingError, ConfigError) if the tracking store or the Optuna storage cannot be used.
    Optuna's warnings about its experimental features (heartbeats, constant_liar) are silenced
    for the process."""
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    uri = tracking_uri(s.cfg.tracking)
    check_reachable(uri, root=s.cfg.tracking.root)  # seconds, not MLflow's minutes of retries; before any file
    storage = open_storage(s, uri)
    study = open_study(s, storage)
    parent, created = parent_run(s)
    c = counts(study)
    return Session(uri=uri, storage=storage, study=study, parent=parent, created=created,
                   finished_before=sum(c.get(k, 0) for k in FINISHED), new=not c)


@dataclass
class Outcome:
    """How this process's part of the search ended."""

    status: str  # FINISHED, FAILED (a trial failed: `error`), KILLED (Ctrl-C / SIGTERM)
    worker_codes: list[int] = field(default_factory=list)  # exit codes of launched workers
    error: BaseException | None = None  # why a trial failed (marked FAIL in the study)


def run_trials(s: Search, session: Session, launch: Callable[[], list[int]] | None = None) -> Outcome:
    """Run trials in this process until the study holds `s.n_trials` finished ones; or, with `launch`
    (start worker processes of the same search, wait, return their exit codes), make the files the
    workers share first and launch them. A failing trial stops this worker: the outcome says why
    and what finished is kept (the same search again resumes)."""
    try:
        if launch is not None:
            ensure_shared_files(s.cfg)
            return Outcome("FINISHED", worker_codes=launch())
        objective = make_objective(s, session.study, session.parent.run_id)
        work(s, session.study, objective, poll=min(5.0, max(0.5, s.heartbeat / 2)))
        return Outcome("FINISHED")
    except KeyboardInterrupt:
        return Outcome("KILLED")
    except Exception as e:  # a trial failed (FAIL in the study): end this worker, summarize what finished
        return Outcome("FAILED", error=e)


def finish(s: Search, session: Session, status: str) -> dict:
    """Summarize the study (best trial, plots: logged to the parent run, copies under
    <tracking.root>/search/<study>/) and end the parent run; FAILED when trials are missing.
    The summary (report.summarize) plus `status` and `out_dir`."""
    study = load_study(s, session.storage)
    out_dir = Path(s.cfg.tracking.root) / "search" / s.study_name
    summary = summarize(s, study, session.parent, out_dir)
    if status == "FINISHED" and summary["complete"] + summary["pruned"] < s.n_trials:
        status = "FAILED"
    session.parent.end(status)
    return {**summary, "status": status, "out_dir": out_dir}
