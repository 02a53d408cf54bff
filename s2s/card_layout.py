"""The design card's checkpoint layout, and mapping a plain weights file onto a strategy's modules.

The card ships `finetune_stage1_epoch3.pt` holding

    {"adapter": SpeechAdapter.state_dict(), "expansion": ExpansionBlocks.state_dict()}

i.e. one state dict per top-level module. An s2s checkpoint names the same tensors flat, by their
path in the strategy ("adapter.proj.0.weight"); `s2s.checkpoint.load_state_file` flattens the
card's nesting, so a strategy whose top-level modules are named `adapter` and `expansion` takes
the card's tensors under the same names. Nothing here knows a strategy by name: the mapping is by
module name only.

- `card_layout(weights)`: flat s2s names -> the card's nesting (what `python -m s2s.export` writes).
- `fit_state(weights, expected)`: which tensors fit the model, by name and shape; a checkpoint's
  top-level name the model lacks is read as the one module of the model with that name further
  down (e.g. "adapter" as "stage1.adapter" for a strategy that nests its upstream stage).
- `load_state(model, weights, source)`: load a weights file into a strategy; what does not fit is a
  CheckpointError listing the checkpoint's tensors (names, shapes) next to the model's, so that a
  user can see what would need mapping (the card does not publish its ExpansionBlocks' layout).
- `export_checkpoint(checkpoint, out)`: an s2s checkpoint directory -> a `.pt` in the card's layout.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch

from s2s.checkpoint import CheckpointError, load_checkpoint, save_state_file
from s2s.config import flatten
from s2s.errors import UserError
from s2s.experiment_config import as_dict, build_config, strategy_class

Shape = tuple[int, ...]


def top(name: str) -> str:
    """The top-level module (or parameter) a tensor name belongs to: "adapter.proj.0.weight" -> "adapter"."""
    return name.split(".", 1)[0]


def card_layout(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor] | torch.Tensor]:
    """Flat names -> {top-level module: its state dict}, the card's layout.

    {"adapter.proj.0.weight": t, "scale": s} -> {"adapter": {"proj.0.weight": t}, "scale": s}: a
    top-level parameter (no module around it) stays a tensor. `load_state_file` undoes this.
    """
    out: dict = {}
    for name, tensor in weights.items():
        head, _, rest = name.partition(".")
        t = tensor.detach().to("cpu").contiguous()
        if rest:
            if isinstance(out.get(head), torch.Tensor):  # cannot happen for a module's own names
                raise CheckpointError(f"'{head}' is both a tensor and a module in these weights")
            out.setdefault(head, {})[rest] = t
        else:
            out[head] = t
    return out


def _module_paths(expected: dict[str, Shape], name: str) -> set[str]:
    """Paths of the model's modules called `name` below the top level ("stage1.adapter" for "adapter")."""
    paths = set()
    for n in expected:
        parts = n.split(".")
        paths.update(".".join(parts[:i + 1]) for i in range(1, len(parts) - 1) if parts[i] == name)
    return paths


@dataclass
class Fit:
    """How a flat weights dict fits a model's tensors (name -> shape), after the top-level renames."""

    weights: dict[str, torch.Tensor]  # renamed onto the model's names
    expected: dict[str, Shape]
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint top-level name -> model module path

    @property
    def missing(self) -> list[str]:
        return sorted(self.expected.keys() - self.weights.keys())

    @property
    def unexpected(self) -> list[str]:
        return sorted(self.weights.keys() - self.expected.keys())

    @property
    def wrong_shape(self) -> list[str]:
        return sorted(n for n in self.weights.keys() & self.expected.keys()
                      if tuple(self.weights[n].shape) != self.expected[n])

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def describe(self) -> str:
        """One line: per top-level module, whether it fits, else the checkpoint's tensors next to the model's."""
        bad = set(self.missing) | set(self.unexpected) | set(self.wrong_shape)
        groups = sorted({top(n) for n in self.weights} | {top(n) for n in self.expected})
        shape = lambda s: f"({', '.join(map(str, s))})"  # noqa: E731 - (256, 640), as the base class's errors
        parts = []
        for g in groups:
            ours = sorted(n for n in self.weights if top(n) == g)
            model = sorted(n for n in self.expected if top(n) == g)
            if not any(n in bad for n in ours + model):
                parts.append(f"{g}: all {len(model)} tensors fit")
                continue
            wrong = [f"{n}: checkpoint {shape(self.weights[n].shape)} vs model {shape(self.expected[n])}"
                     for n in self.wrong_shape if top(n) == g]
            given = "[" + ", ".join(f"{n} {shape(self.weights[n].shape)}" for n in ours) + "]"
            wanted = "[" + ", ".join(f"{n} {shape(self.expected[n])}" for n in model) + "]"
            parts.append(f"{g}: " + (f"wrong shapes {wrong}; " if wrong else "")
                         + f"checkpoint has {len(ours)} tensors {given} vs model {len(model)} {wanted}")
        renamed = "".join(f" (checkpoint '{a}' read as the model's '{b}')" for a, b in self.renamed.items())
        return f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, wrong shapes " \
               f"{len(self.wrong_shape)}{renamed} | " + " | ".join(parts)


def fit_state(weights: dict[str, torch.Tensor], expected: dict[str, Shape]) -> Fit:
    """Match flat `weights` to the model's tensors `expected` (name -> shape) by name.

    Names are taken as they are; a top-level name of the checkpoint that no tensor of the model
    starts with, but that names exactly one module deeper in the model (and no tensor of the
    checkpoint already lands there), is read as that module: "adapter.proj.0.weight" ->
    "stage1.adapter.proj.0.weight". Shapes are compared, not fixed.
    """
    model_tops = {top(n) for n in expected}
    given = {top(n) for n in weights}
    renamed = {}
    for g in sorted(given - model_tops):
        paths = _module_paths(expected, g)
        if len(paths) == 1:
            (path,) = paths
            if not any(n.startswith(path + ".") for n in weights):
                renamed[g] = path
    out = {}
    for n, t in weights.items():
        head, _, rest = n.partition(".")
        out[f"{renamed[head]}.{rest}" if head in renamed and rest else n] = t
    return Fit(out, dict(expected), renamed)


def expected_tensors(model) -> dict[str, Shape]:
    """The tensors a strategy's checkpoint holds (its `saved_names`), name -> shape."""
    return {n: tuple(t.shape) for n, t in model.trainable_state_dict().items()}


def load_state(model, weights: dict[str, torch.Tensor], source: str) -> Fit:
    """Load flat `weights` (from `source`, for the messages) into strategy `model`; returns the Fit.

    Every tensor the model saves must be given with its shape, and nothing else; otherwise a
    CheckpointError describes the misfit and nothing is loaded.
    """
    fit = fit_state(weights, expected_tensors(model))
    if not fit.ok:
        raise CheckpointError(f"{source} does not fit strategy '{model.name}' (its dimensions come from the preset "
                              f"and key=value overrides): {fit.describe()}")
    model.load_trainable_state_dict(fit.weights)  # the one loading path, which checks again
    return fit


@dataclass
class Export:
    """What `export_checkpoint` wrote."""

    path: Path
    strategy: str
    preset: str
    step: int | None
    modules: dict[str, tuple[int, int]]  # top-level module -> (tensors, parameters)
    overrides: list[str]  # key=value that rebuild the checkpoint's model from its preset

    def score_command(self) -> str:
        """The command line that scores the written file as the checkpoint it came from (add data.* etc.)."""
        preset = ["--preset", self.preset] if self.preset != "tiny" else []
        args = [str(self.path), "--strategy", self.strategy, *preset, *self.overrides]
        return "python -m evaluation.score " + " ".join(shlex.quote(a) for a in args)


def _rebuild_overrides(meta: dict) -> list[str]:
    """key=value overrides that turn the preset's config into the checkpoint's model: the strategy's
    settings and the backbone ids that differ (the upstream stage's checkpoint key is left out: the
    exported weights hold that stage)."""
    saved = meta.get("config") or {}
    name, preset = saved.get("strategy_name"), saved.get("preset", "tiny")
    try:
        base = flatten(as_dict(build_config(name, preset)))
    except UserError:  # an unknown strategy or preset: the command is only a hint
        return []
    upstream = strategy_class(name).requires
    backbone_ids = ("backbones.whisper", "backbones.orpheus", "backbones.snac")
    keep = lambda k: k.startswith("strategy.") or k in backbone_ids  # noqa: E731
    return [f"{k}={v}" for k, v in sorted(flatten(saved).items())
            if keep(k) and k in base and base[k] != v and not (upstream and k == upstream.key)]


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Export:
    """Write `checkpoint` (an s2s checkpoint directory) as `out`, a `.pt` in the card's layout:
    {top-level module name: state dict of tensors} (torch.save; tensors only, so it reads back with
    weights_only=True). Scoring `out` with the printed command gives the checkpoint's own figures."""
    weights, meta = load_checkpoint(checkpoint)
    config = meta.get("config")
    if not isinstance(config, dict) or "strategy_name" not in config:
        raise CheckpointError(f"{checkpoint}: meta.json has no 'config' with a 'strategy_name'; not a checkpoint "
                              f"written by s2s")
    layout = card_layout(weights)
    path = save_state_file(out, layout)
    modules = {}
    for name, part in layout.items():
        tensors = list(part.values()) if isinstance(part, dict) else [part]
        modules[name] = (len(tensors), sum(t.numel() for t in tensors))
    return Export(path, config["strategy_name"], config.get("preset", "tiny"), meta.get("step"), modules,
                  _rebuild_overrides(meta))
