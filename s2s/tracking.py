"""MLflow tracking: where runs go, and a thin run handle that logs in batches.

Default store (unless MLFLOW_TRACKING_URI or tracking.uri is set): `mlruns/mlflow.db` (SQLite)
with artifacts under `mlruns/artifacts`, relative to the directory the command runs in. The
file store is deprecated in MLflow 3 (REFERENCE section 7), so it is not used.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrackingConfig:
    experiment: str = "s2s"
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite under mlruns/
    run_name: str | None = None
    root: str = "mlruns"  # where the default SQLite store and artifacts live


class TrackingError(RuntimeError):
    pass


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(cfg.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"  # an absolute path gives the four slashes SQLite needs


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database (not in the current directory);
    a tracking server chooses its own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])  # absolute paths keep their leading slash
        return (db.resolve().parent / "artifacts").as_uri()
    return None


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store (bound to localhost)."""
    return f"mlflow ui --backend-store-uri '{uri}' --host 127.0.0.1 --port 5000 --workers 1"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Run:
    """One MLflow run. Use as a context manager: an exception ends it FAILED, Ctrl-C KILLED."""

    def __init__(self, cfg: TrackingConfig, tags: dict[str, str] | None = None, run_id: str | None = None,
                 parent_run_id: str | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        try:
            exp = self.client.get_experiment_by_name(cfg.experiment)
        except Exception as e:  # an unreachable server or unusable database, before any training
            raise TrackingError(f"cannot reach the MLflow tracking store '{self.uri}' ({type(e).__name__}: "
                                f"{str(e)[:200]}). Fix the URI (tracking.uri=... or MLFLOW_TRACKING_URI) or unset "
                                f"it to use the local store under {cfg.root}/") from None
        if exp is None:
            artifacts = _artifact_root(self.uri)
            exp_id = self.client.create_experiment(cfg.experiment, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if run_id:
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(exp_id, run_name=cfg.run_name, tags=all_tags).info.run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp, name)
            p.write_text(json.dumps(data, indent=2, default=str) if name.endswith(".json") else _yaml(data))
            self.log_artifact(p)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        status = "FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        optuna = sys.modules.get("optuna")  # a pruned search trial stopped on purpose: KILLED, not FAILED
        if exc_type is not None and optuna is not None and issubclass(exc_type, optuna.TrialPruned):
            status = "KILLED"
            self.set_tags({"s2s.pruned": "true", "s2s.pruned_reason": str(exc)[:500]})
        elif exc is not None:
            self.set_tags({"s2s.failure": f"{exc_type.__name__}: {str(exc)[:500]}"})
        self.end(status)
        return False


def _yaml(data: dict) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)
