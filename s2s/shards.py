"""Prepared training data on disk: Arrow shards that training memory-maps instead of holding in RAM.

A split is prepared in shards of `cache.shard_rows` consecutive positions of its seeded order
(s2s/data/sources.py). A shard's Arrow file holds, for each usable row, the text, language,
speaker, the input audio as the source stored it (encoded bytes: decoded again per batch, in
DataLoader workers, to exactly the waveform the in-memory loader makes), the duration, the full
SNAC target as Orpheus ids (SNAC run in exact batches, `FrozenCore.encode_codes_batch`) and,
with `cache.cache_speech_states`, the Whisper states in float16. Its JSON sidecar, written after
it, marks it complete and lists the skipped rows with their reasons.

So a crash loses at most the shard being written; a rerun (or training, which prepares what is
missing) continues from the first incomplete shard; a larger budget reuses every finished shard.
Budgets (`data.max_samples`, `data.max_hours`, `data.eval_size`) and `data.dedup_frames` apply
when reading, so they never invalidate a shard.
"""
from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from s2s.backbones import FrozenCore, fingerprint
from s2s.data.audio import BadSample
from s2s.data.loader import (ENCODER_SR, Budget, DataConfig, SkipCounter, _finish, _Skips, audio_from_store,
                             decode_row, stored_audio)
from s2s.data.sources import SplitRows
from s2s.files import atomic_write
from s2s.prepare import CacheConfig, PreparedExample, target_tokens
from s2s.progress import progress_bar
from s2s.tokens import dedup_frames as drop_repeated_frames

FORMAT = 1  # bump when the shard layout changes: old shards are then never read
SCHEMA = pa.schema([("pos", pa.int64()), ("key", pa.string()), ("text", pa.string()), ("language", pa.string()),
                    ("speaker", pa.string()), ("seconds", pa.float32()), ("audio", pa.large_binary()),
                    ("audio_sr", pa.int32()), ("tokens", pa.list_(pa.int32())), ("frames", pa.int32()),
                    ("frames_dedup", pa.int32()), ("states", pa.large_binary()), ("state_frames", pa.int32())])


@dataclass
class ShardInfo:
    """The sidecar of one complete shard: positions [start, end) of the order were read."""
    start: int
    end: int
    rows: int  # usable rows stored
    seconds: float
    skipped: list  # [[pos, reason, message], ...]
    exhausted: bool  # the split ends in this shard


def split_dir(data: DataConfig, cache: CacheConfig, core: FrozenCore, split: str) -> Path:
    """The directory of one split's shards: named by everything that decides their content."""
    rows_from = {k: getattr(data, k) for k in ("sources", "audio_column", "text_column", "language_column",
                                                "speaker_column", "target_audio_column", "split_seed",
                                                "max_seconds", "streaming")}
    rows_from["split"] = data.train_split if (split == "train" or data.eval_split is None) else data.eval_split
    rows_from["held_out"] = data.eval_size if data.eval_split is None else None
    rows_from["shuffle_buffer"] = data.shuffle_buffer if data.streaming else None
    rows_from["local_sources"] = [fingerprint(s.rpartition(":")[0] if ":" in s and not Path(s).is_dir() else s)
                                  for s in data.sources]
    ident = {"format": FORMAT, "rows": rows_from, "shard_rows": cache.shard_rows, "snac": fingerprint(core.cfg.snac),
             "audio_offset": core.layout.audio_offset,
             "whisper": fingerprint(core.cfg.whisper) if cache.cache_speech_states else None}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache.dir) / "shards" / f"{split}-{digest}"


class _RowDecoder(Dataset):
    """Position -> decoded row, in DataLoader workers: (pos, Example | None, reason, message, blob, sr).
    A BadSample travels as its reason and message (the exception itself does not pickle)."""

    def __init__(self, rows: SplitRows):
        self.rows = rows

    def __getitem__(self, pos: int):
        return _decoded(self.rows, pos, *self.rows.get(pos))


def _decoded(rows: SplitRows, pos: int, row: dict, source, name: str):
    got = decode_row(rows, pos, row, source, name)
    if isinstance(got, BadSample):
        return pos, None, got.reason, str(got), b"", 0
    return (pos, got, "", "", *stored_audio(row[rows.cfg.audio_column], got.wave16k))


def _decoded_rows(rows: SplitRows, start: int, num_workers: int):
    """Every decoded row from position `start` on, in order; random-access splits decode in workers."""
    if rows.order is not None and num_workers > 0:
        yield from DataLoader(_RowDecoder(rows), sampler=range(start, len(rows)), batch_size=None,
                              num_workers=num_workers, collate_fn=lambda x: x, prefetch_factor=8)
    else:
        for pos, row, source, name in rows.stream(start):
            yield _decoded(rows, pos, row, source, name)


def _write_shard(path: Path, decoded: list, core: FrozenCore, cache: CacheConfig, start: int, end: int,
                 exhausted: bool) -> ShardInfo:
    good = [d for d in decoded if d[1] is not None]
    examples = [d[1] for d in good]
    tokens = target_tokens([ex.target24k for ex in examples], core) if examples else []
    states = [None] * len(examples)
    if cache.cache_speech_states:
        states = [s for i in range(0, len(examples), 16)
                  for s in core.encode_speech([ex.wave16k for ex in examples[i:i + 16]])]
    table = pa.table({
        "pos": [d[0] for d in good], "key": [ex.key for ex in examples], "text": [ex.text for ex in examples],
        "language": [ex.language for ex in examples], "speaker": [ex.speaker for ex in examples],
        "seconds": [len(ex.wave16k) / ENCODER_SR for ex in examples], "audio": [d[4] for d in good],
        "audio_sr": [d[5] for d in good], "tokens": [t.to(torch.int32).numpy() for t in tokens],
        "frames": [len(t) // 7 for t in tokens], "frames_dedup": [len(drop_repeated_frames(t)) // 7 for t in tokens],
        "states": [s.half().numpy().tobytes() if s is not None else None for s in states],
        "state_frames": [len(s) if s is not None else 0 for s in states]}, schema=SCHEMA)

    def write(tmp: Path):
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            writer.write_table(table)
    atomic_write(path.with_suffix(".arrow"), write)
    info = ShardInfo(start, end, len(good), float(sum(table.column("seconds").to_pylist())),
                     [[d[0], d[2], d[3]] for d in decoded if d[1] is None], exhausted)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(info.__dict__)))
    return info


def _read_info(path: Path) -> ShardInfo | None:
    """The sidecar of a complete shard, or None (missing, damaged, or its Arrow file is gone)."""
    try:
        info = ShardInfo(**json.loads(path.with_suffix(".json").read_text()))
        return info if path.with_suffix(".arrow").is_file() else None
    except (OSError, ValueError, TypeError):
        return None


def _open_table(path: Path) -> pa.Table:
    """A shard's table, memory-mapped: reading a row touches only that row's pages."""
    return pa.ipc.open_file(pa.memory_map(str(path.with_suffix(".arrow")))).read_all()


class PreparedSplit(Dataset):
    """A prepared split read from its shards: `split[i]` is a PreparedExample, decoded on access.

    Holds only the shard paths and per-row offsets; the rows stay in the memory-mapped files.
    Pickles as paths (DataLoader workers open their own maps).
    """

    def __init__(self, shards: list[tuple[Path, int]], dedup: bool, max_seconds: float, keep=None):
        self.shards, self.dedup, self.max_seconds = shards, dedup, max_seconds
        self.offsets = np.cumsum([0] + [n for _, n in shards])
        self._keep = keep  # a TemporaryDirectory to keep alive (cache.enabled=false)
        self._tables: dict[int, pa.Table] = {}

    def __getstate__(self):
        return {**self.__dict__, "_tables": {}, "_keep": None}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _table(self, j: int) -> pa.Table:
        if j not in self._tables:
            self._tables[j] = _open_table(self.shards[j][0])
        return self._tables[j]

    def _column(self, name: str) -> np.ndarray:
        return np.concatenate([self._table(j).column(name).to_numpy()[:n] for j, (_, n) in enumerate(self.shards)]
                              or [np.zeros(0)])

    def lengths(self) -> np.ndarray:
        """[len] target tokens of every row (after dedup when it applies): what batches pad."""
        return 7 * self._column("frames_dedup" if self.dedup else "frames").astype(np.int64)

    def seconds(self) -> np.ndarray:
        """[len] input audio duration of every row, in seconds."""
        return self._column("seconds").astype(np.float64)

    def hours(self) -> float:
        return float(self.seconds().sum()) / 3600

    def __getitem__(self, i: int) -> PreparedExample:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of a prepared split of {len(self)}")
        j = int(np.searchsorted(self.offsets, i, side="right") - 1)
        t, r = self._table(j), i - int(self.offsets[j])
        col = lambda name: t.column(name)[r]  # noqa: E731
        tokens = torch.from_numpy(col("tokens").values.to_numpy(zero_copy_only=False).astype(np.int64))
        if self.dedup:
            tokens = drop_repeated_frames(tokens)
        states = wave = None
        if col("state_frames").as_py():
            states = torch.from_numpy(np.frombuffer(col("states").as_py(), dtype=np.float16).copy()).float()
            states = states.view(col("state_frames").as_py(), -1)
        else:
            wave = audio_from_store(col("audio").as_py(), col("audio_sr").as_py(), self.max_seconds, col("key").as_py())
        return PreparedExample(col("key").as_py(), col("text").as_py(), col("language").as_py(), tokens, states, wave)


def prepare_split(data: DataConfig, cache: CacheConfig, core: FrozenCore, split: str, skips: SkipCounter | None = None,
                  progress: bool = True) -> PreparedSplit:
    """Prepare what is missing of `split` ("train" or "eval") up to its budget -> its PreparedSplit.

    Skipped rows up to the last one used are added to `skips`. Raises DataSourceError when the
    sources cannot be read or nothing usable is left.
    """
    rows = SplitRows(data, split)
    keep = None
    if cache.enabled:
        directory = split_dir(data, cache, core, split)
        directory.mkdir(parents=True, exist_ok=True)
    else:  # nothing outlives the run
        keep = tempfile.TemporaryDirectory(prefix="s2s-shards-")
        directory = Path(keep.name)
    budget, local = Budget.of(data, split), _Skips()
    bar, in_hours = _bar(data, split, rows, progress)
    shards, stream, next_pos, k = [], None, None, 0
    while True:
        path = directory / f"shard-{k:06d}"
        start = k * cache.shard_rows
        info = _read_info(path)
        if info is None:
            if stream is None or next_pos != start:
                stream = _decoded_rows(rows, start, data.num_workers)
            decoded = list(itertools.islice(stream, cache.shard_rows))
            next_pos = start + len(decoded)
            end_known = rows.order is not None and next_pos >= len(rows)
            info = _write_shard(path, decoded, core, cache, start, next_pos,
                                end_known or len(decoded) < cache.shard_rows)
            del decoded
            _release_freed_memory()
        used, stop = _take(path, info, budget, bar, in_hours)
        last = info.end if not stop else _position_of(path, used)
        for pos, reason, message in info.skipped:
            if pos <= last:
                local.add(reason, message)
        bar.set_postfix(skipped=local.counter.total, refresh=False)
        if used:
            shards.append((path, used))
        if stop or info.exhausted:
            break
        k += 1
    bar.close()
    _finish(shards, local, skips, data, split, rows.split_name)
    return PreparedSplit(shards, data.dedup_frames, data.max_seconds, keep)


def _release_freed_memory() -> None:
    """Hand the heap that preparation freed back to the OS (glibc keeps it otherwise).

    SNAC's activations come and go in many sizes; glibc serves most of them from its heap and keeps
    what they free, fragmented, so without this each shard can leave the process a little bigger and
    a run that prepares 8x the data peaks higher (tests/test_constant_memory.py)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _take(path: Path, info: ShardInfo, budget: Budget, bar, in_hours: bool) -> tuple[int, bool]:
    """(rows of this shard within the budget, whether the budget ends in it)."""
    if not info.rows:
        return 0, False
    for n, seconds in enumerate(_open_table(path).column("seconds").to_pylist(), start=1):
        bar.update(seconds / 3600 if in_hours else 1)
        if budget.take(seconds):
            return n, True
    return info.rows, False


def _position_of(path: Path, used: int) -> int:
    return int(_open_table(path).column("pos")[used - 1].as_py())


def _bar(data: DataConfig, split: str, rows: SplitRows, progress: bool):
    """(bar, counts hours) in the unit of the budget, so that its ETA is the time to the end of preparation."""
    budget = Budget.of(data, split)
    desc = f"prepare {split} ({rows.split_name})"
    if budget.seconds is not None and budget.samples is None:
        return progress_bar(total=budget.seconds / 3600, desc=desc, unit="h", disable=not progress,
                            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h of audio "
                                       "[{elapsed}<{remaining}{postfix}]"), True
    total = budget.samples if budget.samples is not None else (len(rows) if rows.order is not None else None)
    return progress_bar(total=total, desc=desc, unit="utt", disable=not progress), False
