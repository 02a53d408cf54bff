"""ASR backends behind one interface (`evaluation.asr.base.ASR`), chosen by name.

Adding a backend: one module with an `ASR` subclass, plus one line in BACKENDS.
"""
from __future__ import annotations

from evaluation.asr.base import ASR, ASRError
from evaluation.asr.pocketsphinx import PocketSphinxASR
from evaluation.asr.whisper import WhisperASR
from s2s.registry import lookup

BACKENDS: dict[str, type[ASR]] = {
    WhisperASR.name: WhisperASR,
    PocketSphinxASR.name: PocketSphinxASR,
}


def build_asr(name: str, model: str | None = None, device: str = "cpu", batch_size: int = 8, **options) -> ASR:
    """The backend `name` (a key of BACKENDS) with `model` (hub id or directory; None: its default).

    device: 'cpu', 'cuda' or 'auto' (whisper; pocketsphinx always runs on the CPU). batch_size:
    utterances (30-s windows) per generate() call. Extra keyword options go to the backend's
    constructor (pocketsphinx: allow_non_english=True turns its non-English error into a warning).
    """
    return lookup(BACKENDS, name, "ASR backend")(model=model, device=device, batch_size=batch_size, **options)


__all__ = ["ASR", "ASRError", "BACKENDS", "build_asr"]
