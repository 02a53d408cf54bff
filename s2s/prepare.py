"""Prepared data: loaded examples + what the frozen core computes from them, cached on disk.

For every example the SNAC target codes (as flat Orpheus audio ids) and, optionally, the frozen
Whisper encoder states trimmed to the utterance are computed once (with a progress bar) and
stored as safetensors under `cache.dir`, keyed by the example's content hash and the backbone's
fingerprint. Later epochs and later runs read them back instead of recomputing.

The cache always holds every SNAC frame of the target. `dedup_frames=True` (`data.dedup_frames`)
drops repeated-c0 frames from what is READ, after the cache: deduplicated ids are never written, so
a run with dedup and one without share the expensive SNAC pass and can never get each other's targets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from s2s.backbones import FrozenCore, fingerprint
from s2s.data.loader import Example
from s2s.files import atomic_write
from s2s.progress import progress_bar
from s2s.tokens import codes_to_tokens
from s2s.tokens import dedup_frames as drop_repeated_frames  # the parameter `dedup_frames` shadows the name


@dataclass
class CacheConfig:
    dir: str = ".cache/s2s/prepared"
    enabled: bool = True
    # Whisper states cost ~1.3 MB per 10 s at large-v3 width in float16; off by default for big data.
    cache_speech_states: bool = True
    # Rows of the seeded order per prepared shard (s2s/shards.py): what a crash can lose, and what
    # preparation holds in memory at once (~0.16 MB per second of audio).
    shard_rows: int = field(default=256, metadata={"range": (1, 100_000)})


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
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))  # readers never see a half-written cache file


def _load(path: Path, enabled: bool) -> dict | None:
    if not (enabled and path.is_file()):
        return None
    try:
        return load_file(str(path))
    except Exception:  # a damaged cache entry is recomputed, never trusted
        path.unlink(missing_ok=True)
        return None


def _speech_states(chunk: list[Example], core: FrozenCore, states_dir: Path, enabled: bool) -> list[torch.Tensor]:
    """Encoder states of a chunk of examples; the uncached ones go through Whisper in ONE call
    (every input is padded to 30 s anyway, so batching costs nothing extra per utterance)."""
    paths = [states_dir / f"{ex.key}.safetensors" for ex in chunk]
    found = [_load(p, enabled) for p in paths]
    todo = [i for i, f in enumerate(found) if f is None]
    for i, st in zip(todo, core.encode_speech([chunk[i].wave16k for i in todo]) if todo else []):
        found[i] = {"states": st.half()}
        if enabled:
            _atomic_save(found[i], paths[i])
    return [f["states"].float() for f in found]


def target_tokens(waves24k: list[torch.Tensor], core: FrozenCore) -> list[torch.Tensor]:
    """Flat Orpheus audio ids [7 n_i] of each target waveform [T24_i], SNAC run in exact batches."""
    return [codes_to_tokens(c, core.layout) for c in core.encode_codes_batch(waves24k)]


def cache_dirs(cfg: CacheConfig, core: FrozenCore) -> tuple[Path, Path]:
    """(SNAC ids dir, Whisper states dir) of this core under `cfg.dir`."""
    root = Path(cfg.dir)
    # Stored as Orpheus ids, which depend on the LLM's layout as well as on SNAC's codes.
    return (root / "snac" / fingerprint(core.cfg.snac) / f"audio-offset-{core.layout.audio_offset}",
            root / "whisper" / fingerprint(core.cfg.whisper))


def prepare(examples: list[Example], core: FrozenCore, cfg: CacheConfig, progress: bool = True,
            desc: str = "prepare", encoder_batch: int = 16, dedup_frames: bool = False) -> list[PreparedExample]:
    """Compute (or read from cache) target audio ids and, if configured, encoder states, in memory:
    for evaluation sets and small data (training data is prepared into shards, s2s/shards.py).

    dedup_frames: drop target frames whose coarse code repeats the previous frame's
    (:func:`s2s.tokens.dedup_frames`; pass `cfg.data.dedup_frames`), applied to the cached full ids.
    """
    codes_dir, states_dir = cache_dirs(cfg, core)
    out = []
    bar = progress_bar(total=len(examples), desc=desc, disable=not progress, unit="utt")
    for start in range(0, len(examples), encoder_batch):
        chunk = examples[start:start + encoder_batch]
        states = _speech_states(chunk, core, states_dir, cfg.enabled) if cfg.cache_speech_states else [None] * len(chunk)
        paths = [codes_dir / f"{ex.key}.safetensors" for ex in chunk]
        found = [_load(p, cfg.enabled) for p in paths]
        todo = [i for i, f in enumerate(found) if f is None]
        for i, tokens in zip(todo, target_tokens([chunk[i].target24k for i in todo], core) if todo else []):
            found[i] = {"tokens": tokens}
            if cfg.enabled:
                _atomic_save(found[i], paths[i])
        for ex, st, codes in zip(chunk, states, found):
            tokens = drop_repeated_frames(codes["tokens"]) if dedup_frames else codes["tokens"]
            out.append(PreparedExample(ex.key, ex.text, ex.language, tokens, st,
                                       None if st is not None else ex.wave16k))
        bar.update(len(chunk))
    bar.close()
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
