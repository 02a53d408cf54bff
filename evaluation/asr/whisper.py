"""Whisper ASR (default `openai/whisper-large-v3`), language forced per utterance.

The protocol of REFERENCE section 5: 16 kHz input, `generate(language=<code>, task="transcribe")`
with the language of each sample (never auto-detected), decoding as the model's
generation_config says (greedy for large-v3), batched per language; fp16 on CUDA, fp32 on CPU.

Whisper hears 30-s windows. A longer utterance is cut into the fewest equal windows of at most
30 s and their transcripts are joined, rather than truncated (which would hide its tail as
deletions) or sent through transformers' long-form decoding (timestamp-driven: its cost depends
on what the model predicts). A word cut at a window boundary may be misheard; evaluation
utterances are shorter than 30 s, and generated audio that long is usually a failure to stop,
which the extra words expose.
"""
from __future__ import annotations

import math

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from evaluation.asr.base import ASR, ASRError, prepare_waves
from s2s.backbones import load_pretrained

DEFAULT_MODEL = "openai/whisper-large-v3"
WINDOW_SECONDS = 30  # Whisper's encoder takes exactly 30 s of mel frames


def _load(loader, source: str, **kwargs):
    return load_pretrained(loader, source, "Whisper ASR model", "pass DIR as the ASR model (`asr.model=DIR` for "
                           "`python -m evaluation.score`; build_asr('whisper', model=DIR) in code)", ASRError,
                           **kwargs)


class WhisperASR(ASR):
    """`transformers` Whisper (WhisperForConditionalGeneration + WhisperProcessor) from a hub id or directory."""

    name = "whisper"

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 8):
        super().__init__(model or DEFAULT_MODEL, device, batch_size)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor = _load(WhisperProcessor.from_pretrained, self.model_id)
        self.model = _load(WhisperForConditionalGeneration.from_pretrained, self.model_id, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.lang_to_id = getattr(self.model.generation_config, "lang_to_id", None) or {}
        if not self.lang_to_id:
            raise ASRError(f"Whisper model '{self.model_id}' is English-only or its generation_config has no "
                           f"lang_to_id, so the language cannot be forced; use a multilingual Whisper "
                           f"such as {DEFAULT_MODEL}")

    def windows(self, wave16k: torch.Tensor) -> list[torch.Tensor]:
        """Split a 16 kHz wave [T] into ceil(T / 30 s) equal windows (no near-empty last window) -> [T_k]."""
        if wave16k.numel() == 0:
            return []
        n = math.ceil(wave16k.numel() / (WINDOW_SECONDS * self.sample_rate))
        return list(wave16k.tensor_split(n))

    @torch.no_grad()
    def generate_ids(self, windows16k: list[torch.Tensor], language: str) -> torch.Tensor:
        """Token ids for a batch of <= 30-s 16 kHz waves [T_i], all in `language` -> [B, L].

        The forced prompt <|startoftranscript|><|lang|><|transcribe|><|notimestamps|> is not
        part of the returned ids (transformers 5 returns the generated tokens only).
        """
        feats = self.processor.feature_extractor([w.numpy() for w in windows16k], sampling_rate=self.sample_rate,
                                                 return_tensors="pt")  # padded to the 30-s window
        out = self.model.generate(feats.input_features.to(self.device, self.dtype), language=language,
                                  task="transcribe")
        return out if isinstance(out, torch.Tensor) else out["sequences"]

    def transcribe(self, waves: list[torch.Tensor], sample_rate: int, languages: list[str]) -> list[str]:
        """Transcribe waves [T_i] (float32 mono, `sample_rate` Hz), each forced to its language -> strings."""
        waves16k, codes = prepare_waves(waves, sample_rate, languages, self.sample_rate)
        codes = [TO_LANGUAGE_CODE.get(c, c) for c in codes]  # "spanish" -> "es", as generate() accepts
        unknown = sorted({c for c in codes if f"<|{c}|>" not in self.lang_to_id})
        if unknown:
            raise ASRError(f"Whisper model '{self.model_id}' has no language(s) {unknown}; pass ISO 639-1 codes "
                             f"such as 'es', 'it', 'en'")
        # (utterance index, window) in utterance order, so joining per utterance keeps the time order.
        pieces = [(i, piece) for i, w in enumerate(waves16k) for piece in self.windows(w)]
        texts: list[list[str]] = [[] for _ in waves16k]
        for code in sorted(set(codes)):
            todo = [p for p in pieces if codes[p[0]] == code]
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start:start + self.batch_size]
                ids = self.generate_ids([w for _, w in batch], code)
                for (i, _), text in zip(batch, self.processor.batch_decode(ids, skip_special_tokens=True)):
                    texts[i].append(text.strip())
        return [" ".join(t for t in parts if t) for parts in texts]
