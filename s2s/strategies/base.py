"""The strategy interface: one way of teaching the frozen LLM to listen.

A strategy owns its trainable modules and turns a `Batch` into logits at the target positions
(the speech tokens and end_of_speech). The trainer sees only this interface.

A strategy also declares everything specific to it, so that no command has to know it by name:
- `Config`: its settings (a dataclass), with `SEARCH_SPACE` (the default Optuna space, format in
  s2s/search/space.py) and `PRESET_VALUES` ({preset: {field: value}}, e.g. the tiny preset's
  small dimensions) as class attributes;
- `requires`: an `Upstream` when it trains on top of another strategy's checkpoint; `compare`
  trains that stage first and fills the key, `search` refuses to start without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from s2s.backbones import FrozenCore
from s2s.checkpoint import CheckpointError
from s2s.config import ConfigError
from s2s.expansion import OTHER_SLOT
from s2s.prepare import Batch
from s2s.tokens import FRAME

# Metric groups of the target tokens: frame position k0..k6 of an audio id, or the end token.
GROUP_NAMES = tuple(f"k{k}" for k in range(FRAME)) + ("eos",)


@dataclass(frozen=True)
class Upstream:
    """The stage a strategy builds on: `strategy`'s checkpoint, given as config key `key`."""

    strategy: str  # the registry name of the earlier stage
    key: str  # the dotted config key that holds its checkpoint directory, e.g. "strategy.init_from"


@dataclass
class TargetLogits:
    logits: torch.Tensor  # [N, V] float32 at the N target positions of the batch
    labels: torch.Tensor  # [N] int64 target ids
    groups: torch.Tensor  # [N] int64 index into GROUP_NAMES
    sample: torch.Tensor  # [N] int64 which sample of the batch each target belongs to


class Strategy(nn.Module):
    """Subclasses set `name`, `summary`, `Config` (a dataclass) and implement `forward`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type]
    requires: ClassVar[Upstream | None] = None

    def __init__(self, cfg, core: FrozenCore):
        super().__init__()
        if getattr(core, "adapted_by", None):
            raise ConfigError(f"this FrozenCore's LLM carries LoRA layers injected by '{core.adapted_by}'; "
                               f"load a fresh FrozenCore for another strategy")
        self.cfg = cfg
        self.core = core  # a plain attribute: the frozen weights never enter state_dict or the optimizer

    @property
    def reads_text(self) -> bool:
        """Whether the model reads the input's transcript (not only its audio): inference must then be
        given the text."""
        return False

    def forward(self, batch: Batch, audio_order: torch.Tensor | None = None) -> TargetLogits:
        """Logits for every target token of the batch.

        `audio_order` [B] (optional) makes sample i listen to sample audio_order[i]'s audio: the
        shuffled-audio ablation, which shows how much of the loss depends on the input speech.
        """
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, cfg, core: FrozenCore, meta: dict) -> "Strategy":
        """The strategy to load a checkpoint's weights into; `meta` is its meta.json (see checkpoint_meta)."""
        return cls(cfg, core)

    def checkpoint_meta(self) -> dict:
        """What this strategy adds to its checkpoints' meta.json (to be rebuilt by from_checkpoint)."""
        return {}

    def decoder(self, batch: Batch, use_cache: bool = True):
        """A `s2s.strategies.decoder.Decoder` generating speech tokens for `batch` (see that module)."""
        raise NotImplementedError(f"strategy '{self.name}' does not implement generation (decoder)")

    def count_targets(self, batch: Batch) -> int:
        """Target tokens in a batch (speech tokens + end_of_speech per sample), known before forward."""
        return sum(len(t) + 1 for t in batch.speech_tokens)

    def saved_names(self) -> set[str]:
        """Parameters a checkpoint holds: the trainable ones (a strategy may add frozen ones it owns)."""
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups; one group at the trainer's learning rate unless overridden."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = self.saved_names()
        return {n: p.detach() for n, p in self.named_parameters() if n in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by `trainable_state_dict`; names and shapes must match exactly."""
        own = dict(self.named_parameters())
        expected = self.saved_names()
        missing, unexpected = expected - state.keys(), state.keys() - expected
        wrong = [f"{n}: checkpoint {tuple(state[n].shape)} vs model {tuple(own[n].shape)}"
                 for n in expected & state.keys() if state[n].shape != own[n].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(f"checkpoint does not fit strategy '{self.name}': missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}, wrong shapes {wrong[:5]}")
        with torch.no_grad():
            for n, t in state.items():
                own[n].copy_(t)

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# --- helpers shared by strategies ---------------------------------------------------------

def pad_states(states: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged [T_i, D] -> padded [B, T, D] and lengths [B]."""
    lengths = torch.tensor([len(s) for s in states], device=device)
    return nn.utils.rnn.pad_sequence(states, batch_first=True).to(device), lengths


def adapt_audio(adapter: nn.Module, batch: Batch, device,
                audio_order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper states of `batch` through `adapter`: [B, Ta, D] audio embeddings and frame counts [B].

    `audio_order` [B] gives sample i the audio of sample audio_order[i] (the shuffled-audio ablation).
    """
    states, lengths = pad_states(batch.states, device)
    audio, alens = adapter(states, lengths)
    if audio_order is not None:
        audio, alens = audio[audio_order], alens[audio_order]
    return audio, alens


def target_slots(n_speech: int, device) -> torch.Tensor:
    """Slot (frame position of the predicted token) for the n_speech + 1 target positions [n+1]."""
    return torch.arange(n_speech + 1, device=device) % FRAME


def target_groups(n_speech: int, device) -> torch.Tensor:
    g = target_slots(n_speech, device)
    g[-1] = len(GROUP_NAMES) - 1  # the end_of_speech target
    return g


def target_logits(core, hidden: torch.Tensor, targets: list[torch.Tensor], speech: list[torch.Tensor]) -> TargetLogits:
    """Logits at the target positions: hidden [B, L, H], targets[i] = the positions [n_i + 1]
    that predict sample i's speech ids and then end_of_speech."""
    dev = hidden.device
    rows = torch.cat([torch.full_like(t, i) for i, t in enumerate(targets)])
    eos = torch.tensor([core.layout.end_of_speech], device=dev)
    labels = torch.cat([torch.cat([s.to(dev), eos]) for s in speech])
    groups = torch.cat([target_groups(len(s), dev) for s in speech])
    return TargetLogits(core.logits(hidden[rows, torch.cat(targets)]), labels, groups, rows)


def pad_right(seqs: list[torch.Tensor], value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged [L_i, ...] -> padded [B, L, ...] and a bool mask [B, L] of real positions."""
    lengths = torch.tensor([len(s) for s in seqs])
    padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return padded, mask.to(padded.device)


__all__ = ["Strategy", "Upstream", "TargetLogits", "GROUP_NAMES", "OTHER_SLOT", "adapt_audio", "pad_states", "pad_right",
           "target_slots", "target_groups", "target_logits"]
