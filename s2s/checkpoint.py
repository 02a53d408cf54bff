"""Checkpoints: trainable weights as safetensors, metadata as JSON, trainer state beside them.

    <dir>/model.safetensors   trainable weights only (the frozen backbones are named in meta)
    <dir>/meta.json           strategy, resolved config, step, backbone ids, MLflow run id
    <dir>/trainer_state.pt    optimizer, scheduler, RNG, data position (tensors and plain
                              values only: read back with weights_only=True, never unpickling code)

Every file is written to a temporary name and renamed, so a crash never leaves a half file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MODEL_FILE, META_FILE, STATE_FILE = "model.safetensors", "meta.json", "trainer_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, naming the file and what is wrong."""


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, weights: dict[str, torch.Tensor], meta: dict,
                    trainer_state: dict | None = None) -> Path:
    """Write a checkpoint directory; returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    _atomic(d / MODEL_FILE, lambda p: save_file(cpu, str(p)))
    if trainer_state is not None:
        _atomic(d / STATE_FILE, lambda p: torch.save(trainer_state, p))
    _atomic(d / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))  # last: marks complete
    return d


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read weights and metadata from a checkpoint directory (or its model.safetensors)."""
    p = Path(path)
    d = p.parent if p.name in (MODEL_FILE, META_FILE) else p
    if not (d / MODEL_FILE).is_file() or not (d / META_FILE).is_file():
        raise CheckpointError(f"{path} is not an s2s checkpoint: expected a directory with {MODEL_FILE} and {META_FILE}")
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / META_FILE} is not valid JSON ({e}); the checkpoint is damaged") from None
    try:
        weights = load_file(str(d / MODEL_FILE))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise CheckpointError(f"{d / MODEL_FILE} cannot be read as safetensors ({e}); the checkpoint is "
                              f"damaged or not a safetensors file") from None
    return weights, meta


def load_trainer_state(directory: str | Path) -> dict:
    """Optimizer/scheduler/RNG/data position; `weights_only=True` refuses anything but tensors and plain data."""
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} cannot be loaded safely ({type(e).__name__}: {str(e)[:200]})") from None
