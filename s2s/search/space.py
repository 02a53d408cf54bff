"""Hyperparameter search spaces: typed parameters over dotted config keys.

A space maps config keys (the keys of `key=value` overrides) to parameter declarations, as in
a YAML file given to `python -m experiments.search --space FILE.yaml`:

    train.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    train.warmup_ratio: {type: float, low: 0.0, high: 0.2, step: 0.05}
    strategy.expansion_blocks: {type: int, low: 1, high: 4}
    strategy.lora_rank: {type: categorical, choices: [0, 8, 16]}
    train.schedule: [linear, cosine]      # a list is short for a categorical
    train.label_smoothing: null           # drop this key from the default space

Keys may also be nested (`train: {lr: {...}}`). Each strategy's Config dataclass carries its
default `SEARCH_SPACE` (a mapping like the one above); a file extends or overrides it.

Every declaration is checked against the experiment config before any trial runs: the key
must exist (the error names the closest valid key), the kind must suit the key's type, low <=
high, a log range must be positive, and the bounds and choices must be values the key accepts
(checked by `s2s.config.set_value`, the same code that applies the sampled values).
"""
from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass
from typing import Any

from s2s.config import ConfigError, _unwrap_optional, set_value, validate
from s2s.registry import closest

KINDS = ("float", "int", "categorical")
SPEC_KEYS = ("type", "low", "high", "log", "step", "choices")

# The training keys every strategy searches by default (a strategy adds its own keys).
TRAIN_SEARCH_SPACE: dict[str, dict] = {
    "train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
}


@dataclass(frozen=True)
class Param:
    """One searched config key: a float/int range (optionally log-scaled or stepped) or choices."""

    name: str  # a dotted config key, e.g. "train.lr"
    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """Sample this parameter in an Optuna trial (the Optuna parameter name is the config key)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def to_dict(self) -> dict:
        """The YAML form (parse_param(name, p.to_dict()) == p)."""
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        d = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


def _err(name: str, msg: str) -> ConfigError:
    return ConfigError(f"search space: '{name}': {msg}")


def _number(name: str, what: str, raw, kind: str):
    value = raw
    if isinstance(raw, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            value = float(raw)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(name, f"{what} must be a number, got {raw!r}")
    if not math.isfinite(value):
        raise _err(name, f"{what} must be finite, got {raw}")
    if kind == "int":
        if float(value) != int(value):
            raise _err(name, f"{what} of an int parameter must be a whole number, got {raw}")
        return int(value)
    return float(value)


def parse_param(name: str, spec: Any) -> Param:
    """One declaration (a mapping, or a list of choices) -> Param, with errors that say what to fix."""
    if isinstance(spec, (list, tuple)):
        spec = {"type": "categorical", "choices": list(spec)}
    if not isinstance(spec, dict):
        raise _err(name, f"expected a mapping like {{type: float, low: 1e-5, high: 1e-2, log: true}} or a list "
                         f"of choices, got {spec!r}")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        close = closest(str(unknown[0]), SPEC_KEYS, cutoff=0.4)
        hint = f" Did you mean '{close}'?" if close else ""
        raise _err(name, f"unknown field '{unknown[0]}'.{hint} Fields: {', '.join(SPEC_KEYS)}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind is None:
        raise _err(name, f"missing 'type': one of {', '.join(KINDS)}")
    if kind not in KINDS:
        close = closest(str(kind), KINDS, cutoff=0.4)
        hint = f" Did you mean '{close}'?" if close else ""
        raise _err(name, f"unknown type '{kind}'.{hint} Types: {', '.join(KINDS)}")

    if kind == "categorical":
        extra = [k for k in ("low", "high", "log", "step") if k in spec]
        if extra:
            raise _err(name, f"a categorical parameter takes 'choices' only, not '{extra[0]}'")
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise _err(name, f"a categorical parameter needs a non-empty list 'choices', got {choices!r}")
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise _err(name, f"choices must be single values (null, bool, number or string), got {bad[0]!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise _err(name, f"choices repeat a value: {list(choices)}")
        return Param(name, kind, choices=tuple(choices))

    if "choices" in spec:
        raise _err(name, f"a {kind} parameter takes low/high, not 'choices' (use type: categorical)")
    for k in ("low", "high"):
        if k not in spec:
            raise _err(name, f"a {kind} parameter needs '{k}'")
    low, high = _number(name, "low", spec["low"], kind), _number(name, "high", spec["high"], kind)
    if low > high:
        raise _err(name, f"low ({low}) is above high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _err(name, f"'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise _err(name, f"a log range must be positive, got low={low} (a log scale cannot include 0 or "
                         f"negative values; use a small positive low such as 1e-6, or log: false)")
    step = spec.get("step")
    if step is not None:
        step = _number(name, "step", step, kind)
        if step <= 0:
            raise _err(name, f"step must be positive, got {step}")
        if log:
            raise _err(name, "'step' and 'log: true' cannot be combined")
    return Param(name, kind, low, high, log, step)


def flatten_space(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": {...}}} -> {"train.lr": {...}}; a declaration is a list, None, or a mapping
    with a spec field (type, choices, low, ...)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"search space: expected a mapping of config keys to declarations, got "
                          f"{type(mapping).__name__}")
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not any(f in v for f in SPEC_KEYS) and all(
                isinstance(x, (dict, list, type(None))) for x in v.values()):
            out.update(flatten_space(v, key + "."))
        else:
            out[key] = v
    return out


def merge_specs(default: dict, override: dict | None, replace: bool = False) -> dict[str, Any]:
    """The declarations of `default` updated by `override` (`key: null` drops a key); with
    `replace`, `override` alone."""
    merged = {} if replace else dict(flatten_space(default or {}))
    for k, v in flatten_space(override or {}).items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


def parse_space(specs: dict) -> dict[str, Param]:
    return {k: parse_param(k, v) for k, v in flatten_space(specs).items() if v is not None}


def _leaf_type(cfg, key: str):
    """The declared type of config key `key` (after set_value has shown the key exists)."""
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = getattr(node, part)
    return _unwrap_optional(typing.get_type_hints(type(node))[parts[-1]])[0]


def check_space(space: dict[str, Param], cfg) -> None:
    """Check every parameter against config `cfg` (not modified): key, kind, bounds, choices."""
    if not space:
        raise ConfigError("search space: no parameters to search (every key was dropped or fixed by an override)")
    probe = copy.deepcopy(cfg)
    for name, p in space.items():
        values = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
        for v in values:
            try:
                set_value(probe, name, v)
            except ConfigError as e:
                raise ConfigError(f"search space: '{name}': {e}") from None
        tp = _leaf_type(probe, name)
        if p.kind == "float" and tp is int:
            raise _err(name, "this config key is an int: declare it with type: int")
        if p.kind in ("float", "int") and tp not in (int, float):
            raise _err(name, f"this config key is a {getattr(tp, '__name__', tp)}, not a number: declare it "
                             f"with type: categorical and choices")


def apply_params(cfg, values: dict[str, Any]) -> None:
    """Set sampled values on `cfg` through the typed config machinery, then validate the whole config."""
    for k, v in values.items():
        set_value(cfg, k, v)
    validate(cfg)


def space_to_dict(space: dict[str, Param]) -> dict[str, dict]:
    return {k: p.to_dict() for k, p in space.items()}


__all__ = ["Param", "KINDS", "TRAIN_SEARCH_SPACE", "parse_param", "parse_space", "merge_specs", "flatten_space",
           "check_space", "apply_params", "space_to_dict"]
