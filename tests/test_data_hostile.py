"""Hostile data at the data builder and the loader, beyond tests/test_data.py: non-UTF-8 and blank
transcripts, files on disk that are empty or not audio, audio cut off mid-stream, many channels,
odd sample rates, the 30-s limit at its edge, non-finite samples in decoded arrays, and the
`python -m s2s.data.synth` command line refusing bad arguments without touching existing files.
Every bad sample is a counted skip; every kept one is intact."""
from __future__ import annotations

import numpy as np
import pytest

from s2s.data.audio import BadSample, decode_audio
from s2s.data.loader import CODEC_SR, ENCODER_SR, SkipCounter
from s2s.data.synth import main as synth_main
from tests.test_data import load_all, save_dataset, tone, wav_bytes


def test_non_utf8_and_blank_transcripts_are_counted_skips(tmp_path):
    good = wav_bytes(tone(1.0))
    texts = [b"hola", b"\xff\xfe\xfd", "caf\u00e9".encode("latin-1"), b"   \n\t", b"ciao \xc3\xa8"]
    path = save_dataset(tmp_path / "texts", {"audio": [{"bytes": good, "path": f"{i}.wav"} for i in range(5)],
                                             "text": texts})
    skips = SkipCounter()
    kept = sorted(e.text for e in load_all(path, skips))
    assert kept == ["ciao \u00e8", "hola"]  # valid UTF-8 bytes are decoded, not dropped
    assert skips["missing_text"] == 3 and skips.total == 3


def test_files_on_disk_that_are_empty_or_not_audio(tmp_path):
    good = tmp_path / "good.wav"
    good.write_bytes(wav_bytes(tone(1.0)))
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("these are meeting notes, not audio\n" * 20)
    (tmp_path / "image.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    names = ["good.wav", "empty.wav", "notes.wav", "image.wav"]
    path = save_dataset(tmp_path / "files", {"audio": [{"bytes": None, "path": str(tmp_path / n)} for n in names],
                                             "text": names})  # save_to_disk embeds each file's bytes
    skips = SkipCounter()
    assert [e.text for e in load_all(path, skips)] == ["good.wav"]
    assert skips["unreadable"] == 3 and skips.total == 3


def test_audio_cut_off_keeps_what_is_there_and_a_bare_header_is_empty(tmp_path):
    full = wav_bytes(tone(2.0))
    cut = full[:44 + 2 * 16000]  # header + the first second of 16-bit samples: a download cut short
    path = save_dataset(tmp_path / "cut", {"audio": [{"bytes": cut, "path": "cut.wav"},
                                                     {"bytes": full[:44], "path": "header.wav"}],
                                           "text": ["cut", "header"]})
    skips = SkipCounter()
    kept = load_all(path, skips)
    assert [e.text for e in kept] == ["cut"] and len(kept[0].wave16k) == ENCODER_SR  # the intact first second
    assert skips["empty"] == 1 and skips.total == 1


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_any_sample_rate_is_resampled_to_both_model_rates(tmp_path, sr):
    audio = {"bytes": wav_bytes(tone(1.5, sr=sr), sr=sr), "path": "a.wav"}
    path = save_dataset(tmp_path / f"sr{sr}", {"audio": [audio], "text": ["x"]})
    (e,) = load_all(path)
    assert abs(len(e.wave16k) - 1.5 * ENCODER_SR) <= 1 and abs(len(e.target24k) - 1.5 * CODEC_SR) <= 1


def test_many_channels_are_mixed_to_mono(tmp_path):
    x = tone(1.0)
    six = np.stack([x, -x, x, -x, x, 0.5 * x], axis=1)  # 5.1: mean is 0.25 x
    path = save_dataset(tmp_path / "six", {"audio": [{"bytes": wav_bytes(six), "path": "a.wav"}], "text": ["x"]})
    (e,) = load_all(path)
    assert e.wave16k.ndim == 1 and len(e.wave16k) == ENCODER_SR
    assert abs(float(e.wave16k.abs().max()) - 0.075) < 0.005


def test_the_length_limit_at_its_edge(tmp_path):
    rows = {"audio": [{"bytes": wav_bytes(tone(s, sr=8000), sr=8000), "path": f"{s}.wav"} for s in (29.9, 30.2, 45.0)],
            "text": ["29.9", "30.2", "45"]}
    path = save_dataset(tmp_path / "long", rows)
    skips = SkipCounter()
    assert [e.text for e in load_all(path, skips)] == ["29.9"]
    assert skips["too_long"] == 2
    skips = SkipCounter()
    assert len(load_all(path, skips, max_seconds=60.0)) == 3 and skips.total == 0  # data.max_seconds raises it


@pytest.mark.parametrize("value, reason", [
    ({"array": np.array([0.1, np.nan, 0.2] * 1000), "sampling_rate": 16000}, "nan"),
    ({"array": np.array([0.1, np.inf, 0.2] * 1000), "sampling_rate": 16000}, "nan"),
    ({"array": np.full(3000, 0.1), "sampling_rate": 0}, "unreadable"),
    ({"array": np.full(3000, 0.1), "sampling_rate": None}, "unreadable"),
    ({"array": np.zeros((2, 3, 4)), "sampling_rate": 16000}, "unreadable"),
    ({"array": np.zeros(0), "sampling_rate": 16000}, "empty"),
])
def test_decoded_arrays_with_bad_values_are_counted(tmp_path, value, reason):
    from s2s.data.audio import prepare_waveform

    with pytest.raises(BadSample) as e:
        arr, sr = decode_audio(value, sample="row 3")
        prepare_waveform(arr, sr, sample="row 3")
    assert e.value.reason == reason and "row 3" in str(e.value)


# --- the data builder's command line --------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "need n >= 1"),
    (["--n", "-3"], "need n >= 1"),
    (["--langs", "xx,es", "--n", "2"], "no voices for languages ['xx']"),
    (["--langs", "", "--n", "2"], "no voices for languages"),
    (["--n", "2", "--min-words", "6", "--max-words", "2"], "min_words"),
    (["--n", "2", "--engine", "flite", "--langs", "es"], "flite speaks English only"),
])
def test_synth_cli_refuses_bad_arguments(tmp_path, capsys, args, message):
    assert synth_main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_synth_cli_never_overwrites_what_is_not_a_dataset(tmp_path, capsys, kind):
    out = tmp_path / "precious"
    if kind == "file":
        out.write_text("my notes")
    else:
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    assert synth_main(["--n", "2", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out.read_text() if kind == "file" else (out / "thesis.tex").read_text()) in ("my notes", "years of work")
