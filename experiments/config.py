"""The experiment config: every section, composed; presets from experiments/configs/*.yaml.

Resolution order: dataclass defaults (the card's hyperparameters) < preset YAML < --config
YAML files < key=value overrides. A preset YAML may hold a `strategies:` mapping of
per-strategy settings; only the chosen strategy's entry is applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2s.backbones import BackboneConfig
from s2s.config import ConfigError, apply_dict, apply_overrides, load_yaml, to_dict, validate
from s2s.data.loader import DataConfig
from s2s.prepare import CacheConfig
from s2s.strategies import STRATEGIES
from s2s.tracking import TrackingConfig
from s2s.trainer import TrainConfig

CONFIG_DIR = Path(__file__).parent / "configs"
PRESETS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))


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
    # Continue an interrupted run: a checkpoint directory, a run's out_dir (its newest undamaged
    # checkpoint) or an MLflow run id; the rest of the config must match the run's (s2s/resume.py).
    resume: str = ""


def strategy_class(name: str):
    if name not in STRATEGIES:
        import difflib
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown strategy '{name}'.{hint} Available: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def build_config(strategy: str, preset: str = "tiny", overrides: list[str] = (),
                 config_files: list[str] = ()) -> ExperimentConfig:
    """Resolve the full config of one run."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    cfg = ExperimentConfig(strategy_name=strategy, preset=preset, strategy=strategy_class(strategy).Config())
    for path in [CONFIG_DIR / f"{preset}.yaml", *config_files]:
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
    cfg = ExperimentConfig(strategy_name=data["strategy_name"], preset=data.get("preset", "tiny"),
                           strategy=strategy_class(data["strategy_name"]).Config())
    data.pop("strategy_name", None)
    apply_dict(cfg, data)
    validate(cfg)
    return cfg


def as_dict(cfg: ExperimentConfig) -> dict:
    return to_dict(cfg)

