"""Load (text, 16 kHz encoder audio, 24 kHz codec target) examples from any `datasets` dataset.

Sources are local directories written by `save_to_disk` or hub ids ("org/name[:config]").
Audio columns are read with `Audio(decode=False)` so that decoding happens here, where a bad
sample is skipped and counted (see `SkipCounter`) instead of raising from inside a library.
"""

import hashlib
import logging
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from s2s.data.audio import REASONS, BadSample, check_text, decode_audio, prepare_waveform, resample
from s2s.data.sources import DataSourceError, Source, SplitRows
from s2s.progress import progress_bar

log = logging.getLogger(__name__)

ENCODER_SR = 16_000  # Whisper encoder input
CODEC_SR = 24_000  # SNAC 24 kHz model

@dataclass
class DataConfig:
    """Where the data comes from and which samples to keep (the `data.*` config keys)."""

    # Local save_to_disk directories or hub ids "org/name[:config]"; a str is split on commas.
    sources: list[str] = field(default_factory=lambda: ["data/synth"])
    audio_column: str = "audio"
    text_column: str = "text"
    # Missing column: the language is the source's config name (MLS names -> ISO), else "unknown".
    language_column: str | None = "language"
    # Who speaks (MLS: speaker_id; the synthetic set: voice). Only evaluation reads it, to pick
    # another speaker's utterance for the speaker-similarity floor. Missing column: unknown ("").
    speaker_column: str | None = "speaker_id"
    # Dialogue pairs: the audio to speak back. None: re-speak the input audio.
    target_audio_column: str | None = None
    train_split: str = "train"
    # None: hold out `eval_size` rows of the train split (seeded by split_seed), disjoint from train.
    eval_split: str | None = None
    # Eval utterances: the held-out rows, or the first usable ones of eval_split in the seeded order.
    eval_size: int = field(default=32, metadata={"range": (1, None)})
    split_seed: int = 0
    # Budgets of the train split, counted in usable examples taken in the seeded order; the first
    # reached ends it. max_hours counts the input audio (the card: 500 h of MLS es + it).
    max_samples: int | None = field(default=None, metadata={"range": (1, None)})
    max_hours: float | None = field(default=None, metadata={"range": (0.0, None)})
    # Read hub sources in `datasets` streaming mode (no full download); each source is shuffled by a
    # seeded buffer of this many rows. Local save_to_disk sources stream the same way.
    streaming: bool = False
    shuffle_buffer: int = field(default=10_000, metadata={"range": (1, None)})
    # Processes that decode audio while the main one computes: preparation and training batches.
    num_workers: int = field(default=0, metadata={"range": (0, 64)})
    max_seconds: float = field(default=30.0, metadata={"range": (0.1, 600.0)})
    # Drop each SNAC frame whose coarse code c0 repeats the previous frame's (s2s.tokens.dedup_frames),
    # as Orpheus' own data preparation does for every training utterance: the frozen Orpheus LM
    # learned its audio-token statistics on such sequences, so its targets here should be too.
    # Dropped frames shorten the target audio (~85 ms each). False: every SNAC frame is a target.
    dedup_frames: bool = True

    def __post_init__(self):
        if isinstance(self.sources, str):
            self.sources = [s.strip() for s in self.sources.split(",") if s.strip()]
        if not self.sources:
            raise DataSourceError("data.sources is empty: give at least one dataset directory or hub id")


@dataclass
class Example:
    """One utterance. wave16k: float32 [T16] at 16 kHz; target24k: float32 [T24] at 24 kHz."""

    key: str  # sha1 of input audio + text + target audio, hex[:20]: stable across runs
    text: str
    language: str
    wave16k: torch.Tensor
    target24k: torch.Tensor
    speaker: str = ""  # "" when the source has no speaker column


class SkipCounter:
    """How many samples were skipped, per `BadSample` reason."""

    def __init__(self):
        self.counts = {r: 0 for r in REASONS}

    def add(self, reason: str, n: int = 1):
        self.counts[reason] = self.counts.get(reason, 0) + n

    def update(self, other: "SkipCounter"):
        for reason, n in other.counts.items():
            self.add(reason, n)

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def __iter__(self):
        return iter(self.counts)

    def items(self):
        return self.counts.items()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """{"skipped/unreadable": n, ..., "skipped/total": n}: flat keys for a metrics logger."""
        return {**{f"skipped/{r}": n for r, n in self.counts.items()}, "skipped/total": self.total}

    def __repr__(self):
        nonzero = ", ".join(f"{r}={n}" for r, n in self.counts.items() if n)
        return f"SkipCounter({nonzero or 'none'})"


def _label(row: dict, source: Source, col: str | None, default: str) -> str:
    """A text or ClassLabel column's value as a string; `default` when the column is missing or empty."""
    value = row.get(col) if col is not None else None
    feature = (source.ds.features or {}).get(col)
    if isinstance(feature, datasets.ClassLabel) and value is not None:
        value = feature.int2str(value)
    if isinstance(value, int) and not isinstance(value, bool):  # e.g. an integer speaker id
        value = str(value)
    return value.strip() if isinstance(value, str) and value.strip() else default


def _checked_wave(value, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    array, sr = decode_audio(value, name)
    return prepare_waveform(array, sr, max_seconds=max_seconds, sample=name), sr


def make_example(row: dict, source: Source, cfg: DataConfig, name: str) -> Example:
    """Validate and convert one row; raises BadSample."""
    text = check_text(row[cfg.text_column], name)
    wave, sr = _checked_wave(row[cfg.audio_column], name, cfg.max_seconds)
    h = hashlib.sha1(wave.tobytes() + f"|{sr}|{text}|".encode())
    if cfg.target_audio_column is not None:
        target, tsr = _checked_wave(row[cfg.target_audio_column], f"{name} ({cfg.target_audio_column})",
                                    cfg.max_seconds)
        h.update(target.tobytes() + f"|{tsr}".encode())
    else:
        target, tsr = wave, sr
    return Example(key=h.hexdigest()[:20], text=text, language=_label(row, source, cfg.language_column, source.language),
                   wave16k=resample(wave, sr, ENCODER_SR), target24k=resample(target, tsr, CODEC_SR),
                   speaker=_label(row, source, cfg.speaker_column, ""))


def stored_audio(value, wave16k: torch.Tensor) -> tuple[bytes, int]:
    """What to keep of a row's input audio so that `audio_from_store` gives back `wave16k` exactly:
    the encoded file's bytes (sr 0), or the 16 kHz waveform itself when the row held an array."""
    if isinstance(value, dict) and value.get("array") is None:
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), 0
    if isinstance(value, str):
        with open(value, "rb") as f:
            return f.read(), 0
    return wave16k.numpy().astype(np.float32).tobytes(), ENCODER_SR


def audio_from_store(blob: bytes, sr: int, max_seconds: float, name: str = "stored audio") -> torch.Tensor:
    """The input audio kept by `stored_audio`, as the float32 16 kHz waveform [T16] the loader made."""
    if sr:
        return torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())
    wave, sr = _checked_wave(blob, name, max_seconds)
    return resample(wave, sr, ENCODER_SR)


def decode_row(rows: SplitRows, pos: int, row: dict, source: Source, name: str) -> Example | BadSample:
    """The Example at `pos`, or the BadSample that says why the row is skipped (never raises it)."""
    try:
        return make_example(row, source, rows.cfg, name)
    except BadSample as e:
        return e


class _Skips:
    """Counts skipped rows and keeps the first few messages for the warning."""

    def __init__(self):
        self.counter, self.first = SkipCounter(), []

    def add(self, reason: str, message: str):
        self.counter.add(reason)
        if len(self.first) < 3:
            self.first.append(message)


def load_examples(cfg: DataConfig, split: str = "train", skips: SkipCounter | None = None,
                  progress: bool = True) -> list[Example]:
    """Load, validate and resample the usable samples of `split` ("train" or "eval"), in memory.

    Rows are taken in the seeded order of `s2s.data.sources.SplitRows` until the split's budget
    (eval: `eval_size`; train: `max_samples`/`max_hours`, else every row). Bad samples are
    skipped and added to `skips`. Returns a list of `Example` (wave16k [T16] at 16 kHz,
    target24k [T24] at 24 kHz): ~0.16 MB per second of audio, for evaluation sets and small data.
    Training reads big data from prepared shards instead (s2s/shards.py).
    Raises DataSourceError (a UserError) for unusable sources/columns/splits and when nothing
    usable is left.
    """
    rows = SplitRows(cfg, split)
    budget = Budget.of(cfg, split)
    local, examples = _Skips(), []
    total = len(rows) if rows.order is not None else None
    bar = progress_bar(total=total, desc=f"loading {split} ({rows.split_name})", unit="utt", disable=not progress)
    for pos, row, source, name in rows.stream():
        got = decode_row(rows, pos, row, source, name)
        bar.update(1)
        if isinstance(got, BadSample):
            local.add(got.reason, str(got))
            bar.set_postfix(skipped=local.counter.total, refresh=False)
            continue
        examples.append(got)
        if budget.take(len(got.wave16k) / ENCODER_SR):
            break
    bar.close()
    return _finish(examples, local, skips, cfg, split, rows.split_name)


def _finish(examples: list, local: _Skips, skips: SkipCounter | None, cfg: DataConfig, split: str, split_name: str):
    if skips is not None:
        skips.update(local.counter)
    if local.counter.total:
        log.warning("skipped %d of %d samples of the %s split: %r; e.g. %s", local.counter.total,
                    local.counter.total + len(examples), split, local.counter, " | ".join(local.first))
    if not examples:
        why = (f"all {local.counter.total} rows were skipped ({local.counter!r}); e.g. {' | '.join(local.first)}"
               if local.counter.total else "it has no rows")
        raise DataSourceError(f"no usable examples in the {split} split ({split_name!r}) of {cfg.sources}: {why}")
    return examples


class Budget:
    """How much of a split to take: a count of usable examples and/or hours of input audio."""

    def __init__(self, samples: int | None, hours: float | None):
        self.samples, self.seconds = samples, None if hours is None else hours * 3600.0
        self.n, self.total = 0, 0.0

    @classmethod
    def of(cls, cfg: DataConfig, split: str) -> "Budget":
        return cls(cfg.eval_size, None) if split == "eval" else cls(cfg.max_samples, cfg.max_hours)

    def take(self, seconds: float) -> bool:
        """Count one more usable example; True when the budget is reached with it."""
        self.n += 1
        self.total += seconds
        return (self.samples is not None and self.n >= self.samples) or \
            (self.seconds is not None and self.total >= self.seconds)
