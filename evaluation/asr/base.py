"""The one interface every ASR backend implements, and the input checks they share.

A backend turns waveforms into transcripts: `transcribe(waves, sample_rate, languages)` takes
1-D float32 mono waveforms at any one sample rate plus one ISO 639-1 language code per wave
("es", "it", "en", ...) and returns one string per wave, in order. Each backend resamples to
the rate its model needs. An empty waveform transcribes to "" without running the model
(generated audio can be empty; the feature extractors reject zero-length input).
"""
from __future__ import annotations

import abc
from typing import ClassVar

import torch
import torchaudio.functional as AF

from evaluation.device import resolve_device

from s2s.errors import UserError


class ASRError(UserError):
    """An ASR model that cannot be loaded or run, with what to do about it."""


class ASR(abc.ABC):
    """An ASR backend: subclasses set `name` and implement `transcribe`."""

    name: ClassVar[str]
    sample_rate: ClassVar[int] = 16000  # what the model consumes; inputs are resampled to it

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_id = model
        self.device = resolve_device(device, "asr.device")
        self.batch_size = batch_size

    @abc.abstractmethod
    def transcribe(self, waves: list[torch.Tensor], sample_rate: int, languages: list[str]) -> list[str]:
        """Transcribe each wave [T_i] (float32 mono, `sample_rate` Hz) in its language -> one string per wave."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_id!r}, device={str(self.device)!r})"


def language_code(language: str) -> str:
    """'es', 'ES', 'es-ES', 'es_es' -> 'es' (the ISO 639-1 part Whisper and the registry use)."""
    if not isinstance(language, str) or not language.strip():
        raise ValueError(f"each utterance needs a language code such as 'es' or 'en', got {language!r}")
    return language.strip().lower().replace("_", "-").split("-")[0]


def prepare_waves(waves: list[torch.Tensor], sample_rate: int, languages: list[str],
                  target_rate: int = 16000) -> tuple[list[torch.Tensor], list[str]]:
    """Check inputs and resample: waves [T_i] at `sample_rate` -> float32 CPU waves [T_i'] at `target_rate`.

    Returns (waves, language codes). Raises ValueError naming the bad input: a count mismatch
    between waves and languages, a wave that is not 1-D, or a non-positive sample rate.
    """
    if len(waves) != len(languages):
        raise ValueError(f"transcribe got {len(waves)} waves but {len(languages)} languages: pass one language "
                         f"code per wave")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int (Hz), got {sample_rate!r}")
    out = []
    for i, w in enumerate(waves):
        w = torch.as_tensor(w)
        if w.dim() != 1:
            raise ValueError(f"wave {i} has shape {tuple(w.shape)}; ASR takes 1-D mono waves [T] "
                             f"(mix down with wave.mean(0) for [C, T])")
        w = w.detach().float().cpu()
        if sample_rate != target_rate and w.numel() > 0:
            w = AF.resample(w, sample_rate, target_rate)
        out.append(w)
    return out, [language_code(lang) for lang in languages]
