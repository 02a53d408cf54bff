"""MLflow tracking: where runs go, a thin run handle that logs in batches, and the run look-ups.

Default store (unless MLFLOW_TRACKING_URI or tracking.uri is set): `mlruns/mlflow.db` (SQLite)
with artifacts under `mlruns/artifacts`, relative to the directory the command runs in. The
file store is deprecated in MLflow 3 (REFERENCE section 7), so it is not used. A store shared by
machines is an `mlflow server` (http://host:port; it keeps the artifacts) in front of a database
such as PostgreSQL; URLs are checked and redacted by s2s/stores.py.

Every query of the store for runs (a finished run with the same config, a search's parent run
and its trials) lives here, so the tags they rely on are spelled in one place.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource  # defined by `import mlflow.data`, at run time
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag, SourceType
from mlflow.entities import Run as MlflowRun
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID,
                                      MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER)

from s2s.errors import UserError
from s2s.stores import database_problem, is_database, one_line, redact


@dataclass
class TrackingConfig:
    experiment: str = "s2s"
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite under mlruns/
    run_name: str | None = None
    root: str = "mlruns"  # where the default SQLite store and artifacts live


class TrackingError(UserError):
    """The tracking store cannot be used; the message names the URI and the fix."""


def _unreachable(uri: str, why: str, root: str = "mlruns") -> TrackingError:
    return TrackingError(f"cannot reach the MLflow tracking store '{redact(uri)}' ({why}). Nothing was run. Start the "
                         f"server, fix the URI (tracking.uri=... or MLFLOW_TRACKING_URI), or unset it to use the "
                         f"local store under {root}/")


def check_reachable(uri: str, timeout: float = 5.0, root: str = "mlruns") -> None:
    """TrackingError within `timeout` seconds if an http(s) tracking server does not answer at all, or
    a database server named directly (postgresql://...) refuses a connection.

    MLflow itself retries a dead server with backoff for minutes (measured: 4 min for a refused
    port, 100 s for a refused PostgreSQL) before failing; any HTTP answer, even an error status,
    means the server is there.
    """
    if is_database(uri):
        why = database_problem(uri, timeout)
        if why:
            raise _unreachable(uri, why, root)
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.exceptions.SSLError:
        return  # it answered; whether its certificate is acceptable is MLflow's settings' business
    except requests.Timeout:
        raise _unreachable(uri, f"no answer within {timeout:g} s", root) from None
    except requests.RequestException as e:
        errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(e))  # "Connection refused", "Name or service not known"
        raise _unreachable(uri, errno.group(0) if errno else f"{type(e).__name__}: {str(e)[:200]}", root) from None


def tracking_uri(cfg: TrackingConfig) -> str:
    """The store `cfg` names: tracking.uri, else $MLFLOW_TRACKING_URI, else SQLite under tracking.root."""
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(cfg.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"  # an absolute path gives the four slashes SQLite needs


def open_client(uri: str, root: str = "mlruns") -> MlflowClient:
    """A client of the store at `uri`, after a quick check that an http(s) server answers at all
    (TrackingError otherwise, instead of MLflow's minutes of retries)."""
    check_reachable(uri, root=root)
    try:
        return MlflowClient(uri)  # a store whose driver is missing fails here already
    except Exception as e:
        raise _unreachable(uri, one_line(e, 200), root) from None


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database (not in the current directory);
    a tracking server chooses its own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])  # absolute paths keep their leading slash
        return (db.resolve().parent / "artifacts").as_uri()
    return None


def ui_command(uri: str) -> str:
    """How to open the MLflow UI on this store: a tracking server serves it at its own address;
    a database or SQLite store needs `mlflow ui` (bound to localhost)."""
    if uri.startswith(("http://", "https://")):
        return f"{redact(uri)} in a browser (the tracking server serves the UI)"
    return f"mlflow ui --backend-store-uri '{redact(uri)}' --host 127.0.0.1 --port 5000 --workers 1"


def git_commit() -> str:
    """The commit of the s2s checkout ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_name() -> str:
    """How this process was started, for `mlflow.source.name`: "python -m experiments.run" for a
    module, else the script as given."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # set only for `python -m`; argv[0] would be the module's file path
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return sys.argv[0] if sys.argv and sys.argv[0] else "python"


def source_tags(source: str | None = None) -> dict[str, str]:
    """The tags MLflow's fluent API would set on a run (command, LOCAL, git commit, user); a run
    created through MlflowClient gets none of them by itself, and the UI's Source and User
    columns read them."""
    tags = {MLFLOW_SOURCE_NAME: source or command_name(), MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}
    commit = git_commit()
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    try:
        tags[MLFLOW_USER] = getpass.getuser()
    except Exception:  # a container user without a passwd entry or $USER: the run simply has no user
        pass
    return tags


# --- finding runs again ----------------------------------------------------------------------

def _quote(value: str) -> str:
    """`value` as a string literal of MLflow's search syntax, which has no escape character."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow runs for a value holding both kinds of quotes: {value!r}")


def _search(client: MlflowClient, experiment: str, filter_string: str,
            order_by: list[str] | None = None) -> list[MlflowRun]:
    """Active (not deleted) runs of `experiment` matching the filter, all pages; [] without the experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string, order_by=order_by, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_finished_run(client: MlflowClient, experiment: str, config_hash: str) -> MlflowRun | None:
    """The newest FINISHED run tagged `s2s.config_hash` = `config_hash` whose `s2s.checkpoint`
    still holds a model.safetensors (a run whose checkpoint was deleted cannot be reused); None if none."""
    runs = _search(client, experiment, f"tags.`s2s.config_hash` = {_quote(config_hash)} and "
                                       f"attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    for r in runs:
        ckpt = r.data.tags.get("s2s.checkpoint")
        if ckpt and Path(ckpt, "model.safetensors").is_file():
            return r
    return None


def find_study_parent(client: MlflowClient, experiment: str, study_name: str) -> MlflowRun | None:
    """The parent run of an Optuna study (tags s2s.study = `study_name`, s2s.search = parent).

    Workers racing to create it may make several: the earliest (then the smallest id) is the one,
    so every worker settles on the same run.
    """
    runs = _search(client, experiment, f"tags.`s2s.study` = {_quote(study_name)} and tags.`s2s.search` = 'parent'")
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)) if runs else None


# --- datasets ------------------------------------------------------------------------------

class _SplitDataset(MetaDataset):
    """A dataset known by its source, split and size only (the samples stay where they are).

    Split and size go into the profile, which the UI shows with the dataset, and into the
    default digest, so a 6000-sample subset of a split is not mistaken for all of it.
    """

    def __init__(self, source: DatasetSource, name: str, split: str, n_samples: int, digest: str | None = None):
        self._profile = {"split": split, "num_rows": int(n_samples)}  # before the digest, which reads it
        super().__init__(source, name=name, digest=digest)

    def _compute_digest(self) -> str:
        ident = {"name": self.name, "source": self.source.to_json(), "source_type": self.source._get_source_type(),
                 **self._profile}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def profile(self) -> dict:
        return dict(self._profile)

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def dataset_source(source: str | Path | DatasetSource, split: str | None = None) -> DatasetSource:
    """An MLflow dataset source for a data.sources entry: a local directory, an http(s) URL, or a
    Hugging Face hub id with an optional ":config" (as s2s.data.loader reads them)."""
    if isinstance(source, DatasetSource):
        return source
    spec = str(source)
    if spec.startswith(("http://", "https://")):
        return HTTPDatasetSource(spec)
    path, _, config = spec.rpartition(":")
    if os.path.isdir(spec) or (path and os.path.isdir(path)):  # a local copy, perhaps labelled "dir:config"
        return LocalArtifactDatasetSource(str(Path(spec if os.path.isdir(spec) else path).resolve()))
    hub_id, config = (path, config or None) if path else (spec, None)
    return HuggingFaceDatasetSource(hub_id, config_name=config, split=split)


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log `metrics` at `step` to run `run_id` (batched: MLflow takes 1000 items a call at most)."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])


class Run:
    """One MLflow run. Use as a context manager: an exception ends it FAILED, Ctrl-C/SIGTERM KILLED.

    A run opened by `run_id` is only looked at until `reopen()`: leaving the block before that
    (a damaged checkpoint found while resuming, say) leaves its status as it was.

    A new run is named `cfg.run_name`, else `run_name` (else MLflow picks a random name), and
    carries the source tags of `source_tags(source)`; explicit `tags` win over them."""

    def __init__(self, cfg: TrackingConfig, tags: dict[str, str] | None = None, run_id: str | None = None,
                 parent_run_id: str | None = None, run_name: str | None = None, source: str | None = None):
        # No mlflow.set_tracking_uri: it also exports MLFLOW_TRACKING_URI, so one run's store
        # (a bad URI included) would become every later run's default in this process.
        self.uri = tracking_uri(cfg)
        self.client = open_client(self.uri, root=cfg.root)
        if run_id:
            try:
                self.client.get_run(run_id)
            except Exception as e:
                raise TrackingError(f"MLflow run {run_id} is not in the tracking store '{redact(self.uri)}' "
                                    f"({type(e).__name__}); point tracking.uri at the store that holds it") from None
            # An existing run is only looked at: its experiment is not created or touched.
            self.run_id, self.active = run_id, False
            return
        try:
            exp_id = self._experiment_id(cfg.experiment)
        except Exception as e:  # an unreachable server or unusable database, before any training
            raise _unreachable(self.uri, one_line(e, 200), cfg.root) from None
        all_tags = {**source_tags(source), **(tags or {})}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        self.run_id = self.client.create_run(exp_id, run_name=cfg.run_name or run_name, tags=all_tags).info.run_id
        self.active = True

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=_artifact_root(self.uri))
        except MlflowException as e:  # another worker created it a moment ago
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def log_params(self, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        log_metrics(self.client, self.run_id, metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, name: str, source: str | Path | DatasetSource, split: str, n_samples: int,
                    digest: str | None = None, context: str = "training") -> None:
        """Record the data the run used as an MLflow run input (the UI's Datasets column): its
        `name`, where it comes from (`source`: a data.sources entry, see `dataset_source`), the
        `split` and the number of samples taken, and `context` ("training", "evaluation", ...).

        Without `digest` one is computed from name, source, split and size.
        """
        ds = _SplitDataset(dataset_source(source, split), name=name, split=split, n_samples=n_samples, digest=digest)
        self.client.log_inputs(self.run_id, datasets=[
            DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp, name)
            p.write_text(json.dumps(data, indent=2, default=str) if name.endswith(".json")
                         else yaml.safe_dump(data, sort_keys=False))
            self.log_artifact(p)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def reopen(self, tags: dict[str, str] | None = None) -> None:
        """Continue an ended or crashed run: status RUNNING again (it ends as usual when the block exits)."""
        self.client.update_run(self.run_id, status="RUNNING")
        self.active = True
        old = self.client.get_run(self.run_id).data.tags
        for key in ("s2s.killed", "s2s.failure"):  # how it ended before is history now, not its outcome
            if key in old:
                self.client.delete_tag(self.run_id, key)
        ended = old.get("s2s.killed") or old.get("s2s.failure")
        self.set_tags({**({"s2s.previously": ended[:500]} if ended else {}), **(tags or {})})

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.active:
            return False
        killed = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)  # Ctrl-C, SIGTERM (s2s.stop)
        status = "FINISHED" if exc_type is None else "KILLED" if killed else "FAILED"
        # Looked up, not imported: a pruned search trial stopped on purpose (KILLED, not FAILED), and
        # optuna is only loaded in a search.
        optuna = sys.modules.get("optuna")
        if exc_type is not None and optuna is not None and issubclass(exc_type, optuna.TrialPruned):
            status = "KILLED"
            self.set_tags({"s2s.pruned": "true", "s2s.pruned_reason": str(exc)[:500]})
        elif killed:
            self.set_tags({"s2s.killed": str(exc)[:500] or exc_type.__name__})
        elif exc is not None:
            self.set_tags({"s2s.failure": f"{exc_type.__name__}: {str(exc)[:500]}"})
        self.end(status)
        return False
