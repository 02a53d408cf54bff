"""The experiment config: every section composed into one typed tree, presets, and run identity.

Resolution order: dataclass defaults (the card's hyperparameters) < preset YAML
(s2s/presets/<preset>.yaml: shared sections only) < the strategy's own `PRESET_VALUES[preset]`
< --config YAML files < key=value overrides. A --config YAML may hold a `strategies:` mapping of
per-strategy settings; only the chosen strategy's entry is applied.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2s.backbones import BackboneConfig, fingerprint
from s2s.config import ConfigError, apply_dict, apply_overrides, flatten, load_yaml, to_dict, validate
from s2s.data.loader import DataConfig
from s2s.data.synth import STYLES
from s2s.prepare import CacheConfig
from s2s.registry import lookup
from s2s.resume import result_keys
from s2s.strategies import STRATEGIES, Strategy
from s2s.tracking import TrackingConfig
from s2s.trainer import TrainConfig

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


@dataclass
class ExperimentConfig:
    strategy_name: str = "adapter_stage1"
    preset: str = "tiny"
    backbones: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    strategy: Any = None  # the chosen strategy's own Config dataclass
    # Synthesize this many es/it utterances into `synth_dir` when it is one of data.sources and
    # missing (0 = never). A data source of your own is never synthesized over.
    synth_if_missing: int = field(default=0, metadata={"range": (0, 100_000)})
    synth_dir: str = "data/synth"
    # What it sounds like (s2s/data/synth.py STYLES): "miniature" is the speech the tiny TTS model reads.
    synth_style: str = field(default="miniature", metadata={"choices": STYLES})
    # Eval utterances the final model speaks (greedy) into wavs logged as the run's `listen/` artifacts,
    # beside their targets, so runs can be heard side by side in the MLflow UI (s2s/listen.py). 0 = none.
    listen: int = field(default=4, metadata={"range": (0, 64)})
    # Before training, score the frozen LM on the eval set given no text and given the transcript:
    # the floor and topline a strategy's loss sits between (s2s/brackets.py). Two eval passes.
    brackets: bool = True
    # Continue an interrupted run: a checkpoint directory, a run's out_dir (its newest undamaged
    # checkpoint) or an MLflow run id; the rest of the config must match the run's (s2s/resume.py).
    resume: str = ""


def strategy_class(name: str) -> type[Strategy]:
    """The registered strategy `name`; an UnknownNameError with the closest name otherwise."""
    return lookup(STRATEGIES, name, "strategy")


def _empty(strategy: str, preset: str) -> ExperimentConfig:
    cls = strategy_class(strategy)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    return ExperimentConfig(strategy_name=strategy, preset=preset, strategy=cls.Config())


def build_config(strategy: str, preset: str = "tiny", overrides: list[str] = (),
                 config_files: list[str] = ()) -> ExperimentConfig:
    """Resolve the full config of one run (see the module docstring for the order)."""
    cfg = _empty(strategy, preset)
    apply_dict(cfg, load_yaml(PRESET_DIR / f"{preset}.yaml"))
    apply_dict(cfg.strategy, getattr(cfg.strategy, "PRESET_VALUES", {}).get(preset, {}), prefix="strategy.",
               root=cfg)
    for path in config_files:
        data = load_yaml(path)
        per_strategy = data.pop("strategies", {}) or {}
        apply_dict(cfg, data)
        apply_dict(cfg, {"strategy": per_strategy.get(strategy, {})})
    apply_overrides(cfg, list(overrides))
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> ExperimentConfig:
    """Rebuild a resolved config (as saved in checkpoint metadata)."""
    data = dict(data)
    cfg = _empty(data.pop("strategy_name"), data.get("preset", "tiny"))
    apply_dict(cfg, data)
    validate(cfg)
    return cfg


def as_dict(cfg: ExperimentConfig) -> dict:
    """The resolved config as a nested plain dict (MLflow params, meta.json)."""
    return to_dict(cfg)


def config_hash(cfg: ExperimentConfig) -> str:
    """Identity of what a run trains on and how: the config less s2s.resume.FREE_KEYS (where it logs or
    writes, how it is resumed), plus the backbones' fingerprints."""
    d = result_keys(flatten(as_dict(cfg)))
    d["backbone_fingerprints"] = [fingerprint(getattr(cfg.backbones, k)) for k in ("whisper", "orpheus", "snac")]
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
