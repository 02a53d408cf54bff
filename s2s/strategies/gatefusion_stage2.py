"""gatefusion_stage2: a learned gate blending stage-1's expansion output with the plain embeddings.

LLaMA-Omni 2's gate (REFERENCE section 4), applied per position and channel:

    g = sigmoid(W [h; e] + b)        h: stage-1 ExpansionBlocks output, e: the embedded sequence
    blend = g * h + (1 - g) * e
    fused = h + s * (blend - h)      s: per-channel scale, zero at init

The zero-initialised scale `s` makes stage 2 start exactly where stage 1 ended (fused == h at
step 0); s receives gradient from the first step (d fused / d s = blend - h), W and b from the
second (their gradient is proportional to s).

What the gate can express: the ExpansionBlocks are residual, h = e + Δ, so
g * h + (1 - g) * e = e + g * Δ. The gate rescales stage 1's change Δ per position and channel
(by a factor between 0 and 1, and with s the fused output is e + (1 - s + s g) Δ); it does not
blend two independent sources, as LLaMA-Omni 2's gate blends the LLM's hidden states with the
text embeddings. It is a learned damping of stage 1, and should be read as such in a comparison.
The stage-1 adapter and ExpansionBlocks come from `init_from` (a stage-1 checkpoint); they are
frozen unless `train_stage1`, then trained at `stage1_lr`. Checkpoints of this strategy hold
the stage-1 weights too, so they are self-contained.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from s2s.checkpoint import CheckpointError, load_checkpoint
from s2s.config import ConfigError, apply_dict, validate
from s2s.prepare import Batch
from s2s.search.space import TRAIN_SEARCH_SPACE
from s2s.strategies.adapter_stage1 import AdapterDecoder, AdapterStage1, AdapterStage1Config
from s2s.strategies.base import Strategy, TargetLogits, Upstream, target_logits


@dataclass
class GateFusionStage2Config:
    init_from: str = ""  # a stage-1 (adapter_stage1) checkpoint directory: required
    train_stage1: bool = False
    stage1_lr: float | None = field(default=None, metadata={"range": (0.0, 1.0)})  # None: the trainer's lr

    # Default hyperparameter search space (python -m experiments.search; format: s2s/search/space.py).
    SEARCH_SPACE: ClassVar[dict] = {**TRAIN_SEARCH_SPACE,
                                   "strategy.train_stage1": {"type": "categorical", "choices": [False, True]}}


def _stage1_from(path: str, core) -> AdapterStage1:
    """The trained stage-1 model of checkpoint `path` (an adapter_stage1 run's)."""
    if not path:
        raise ConfigError("gatefusion_stage2 needs a stage-1 checkpoint: pass strategy.init_from=<dir of an "
                          "adapter_stage1 run's checkpoint>, e.g. outputs/adapter_stage1/<run id>/final")
    try:
        weights, meta = load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"strategy.init_from: {e}") from None
    if meta.get("strategy") != AdapterStage1.name:
        raise CheckpointError(f"strategy.init_from={path} is a '{meta.get('strategy')}' checkpoint; "
                              f"gatefusion_stage2 starts from an '{AdapterStage1.name}' checkpoint")
    stage1 = _stage1_model(meta.get("config", {}).get("strategy") or {}, core)
    try:
        stage1.load_trainable_state_dict(weights)
    except CheckpointError as e:
        raise CheckpointError(f"strategy.init_from={path} does not match this core's dimensions "
                              f"(whisper {core.whisper_dim}, llm {core.llm_dim}): {e}") from None
    return stage1


def _stage1_model(config: dict, core) -> AdapterStage1:
    """An untrained AdapterStage1 of the architecture `config` (a saved AdapterStage1Config) describes,
    read through the validated config loader: an unknown or out-of-range key is a ConfigError."""
    cfg = AdapterStage1Config()
    try:
        apply_dict(cfg, config)
        validate(cfg)
    except ConfigError as e:
        raise CheckpointError(f"the stage-1 config saved with this checkpoint cannot be rebuilt: {e}") from None
    return AdapterStage1(cfg, core)


class GateFusionStage2(Strategy):
    name = "gatefusion_stage2"
    summary = "stage 2: learned gate g*h + (1-g)*e over a stage-1 checkpoint's expansion output (init_from=...)"
    Config = GateFusionStage2Config
    requires = Upstream(AdapterStage1.name, key="strategy.init_from")

    def __init__(self, cfg: GateFusionStage2Config, core, stage1_config: dict | None = None):
        super().__init__(cfg, core)
        # From a checkpoint of this strategy, stage 1's architecture is in its meta and its weights
        # in its own model.safetensors: init_from need not exist any more.
        self.stage1 = _stage1_model(stage1_config, core) if stage1_config is not None else \
            _stage1_from(cfg.init_from, core)
        self.stage1.requires_grad_(cfg.train_stage1)
        d = core.llm_dim
        self.gate = nn.Linear(2 * d, d)
        nn.init.normal_(self.gate.weight, std=0.02)
        nn.init.zeros_(self.gate.bias)
        self.scale = nn.Parameter(torch.zeros(d))
        self.to(core.device)

    @classmethod
    def from_checkpoint(cls, cfg: GateFusionStage2Config, core, meta: dict) -> "GateFusionStage2":
        """Stage 1's architecture from the meta this strategy wrote; for a plain weights file (no
        `stage1_config`), the stage-1 strategy's dimensions at the meta's preset."""
        stage1_config = meta.get("stage1_config")
        if stage1_config is None:
            preset = (meta.get("config") or {}).get("preset", "tiny")
            stage1_config = AdapterStage1Config.PRESET_VALUES.get(preset, {})
        return cls(cfg, core, stage1_config=stage1_config)

    def checkpoint_meta(self) -> dict:
        return {"stage1_config": dataclasses.asdict(self.stage1.cfg)}

    def saved_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters()}  # stage 1 included, trained or not

    def param_groups(self, lr: float) -> list[dict]:
        groups = [{"params": [*self.gate.parameters(), self.scale], "lr": lr}]
        if self.cfg.train_stage1:
            groups.append({"params": list(self.stage1.parameters()), "lr": self.cfg.stage1_lr or lr})
        return groups

    def fuse(self, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Gate-blend [B, L, D] embeddings e and expansion output h -> [B, L, D]."""
        g = torch.sigmoid(self.gate(torch.cat([h, e], dim=-1)))
        blend = g * h + (1 - g) * e
        return h + self.scale * (blend - h)

    def forward(self, batch: Batch, audio_order: torch.Tensor | None = None) -> TargetLogits:
        e, h, inp = self.stage1.expand(batch, audio_order)
        hidden = self.core.hidden_states(self.fuse(e, h), inp["mask"].long())
        return target_logits(self.core, hidden, inp["targets"], batch.speech_tokens)

    def decoder(self, batch: Batch, use_cache: bool = True) -> AdapterDecoder:
        return AdapterDecoder(self.stage1, batch, use_cache, fuse=self.fuse)
