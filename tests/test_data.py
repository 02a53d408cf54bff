"""Data layer: synthetic dataset builder, decoding/validation, loading, splits."""

import io
import shutil

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch

from s2s.data import loader as loader_mod
from s2s.data.audio import BadSample, check_text, decode_audio, prepare_waveform, resample
from s2s.errors import DataError
from s2s.data.loader import CODEC_SR, ENCODER_SR, DataConfig, DataSourceError, SkipCounter, load_examples
from s2s.data.synth import synthesize_dataset


def wav_bytes(x, sr=16000, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.asarray(x), sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def tone(seconds, sr=16000, freq=220.0, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([x, -0.5 * x], axis=1) if channels == 2 else x


def save_dataset(path, rows: dict, audio_cols=("audio",)):
    """Save `rows` as the train split (plus a 1-row test split, so no row is held out)."""
    ds = datasets.Dataset.from_dict(rows)
    for col in audio_cols:
        ds = ds.cast_column(col, datasets.Audio())
    datasets.DatasetDict(train=ds, test=ds.select([0])).save_to_disk(str(path))
    return str(path)


def load_all(path, skips=None, **kw):
    """Every usable row of the train split of a `save_dataset` dataset."""
    return load_examples(DataConfig(sources=[str(path)], eval_split="test", **kw), "train", skips, progress=False)


def cfg_for(path, **kw) -> DataConfig:
    return DataConfig(sources=[str(path)], **kw)


# ---------------------------------------------------------------- synth


def test_synth_roundtrip(varied_dataset):
    synth_dataset = varied_dataset
    ds = datasets.load_from_disk(str(synth_dataset))
    assert len(ds) == 12 and {"audio", "text", "language", "voice", "speed", "pitch"} <= set(ds.column_names)
    assert len(set(ds["text"])) == 12
    assert len(set(ds["voice"])) > 3  # voices vary
    examples = load_examples(cfg_for(synth_dataset, eval_size=2), "train", progress=False)
    assert len(examples) == 10
    assert {e.language for e in examples} == {"es", "it"}
    for e in examples:
        seconds = len(e.wave16k) / ENCODER_SR
        assert 1.0 <= seconds <= 4.0
        # same utterance at both rates (no target column): 24 kHz is 1.5x the 16 kHz length
        assert abs(len(e.target24k) - 1.5 * len(e.wave16k)) <= 2
        assert e.wave16k.dtype == e.target24k.dtype == torch.float32
        assert e.wave16k.ndim == 1 and float(e.wave16k.abs().max()) > 0.01
        assert len(e.key) == 20 and e.text.endswith(".")
    assert len({e.key for e in examples}) == len(examples)


def test_synth_is_deterministic(tmp_path, synth_dataset):
    again = synthesize_dataset(tmp_path / "again", ["es", "it"], n=12, seed=0, progress=False, style="miniature",
                               min_words=4, max_words=5)
    a, b = datasets.load_from_disk(str(synth_dataset)), datasets.load_from_disk(str(again))
    assert a["text"] == b["text"] and a["voice"] == b["voice"]
    other = synthesize_dataset(tmp_path / "other", ["es", "it"], n=12, seed=1, progress=False, style="miniature",
                               min_words=4, max_words=5)
    assert datasets.load_from_disk(str(other))["text"] != a["text"]


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")
def test_flite_english(tmp_path):
    out = synthesize_dataset(tmp_path / "en", ["en"], n=2, engine="flite", progress=False)
    raw = datasets.load_from_disk(str(out)).cast_column("audio", datasets.Audio(decode=False))
    assert sf.info(io.BytesIO(raw[0]["audio"]["bytes"])).samplerate == 16000  # flite's native rate
    examples = load_examples(cfg_for(out, eval_size=1), "train", progress=False)
    assert len(examples) == 1 and examples[0].language == "en" and len(examples[0].wave16k) > ENCODER_SR


def test_synth_missing_binary_names_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        synthesize_dataset(tmp_path / "x", ["es"], n=1, progress=False)
    with pytest.raises(DataError, match="English only"):
        synthesize_dataset(tmp_path / "x", ["es"], n=1, engine="flite", progress=False)


# ---------------------------------------------------------------- audio helpers


def test_decode_forms_and_errors(tmp_path):
    data = wav_bytes(tone(0.5))
    (tmp_path / "a.wav").write_bytes(data)
    for value in (data, str(tmp_path / "a.wav"), {"bytes": data, "path": "a.wav"},
                  {"bytes": None, "path": str(tmp_path / "a.wav")}, {"array": tone(0.5), "sampling_rate": 16000}):
        arr, sr = decode_audio(value)
        assert arr.shape == (1, 8000) and sr == 16000 and arr.dtype == np.float32
    for bad in (b"garbage" * 50, str(tmp_path / "missing.wav"), 3, {"path": None, "bytes": None}):
        with pytest.raises(BadSample) as e:
            decode_audio(bad, sample="row 7")
        assert e.value.reason == "unreadable" and "row 7" in str(e.value)
    with pytest.raises(BadSample, match="missing_text"):
        check_text(b"\xff\xfe")
    assert check_text(" hola ") == "hola"
    assert resample(np.ones(1600, np.float32), 16000, 24000).shape == (2400,)
    assert prepare_waveform(np.ones((2, 10), np.float32), 16000).shape == (10,)


# ---------------------------------------------------------------- loader: bad samples


def test_bad_samples_skipped_and_counted(tmp_path):
    nan_wave = tone(1.0).astype(np.float32)
    nan_wave[100] = np.nan
    good = wav_bytes(tone(1.0))
    rows = [
        ("valid", good),
        ("corrupt", b"definitely not audio " * 30),
        ("truncated", good[:20]),
        ("zero length", wav_bytes(np.zeros(0))),
        ("silent", wav_bytes(np.zeros(16000))),
        ("nan", wav_bytes(nan_wave, subtype="FLOAT")),
        ("too long", wav_bytes(tone(31.0, sr=8000), sr=8000)),
        ("stereo", wav_bytes(tone(1.0, channels=2))),
        ("eight khz", wav_bytes(tone(1.0, sr=8000), sr=8000)),
        ("", good),
        (None, good),
    ]
    path = save_dataset(tmp_path / "bad", {
        "audio": [{"bytes": b, "path": f"{i}.wav"} for i, (_, b) in enumerate(rows)],
        "text": [t for t, _ in rows],
    })
    skips = SkipCounter()
    kept = {e.text: e for e in load_all(path, skips)}
    assert set(kept) == {"valid", "stereo", "eight khz"}
    assert dict(skips.items()) == {"unreadable": 2, "empty": 1, "silent": 1, "nan": 1, "too_long": 1,
                                   "missing_text": 2}
    assert skips.total == 8 and skips.as_dict()["skipped/silent"] == 1 and skips.as_dict()["skipped/total"] == 8
    stereo = kept["stereo"]
    assert stereo.wave16k.ndim == 1 and len(stereo.wave16k) == 16000
    # mono = mean of (x, -0.5 x) = 0.25 x: proves channels were averaged, not one channel taken
    assert abs(float(stereo.wave16k.abs().max()) - 0.075) < 0.005
    assert len(kept["eight khz"].wave16k) == 16000 and len(kept["eight khz"].target24k) == 24000


def test_nothing_usable_raises(tmp_path):
    path = save_dataset(tmp_path / "allbad", {
        "audio": [{"bytes": wav_bytes(np.zeros(16000)), "path": "s.wav"},
                  {"bytes": b"junk" * 100, "path": "j.wav"}, {"bytes": b"junk" * 99, "path": "k.wav"}],
        "text": ["a", "b", "c"],
    })
    with pytest.raises(DataSourceError, match=r"no usable examples.*allbad.*silent=1.*") as e:
        load_all(path)
    assert "unreadable" in str(e.value)


def test_missing_column_names_columns(synth_dataset):
    with pytest.raises(DataSourceError) as e:
        load_examples(cfg_for(synth_dataset, text_column="transcript"), "train", progress=False)
    msg = str(e.value)
    assert "'transcript'" in msg and "'text'" in msg and "'language'" in msg and "data.text_column" in msg


def test_source_errors(tmp_path, monkeypatch):
    with pytest.raises(DataSourceError, match="no such directory"):
        load_examples(DataConfig(sources=["./does/not/exist"]), progress=False)

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(loader_mod.datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match=r"(?s)org/name.*config 'spanish'.*local directory.*s2s\.data\.synth"):
        load_examples(DataConfig(sources=["org/name:spanish"]), progress=False)


# ---------------------------------------------------------------- loader: splits, languages, targets


def test_holdout_deterministic_and_disjoint(synth_dataset):
    def keys(split, seed=0):
        return [e.key for e in load_examples(cfg_for(synth_dataset, eval_size=4, split_seed=seed), split,
                                             progress=False)]
    train, ev = keys("train"), keys("eval")
    assert len(ev) == 4 and len(train) == 8 and not set(train) & set(ev)
    assert keys("train") == train and keys("eval") == ev
    assert set(keys("eval", seed=1)) != set(ev)
    capped = load_examples(cfg_for(synth_dataset, eval_size=4, max_samples=3), "train", progress=False)
    assert [e.key for e in capped] == train[:3]


def test_explicit_eval_split_and_language_fallback(tmp_path):
    train = datasets.Dataset.from_dict({"audio": [{"bytes": wav_bytes(tone(1.0, freq=f)), "path": "x.wav"}
                                                  for f in (200, 300, 400)], "transcript": ["a", "b", "c"]})
    test = datasets.Dataset.from_dict({"audio": [{"bytes": wav_bytes(tone(1.0, freq=500)), "path": "y.wav"}],
                                       "transcript": ["d"]})
    path = tmp_path / "dd"
    datasets.DatasetDict(train=train, test=test).cast_column("audio", datasets.Audio()).save_to_disk(str(path))
    cfg = DataConfig(sources=[f"{path}:spanish"], text_column="transcript", eval_split="test")
    assert [e.text for e in load_examples(cfg, "eval", progress=False)] == ["d"]
    tr = load_examples(cfg, "train", progress=False)
    assert sorted(e.text for e in tr) == ["a", "b", "c"] and {e.language for e in tr} == {"es"}
    plain = DataConfig(sources=[str(path)], text_column="transcript", eval_split="test")
    assert load_examples(plain, "eval", progress=False)[0].language == "unknown"
    with pytest.raises(DataSourceError, match=r"no split 'dev'.*\['test', 'train'\]"):
        load_examples(DataConfig(sources=[str(path)], text_column="transcript", eval_split="dev"), "eval",
                      progress=False)


def test_target_audio_column(tmp_path):
    path = save_dataset(tmp_path / "pairs", {
        "audio": [{"bytes": wav_bytes(tone(1.0)), "path": f"q{i}.wav"} for i in range(3)],
        "reply": [{"bytes": wav_bytes(tone(2.0, sr=22050, freq=440), sr=22050), "path": f"r{i}.wav"}
                  for i in range(2)] + [{"bytes": b"broken" * 50, "path": "r2.wav"}],
        "text": ["uno", "dos", "tres"],
    }, audio_cols=("audio", "reply"))
    skips = SkipCounter()
    ex = load_all(path, skips, target_audio_column="reply")
    assert sorted(e.text for e in ex) == ["dos", "uno"] and skips["unreadable"] == 1  # broken reply skipped
    for e in ex:
        assert len(e.wave16k) == ENCODER_SR and len(e.target24k) == 2 * CODEC_SR  # 1 s input, 2 s reply
    without = load_all(path)
    assert {e.key for e in without}.isdisjoint(e.key for e in ex)  # the target is part of the key
