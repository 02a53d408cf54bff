"""Continuing a run: which checkpoint, whether it can be trusted, whether it fits, one process at a time.

`resume=` (experiments.run) accepts

    a checkpoint directory     outputs/adapter_stage1/<run id>/step-0000040: used as it is; a damaged
                               one is an error that names the bad file
    a run's out_dir            outputs/adapter_stage1/<run id>: its newest checkpoint that reads back
                               completely; a damaged newer one is skipped with a warning naming it
    an MLflow run id           the run's out_dir (its tag `s2s.out_dir`) in the current tracking store

Nothing in a checkpoint executes code: weights are safetensors, metadata JSON, and the trainer
state is read with `torch.load(weights_only=True)` (s2s/checkpoint.py). A checkpoint is used only
if its config matches the command's on every key that decides the result (`FREE_KEYS` may differ).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from s2s.checkpoint import (FINAL, META_FILE, MODEL_FILE, STATE_FILE, CheckpointError, checkpoints_in,
                            load_checkpoint, load_trainer_state)
from s2s.config import flatten
from s2s.errors import UserError
from s2s.tracking import open_client

# Config keys (prefixes) that do not change the trained weights. The one list: they may differ
# between a run and its resume, and are left out of a run's identity (experiments.run.config_hash,
# which compare uses to reuse finished runs) and of a search study's (experiments.search).
# (cache.cache_speech_states is not among them: states computed per batch are not rounded to float16.)
FREE_KEYS = ("resume", "tracking.", "train.out_dir", "train.progress", "train.checkpoint_every",
             "train.keep_checkpoints", "train.max_bad_steps", "cache.dir", "cache.enabled", "cache.shard_rows",
             "data.num_workers", "synth_if_missing",
             "synth_dir", "synth_style", "brackets")


def result_keys(flat: dict) -> dict:
    """A flattened config without its FREE_KEYS: what decides the trained weights."""
    return {k: v for k, v in flat.items() if not k.startswith(FREE_KEYS)}
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_STATE_KEYS = ("train_state", "optimizer", "scheduler", "torch_rng")


class ResumeError(UserError):
    """`resume=` cannot be honoured; the message names the input and what to do."""


class ResumeWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one."""


@dataclass
class ResumePoint:
    """A checkpoint that read back completely: weights, metadata and trainer state."""

    path: Path
    weights: dict[str, torch.Tensor]
    meta: dict
    state: dict

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def read_checkpoint(path: str | Path) -> ResumePoint:
    """Read and check every part of a trainer checkpoint; CheckpointError names the bad file."""
    path = Path(path)
    weights, meta = load_checkpoint(path)
    config = meta.get("config")
    if not isinstance(config, dict) or "strategy_name" not in config:
        raise CheckpointError(f"{path / META_FILE} has no 'config' with a 'strategy_name': not written by "
                              f"experiments.run, so there is no config to continue with")
    for key, kind in (("step", int), ("total_steps", int), ("mlflow_run_id", str)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path / META_FILE}: '{key}' is missing or not a {kind.__name__}")
    state = load_trainer_state(path)
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path / STATE_FILE} lacks {missing}: not a trainer state")
    rng = state["torch_rng"]
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape):
        raise CheckpointError(f"{path / STATE_FILE}: 'torch_rng' is not a random-generator state")
    if not isinstance(state["train_state"], dict) or state["train_state"].get("step") != meta["step"]:
        raise CheckpointError(f"{path / STATE_FILE} and {path / META_FILE} disagree on the step: the checkpoint "
                              f"is damaged")
    return ResumePoint(path, weights, meta, state)


def newest_valid(out_dir: str | Path) -> ResumePoint:
    """The newest checkpoint of a run's out_dir that reads back completely; every damaged newer one
    is reported with a ResumeWarning naming it."""
    out_dir = Path(out_dir)
    candidates = checkpoints_in(out_dir)
    if not candidates:
        raise ResumeError(f"resume: {out_dir} holds no checkpoint (step-XXXXXXX or {FINAL} directories). Save "
                          f"some with train.checkpoint_every=N, or start the run again without resume=")
    damaged = []
    for c in candidates:
        try:
            point = read_checkpoint(c)
        except CheckpointError as e:
            damaged.append(str(e))
            warnings.warn(f"skipping damaged checkpoint {c}: {e}", ResumeWarning, stacklevel=2)
            continue
        if damaged:
            warnings.warn(f"resuming from the older checkpoint {c} (step {point.step}) instead", ResumeWarning,
                          stacklevel=2)
        return point
    raise ResumeError(f"resume: every checkpoint in {out_dir} is damaged: {' | '.join(damaged)}. Start the run "
                      f"again without resume=")


def out_dir_of_run(run_id: str, uri: str) -> Path:
    """The out_dir an MLflow run wrote its checkpoints to (tag `s2s.out_dir`)."""
    client = open_client(uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise ResumeError(f"resume={run_id}: no such MLflow run in {uri} ({type(e).__name__}). Pass the run's "
                          f"checkpoint directory instead (outputs/<strategy>/<run id>), or point tracking.uri "
                          f"(or tracking.root) at the store that holds the run") from None
    tags = run.data.tags
    out = tags.get("s2s.out_dir") or (str(Path(tags["s2s.checkpoint"]).parent) if tags.get("s2s.checkpoint") else None)
    if not out:
        raise ResumeError(f"resume={run_id}: MLflow run {run_id} does not record where its checkpoints are (no tag "
                          f"s2s.out_dir): pass its checkpoint directory instead")
    return Path(out)


def locate(spec: str, tracking_uri: str) -> ResumePoint:
    """Resolve `resume=spec` (checkpoint dir, run out_dir or MLflow run id) to a checked checkpoint."""
    p = Path(spec).expanduser()
    if p.is_dir() and any((p / f).exists() for f in (MODEL_FILE, META_FILE, STATE_FILE)):
        try:
            return read_checkpoint(p)
        except CheckpointError as e:
            raise ResumeError(f"resume={spec}: {e}. To fall back to the newest undamaged checkpoint of the run, "
                              f"pass its directory: resume={p.parent}") from None
    if p.is_dir():
        return newest_valid(p)
    if p.exists():
        raise ResumeError(f"resume={spec} is a file; pass a checkpoint directory, a run's out_dir or an MLflow "
                          f"run id")
    if _RUN_ID.fullmatch(spec):
        return newest_valid(out_dir_of_run(spec, tracking_uri))
    raise ResumeError(f"resume={spec}: no such checkpoint directory, out_dir or MLflow run id (32 hex digits). "
                      f"The command that was interrupted printed what to pass (e.g. resume=outputs/<strategy>/"
                      f"<run id>)")


def _plain(value):
    return json.loads(json.dumps(value, default=str))  # tuples, Paths, ... as the checkpoint's JSON has them


def check_resumable(point: ResumePoint, current: dict) -> None:
    """ResumeError unless `current` (the command's resolved config) may continue `point`'s run."""
    saved = point.meta["config"]
    if point.path.name == FINAL or point.step >= int(point.meta["total_steps"]):
        raise ResumeError(f"resume: run {point.meta['mlflow_run_id']} already finished all "
                          f"{point.meta['total_steps']} steps ({point.path}); nothing to resume. Start a new run "
                          f"without resume= to train again")
    if saved.get("strategy_name") != current.get("strategy_name"):
        raise ResumeError(f"resume: {point.path} is a checkpoint of strategy '{saved.get('strategy_name')}', not "
                          f"'{current.get('strategy_name')}'; run `python -m experiments.run "
                          f"{saved.get('strategy_name')} ... resume=...` or pick a checkpoint of this strategy")
    a, b = result_keys(flatten(_plain(saved))), result_keys(flatten(_plain(current)))
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}" for k in diffs[:8])
        raise ResumeError(f"resume: {point.path} was trained with another config ({shown}). A resumed run continues "
                          f"the same MLflow run, so it must use the same settings: repeat the original command "
                          f"(drop or fix these overrides), or start a new run without resume=")


class RunLock:
    """Exclusive use of a run's out_dir by one process (`<out_dir>/.lock`, an flock: released by the
    kernel when the process dies, even by SIGKILL). A second process training or resuming the same
    run gets a ResumeError instead of interleaving checkpoints."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / ".lock"
        self._file = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ResumeError(f"{self.path.parent} is in use by another process (pid {holder}) training this run; "
                              f"wait for it to end or stop it (Ctrl-C saves a checkpoint) before resuming") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> bool:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        return False
