"""PocketSphinx ASR: offline English with the en-us model bundled in the `pocketsphinx` package.

No download, no GPU: the offline topline check of REFERENCE section 5 (on flite's `slt` voice it
is near exact). It has no model for other languages; transcribing Spanish with an English
model yields English-sounding words, so a non-English utterance is an error unless
`allow_non_english=True` (then it warns), which is only good for smoke tests.
"""
from __future__ import annotations

import warnings

import torch

from evaluation.asr.base import ASR, ASRError, prepare_waves

ENGLISH = "en"


class PocketSphinxASR(ASR):
    """pocketsphinx 5 `Decoder` with its default config (the bundled en-us acoustic model, LM and dictionary).

    There is no model to choose (`model` must be None) and it runs on the CPU one utterance at a
    time, so `device` and `batch_size` are ignored.
    """

    name = "pocketsphinx"

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 1,
                 allow_non_english: bool = False):
        if model is not None:
            raise ASRError(f"the pocketsphinx backend uses the en-us model bundled with the package; "
                             f"got model={model!r}: leave it unset (or use the 'whisper' backend for another model)")
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise ASRError(f"the pocketsphinx backend needs the `pocketsphinx` package ({e}); "
                           f"install it with `pip install 'pocketsphinx>=5.1,<6'`") from None
        super().__init__(None, "cpu", max(batch_size, 1))
        self.allow_non_english = allow_non_english
        self.decoder = Decoder(samprate=self.sample_rate, loglevel="FATAL")

    def transcribe(self, waves: list[torch.Tensor], sample_rate: int, languages: list[str]) -> list[str]:
        """Transcribe English waves [T_i] (float32 mono in [-1, 1], `sample_rate` Hz) -> lowercase strings."""
        waves16k, codes = prepare_waves(waves, sample_rate, languages, self.sample_rate)
        other = sorted(set(codes) - {ENGLISH})
        if other:
            msg = (f"pocketsphinx has an English (en-us) model only, but got language(s) {other}; use the "
                   f"'whisper' backend for them")
            if not self.allow_non_english:
                raise ASRError(msg + " (or allow_non_english=True for a smoke test whose WER means nothing)")
            warnings.warn(msg, stacklevel=2)
        return [self._decode(w) for w in waves16k]

    def _decode(self, wave16k: torch.Tensor) -> str:
        if wave16k.numel() == 0:
            return ""
        pcm = (wave16k.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16).numpy()  # 16-bit PCM, native endian
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)  # whole utterance: normalise on all of it
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""
