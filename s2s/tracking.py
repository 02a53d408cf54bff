"""MLflow tracking: where runs go, and a thin run handle that logs in batches.

Default store (unless MLFLOW_TRACKING_URI or tracking.uri is set): `mlruns/mlflow.db` (SQLite)
with artifacts under `mlruns/artifacts`, relative to the directory the command runs in. The
file store is deprecated in MLflow 3 (REFERENCE section 7), so it is not used.
"""
from __future__ import annotations

import json
import os
import re
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
    """The tracking store cannot be used; the message names the URI and the fix."""


def _unreachable(uri: str, why: str, root: str = "mlruns") -> TrackingError:
    return TrackingError(f"cannot reach the MLflow tracking store '{uri}' ({why}). Nothing was run. Start the "
                         f"server, fix the URI (tracking.uri=... or MLFLOW_TRACKING_URI), or unset it to use the "
                         f"local store under {root}/")


def check_reachable(uri: str, timeout: float = 5.0, root: str = "mlruns") -> None:
    """TrackingError within `timeout` seconds if an http(s) tracking server does not answer at all.

    MLflow itself retries a dead server with backoff for minutes (measured: 4 min for a refused
    port) before failing; any HTTP answer, even an error status, means the server is there.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

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
    """One MLflow run. Use as a context manager: an exception ends it FAILED, Ctrl-C/SIGTERM KILLED.

    A run opened by `run_id` is only looked at until `reopen()`: leaving the block before that
    (a damaged checkpoint found while resuming, say) leaves its status as it was."""

    def __init__(self, cfg: TrackingConfig, tags: dict[str, str] | None = None, run_id: str | None = None,
                 parent_run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        # No mlflow.set_tracking_uri: it also exports MLFLOW_TRACKING_URI, so one run's store
        # (a bad URI included) would become every later run's default in this process.
        self.uri = tracking_uri(cfg)
        check_reachable(self.uri, root=cfg.root)
        try:
            self.client = MlflowClient(self.uri)  # a store whose driver is missing fails here already
            # An existing run is only looked up: its experiment is not created or touched.
            exp = None if run_id else self.client.get_experiment_by_name(cfg.experiment)
        except Exception as e:  # an unreachable server or unusable database, before any training
            raise _unreachable(self.uri, f"{type(e).__name__}: {str(e)[:200]}", cfg.root) from None
        if run_id:
            try:
                self.client.get_run(run_id)
            except Exception as e:
                raise TrackingError(f"MLflow run {run_id} is not in the tracking store '{self.uri}' "
                                    f"({type(e).__name__}); point tracking.uri at the store that holds it") from None
            self.run_id, self.active = run_id, False
            return
        if exp is None:
            exp_id = self.client.create_experiment(cfg.experiment, artifact_location=_artifact_root(self.uri))
        else:
            exp_id = exp.experiment_id
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(exp_id, run_name=cfg.run_name, tags=all_tags).info.run_id
        self.active = True

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
        optuna = sys.modules.get("optuna")  # a pruned search trial stopped on purpose: KILLED, not FAILED
        if exc_type is not None and optuna is not None and issubclass(exc_type, optuna.TrialPruned):
            status = "KILLED"
            self.set_tags({"s2s.pruned": "true", "s2s.pruned_reason": str(exc)[:500]})
        elif killed:
            self.set_tags({"s2s.killed": str(exc)[:500] or exc_type.__name__})
        elif exc is not None:
            self.set_tags({"s2s.failure": f"{exc_type.__name__}: {str(exc)[:500]}"})
        self.end(status)
        return False


def _yaml(data: dict) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)
