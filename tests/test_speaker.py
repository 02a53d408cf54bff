"""Speaker similarity (evaluation/metrics/speaker.py) on synthetic speech: espeak-ng and flite voices
stand in for speakers. Orderings asserted here were checked to hold with margins of >= 0.06 (the
same voice scores >= 0.8, another voice <= 0.74 with resemblyzer)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from evaluation.metrics import speaker as S
from evaluation.metrics.base import Utterance, evaluate, resampled
from s2s.errors import UserError

SR = 24000
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Please call Stella and ask her to bring these things."]
# (engine, voice): four flite voices and two espeak-ng ones, male and female.
VOICES = [("flite", "slt"), ("flite", "kal16"), ("flite", "awb"), ("flite", "rms"), ("espeak", "en+m1"),
          ("espeak", "en+f3")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def no_remembered_embeddings():
    """Each test embeds its waves itself (the process-wide memo would hide a batching difference)."""
    S._EMBEDDINGS.clear()
    yield
    S._EMBEDDINGS.clear()


def _read24k(path) -> torch.Tensor:
    wave, sr = sf.read(str(path), dtype="float32")
    return resampled(torch.from_numpy(wave), sr, SR)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[tuple[str, int], torch.Tensor]:
    """(voice, sentence index) -> a 24 kHz wave of 2-3.5 s."""
    out, waves = tmp_path_factory.mktemp("voices"), {}
    for engine, voice in VOICES:
        for i, text in enumerate(SENTENCES):
            path = out / f"{voice}_{i}.wav"
            cmd = (["flite", "-voice", voice, "-t", text, "-o", str(path)] if engine == "flite"
                   else ["espeak-ng", "-v", voice, "-w", str(path), text])
            subprocess.run(cmd, check=True, capture_output=True)
            waves[(voice, i)] = _read24k(path)
    return waves


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    """norm -> a tiny random WavLMForXVector directory with that feature-encoder norm."""
    root = tmp_path_factory.mktemp("wavlm")
    return {norm: S.build_tiny_wavlm(root / norm, feat_extract_norm=norm) for norm in ("layer", "group")}


def _mp3_round_trip(wave: torch.Tensor, tmp_path) -> torch.Tensor:
    src, mp3, back = tmp_path / "in.wav", tmp_path / "lossy.mp3", tmp_path / "back.wav"
    sf.write(src, wave.numpy(), SR)
    for args in (["-i", str(src), "-b:a", "24k", str(mp3)], ["-i", str(mp3), "-ar", str(SR), str(back)]):
        subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], check=True)
    return _read24k(back)


def _pair(ref, hyp) -> Utterance:
    return Utterance(reference_wave=ref, hypothesis_wave=hyp, sample_rate=SR)


def test_same_speaker_after_lossy_round_trip_beats_other_speakers(speech, tmp_path):
    voices = [v for _, v in VOICES]
    pairs = [_pair(speech[(v, 0)], speech[(v, 0)]) for v in voices]
    pairs += [_pair(speech[(v, 0)], _mp3_round_trip(speech[(v, 0)], tmp_path)) for v in voices]
    pairs += [_pair(speech[(v, 0)], speech[(o, 1)]) for v in voices for o in voices if o != v]
    sims = S.speaker_similarity(pairs, S.SpeakerConfig(backend="resemblyzer", device="cpu"))
    n = len(voices)
    identical, lossy, others = sims[:n], sims[n:2 * n], np.reshape(sims[2 * n:], (n, n - 1))
    assert identical == pytest.approx([1.0] * n, abs=1e-6)
    for v, same, other in zip(voices, lossy, others):
        assert same > 0.8 and same > max(other), (v, same, other)
    assert max(sims) <= 1.0 and min(sims) >= -1.0


def test_same_speaker_other_sentence_beats_other_speakers(speech):
    voices = [v for _, v in VOICES]
    pairs = [_pair(speech[(v, 0)], speech[(v, 1)]) for v in voices]
    pairs += [_pair(speech[(v, 0)], speech[(o, 0)]) for v in voices for o in voices if o != v]
    sims = S.speaker_similarity(pairs, S.SpeakerConfig(device="cpu", batch_size=5))
    same, others = sims[:len(voices)], np.reshape(sims[len(voices):], (len(voices), -1))
    for v, s, other in zip(voices, same, others):
        assert s > max(other), (v, s, other)


def test_resemblyzer_figures_are_its_own_d_vectors_and_preprocessing(speech):
    """Batching partials across waves changes nothing: each figure is the cosine of resemblyzer's own
    `embed_utterance(preprocess_wav(wave16k))`. Its preprocessing makes the figure ignore trailing
    silence and most of a gain change (without it: 0.91 and 0.63 here)."""
    from resemblyzer import preprocess_wav

    x, y = speech[("awb", 1)], speech[("en+f3", 0)]
    pairs = [_pair(x, y), _pair(y, speech[("rms", 1)]), _pair(x, torch.cat([x, torch.zeros(2 * SR)])),
             _pair(x, x * 0.05)]
    encoder = S.load_backend("resemblyzer", "", "cpu")
    embed = lambda w: encoder.embed_utterance(preprocess_wav(resampled(w, SR, 16000).numpy())).astype(np.float64)
    expected = [float(embed(u.reference_wave) @ embed(u.hypothesis_wave)) for u in pairs[:2]]
    for batch_size in (1, 3):
        S._EMBEDDINGS.clear()
        sims = S.speaker_similarity(pairs, S.SpeakerConfig(device="cpu", batch_size=batch_size))
        assert sims[:2] == pytest.approx(expected, abs=1e-5)
        assert sims[2] > 0.99 and sims[3] > 0.85, sims


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_wavlm_tiny_batched_equals_one_at_a_time(speech, tiny_wavlm, norm):
    """Waves of 0.12-3.5 s: the shortest is under the TDNN's receptive field (zero-padded up to it).
    With padding, transformers' pooling would let padded frames in (its TDNN lengths ignore the
    dilation), and a GroupNorm encoder would see the padding: either breaks this equality."""
    waves = [speech[("slt", 0)][: int(0.12 * SR)], speech[("kal16", 1)][: SR // 2], speech[("awb", 0)][: int(1.3 * SR)],
             speech[("rms", 1)], speech[("en+m1", 0)], speech[("en+f3", 1)]]
    pairs = [_pair(waves[i], waves[(i + 1) % len(waves)]) for i in range(len(waves))] + [_pair(waves[3], waves[3])]
    cfg = lambda bs: S.SpeakerConfig(backend="wavlm", model=str(tiny_wavlm[norm]), device="cpu", batch_size=bs)
    one = S.speaker_similarity(pairs, cfg(1))
    S._EMBEDDINGS.clear()
    batched = S.speaker_similarity(pairs, cfg(4))
    assert all(np.isfinite(one)) and all(-1.0 <= v <= 1.0 for v in one)
    assert one[-1] == pytest.approx(1.0, abs=1e-5)
    assert max(one[:-1]) - min(one[:-1]) > 1e-3  # the values differ, so equality below means something
    assert batched == pytest.approx(one, abs=1e-5)


@pytest.mark.parametrize("model", ["{tmp}/no_such_model", "./no/such/dir", "~/no_such_wavlm_dir"])
def test_missing_local_model_dir_is_a_one_line_user_error(tmp_path, model):
    cfg = S.SpeakerConfig(backend="wavlm", model=model.format(tmp=tmp_path))
    with pytest.raises(UserError) as e:
        S.speaker_similarity([_pair(torch.ones(SR) * 0.1, torch.ones(SR) * 0.1)], cfg)
    assert "\n" not in str(e.value) and "speaker.model" in str(e.value) and "not a directory" in str(e.value)


def test_hub_id_not_cached_offline_says_to_pass_a_directory(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = S.SpeakerConfig(backend="wavlm", model="no-such-org/no-such-speaker-model")
    with pytest.raises(UserError) as e:
        S.speaker_similarity([_pair(torch.ones(SR) * 0.1, torch.ones(SR) * 0.1)], cfg)
    assert "\n" not in str(e.value) and "speaker.model=DIR" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)


@pytest.mark.parametrize("backend", ["resemblyzer", "wavlm"])
def test_empty_short_or_silent_waves_score_zero(speech, tiny_wavlm, backend):
    x = speech[("slt", 0)]
    pairs = [_pair(x, torch.zeros(0)), _pair(x, x[: int(0.09 * SR)]), _pair(x, torch.zeros(SR)),
             _pair(torch.zeros(0), x), _pair(x, x[: int(0.15 * SR)])]
    cfg = S.SpeakerConfig(backend=backend, model=str(tiny_wavlm["layer"]) if backend == "wavlm" else "", device="cpu")
    sims = S.speaker_similarity(pairs, cfg)
    assert sims[:4] == [0.0] * 4
    assert np.isfinite(sims[4]) and sims[4] != 0.0  # 0.15 s is scored (zero-padded for the TDNN)


def test_model_loads_once_per_process(speech, tiny_wavlm, monkeypatch):
    import transformers

    calls, real = [], transformers.WavLMForXVector.from_pretrained
    monkeypatch.setattr(transformers.WavLMForXVector, "from_pretrained",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    S.load_backend.cache_clear()
    cfg = S.SpeakerConfig(backend="wavlm", model=str(tiny_wavlm["layer"]), device="cpu")
    pairs = [_pair(speech[("slt", 0)], speech[("awb", 0)])]
    assert S.speaker_similarity(pairs, cfg) == S.speaker_similarity(pairs, cfg)
    assert len(calls) == 1
    S.load_backend.cache_clear()


def test_metric_spec_scores_through_evaluate(speech, tiny_wavlm):
    cfg = S.SpeakerConfig(backend="wavlm", model=str(tiny_wavlm["layer"]), device="cpu")
    pairs = [_pair(speech[("slt", 0)], speech[("awb", 0)]), _pair(speech[("rms", 0)], speech[("rms", 0)])]
    values, figures = evaluate([S.SPK_SIM], pairs, {"speaker": cfg})
    assert values["spk_sim"][1] == pytest.approx(1.0, abs=1e-5)
    assert figures["spk_sim_mean"] == pytest.approx(np.mean(values["spk_sim"]))
    assert set(figures) == {"spk_sim_mean", "spk_sim_std"} and S.SPK_SIM.higher_is_better
    assert S.SPK_SIM.detail(None) == "resemblyzer GE2E d-vector"
    assert S.SPK_SIM.detail(cfg) == f"WavLM x-vector {tiny_wavlm['layer']}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="speaker.device"):
        S.speaker_similarity([_pair(torch.ones(SR), torch.ones(SR))], S.SpeakerConfig(device="cuda"))


def test_each_wave_is_embedded_once_across_calls(speech, monkeypatch):
    """The scorer compares the same references with the generated speech, the round trip and the floor:
    each distinct wave is embedded once, and the figures are those of a fresh computation."""
    x, y, z = speech[("slt", 0)], speech[("awb", 1)], speech[("rms", 0)]
    cfg = S.SpeakerConfig(device="cpu")
    fresh = [S.speaker_similarity([_pair(x, y)], cfg), S.speaker_similarity([_pair(x, z)], cfg)]
    S._EMBEDDINGS.clear()
    embedded, real = [], S._embed_resemblyzer
    monkeypatch.setattr(S, "_embed_resemblyzer", lambda enc, waves, bs: embedded.extend(waves) or real(enc, waves, bs))
    first, second = S.speaker_similarity([_pair(x, y)], cfg), S.speaker_similarity([_pair(x, z)], cfg)
    assert len(embedded) == 3  # x, y, then z only
    assert [first, second] == [pytest.approx(f, abs=1e-6) for f in fresh]
