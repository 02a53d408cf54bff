"""Checkpoints: trainable weights as safetensors, metadata as JSON, trainer state beside them.

    <dir>/model.safetensors   trainable weights only (the frozen backbones are named in meta)
    <dir>/meta.json           strategy, resolved config, step, backbone ids, MLflow run id
    <dir>/trainer_state.pt    optimizer, scheduler, RNG, data position (tensors and plain
                              values only: read back with weights_only=True, never unpickling code)

A plain weights file (the design card's `finetune_stage1_epoch3.pt`, or `python -m s2s.export`'s
output) is a `torch.save`d mapping of tensors, flat ({"adapter.proj.0.weight": t}) or nested by
module ({"adapter": state_dict, "expansion": state_dict}). It carries no meta, so it is only read
where the strategy and config are given separately (`load_state_file`, s2s/card_layout.py); it is
read with `torch.load(weights_only=True)`, which refuses any pickle that would run code.

A checkpoint directory is written whole into a hidden temporary sibling and renamed into place,
so a crash (even SIGKILL or a power cut after the fsyncs) leaves either the old checkpoint or the
new one, never half of one. A run's out_dir holds `step-XXXXXXX` checkpoints (the last
`train.keep_checkpoints` are kept) and `final`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from s2s.errors import UserError
from s2s.files import atomic_write, fsync

MODEL_FILE, META_FILE, STATE_FILE = "model.safetensors", "meta.json", "trainer_state.pt"
FINAL = "final"
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(UserError):
    """A checkpoint that cannot be used, naming the file and what is wrong."""


def _atomic(path: Path, write) -> None:
    atomic_write(path, write, durable=True)  # the data is on disk before the name points at it


def _swap_in(tmp: Path, d: Path) -> None:
    """Rename the finished directory `tmp` to `d`, replacing an existing `d`."""
    if d.exists():  # a directory cannot be renamed over a non-empty one: move the old aside first
        old = d.with_name(f".{d.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(d, old)
        os.rename(tmp, d)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, d)
    fsync(d.parent)


def save_checkpoint(directory: str | Path, weights: dict[str, torch.Tensor], meta: dict,
                    trainer_state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (all files or none); returns its path."""
    d = Path(directory)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.tmp-", dir=d.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint gets the usual permissions
    try:
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        _atomic(tmp / MODEL_FILE, lambda p: save_file(cpu, str(p)))
        if trainer_state is not None:
            _atomic(tmp / STATE_FILE, lambda p: torch.save(trainer_state, p))
        _atomic(tmp / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
        fsync(tmp)  # its entries are on disk before it takes the checkpoint's name
        _swap_in(tmp, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when writing failed
    return d


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read weights and metadata from a checkpoint directory (or its model.safetensors)."""
    d, meta = _checkpoint_dir_and_meta(path)
    try:
        weights = load_file(str(d / MODEL_FILE))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise CheckpointError(f"{d / MODEL_FILE} cannot be read as safetensors ({e}); the checkpoint is "
                              f"damaged or not a safetensors file") from None
    return weights, meta


def load_meta(path: str | Path) -> dict:
    """A checkpoint's meta.json alone (strategy, config, step, ...), without reading its weights."""
    return _checkpoint_dir_and_meta(path)[1]


def _checkpoint_dir_and_meta(path: str | Path) -> tuple[Path, dict]:
    p = Path(path)
    if is_weights_file(p):  # e.g. strategy.init_from=card.pt: there is no meta to rebuild the model from
        raise CheckpointError(f"{path} is a plain weights file, not an s2s checkpoint directory: it carries no "
                              f"{META_FILE} (strategy, config, step), so it cannot be used here. Pass a checkpoint "
                              f"directory (outputs/<strategy>/<run id>/final); a weights file can be scored with "
                              f"`python -m evaluation.score {path} --strategy NAME`")
    d = p.parent if p.name in (MODEL_FILE, META_FILE) else p
    if not (d / MODEL_FILE).is_file() or not (d / META_FILE).is_file():
        raise CheckpointError(f"{path} is not an s2s checkpoint: expected a directory with {MODEL_FILE} and {META_FILE}")
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / META_FILE} is not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{d / META_FILE} holds a {type(meta).__name__}, not a mapping; the checkpoint is "
                              f"damaged")
    return d, meta


def is_weights_file(path: str | Path) -> bool:
    """Whether `path` is a plain weights file (e.g. `ckpt.pt`): an existing file that is not one of a
    checkpoint directory's own files (naming its model.safetensors or meta.json means the directory)."""
    p = Path(path)
    return p.is_file() and p.name not in (MODEL_FILE, META_FILE)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain weights file, flattened: {"adapter.proj.0.weight": tensor [out, in], ...}.

    The file is a `torch.save`d mapping whose leaves are tensors, flat or nested by module (the card's
    {"adapter": state_dict, "expansion": state_dict}); nested names are joined with ".". It is read
    with `torch.load(weights_only=True)` on the CPU: a pickle that needs anything but tensors and plain
    containers is refused without being run, and a leaf that is not a tensor is a CheckpointError.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (refused or garbled), RuntimeError (bad zip), EOFError (empty)
        raise CheckpointError(f"{path} cannot be loaded safely ({_load_failure(e, 'a state dict of tensors')}): "
                              f"not an s2s checkpoint nor a plain state dict") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a mapping of names to tensors (a state "
                              f"dict, flat or as {{module: state_dict}})")
    weights = _flat_tensors(state, path)
    if not weights:
        raise CheckpointError(f"{path} holds no tensors")
    return weights


def _flat_tensors(state: dict, path, prefix: str = "") -> dict[str, torch.Tensor]:
    """{"a": {"b": t}} -> {"a.b": t}; a non-str key, a non-tensor leaf or a name given twice
    (flat and nested) is a CheckpointError naming it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} under '{prefix or '<top>'}' is a {type(key).__name__}; a "
                                  f"state dict's keys are tensor names")
        name = prefix + key
        if isinstance(value, torch.Tensor):
            found = {name: value.detach()}  # an nn.Parameter (weights_only allows it) becomes a plain tensor
        elif isinstance(value, dict):
            found = _flat_tensors(value, path, name + ".")
        else:
            raise CheckpointError(f"{path}: '{name}' is a {type(value).__name__}, not a tensor; a weights file "
                                  f"holds only tensors, flat or nested by module name")
        twice = found.keys() & out.keys()
        if twice:
            raise CheckpointError(f"{path}: tensor '{sorted(twice)[0]}' is given twice (flat and nested)")
        out.update(found)
    return out


def save_state_file(path: str | Path, state: dict) -> Path:
    """`torch.save` a (nested) mapping of tensors to `path` atomically (the whole file or none);
    `load_state_file` reads it back."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a directory; name the .pt file to write")
    p.parent.mkdir(parents=True, exist_ok=True)
    _atomic(p, lambda tmp: torch.save(state, tmp))
    return p


def load_trainer_state(directory: str | Path) -> dict:
    """Optimizer/scheduler/RNG/data position; `weights_only=True` refuses anything but tensors and plain data."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} holds weights only (not written by the trainer), "
                              f"so training cannot continue from it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} cannot be loaded safely ({_load_failure(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not the trainer's state mapping")
    return state


def _load_failure(e: Exception, what: str = "a trainer state") -> str:
    """The one line of a torch.load failure that says what is wrong (torch's own message starts
    with advice on how to load the file unsafely, which is the opposite of what is wanted here)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"it holds a reference to {refused.group(1)}, not just tensors and plain data; refused without "
                f"unpickling it")
    if "WeightsUnpickler error" in text:
        detail = text.split("WeightsUnpickler error:")[1].split(" Check the documentation")[0]
        return f"it holds more than tensors and plain data: {detail[:150].strip()}"
    return f"{type(e).__name__}: {text.split('. ')[0][:200] or 'empty'}; the file is damaged or not {what}"


def step_of(directory: Path) -> int | None:
    """The step in a `step-XXXXXXX` directory name, else None."""
    m = _STEP_DIR.fullmatch(directory.name)
    return int(m.group(1)) if m else None


def checkpoints_in(out_dir: str | Path) -> list[Path]:
    """A run's checkpoint directories, newest first: `final`, then `step-*` by step, descending.
    Hidden temporary directories of an interrupted write are not checkpoints."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    steps = sorted((d for d in out.iterdir() if d.is_dir() and step_of(d) is not None), key=step_of, reverse=True)
    return ([out / FINAL] if (out / FINAL).is_dir() else []) + steps


def set_aside_after(out_dir: str | Path, step: int) -> list[Path]:
    """Rename the step-* checkpoints past `step` to `abandoned-step-*` (returned): a run resumed from
    an older checkpoint continues another timeline, whose checkpoints must neither be resumed from
    nor outrank (and so get) the new ones pruned."""
    moved = []
    for d in checkpoints_in(out_dir):
        if d.name != FINAL and step_of(d) > step:
            target = d.with_name(f"abandoned-{d.name}")
            shutil.rmtree(target, ignore_errors=True)
            os.rename(d, target)
            moved.append(target)
    return moved


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step-* checkpoints (`final` is never deleted; 0 keeps all).
    Returns the deleted directories."""
    if keep <= 0:
        return []
    old = [d for d in checkpoints_in(out_dir) if d.name != FINAL][keep:]
    # Leftovers of a write that a crash interrupted (one process writes per out_dir, see s2s/resume.py).
    stale = [d for d in Path(out_dir).glob(".*") if d.is_dir() and (".tmp-" in d.name or ".old-" in d.name)]
    for d in old + stale:
        shutil.rmtree(d, ignore_errors=True)
    return old
