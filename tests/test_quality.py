"""Speech-quality metrics (evaluation/metrics/quality.py): DNSMOS OVRL equal to speechmos's own per-
utterance figures, batched; DNSMOS ranking clean speech above noisy speech; the UTMOS load and scoring
path (with RANDOM weights: no real checkpoint is reachable offline, so UTMOS values are not checked
for meaning, only for plumbing); the config errors; the empty-wave convention; loading once."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from evaluation.metrics.base import Utterance, resampled
from evaluation.metrics import quality
from evaluation.metrics.quality import MOS_DNSMOS, MOS_UTMOS, QualityConfig, dnsmos_windows
from s2s.errors import UserError

SPEECH = {  # name -> synthesizer command line (output path appended where {out} is)
    "fox": ["flite", "-voice", "slt", "-t", "the quick brown fox jumps over the lazy dog", "-o", "{out}"],
    "stella": ["flite", "-voice", "rms", "-t", "please call stella and ask her to bring these things with her "
               "from the store", "-o", "{out}"],
    "hello": ["flite", "-voice", "slt", "-t", "hello", "-o", "{out}"],
    "espeak": ["espeak-ng", "-v", "en", "-w", "{out}", "a speech quality metric for the registry"],
}


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """name -> a synthesized utterance as a 16 kHz float32 tensor [T]."""
    for tool in ("flite", "espeak-ng"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root, out = tmp_path_factory.mktemp("speech"), {}
    for name, cmd in SPEECH.items():
        path = root / f"{name}.wav"
        subprocess.run([a.format(out=path) for a in cmd], check=True, capture_output=True)
        wave, sr = sf.read(path, dtype="float32")
        out[name] = resampled(wave, sr, 16000)
    return out


def at_24k(wave16k):
    return Utterance(hypothesis_wave=resampled(wave16k, 16000, 24000), sample_rate=24000)


def test_dnsmos_batched_equals_speechmos_per_utterance(speech):
    from speechmos import dnsmos

    s = speech
    waves = [s["fox"][:35200],  # 2.2 s: doubled 3 times to 17.6 s, 8 hops, of which speechmos drops the last
             s["espeak"],  # 2.4 s: doubled twice to 9.7 s, one window
             torch.cat([s["fox"], s["stella"], s["fox"]])]  # 10.8 s: longer than one window, no repetition
    utts = [at_24k(w) for w in waves]
    # batch_size 3: batches cut across utterances, and the first utterance spans several batches.
    ours = MOS_DNSMOS.score(utts, QualityConfig(batch_size=3))
    for u, value in zip(utts, ours):
        audio = resampled(u.hypothesis_wave, 24000, 16000).clamp(-1, 1).numpy()  # what the metric feeds
        assert value == pytest.approx(float(dnsmos.run(audio, 16000)["ovrl_mos"]), abs=1e-5)
    assert all(1.0 <= v <= 5.0 for v in ours) and len(set(ours)) == len(ours)
    # Hop 7 of the first clip (17.6 s: 8 hops) is one sample short in speechmos (float rounding) and it
    # drops it: the equality above holds only because it is dropped here too.
    assert len(dnsmos_windows(resampled(utts[0].hypothesis_wave, 24000, 16000).numpy())) == 7
    # The personalized model is speechmos's too (one window: the espeak clip).
    [p] = MOS_DNSMOS.score(utts[1:2], QualityConfig(dnsmos_personalized=True))
    audio = resampled(utts[1].hypothesis_wave, 24000, 16000).clamp(-1, 1).numpy()
    assert p == pytest.approx(float(dnsmos.run(audio, 16000, model_type="dnsmos_personalized")["ovrl_mos"]), abs=1e-5)
    assert abs(p - ours[1]) > 1e-3


def test_dnsmos_ranks_clean_speech_above_noisy(speech):
    rng = np.random.default_rng(0)
    clean = [speech["stella"], speech["espeak"]]  # one window each
    noisy = [w + torch.from_numpy(rng.standard_normal(len(w)).astype(np.float32)) * w.pow(2).mean().sqrt()
             for w in clean]  # white noise at 0 dB SNR
    values = MOS_DNSMOS.score([at_24k(w) for w in clean + noisy], QualityConfig())
    for c, n in zip(values[:2], values[2:]):
        assert c > n + 0.5, values


def test_dnsmos_empty_wave_scores_the_floor_and_model_loads_once(speech, monkeypatch):
    import onnxruntime

    built = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: built.append(a) or real(*a, **k))
    quality._dnsmos.cache_clear()
    utts = [Utterance(hypothesis_wave=torch.zeros(0), sample_rate=24000), at_24k(speech["espeak"])]
    first = MOS_DNSMOS.score(utts, QualityConfig())
    n_sessions = len(built)
    second = MOS_DNSMOS.score(utts, QualityConfig())
    assert n_sessions > 0 and len(built) == n_sessions  # the second call built no session
    assert first == second and first[0] == quality.EMPTY_SCORE == 1.0 and first[1] != 1.0


@pytest.fixture(scope="module")
def random_utmos(tmp_path_factory):
    """A directory holding utmos_state_dict.pt with RANDOM (seeded) UTMOS weights: the real file's
    architecture and size (~103M parameters, 410 MB), not its scores."""
    from utmos_pytorch.utmos_torch import UTMOSModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("utmos")
    torch.save(UTMOSModel().state_dict(), root / "utmos_state_dict.pt")
    yield root
    (root / "utmos_state_dict.pt").unlink()


@pytest.fixture
def no_hub(monkeypatch):
    import utmos_pytorch.utmos_torch as ut

    def refuse():
        raise AssertionError("UTMOS weights were about to be downloaded")
    monkeypatch.setattr(ut, "download_utmos_ckpt", refuse)


def test_utmos_random_weights_score_through_config(speech, random_utmos, no_hub, monkeypatch):
    import utmos_pytorch

    built = []
    real = utmos_pytorch.UTMOSScoreTorch
    monkeypatch.setattr(utmos_pytorch, "UTMOSScoreTorch", lambda **k: built.append(real(**k)) or built[-1])
    quality._utmos.cache_clear()
    utts = [at_24k(speech["hello"]), at_24k(speech["espeak"][:24000]),
            Utterance(hypothesis_wave=torch.zeros(0), sample_rate=24000),
            Utterance(hypothesis_wave=torch.randn(300) * 0.1, sample_rate=24000)]  # 200 samples at 16 kHz
    first = MOS_UTMOS.score(utts, QualityConfig(utmos_model=str(random_utmos), device="cpu"))
    # The .pt file itself is accepted too, and is the same (cached) model.
    second = MOS_UTMOS.score(utts, QualityConfig(utmos_model=str(random_utmos / "utmos_state_dict.pt"), device="cpu"))
    assert len(built) == 1
    assert first == second and all(isinstance(v, float) and np.isfinite(v) for v in first)
    assert first[2:] == [1.0, 1.0]  # empty, and too short for wav2vec2's first convolution
    assert first[0] != first[1]
    # The value is the package's own score of the 16 kHz wave, alone (a batch of one).
    wave16k = resampled(utts[1].hypothesis_wave, 24000, 16000)
    assert first[1] == pytest.approx(float(built[0].score(wave16k)[0]), abs=1e-6)


@pytest.mark.parametrize("setting", ["", "{tmp}/nowhere", "{tmp}"])  # unset, no such path, dir without the file
def test_utmos_missing_model_is_a_one_line_user_error(setting, tmp_path, no_hub):
    quality._utmos.cache_clear()
    with pytest.raises(UserError) as e:
        MOS_UTMOS.score([Utterance(hypothesis_wave=torch.zeros(16000), sample_rate=16000)],
                        QualityConfig(utmos_model=setting.format(tmp=tmp_path)))
    msg = str(e.value)
    assert "quality.utmos_model" in msg and "utmos_state_dict.pt" in msg and "\n" not in msg


def test_utmos_file_that_is_not_a_utmos_state_dict_is_a_user_error(tmp_path, no_hub):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "utmos_state_dict.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for path, why in [(tmp_path, "not a UTMOS state dict"), (tmp_path / "garbage.pt", "cannot read")]:
        quality._utmos.cache_clear()
        with pytest.raises(UserError, match=why) as e:
            MOS_UTMOS.score([Utterance(hypothesis_wave=torch.zeros(16000), sample_rate=16000)],
                            QualityConfig(utmos_model=str(path)))
        assert "quality.utmos_model" in str(e.value) and "\n" not in str(e.value)


def test_specs():
    assert MOS_DNSMOS.keys() == ["mos_dnsmos_mean", "mos_dnsmos_std"]
    assert MOS_UTMOS.keys() == ["mos_utmos_mean", "mos_utmos_std"]
    assert MOS_DNSMOS.higher_is_better and MOS_UTMOS.higher_is_better
    assert MOS_DNSMOS.default and not MOS_UTMOS.default  # UTMOS needs weights the user supplies
    assert MOS_DNSMOS.needs == MOS_UTMOS.needs == ("hypothesis_wave",)
    assert MOS_DNSMOS.title(QualityConfig(dnsmos_personalized=True)) == "MOS (DNSMOS OVRL), speechmos ONNX, personalized"
