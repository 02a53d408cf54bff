"""Prepared data: loaded examples + what the frozen core computes from them, cached on disk.

For every example the SNAC target codes (as flat Orpheus audio ids) and, optionally, the frozen
Whisper encoder states trimmed to the utterance are computed once (with a progress bar) and
stored as safetensors under `cache.dir`, keyed by the example's content hash and the backbone's
fingerprint. Later epochs and later runs read them back instead of recomputing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from s2s.backbones import FrozenCore, fingerprint
from s2s.data.loader import Example
from s2s.tokens import codes_to_tokens


@dataclass
class CacheConfig:
    dir: str = ".cache/s2s/prepared"
    enabled: bool = True
    # Whisper states cost ~1.3 MB per 10 s at large-v3 width in float16; off by default for big data.
    cache_speech_states: bool = True


@dataclass
class PreparedExample:
    key: str
    text: str
    language: str
    speech_tokens: torch.Tensor  # [7n] int64 Orpheus audio ids of the target utterance
    states: torch.Tensor | None  # [T, D_w] Whisper encoder states, or None (computed per batch)
    wave16k: torch.Tensor | None  # kept only when states are not prepared


@dataclass
class Batch:
    """A micro-batch, ragged per sample; strategies pad what they need themselves."""
    keys: list[str]
    texts: list[str]
    languages: list[str]
    states: list[torch.Tensor]  # each [T_i, D_w] float32
    speech_tokens: list[torch.Tensor]  # each [7 n_i] int64

    def __len__(self) -> int:
        return len(self.keys)


def _atomic_save(tensors: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)  # readers never see a half-written cache file


def _cached(path: Path, enabled: bool, compute) -> dict:
    if enabled and path.is_file():
        try:
            return load_file(str(path))
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    tensors = compute()
    if enabled:
        _atomic_save(tensors, path)
    return tensors


def prepare(examples: list[Example], core: FrozenCore, cfg: CacheConfig, progress: bool = True,
            desc: str = "prepare") -> list[PreparedExample]:
    """Compute (or read from cache) target audio ids and, if configured, encoder states."""
    root = Path(cfg.dir)
    codes_dir = root / "snac" / fingerprint(core.cfg.snac)
    states_dir = root / "whisper" / fingerprint(core.cfg.whisper)
    out = []
    for ex in tqdm(examples, desc=desc, disable=not progress, unit="utt"):
        codes = _cached(codes_dir / f"{ex.key}.safetensors", cfg.enabled,
                        lambda: {"tokens": codes_to_tokens(core.encode_codes(ex.target24k), core.layout)})
        states = None
        if cfg.cache_speech_states:
            states = _cached(states_dir / f"{ex.key}.safetensors", cfg.enabled,
                             lambda: {"states": core.encode_speech([ex.wave16k])[0].half()})["states"].float()
        out.append(PreparedExample(ex.key, ex.text, ex.language, codes["tokens"], states,
                                   None if states is not None else ex.wave16k))
    return out


def make_batch(items: list[PreparedExample], core: FrozenCore) -> Batch:
    """Collate prepared examples; encoder states that were not prepared are computed here."""
    missing = [i for i, it in enumerate(items) if it.states is None]
    fresh = core.encode_speech([items[i].wave16k for i in missing]) if missing else []
    states = [it.states for it in items]
    for i, s in zip(missing, fresh):
        states[i] = s
    return Batch([it.key for it in items], [it.text for it in items], [it.language for it in items],
                 states, [it.speech_tokens for it in items])
