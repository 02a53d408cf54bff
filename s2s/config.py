"""Typed configs: dataclasses, filled from YAML and from `key=value` overrides.

A config is a tree of dataclasses. Every leaf has a type (int, float, bool, str, optional or
list of those) and may declare its allowed values in field metadata:

    lr: float = field(default=5e-5, metadata={"range": (0.0, 1.0)})
    preset: str = field(default="tiny", metadata={"choices": ("tiny", "full")})

Unknown keys are errors that suggest the closest valid key; bad values name the key and what is
allowed. Nothing here knows which sections exist: callers compose them.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from s2s.errors import UserError
from s2s.registry import closest


class ConfigError(UserError):
    """A config key or value that cannot be used, with a message that says how to fix it."""


def _leaf_keys(cls_or_obj, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls_or_obj):
        value = getattr(cls_or_obj, f.name, None) if not isinstance(cls_or_obj, type) else None
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(key: str, *cfgs) -> ConfigError:
    valid = [k for cfg in cfgs for k in _leaf_keys(cfg)]
    close = closest(key, valid)
    if not close:  # a bare leaf name ("lr") should still find "train.lr"
        leaf = key.split(".")[-1]
        close = next((k for k in valid if k.split(".")[-1] == leaf), None) or closest(leaf, valid)
    hint = f" Did you mean '{close}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(valid)}")


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(key: str, raw: Any, tp) -> Any:
    """Turn `raw` (a YAML value or a command-line string) into type `tp`, or explain why not."""
    inner, optional = _unwrap_optional(tp)
    if isinstance(raw, str) and raw.strip().lower() in ("none", "null", "~") and optional:
        return None
    if raw is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' cannot be empty (None); give a {getattr(inner, '__name__', inner)}")
    if typing.get_origin(inner) is list:
        (item_tp,) = typing.get_args(inner) or (str,)
        if isinstance(raw, str):
            raw = yaml.safe_load(raw) if raw.strip().startswith("[") else [s.strip() for s in raw.split(",") if s.strip()]
        if not isinstance(raw, (list, tuple)):
            raw = [raw]
        return [_coerce(key, r, item_tp) for r in raw]
    if inner is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key '{key}' expects true or false, got '{raw}'")
    if inner in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {raw}")
        try:
            value = inner(float(raw)) if inner is int and str(raw).lower().count("e") else inner(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects {inner.__name__}, got '{raw}'") from None
        if inner is int and float(raw) != value:
            raise ConfigError(f"config key '{key}' expects a whole number, got '{raw}'")
        return value
    if inner is str:
        return str(raw)
    return raw  # Any / dict: taken as given


def _check(key: str, value: Any, f: dataclasses.Field) -> None:
    if value is None:
        return
    lo_hi = f.metadata.get("range")
    if lo_hi is not None:
        lo, hi = lo_hi
        items = value if isinstance(value, list) else [value]
        for v in items:
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                lo_s = "-inf" if lo is None else lo
                hi_s = "inf" if hi is None else hi
                raise ConfigError(f"config key '{key}' = {v} is out of range: allowed [{lo_s}, {hi_s}]")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}' = '{value}' is not allowed: choose one of {', '.join(map(str, choices))}")


def _field(node, name: str, full_key: str, root) -> dataclasses.Field:
    for f in dataclasses.fields(node):
        if f.name == name:
            return f
    raise _unknown_key(full_key, root)


def get_value(cfg, key: str) -> Any:
    """The value at dotted `key` (e.g. "strategy.init_from") of dataclass tree `cfg`."""
    node = cfg
    for part in key.split("."):
        _field(node, part, key, cfg)
        node = getattr(node, part)
    return node


def set_value(cfg, key: str, raw: Any) -> None:
    """Set dotted `key` (e.g. "train.lr") on dataclass tree `cfg`, coercing and checking `raw`."""
    parts = key.split(".")
    node = cfg
    hints = typing.get_type_hints(type(node))
    for i, part in enumerate(parts):
        f = _field(node, part, key, cfg)
        current = getattr(node, part)
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(current):
                raise _unknown_key(key, cfg)
            node = current
            hints = typing.get_type_hints(type(node))
            continue
        if dataclasses.is_dataclass(current):
            if not isinstance(raw, dict):
                raise ConfigError(f"config key '{key}' is a section; set its keys, e.g. {_leaf_keys(current, key + '.')[0]}=...")
            apply_dict(current, raw, prefix=key + ".", root=cfg)
            return
        value = _coerce(key, raw, hints[part])
        _check(key, value, f)
        setattr(node, part, value)


def apply_dict(cfg, values: dict, prefix: str = "", root=None) -> None:
    """Apply a (nested) mapping such as a parsed YAML file onto `cfg`."""
    root = root if root is not None else cfg
    for k, v in (values or {}).items():
        if isinstance(v, dict) and dataclasses.is_dataclass(getattr(cfg, k, None)):
            apply_dict(getattr(cfg, k), v, prefix + k + ".", root)
        else:
            set_value(root, prefix + k, v)


def apply_overrides(cfg, overrides: list[str]) -> None:
    """Apply command-line `key=value` strings."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (for example train.lr=1e-4)")
        key, raw = item.split("=", 1)
        set_value(cfg, key.strip(), raw.strip())


def apply_overrides_many(cfgs: list, overrides: list[str]) -> None:
    """Apply `key=value` strings to whichever config of `cfgs` has the key's first section;
    an unknown key suggests the closest one among all of them."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        owner = next((c for c in cfgs if key.split(".")[0] in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None:
            raise _unknown_key(key, *cfgs)
        apply_overrides(owner, [item])


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def validate(cfg, prefix: str = "") -> None:
    """Check every leaf against its declared range/choices (defaults and YAML included)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
        else:
            _check(prefix + f.name, value, f)


def to_dict(cfg) -> dict:
    """Nested plain dict (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1} (MLflow params)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
