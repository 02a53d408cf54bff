"""Load (text, 16 kHz encoder audio, 24 kHz codec target) examples from any `datasets` dataset.

Sources are local directories written by `save_to_disk` or hub ids ("org/name[:config]").
Audio columns are read with `Audio(decode=False)` so that decoding happens here, where a bad
sample is skipped and counted (see `SkipCounter`) instead of raising from inside a library.
"""

import hashlib
import logging
import os
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from s2s.errors import DataError
from s2s.data.audio import REASONS, BadSample, check_text, decode_audio, prepare_waveform, resample
from s2s.progress import progress_bar

log = logging.getLogger(__name__)

ENCODER_SR = 16_000  # Whisper encoder input
CODEC_SR = 24_000  # SNAC 24 kHz model

# A source's config name is its language when there is no language column; MLS names its
# configs by language, mapped here to the ISO codes the synthetic set uses.
_CONFIG_LANGUAGE = {"spanish": "es", "italian": "it", "english": "en", "french": "fr", "german": "de",
                    "portuguese": "pt", "polish": "pl", "dutch": "nl"}


class DataSourceError(DataError):
    """A source that cannot be opened or lacks a split/column the config asks for."""


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
    eval_size: int = field(default=32, metadata={"range": (1, None)})
    split_seed: int = 0
    # Cap on usable examples per split, counted after filtering, taken in the seeded order.
    max_samples: int | None = field(default=None, metadata={"range": (1, None)})
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


def _parse_source(spec: str) -> tuple[str, str | None, bool]:
    """"path_or_id[:config]" -> (path_or_id, config, is_local)."""
    if os.path.isdir(spec):
        return spec, None, True
    path, _, config = spec.rpartition(":")
    if path and os.path.isdir(path):  # a local copy labelled with its config, "data/mls_es:spanish"
        return path, config, True
    if spec.startswith(("/", ".", "~")):
        raise DataSourceError(f"data source {spec!r}: no such directory")
    return (path, config or None, False) if path else (spec, None, False)


def _open_split(spec: str, split: str, single_ok: bool) -> tuple[datasets.Dataset, str | None]:
    """Open one split of a source -> (dataset, config name). `single_ok`: a plain saved
    Dataset (no splits) may stand for this split."""
    path, config, local = _parse_source(spec)
    if not local:
        try:
            return datasets.load_dataset(path, config, split=split), config
        except Exception as e:
            raise DataSourceError(
                f"data source {spec!r} is not a local directory and loading split {split!r} of {path!r}"
                f"{f' (config {config!r})' if config else ''} from the Hugging Face hub failed: "
                f"{type(e).__name__}: {e}\nOffline? Pass a local directory written by save_to_disk, or build "
                "one with: python -m s2s.data.synth --langs es,it --n 240 --out data/synth") from None
    try:
        obj = datasets.load_from_disk(path)
    except Exception as e:
        raise DataSourceError(f"data source {spec!r}: not a dataset written by save_to_disk "
                              f"({type(e).__name__}: {e})") from None
    if isinstance(obj, datasets.DatasetDict):
        if split not in obj:
            raise DataSourceError(f"data source {spec!r} has no split {split!r}; it has {sorted(obj)}. "
                                  "Set data.train_split / data.eval_split")
        return obj[split], config
    if not single_ok:
        raise DataSourceError(f"data source {spec!r} is a single Dataset without splits, so it has no "
                              f"split {split!r}; set data.eval_split=null to hold out data.eval_size rows")
    return obj, config


def _check_columns(ds: datasets.Dataset, spec: str, cfg: DataConfig) -> datasets.Dataset:
    """Fail early on missing columns; keep only the needed ones; let us decode audio ourselves."""
    wanted = {"audio_column": cfg.audio_column, "text_column": cfg.text_column,
              "target_audio_column": cfg.target_audio_column}
    for key, col in wanted.items():
        if col is not None and col not in ds.column_names:
            raise DataSourceError(f"data source {spec!r} has no column {col!r} (data.{key}); its columns are "
                                  f"{ds.column_names}. Set data.{key}=<one of them>")
    keep = [c for c in (*wanted.values(), cfg.language_column, cfg.speaker_column)
            if c is not None and c in ds.column_names]
    ds = ds.select_columns(list(dict.fromkeys(keep)))
    for col in (cfg.audio_column, cfg.target_audio_column):
        if col is not None and isinstance(ds.features[col], datasets.Audio):
            ds = ds.cast_column(col, datasets.Audio(decode=False))
    return ds


def _label(row: dict, ds: datasets.Dataset, col: str | None, default: str) -> str:
    """A text or ClassLabel column's value as a string; `default` when the column is missing or empty."""
    value = row.get(col) if col is not None else None
    if isinstance(ds.features.get(col), datasets.ClassLabel) and value is not None:
        value = ds.features[col].int2str(value)
    if isinstance(value, int) and not isinstance(value, bool):  # e.g. an integer speaker id
        value = str(value)
    return value.strip() if isinstance(value, str) and value.strip() else default


def _make_example(row: dict, ds: datasets.Dataset, cfg: DataConfig, name: str, language: str) -> Example:
    """Validate and convert one row; raises BadSample."""
    text = check_text(row[cfg.text_column], name)
    array, sr = decode_audio(row[cfg.audio_column], name)
    wave = prepare_waveform(array, sr, max_seconds=cfg.max_seconds, sample=name)
    h = hashlib.sha1(wave.tobytes() + f"|{sr}|{text}|".encode())
    if cfg.target_audio_column is not None:
        tname = f"{name} ({cfg.target_audio_column})"
        tarray, tsr = decode_audio(row[cfg.target_audio_column], tname)
        target = prepare_waveform(tarray, tsr, max_seconds=cfg.max_seconds, sample=tname)
        h.update(target.tobytes() + f"|{tsr}".encode())
    else:
        target, tsr = wave, sr
    return Example(key=h.hexdigest()[:20], text=text, language=_label(row, ds, cfg.language_column, language),
                   wave16k=resample(wave, sr, ENCODER_SR), target24k=resample(target, tsr, CODEC_SR),
                   speaker=_label(row, ds, cfg.speaker_column, ""))


def load_examples(cfg: DataConfig, split: str = "train", skips: SkipCounter | None = None,
                  progress: bool = True) -> list[Example]:
    """Load, validate and resample every usable sample of `split` ("train" or "eval").

    Rows from all sources are visited in one seeded order (`cfg.split_seed`), so sources mix
    and `max_samples` takes a random subset. With `eval_split=None` the first `eval_size`
    rows of that order over the train split are the eval set and the rest are train:
    deterministic and disjoint. Bad samples are skipped and added to `skips`.
    Returns a list of `Example` (wave16k [T16] at 16 kHz, target24k [T24] at 24 kHz), all in
    memory: ~0.16 MB per second of audio, fine for thousands of short utterances.
    Raises DataSourceError (a UserError) for unusable sources/columns/splits and when nothing
    usable is left.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    held_out = cfg.eval_split is None
    split_name = cfg.train_split if (split == "train" or held_out) else cfg.eval_split
    sources = []  # (spec, dataset, default language)
    for spec in cfg.sources:
        ds, config = _open_split(spec, split_name, single_ok=(split_name == cfg.train_split))
        default = _CONFIG_LANGUAGE.get(config.lower(), config) if config else "unknown"
        sources.append((spec, _check_columns(ds, spec, cfg), default))

    # One seeded permutation over (source, row) pairs of the whole split.
    pairs = np.array([(s, r) for s, (_, ds, _) in enumerate(sources) for r in range(len(ds))]).reshape(-1, 2)
    order = pairs[np.random.default_rng(cfg.split_seed).permutation(len(pairs))]
    if held_out:
        if len(order) <= cfg.eval_size:
            raise DataSourceError(f"the {cfg.train_split!r} split of {cfg.sources} has {len(order)} rows; holding out "
                             f"data.eval_size={cfg.eval_size} leaves none for training. Lower data.eval_size "
                             "or set data.eval_split")
        order = order[:cfg.eval_size] if split == "eval" else order[cfg.eval_size:]

    local, examples, first_errors = SkipCounter(), [], []
    bar = progress_bar(order, desc=f"loading {split} ({split_name})", unit="utt", disable=not progress)
    for s, r in bar:
        spec, ds, default = sources[s]
        name = f"{spec}[{split_name}][{r}]"
        try:
            examples.append(_make_example(ds[int(r)], ds, cfg, name, default))
        except BadSample as e:
            local.add(e.reason)
            if len(first_errors) < 3:
                first_errors.append(str(e))
            bar.set_postfix(skipped=local.total, refresh=False)
        if cfg.max_samples is not None and len(examples) >= cfg.max_samples:
            break
    bar.close()
    if skips is not None:
        skips.update(local)
    if local.total:
        log.warning("skipped %d of %d samples of the %s split: %r; e.g. %s", local.total,
                    local.total + len(examples), split, local, " | ".join(first_errors))
    if not examples:
        why = (f"all {local.total} rows were skipped ({local!r}); e.g. {' | '.join(first_errors)}"
               if local.total else "it has no rows")
        raise DataSourceError(f"no usable examples in the {split} split ({split_name!r}) of {cfg.sources}: {why}")
    return examples
