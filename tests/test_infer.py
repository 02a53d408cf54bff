"""`python -m s2s.infer` and `s2s.infer.Session`: speech in, speech out, offline or streamed, on tiny checkpoints.

The checkpoints are the generic tiny strategies (tests/core_fixtures.py) saved as `s2s.experiment.train`
saves them; the input is bench.latency's voiced sweep (the models are random: any sound will do)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bench.latency import voiced_sweep
from s2s.checkpoint import save_checkpoint
from s2s.errors import UserError
from s2s.generate import GenerationConfig
from s2s.infer import InputError, Session, main
from s2s.tokens import FRAME
from tests.core_fixtures import backbone_overrides, checkpoint_meta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# min_new_tokens: a random model may say end_of_speech at once; 5 frames at least, 6 at most
SHORT = GenerationConfig(max_new_tokens=42, min_new_tokens=35)
SHORT_KEYS = ["generation.max_new_tokens=42", "generation.min_new_tokens=35", "--no-progress"]
ATOL = 1e-5


def voice(seconds: float = 1.2, rate: int = 22050, channels: int = 1) -> np.ndarray:
    """The benchmark's voiced sweep: float32 [T], or [T, channels] copies."""
    wave = voiced_sweep(seconds, rate)
    return wave if channels == 1 else np.stack([wave] * channels, 1)


def save_tiny(model_and_cfg, path) -> str:
    cfg, model = model_and_cfg
    return str(save_checkpoint(path, model.trainable_state_dict(), checkpoint_meta(cfg, model)))


@pytest.fixture(scope="module")
def ckpt(tiny_model, tmp_path_factory):
    return save_tiny(tiny_model("adapter_stage1"), tmp_path_factory.mktemp("infer") / "adapter")


@pytest.fixture(scope="module")
def session(ckpt):
    return Session(ckpt, generation=SHORT)


@pytest.fixture
def wav(tmp_path):
    """INPUT.wav: stereo at 44.1 kHz (the command mixes down and resamples)."""
    path = tmp_path / "in.wav"
    sf.write(path, voice(rate=44100, channels=2), 44100)
    return str(path)


def test_run_is_seeded_and_the_stream_adds_up_to_it(session):
    wave = voice()
    first, again = session.run(wave, 22050), session.run(wave, 22050)
    assert session.sample_rate == 24000
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.wave, again.wave)
    frames = len(first.tokens) // FRAME
    assert frames >= 5 and len(first.wave) == 2048 * frames and first.audio_seconds == len(first.wave) / 24000
    assert first.time_to_first_audio_s > 0 and first.real_time_factor > 0 and first.tokens_per_second > 0

    chunks = list(session.stream(wave, 22050))
    streamed = session.last_result
    assert len(chunks) > 1 and len(chunks[0]) == 2048  # one frame per chunk by default
    assert torch.equal(streamed.tokens, first.tokens) and streamed.streamed
    torch.testing.assert_close(torch.cat(chunks), first.wave, atol=ATOL, rtol=0)
    torch.testing.assert_close(streamed.wave, first.wave, atol=ATOL, rtol=0)
    # the first chunk is ready before the whole answer
    assert 0 < streamed.time_to_first_audio_s < streamed.real_time_factor * streamed.audio_seconds

    seed = session.generation.seed
    session.generation.seed = seed + 1
    try:
        assert not torch.equal(session.run(wave, 22050).tokens, first.tokens)
    finally:
        session.generation.seed = seed


def test_any_rate_and_channel_layout_becomes_mono_16k(session):
    mono = session.input_wave(voice(rate=44100), 44100)
    assert len(mono) == pytest.approx(1.2 * 16000, abs=2)
    for layout in (voice(rate=44100, channels=2), voice(rate=44100, channels=2).T, torch.from_numpy(voice(rate=44100))):
        torch.testing.assert_close(session.input_wave(layout, 44100), mono)
    assert len(session.input_wave(voice(rate=8000), 8000)) == pytest.approx(len(mono), abs=2)


@pytest.mark.parametrize("wave, rate, reason", [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.zeros(16000, np.float32), 16000, "silent"),
    (np.full(16000, 1e-6, np.float32), 16000, "silent"),
    (np.array([0.1, np.nan] * 8000, np.float32), 16000, "nan"),
    (voice(seconds=31.0, rate=8000), 8000, "too_long"),
    (voice(), 0, "unreadable"),
])
def test_unusable_input_is_a_one_line_error(session, wave, rate, reason):
    with pytest.raises(InputError, match=reason) as e:
        session.run(wave, rate)
    assert "\n" not in str(e.value)


def test_command_writes_the_same_file_offline_and_streamed(ckpt, wav, tmp_path, capsys):
    out, streamed, report = tmp_path / "out.wav", tmp_path / "streamed.wav", tmp_path / "timings.json"
    assert main([ckpt, wav, "--out", str(out), "--json", str(report), *SHORT_KEYS]) == 0
    printed = capsys.readouterr().out
    assert "time to first audio" in printed and "real-time factor" in printed and "tokens/s" in printed
    assert main([ckpt, wav, "--out", str(streamed), "--stream", *SHORT_KEYS]) == 0
    a, rate = sf.read(out, dtype="float32")
    b, _ = sf.read(streamed, dtype="float32")
    assert rate == 24000 and sf.info(str(out)).subtype == "FLOAT" and len(a) >= 5 * 2048
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    summary = json.loads(report.read_text())
    assert summary["output"] == str(out) and summary["audio_seconds"] == len(a) / 24000 and summary["seed"] == 0
    assert {"time_to_first_audio_s", "real_time_factor", "tokens_per_second", "tokens"} <= set(summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "out.wav", "streamed.wav", "timings.json"]


def test_a_plain_pt_checkpoint_answers_like_its_directory(ckpt, wav, tmp_path, tiny_backbone_cfg):
    from s2s.card_layout import export_checkpoint

    pt = tmp_path / "card.pt"
    export_checkpoint(ckpt, pt)
    keys = [*SHORT_KEYS, *backbone_overrides(tiny_backbone_cfg)]
    assert main([ckpt, wav, "--out", str(tmp_path / "dir.wav"), *SHORT_KEYS]) == 0
    assert main([str(pt), wav, "--strategy", "adapter_stage1", "--out", str(tmp_path / "pt.wav"), *keys]) == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "dir.wav")[0], sf.read(tmp_path / "pt.wav")[0])


@pytest.mark.parametrize("case", ["unreadable", "empty", "silent", "too_long", "no_audio", "unknown_key",
                                  "bad_suffix", "no_folder"])
def test_command_errors_are_one_line_and_write_nothing(case, ckpt, tmp_path, capsys):
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    out.write_bytes(b"previous answer")  # must survive a failed run untouched
    extra = []
    if case == "unreadable":
        src.write_text("not audio")
    else:
        sf.write(src, {"empty": np.zeros(0), "silent": np.zeros(8000)}.get(case, voice(seconds=2.0)), 16000)
    extra = {"too_long": ["data.max_seconds=1"], "no_audio": ["generation.max_new_tokens=5"],
             "unknown_key": ["generation.temprature=0.5"]}.get(case, [])
    target = {"bad_suffix": tmp_path / "out.xyz", "no_folder": tmp_path / "missing" / "out.wav"}.get(case, out)
    assert main([ckpt, str(src), "--out", str(target), "--json", str(tmp_path / "t.json"), "--no-progress",
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    expected = {"unreadable": "unreadable", "empty": "empty", "silent": "silent", "too_long": "too_long",
                "no_audio": "no whole audio frame", "unknown_key": "temperature", "bad_suffix": ".xyz",
                "no_folder": "missing"}
    assert expected[case] in err
    assert out.read_bytes() == b"previous answer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "out.wav"]


def test_the_interleaved_strategy_answers_from_audio(tiny_model, tmp_path):
    session = Session(save_tiny(tiny_model("istlm_interleaved"), tmp_path / "istlm"), generation=SHORT)
    result = session.run(voice(), 22050)
    assert len(result.wave) >= 5 * 2048 and not session.needs_text
    torch.testing.assert_close(torch.cat(list(session.stream(voice(), 22050, text=""))), result.wave, atol=ATOL, rtol=0)


def test_a_strategy_that_reads_the_transcript_asks_for_it(tiny_backbone_cfg, tmp_path):
    from s2s.backbones import FrozenCore
    from s2s.experiment import build_strategy
    from s2s.experiment_config import build_config

    cfg = build_config("istlm_interleaved", "tiny", [*backbone_overrides(tiny_backbone_cfg),
                                                     "strategy.interleave_source=text", "strategy.lora_rank=2"])
    ckpt = save_tiny((cfg, build_strategy(cfg, FrozenCore(cfg.backbones))), tmp_path / "text")
    session = Session(ckpt, generation=SHORT)
    with pytest.raises(UserError, match="--text"):
        session.run(voice(), 22050)
    assert len(session.run(voice(), 22050, text="hola a todos").wave) >= 5 * 2048
