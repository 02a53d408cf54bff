"""Speech quality as predicted mean opinion scores (MOS, 1..5, higher is better) of the hypothesis
wave alone: no reference, no text. Neither predictor judges whether the words are right (WER does) or
whether the voice matches (speaker similarity does); both are trained on human ratings of other
material than this model's output, so read them as relative figures between systems, not as MOS.

- `mos_dnsmos`: DNSMOS P.835 OVRL (Reddy et al. 2022), the overall score of a CNN trained to
  predict ITU-T P.835 ratings (SIG: speech signal, BAK: background noise, OVRL: overall) of
  noise-suppression outputs. On TTS it rates artefacts and noisiness. Backend: the ONNX models
  shipped in the `speechmos` wheel (nothing to download), run with onnxruntime on CPU. Figures equal
  `speechmos.dnsmos.run(wave16k, 16000)["ovrl_mos"]`, including its windowing: a clip shorter than
  9.01 s is repeated (doubled until long enough, so a 2 s clip is scored as 16 s), then scored in
  9.01 s windows 1 s apart and averaged, skipping the windows speechmos's float rounding leaves one
  sample short (the 8th to 24th, and others later: of a 30 s clip only the first 15 s count).
  The windows of all utterances are batched, `batch_size` per session call; the model gives the
  same numbers batched as one window at a time.
  `dnsmos_personalized` uses the personalized model (penalizes interfering talkers too).
- `mos_utmos`: UTMOS (Saeki et al. 2022, the UTMOS22 strong learner: wav2vec2-base + listener-
  conditioned BLSTM, trained on VoiceMOS 2022 TTS/VC ratings), via the fairseq-free `utmos-pytorch`
  package. Its weights are not downloaded here: `quality.utmos_model` must name a local
  `utmos_state_dict.pt` (or its directory), from the UTMOS-PyTorch release
  (huggingface.co/Blinorot/UTMOS-PyTorch). One utterance per forward pass, as the package advises:
  padding a batch shifts the scores. Runs on `device`. Values are not clipped to 1..5.

Conventions: waves are resampled to 16 kHz and clamped to [-1, 1] (what a 16-bit file of them would
hold). An empty hypothesis wave scores 1.0, the floor of the scale (nothing was said); so does, for
UTMOS, a wave under 25 ms at 16 kHz, shorter than wav2vec2's first convolution window. Models load
once per process (per settings).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from evaluation.device import resolve_device
from evaluation.metrics.base import Metric, Utterance, resampled
from s2s.config import ConfigError

SR = 16000
EMPTY_SCORE = 1.0  # the floor of the 1..5 scale
UTMOS_MIN_SAMPLES = 400  # wav2vec2's first conv window at 16 kHz; shorter input cannot be scored
UTMOS_FILE = "utmos_state_dict.pt"


@dataclass
class QualityConfig:
    utmos_model: str = ""  # a local dir holding utmos_state_dict.pt, or the file; "" = not configured
    dnsmos_personalized: bool = False
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})  # UTMOS only
    batch_size: int = field(default=16, metadata={"range": (1, None)})  # DNSMOS 9.01 s windows per call


def _wave16k(u: Utterance) -> np.ndarray:
    if u.hypothesis_wave is None or u.sample_rate is None:
        raise ValueError("MOS metrics need Utterance.hypothesis_wave and its sample_rate")
    return resampled(u.hypothesis_wave, u.sample_rate, SR).clamp(-1.0, 1.0).numpy()


# --- DNSMOS ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _dnsmos(personalized: bool):
    # speechmos's own DNSMOS object, so the model files and the polynomial mapping are exactly its.
    from speechmos import dnsmos

    root = Path(dnsmos.__file__).parent
    primary = root / ("pdnsmos_models" if personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
    return dnsmos.DNSMOS(str(primary), str(root / "dnsmos_models" / "model_v8.onnx"))


def dnsmos_windows(audio: np.ndarray) -> list[np.ndarray]:
    """The 9.01 s windows speechmos scores for one non-empty 16 kHz clip (dnsmos.DNSMOS.__call__)."""
    from speechmos.dnsmos import INPUT_LENGTH

    n = int(INPUT_LENGTH * SR)
    while len(audio) < n:
        audio = np.append(audio, audio)
    hops = int(np.floor(len(audio) / SR) - INPUT_LENGTH) + 1
    # The same float expressions as speechmos: windows 7-23 (0-based), 119-... come out one sample
    # short and speechmos drops them, so figures only match if they are dropped here too.
    windows = (audio[int(i * SR): int((i + INPUT_LENGTH) * SR)] for i in range(hops))
    return [w for w in windows if len(w) >= n]


def dnsmos_ovrl(utterances: Sequence[Utterance], cfg: QualityConfig | None = None) -> list[float]:
    """DNSMOS P.835 OVRL of each hypothesis wave (see the module docstring)."""
    cfg = cfg or QualityConfig()
    model = _dnsmos(cfg.dnsmos_personalized)
    per_utt: list[list[float]] = [[] for _ in utterances]
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        raw = model.onnx_sess.run(None, {"input_1": np.stack([w for _, w in pending]).astype(np.float32)})[0]
        _, _, ovrl = model.get_polyfit_val(raw[:, 0], raw[:, 1], raw[:, 2], cfg.dnsmos_personalized)
        for (i, _), v in zip(pending, ovrl):
            per_utt[i].append(v)
        pending.clear()

    # Windows are streamed through in batches: holding all of a corpus's (577 KB each) could take GBs.
    for i, u in enumerate(utterances):
        wave = _wave16k(u)
        for w in dnsmos_windows(wave) if wave.size else ():
            pending.append((i, w))
            if len(pending) >= cfg.batch_size:
                flush()
    if pending:
        flush()
    return [float(np.mean(v)) if v else EMPTY_SCORE for v in per_utt]


# --- UTMOS ----------------------------------------------------------------------------------------

_UTMOS_HINT = (f"set quality.utmos_model to a local directory holding {UTMOS_FILE}, or to that file: the "
               f"UTMOS22 strong-learner state dict from the UTMOS-PyTorch release "
               f"(huggingface.co/Blinorot/UTMOS-PyTorch, file {UTMOS_FILE}); it is never downloaded here")


def utmos_file(setting: str) -> Path:
    """The state-dict file `quality.utmos_model` names; a ConfigError if it names none."""
    if not setting:
        raise ConfigError(f"quality.utmos_model is not set: {_UTMOS_HINT}")
    path = Path(setting).expanduser()
    if path.is_dir():
        path = path / UTMOS_FILE
    if not path.is_file():
        raise ConfigError(f"quality.utmos_model: {path} does not exist; {_UTMOS_HINT}")
    return path.resolve()


def _device(setting: str) -> str:
    return str(resolve_device(setting, "quality.device"))


@functools.lru_cache(maxsize=2)
def _utmos(path: str, device: str):
    from utmos_pytorch import UTMOSScoreTorch
    from utmos_pytorch.utmos_torch import UTMOSModel

    # The package loads with strict=False: any other state dict would load "fine" and score with
    # random weights. Check the keys first (mmap: no second copy in memory; meta: no weights built).
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a user's file that is not a torch state dict, whatever the reason
        raise ConfigError(f"quality.utmos_model: cannot read {path} as a state dict "
                          f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); {_UTMOS_HINT}") from None
    with torch.device("meta"):
        expected = list(UTMOSModel().state_dict())
    missing = [k for k in expected if not isinstance(state, dict) or k not in state]
    del state
    if missing:
        raise ConfigError(f"quality.utmos_model: {path} is not a UTMOS state dict ({len(missing)} of "
                          f"{len(expected)} weights missing, e.g. '{missing[0]}'); {_UTMOS_HINT}")
    return UTMOSScoreTorch(ckpt_path=path, device=device)


def utmos(utterances: Sequence[Utterance], cfg: QualityConfig | None = None) -> list[float]:
    """UTMOS of each hypothesis wave, one forward pass each (see the module docstring)."""
    cfg = cfg or QualityConfig()
    model = _utmos(str(utmos_file(cfg.utmos_model)), _device(cfg.device))
    scores = []
    for u in utterances:
        wave = torch.from_numpy(_wave16k(u))
        if wave.numel() < UTMOS_MIN_SAMPLES:
            scores.append(EMPTY_SCORE)
            continue
        # A 1-D wave is what UTMOSScoreTorch.forward turns into its [1, 1, T] batch of one.
        scores.append(float(model.score(wave.to(model.device))[0]))
    return scores


def _dnsmos_detail(cfg: QualityConfig | None) -> str:
    return "speechmos ONNX, personalized" if cfg is not None and cfg.dnsmos_personalized else "speechmos ONNX"


MOS_DNSMOS = Metric("mos_dnsmos", batch=dnsmos_ovrl, aggregate=("mean", "std"), higher_is_better=True,
                    needs=("hypothesis_wave",), label="MOS (DNSMOS OVRL)", options="quality", detail=_dnsmos_detail,
                    note="predicted P.835 overall quality (noise, artefacts) of the generated speech alone, from a "
                    "noise-suppression model: not the words, not the voice")
# Not a default metric: its weights must be supplied (quality.utmos_model).
MOS_UTMOS = Metric("mos_utmos", batch=utmos, aggregate=("mean", "std"), higher_is_better=True,
                   needs=("hypothesis_wave",), label="MOS (UTMOS)", options="quality",
                   detail=lambda cfg: "UTMOS22 strong learner", default=False,
                   note="predicted naturalness MOS (VoiceMOS 2022 TTS/VC ratings) of the generated speech alone: "
                   "not the words, not the voice")
