"""The rows of one split of the data sources, in one seeded order: random access or streamed.

A source is a local directory written by `save_to_disk` or a hub id "org/name[:config]". Every
row of a split has a position in one order over ALL sources (`data.split_seed`), so sources mix
and a budget (`data.max_samples`, `data.max_hours`) takes a random subset:

- random access (default): a seeded permutation over (source, row) pairs; any position can be
  read at any time, from the memory-mapped Arrow files of `datasets`;
- streamed (`data.streaming=true`): `datasets` streaming mode, each source shuffled by a seeded
  buffer (`data.shuffle_buffer`) and the sources mixed by a seeded draw proportional to what each
  has left; nothing is downloaded beyond what is read. Positions can only be read in order.

With `data.eval_split=null` the first `data.eval_size` positions of the train split's order are
the eval rows and the rest are the train rows: deterministic and disjoint, in both modes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import datasets
import numpy as np

from s2s.errors import DataError

# A source's config name is its language when there is no language column; MLS names its
# configs by language, mapped here to the ISO codes the synthetic set uses.
_CONFIG_LANGUAGE = {"spanish": "es", "italian": "it", "english": "en", "french": "fr", "german": "de",
                    "portuguese": "pt", "polish": "pl", "dutch": "nl"}


class DataSourceError(DataError):
    """A source that cannot be opened or lacks a split/column the config asks for."""


@dataclass
class Source:
    """One opened source split: `ds` has only the needed columns, audio left undecoded."""
    spec: str
    ds: datasets.Dataset | datasets.IterableDataset
    language: str  # the default when the row has no language column
    rows: int | None  # None: a stream of unknown length


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


def _open_split(spec: str, split: str, single_ok: bool, streaming: bool):
    """Open one split of a source -> (dataset, config name). `single_ok`: a plain saved
    Dataset (no splits) may stand for this split."""
    path, config, local = _parse_source(spec)
    if not local:
        try:
            return datasets.load_dataset(path, config, split=split, streaming=streaming), config
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
        obj = obj[split]
    elif not single_ok:
        raise DataSourceError(f"data source {spec!r} is a single Dataset without splits, so it has no "
                              f"split {split!r}; set data.eval_split=null to hold out data.eval_size rows")
    # A local copy streams like the hub: the same code path reads both.
    return (obj.to_iterable_dataset(num_shards=max(1, min(64, len(obj) // 1000))) if streaming else obj), config


def _check_columns(ds, spec: str, cfg):
    """Fail early on missing columns; keep only the needed ones; let the loader decode audio itself."""
    wanted = {"audio_column": cfg.audio_column, "text_column": cfg.text_column,
              "target_audio_column": cfg.target_audio_column}
    names = ds.column_names if ds.column_names is not None else list(ds.features or {})
    for key, col in wanted.items():
        if col is not None and col not in names:
            raise DataSourceError(f"data source {spec!r} has no column {col!r} (data.{key}); its columns are "
                                  f"{names}. Set data.{key}=<one of them>")
    keep = [c for c in (*wanted.values(), cfg.language_column, cfg.speaker_column) if c is not None and c in names]
    ds = ds.select_columns(list(dict.fromkeys(keep)))
    for col in (cfg.audio_column, cfg.target_audio_column):
        if col is not None and isinstance((ds.features or {}).get(col), datasets.Audio):
            ds = ds.cast_column(col, datasets.Audio(decode=False))
    return ds


class SplitRows:
    """The rows of `split` ("train" or "eval") of `cfg.sources` (a DataConfig), in the seeded order.

    `len()` is the number of rows (random access only); `get(pos)` -> (row, source) reads position
    `pos` (random access only); `stream(start)` yields (pos, row, source) from `start` on, in
    either mode. `name(pos, source)` names a row in messages.
    """

    def __init__(self, cfg, split: str):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        self.cfg, self.split = cfg, split
        self.held_out = cfg.eval_split is None
        self.split_name = cfg.train_split if (split == "train" or self.held_out) else cfg.eval_split
        self.sources = []
        for spec in cfg.sources:
            ds, config = _open_split(spec, self.split_name, cfg.train_split == self.split_name, cfg.streaming)
            default = _CONFIG_LANGUAGE.get(config.lower(), config) if config else "unknown"
            rows = None if cfg.streaming else len(ds)
            self.sources.append(Source(spec, _check_columns(ds, spec, cfg), default, rows))
        self.order = None if cfg.streaming else self._permutation()

    def _permutation(self) -> np.ndarray:
        """[n, 2] (source, row) pairs of this split in the seeded order."""
        pairs = np.array([(s, r) for s, src in enumerate(self.sources) for r in range(src.rows)],
                         dtype=np.int64).reshape(-1, 2)
        order = pairs[np.random.default_rng(self.cfg.split_seed).permutation(len(pairs))]
        if self.held_out:
            self._check_hold_out(len(order))
            order = order[:self.cfg.eval_size] if self.split == "eval" else order[self.cfg.eval_size:]
        return order

    def _check_hold_out(self, n: int) -> None:
        if n <= self.cfg.eval_size:
            raise DataSourceError(f"the {self.cfg.train_split!r} split of {self.cfg.sources} has {n} rows; holding "
                                  f"out data.eval_size={self.cfg.eval_size} leaves none for training. Lower "
                                  "data.eval_size or set data.eval_split")

    def __len__(self) -> int:
        if self.order is None:
            raise TypeError("a streamed split has no length until it has been read")
        return len(self.order)

    def name(self, pos: int, source: Source, row_index: int | None = None) -> str:
        where = f"[{row_index}]" if row_index is not None else f"[position {pos}]"
        return f"{source.spec}[{self.split_name}]{where}"

    def get(self, pos: int) -> tuple[dict, Source, str]:
        """(row, its source, its name) at position `pos` of the order (random access only)."""
        s, r = self.order[pos]
        source = self.sources[s]
        return source.ds[int(r)], source, self.name(pos, source, int(r))

    def stream(self, start: int = 0) -> Iterator[tuple[int, dict, Source, str]]:
        """(pos, row, source, name) for every position from `start` on, in order."""
        if self.order is not None:
            for pos in range(start, len(self.order)):
                yield (pos, *self.get(pos))
            return
        skip = self.cfg.eval_size if (self.held_out and self.split == "train") else 0
        stop = self.cfg.eval_size if (self.held_out and self.split == "eval") else None
        seen = 0
        for pos, (row, source) in enumerate(self._mixed_stream()):
            seen += 1
            if stop is not None and pos >= stop:
                return
            if pos - skip >= start:
                yield pos - skip, row, source, self.name(pos - skip, source)
        if self.held_out and self.split == "train":
            self._check_hold_out(seen)

    def _mixed_stream(self) -> Iterator[tuple[dict, Source]]:
        """Every source's shuffled stream, mixed by a seeded draw weighted by the rows each has left
        (by the split sizes the dataset card declares; equal weights when it declares none)."""
        rng = np.random.default_rng(self.cfg.split_seed)
        iters, left = [], []
        for i, src in enumerate(self.sources):
            iters.append(iter(src.ds.shuffle(seed=self.cfg.split_seed + i, buffer_size=self.cfg.shuffle_buffer)))
            info = getattr(src.ds, "info", None)
            splits = getattr(info, "splits", None) or {}
            declared = getattr(splits.get(self.split_name), "num_examples", None) if splits else None
            left.append(float(declared) if declared else 1.0)
        live = list(range(len(iters)))
        while live:
            weights = np.array([max(left[i], 1.0) for i in live])
            i = live[int(rng.choice(len(live), p=weights / weights.sum()))]
            try:
                row = next(iters[i])
            except StopIteration:
                live.remove(i)
                continue
            left[i] -= 1
            yield row, self.sources[i]
