"""Speaker similarity: the cosine similarity of a speaker-verification embedding of the hypothesis wave
with that of the reference wave (higher is better; 1 = the encoder hears the same voice). It judges the
voice, not the words (WER does) nor the audio quality (MOS does). The backends' scales differ: compare
systems under one backend only.

- "resemblyzer" (default): Resemblyzer's GE2E d-vector (3-layer LSTM over 40-band mels, 1.6 s windows
  averaged; ReLU'd, so cosines of speech rarely fall under ~0.4). Its weights ship in the `resemblyzer`
  wheel: it runs offline. Each wave first goes through its `preprocess_wav` (quiet waves raised to
  -30 dBFS, long silences cut by WebRTC VAD), as its training data did: its mels are not log-scaled,
  so without it gain and pauses move the embedding and a TTS system would be scored on loudness and
  silence, not on its voice (measured: a copy with 2 s of trailing silence scores 0.91 without, 1.00
  with; a copy 26 dB quieter 0.63 without, 0.91 with, as waves above -30 dBFS are not turned down).
  Should VAD leave under 0.1 s of speech, the untrimmed (volume-raised) wave is used.
- "wavlm": the x-vector of `transformers.WavLMForXVector` (`speaker.model`: a hub id, default
  microsoft/wavlm-base-plus-sv, or a local directory; with HF_HUB_OFFLINE=1 a hub id must be in the hub
  cache), fed as in the hub model card. Waves share a padded batch (with an attention mask) only where
  padding leaves every embedding unchanged: a feature encoder with GroupNorm over time
  (config feat_extract_norm="group", the WavLM Base setting) sees the padding, so such models embed one
  wave at a time. transformers' x-vector pooling ignores the TDNN dilations when it drops padded
  frames, so the correct lengths are patched in. Waves shorter than the TDNN's receptive field (+1
  frame, for the pooled std) are zero-padded up to it.

Conventions: waves are resampled to 16 kHz and clamped to [-1, 1] (what a 16-bit file would hold). A
pair scores 0.0 when either wave is shorter than 0.1 s (empty included) or all zeros: there is no voice
to compare; so does an embedding of norm 0. Cosines are computed in float64, clamped to [-1, 1]. Each
backend is loaded once per process (per backend, model and device).
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from evaluation.device import resolve_device
from evaluation.metrics.base import Metric, Utterance, resampled
from s2s.config import ConfigError

SR = 16000
MIN_SECONDS = 0.1  # shorter waves (or all-zero ones) score EMPTY_SCORE
EMPTY_SCORE = 0.0
DEFAULT_WAVLM = "microsoft/wavlm-base-plus-sv"


@dataclass
class SpeakerConfig:
    backend: str = field(default="resemblyzer", metadata={"choices": ("resemblyzer", "wavlm")})
    model: str = ""  # wavlm: hub id or local dir ("" = microsoft/wavlm-base-plus-sv); resemblyzer: unused
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})  # auto: cuda if visible
    batch_size: int = field(default=16, metadata={"range": (1, None)})  # waves per forward pass


def _device(setting: str) -> str:
    return str(resolve_device(setting, "speaker.device"))


# --- resemblyzer ----------------------------------------------------------------------------------

def _resemblyzer(model: str, device: str):
    with warnings.catch_warnings():  # webrtcvad imports pkg_resources, resemblyzer scipy.ndimage.morphology
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder
    return VoiceEncoder(device, verbose=False).eval()


def _embed_resemblyzer(encoder, waves: list[np.ndarray], batch_size: int) -> torch.Tensor:
    """Resemblyzer's `embed_utterance` of each wave (before its final L2 norm, which no cosine needs), with
    the 1.6 s partials of `batch_size` waves in one forward pass."""
    if len(waves) > batch_size:
        return torch.cat([_embed_resemblyzer(encoder, waves[i:i + batch_size], batch_size)
                          for i in range(0, len(waves), batch_size)])
    from resemblyzer import audio, preprocess_wav
    from resemblyzer.hparams import audio_norm_target_dBFS

    mels, owner = [], []
    for i, wave in enumerate(waves):
        trimmed = preprocess_wav(wave)
        wave = trimmed if len(trimmed) >= MIN_SECONDS * SR else audio.normalize_volume(
            wave, audio_norm_target_dBFS, increase_only=True)
        wav_slices, mel_slices = encoder.compute_partial_slices(len(wave), rate=1.3, min_coverage=0.75)
        wave = np.pad(wave, (0, max(0, wav_slices[-1].stop - len(wave))))
        mel = audio.wav_to_mel_spectrogram(wave)
        mels += [mel[s] for s in mel_slices]
        owner += [i] * len(mel_slices)
    with torch.no_grad():
        partials = encoder(torch.from_numpy(np.stack(mels)).to(encoder.device)).cpu().double()
    return torch.zeros(len(waves), partials.shape[1], dtype=torch.float64).index_add_(0, torch.tensor(owner), partials)


# --- WavLM x-vector -------------------------------------------------------------------------------

def _looks_like_path(model: str) -> bool:
    # A hub id is "org/name"; anything else with a slash, or absolute, or ./ ~/, is a directory.
    return os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1


def _wavlm(model: str, device: str):
    from transformers import AutoFeatureExtractor, WavLMForXVector

    source = str(Path(model).expanduser()) if _looks_like_path(model) else model
    if _looks_like_path(model) and not os.path.isdir(source):
        raise ConfigError(f"speaker.model={model} is not a directory: set speaker.model to a directory holding a "
                          f"WavLMForXVector (config.json, weights, preprocessor_config.json) or to a hub id "
                          f"such as {DEFAULT_WAVLM}")
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source)
        net = WavLMForXVector.from_pretrained(source)
    except Exception as e:  # a local directory can be broken in many ways; a hub id fails with OSError
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        if os.path.isdir(source):
            raise ConfigError(f"speaker.model={model} could not be loaded as a WavLMForXVector ({why})") from None
        if not isinstance(e, OSError):
            raise
        from huggingface_hub import constants
        where = ("is not in the hub cache and HF_HUB_OFFLINE forbids downloading" if constants.HF_HUB_OFFLINE
                 else "the model hub could not provide it")
        raise ConfigError(f"speaker.model={model}: not a local directory and {where} ({why[:120]}); where there "
                          f"is internet run `huggingface-cli download {model} --local-dir DIR`, then set "
                          f"speaker.model=DIR") from None
    cfg = net.config
    # transformers trims each utterance's TDNN output to (length - kernel + 1) per layer, forgetting the
    # dilation: padded frames would leak into the pooled statistics of all but the longest wave.
    net._get_tdnn_output_lengths = lambda n: n - sum((k - 1) * d for k, d in zip(cfg.tdnn_kernel, cfg.tdnn_dilation))
    # The fewest samples that leave 2 TDNN frames: their std is pooled, and the std of 1 frame is NaN.
    frames = 2 + sum((k - 1) * d for k, d in zip(cfg.tdnn_kernel, cfg.tdnn_dilation))
    for k, s in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
        frames = (frames - 1) * s + k
    return extractor, net.eval().to(device), frames


def _embed_wavlm(loaded, waves: list[np.ndarray], batch_size: int) -> torch.Tensor:
    extractor, net, min_samples = loaded
    waves = [np.pad(w, (0, max(0, min_samples - len(w)))) for w in waves]
    # GroupNorm over time sees the padding, so such models get no padding (one wave per pass).
    step = batch_size if net.config.feat_extract_norm == "layer" else 1
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # like lengths together: less padding
    out = torch.zeros(len(waves), net.config.xvector_output_dim, dtype=torch.float64)
    for start in range(0, len(order), step):
        idx = order[start:start + step]
        inputs = extractor([waves[i] for i in idx], sampling_rate=SR, padding=True, return_attention_mask=True,
                           return_tensors="pt").to(net.device)
        with torch.no_grad(), warnings.catch_warnings():
            # transformers' own attention-mask types, nothing a user can act on
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
            out[idx] = net(**inputs).embeddings.cpu().double()
    return out


# --- the metric -----------------------------------------------------------------------------------

_LOADERS = {"resemblyzer": _resemblyzer, "wavlm": _wavlm}


@functools.lru_cache(maxsize=4)
def load_backend(backend: str, model: str, device: str):
    """The loaded backend (resemblyzer's VoiceEncoder; wavlm's extractor, model, min samples), once per process."""
    if backend not in _LOADERS:
        raise ConfigError(f"unknown speaker.backend={backend}: choose one of {', '.join(_LOADERS)}")
    return _LOADERS[backend](model or DEFAULT_WAVLM, device)


def _scorable(wave: np.ndarray) -> bool:
    return len(wave) >= MIN_SECONDS * SR and bool(np.any(wave))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    norm = float(a.norm() * b.norm())
    return float(np.clip(float(a @ b) / norm, -1.0, 1.0)) if norm != 0 else EMPTY_SCORE  # NaN stays NaN: a bug


# Embeddings by (backend, model, device, wave content): the scorer compares the same references with the
# generated speech, the round trip and the other-speaker floor, so each reference is embedded once.
_EMBEDDINGS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
MAX_EMBEDDINGS = 4096  # oldest dropped first; a few MB


def _wave_key(backend: tuple, wave: np.ndarray) -> tuple:
    return (*backend, len(wave), hashlib.sha1(wave.tobytes()).digest())


def speaker_similarity(utterances: Sequence[Utterance], options: SpeakerConfig | None = None) -> list[float]:
    """Cosine similarity of each hypothesis wave's speaker embedding with its reference wave's (see the
    module docstring for the backends and the 0.0 convention)."""
    cfg = options or SpeakerConfig()
    backend = (cfg.backend, cfg.model if cfg.backend == "wavlm" else "", _device(cfg.device))
    loaded = load_backend(*backend)
    embed = _embed_resemblyzer if cfg.backend == "resemblyzer" else _embed_wavlm
    values, pending = [EMPTY_SCORE] * len(utterances), []

    def flush():
        keys = [[_wave_key(backend, w) for w in pair] for _, *pair in pending]
        todo = {k: w for (_, *pair), ks in zip(pending, keys) for k, w in zip(ks, pair) if k not in _EMBEDDINGS}
        for k, e in zip(todo, embed(loaded, list(todo.values()), cfg.batch_size) if todo else []):
            _EMBEDDINGS[k] = e
        for (i, _, _), (kr, kh) in zip(pending, keys):
            values[i] = _cosine(_EMBEDDINGS[kr], _EMBEDDINGS[kh])
        while len(_EMBEDDINGS) > MAX_EMBEDDINGS:
            _EMBEDDINGS.popitem(last=False)
        pending.clear()

    # Streamed a batch at a time: a corpus's 16 kHz waves could take GBs.
    for i, u in enumerate(utterances):
        if u.reference_wave is None or u.hypothesis_wave is None or u.sample_rate is None:
            raise ValueError("speaker similarity needs Utterance.reference_wave, hypothesis_wave and sample_rate")
        ref, hyp = (resampled(w, u.sample_rate, SR).clamp(-1.0, 1.0).numpy()
                    for w in (u.reference_wave, u.hypothesis_wave))
        if _scorable(ref) and _scorable(hyp):
            pending.append((i, ref, hyp))
        if 2 * len(pending) >= cfg.batch_size:
            flush()
    if pending:
        flush()
    return values


def _detail(options: SpeakerConfig | None) -> str:
    cfg = options or SpeakerConfig()
    if cfg.backend == "resemblyzer":
        return "resemblyzer GE2E d-vector"
    return f"WavLM x-vector {cfg.model or DEFAULT_WAVLM}"


SPK_SIM = Metric("spk_sim", batch=speaker_similarity, aggregate=("mean", "std"), higher_is_better=True,
                 needs=("reference_wave", "hypothesis_wave"), label="speaker similarity", options="speaker",
                 detail=_detail, note="cosine of speaker embeddings of hypothesis and reference: the voice, not "
                 "the words; backends' scales differ")


def build_tiny_wavlm(out: str | Path, seed: int = 0, feat_extract_norm: str = "layer") -> Path:
    """Write a tiny random WavLMForXVector and its feature extractor to `out` (created), loadable with
    speaker.backend=wavlm speaker.model=<out>. The real model's layout at toy size: 7 conv layers
    (320x downsampling), dilated TDNN, x-vector head. Its embeddings are meaningless by design."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16,) * 7, feat_extract_norm=feat_extract_norm, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, num_buckets=32, max_bucket_distance=64,
                         tdnn_dim=(16, 16, 32), tdnn_kernel=(5, 3, 3), tdnn_dilation=(1, 2, 3), xvector_output_dim=16)
    torch.manual_seed(seed)
    WavLMForXVector(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(out)
    return out
