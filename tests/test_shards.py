"""Prepared shards (s2s/shards.py): equal to the in-memory path, crash-safe and resumable, exact
skip counts from DataLoader workers, budgets in samples and hours, streaming from a local
save_to_disk source, and SNAC batched exactly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from s2s import shards as shards_mod
from s2s.data.loader import ENCODER_SR, DataConfig, SkipCounter, load_examples
from s2s.prepare import CacheConfig, prepare
from s2s.shards import prepare_split
from tests.test_data import save_dataset, tone, wav_bytes


def cache(tmp_path, **kw) -> CacheConfig:
    return CacheConfig(dir=str(tmp_path / "cache"), **{"shard_rows": 4, **kw})


def test_snac_in_batches_gives_the_codes_of_one_utterance_at_a_time(tiny_core, synth_examples):
    train, _ = synth_examples
    waves = [ex.target24k for ex in train] + [train[0].target24k[:-100], train[0].target24k[:2048 * 3]]
    batched = tiny_core.encode_codes_batch(waves, max_seconds=60.0)  # batches on a CPU too
    for wave, codes in zip(waves, batched):
        for a, b in zip(tiny_core.encode_codes(wave), codes):
            assert torch.equal(a, b)


def test_zero_padding_to_a_longer_neighbour_changes_only_the_last_frames(tiny_core, synth_examples):
    """Why encode_codes_batch groups by frame count: padded further, an utterance's codes change, and only
    at its end (the encoder's receptive field reaching into the padding)."""
    train, _ = synth_examples
    longest = max(len(ex.target24k) for ex in train)
    changed_at = []
    for ex in train:
        alone = tiny_core.encode_codes(ex.target24k)[0]
        padded = torch.zeros(longest + 2048 * 4)
        padded[:len(ex.target24k)] = ex.target24k
        together = tiny_core.encode_codes(padded)[0][:len(alone)]
        diff = (alone != together).nonzero().flatten()
        if len(diff):
            changed_at.append(len(alone) - int(diff.min()))
    assert changed_at, "padding changed no code: then batching needs no grouping at all"
    assert max(changed_at) <= 4  # coarse frames from the end


def test_shards_equal_the_in_memory_path(tiny_core, synth_dataset, tmp_path):
    data = DataConfig(sources=[str(synth_dataset)], eval_size=4, dedup_frames=True)
    split = prepare_split(data, cache(tmp_path), tiny_core, "train", progress=False)
    examples = load_examples(data, "train", progress=False)
    memory = prepare(examples, tiny_core, CacheConfig(enabled=False), progress=False, dedup_frames=True)
    assert len(split) == len(memory) == 8
    for i, want in enumerate(memory):
        got = split[i]
        assert (got.key, got.text, got.language) == (want.key, want.text, want.language)
        assert torch.equal(got.speech_tokens, want.speech_tokens)
        assert torch.allclose(got.states, want.states, atol=2e-2, rtol=1e-2)  # stored in float16
    assert list(split.lengths()) == [len(m.speech_tokens) for m in memory]
    assert split.hours() == pytest.approx(sum(len(e.wave16k) for e in examples) / ENCODER_SR / 3600)
    # Without cached states the input audio is decoded back to exactly the loader's waveform.
    plain = prepare_split(data, cache(tmp_path, cache_speech_states=False), tiny_core, "train", progress=False)
    for i, ex in enumerate(examples):
        assert plain[i].states is None and torch.equal(plain[i].wave16k, ex.wave16k)


def test_a_crashed_preparation_continues_where_it_stopped(tiny_core, synth_dataset, tmp_path, monkeypatch):
    data = DataConfig(sources=[str(synth_dataset)], eval_size=2)  # 10 train rows: shards of 4, 4, 2
    written, crash = [], {"armed": True}
    real = shards_mod._write_shard

    def crash_on_the_second(path, *args, **kwargs):
        written.append(path.name)
        if crash["armed"] and len(written) == 2:
            raise RuntimeError("power cut")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shards_mod, "_write_shard", crash_on_the_second)
    with pytest.raises(RuntimeError, match="power cut"):
        prepare_split(data, cache(tmp_path), tiny_core, "train", progress=False)
    directory = shards_mod.split_dir(data, cache(tmp_path), tiny_core, "train")
    assert sorted(p.name for p in directory.iterdir()) == ["shard-000000.arrow", "shard-000000.json"]
    written.clear()
    crash["armed"] = False
    resumed = prepare_split(data, cache(tmp_path), tiny_core, "train", progress=False)
    assert written == ["shard-000001", "shard-000002"]  # the finished shard was not redone
    fresh = prepare_split(data, CacheConfig(enabled=False, shard_rows=4), tiny_core, "train", progress=False)
    assert [resumed[i].key for i in range(len(resumed))] == [fresh[i].key for i in range(len(fresh))]
    assert all(torch.equal(resumed[i].speech_tokens, fresh[i].speech_tokens) for i in range(len(fresh)))
    written.clear()
    prepare_split(data, cache(tmp_path), tiny_core, "train", progress=False)
    assert written == []  # complete: a later run only reads


def _hostile(tmp_path, n=24):
    """n rows of 0.5-2 s tones; rows 3, 8, 9 and 17 are broken (unreadable, silent, no text, NaN)."""
    rng = np.random.default_rng(0)
    audio = [{"bytes": wav_bytes(tone(0.5 + 1.5 * rng.random(), freq=200 + 20 * i)), "path": f"{i}.wav"}
             for i in range(n)]
    texts = [f"frase {i}" for i in range(n)]
    audio[3] = {"bytes": b"not audio at all" * 10, "path": "3.wav"}
    audio[8] = {"bytes": wav_bytes(np.zeros(16000)), "path": "8.wav"}
    texts[9] = "   "
    audio[17] = {"bytes": wav_bytes(np.full(8000, np.nan), subtype="FLOAT"), "path": "17.wav"}
    return save_dataset(tmp_path / "hostile", {"audio": audio, "text": texts})


@pytest.mark.parametrize("workers", [0, 2])
def test_skips_are_counted_exactly_whichever_worker_meets_them(tiny_core, tmp_path, workers):
    path = _hostile(tmp_path)
    data = DataConfig(sources=[path], eval_split="test", num_workers=workers)
    want = SkipCounter()
    kept = load_examples(data, "train", want, progress=False)
    got = SkipCounter()
    split = prepare_split(data, cache(tmp_path, shard_rows=5), tiny_core, "train", got, progress=False)
    assert got.counts == want.counts and got.total == 4
    assert [split[i].key for i in range(len(split))] == [e.key for e in kept]
    # A budget counts the skips it passed over, not those after its last row.
    for budget in (3, 10):
        want, got = SkipCounter(), SkipCounter()
        capped = dataclasses.replace(data, max_samples=budget)
        kept = load_examples(capped, "train", want, progress=False)
        split = prepare_split(capped, cache(tmp_path, shard_rows=5), tiny_core, "train", got, progress=False)
        assert len(split) == len(kept) == budget and got.counts == want.counts


def test_max_hours_takes_the_shortest_prefix_that_reaches_it(tiny_core, synth_dataset, tmp_path):
    data = DataConfig(sources=[str(synth_dataset)], eval_size=2)
    everything = prepare_split(data, cache(tmp_path), tiny_core, "train", progress=False)
    seconds = everything.seconds()
    budget_h = (seconds[:4].sum() + seconds[4] / 2) / 3600  # reached by the 5th utterance
    capped = prepare_split(dataclasses.replace(data, max_hours=budget_h), cache(tmp_path), tiny_core, "train",
                           progress=False)
    assert len(capped) == 5 and capped.hours() >= budget_h
    assert [capped[i].key for i in range(5)] == [everything[i].key for i in range(5)]
    in_memory = load_examples(dataclasses.replace(data, max_hours=budget_h), "train", progress=False)
    assert [e.key for e in in_memory] == [capped[i].key for i in range(5)]


def test_streaming_a_local_copy_reads_it_as_from_the_hub(tiny_core, synth_dataset, tmp_path):
    data = DataConfig(sources=[str(synth_dataset)], eval_size=3, streaming=True, shuffle_buffer=4, split_seed=1)
    train = load_examples(data, "train", progress=False)
    evals = load_examples(data, "eval", progress=False)
    assert len(train) == 9 and len(evals) == 3
    assert not {e.key for e in train} & {e.key for e in evals}  # disjoint
    everything = {e.key for e in load_examples(DataConfig(sources=[str(synth_dataset)], eval_size=1), "train",
                                               progress=False) + load_examples(
        DataConfig(sources=[str(synth_dataset)], eval_size=1), "eval", progress=False)}
    assert {e.key for e in train + evals} == everything  # every row once
    again = [e.key for e in load_examples(data, "train", progress=False)]
    assert again == [e.key for e in train]  # the seeded buffer: the same order every time
    other = [e.key for e in load_examples(dataclasses.replace(data, split_seed=2), "train", progress=False)]
    assert other != again
    split = prepare_split(data, cache(tmp_path), tiny_core, "train", progress=False)
    assert [split[i].key for i in range(len(split))] == [e.key for e in train]
    capped = prepare_split(dataclasses.replace(data, max_samples=4), cache(tmp_path), tiny_core, "train",
                           progress=False)
    assert [capped[i].key for i in range(4)] == [e.key for e in train[:4]]


def test_a_prepared_split_pickles_as_paths(tiny_core, synth_dataset, tmp_path):
    import pickle

    split = prepare_split(DataConfig(sources=[str(synth_dataset)], eval_size=2), cache(tmp_path), tiny_core,
                          "train", progress=False)
    split[0]
    blob = pickle.dumps(split)
    assert len(blob) < 4096  # paths and offsets, not the rows
    back = pickle.loads(blob)
    assert back[3].key == split[3].key and torch.equal(back[3].speech_tokens, split[3].speech_tokens)
