"""Word and character error rates of ASR transcripts against reference texts (jiwer 4), and the
text normalizers applied to both sides before they are compared.

WER: word errors (substitutions + deletions + insertions) / reference words, as a `Ratio`, so it
aggregates both as the mean per-utterance WER and as the pooled (corpus) WER (`base.py`; Seed-TTS-eval
reports the mean per utterance, under its own normalizer, so neither figure here is its number). CER is
the same over characters, spaces included, as jiwer counts them. An empty hypothesis against a
non-empty reference is all deletions (WER 1); empty references follow `base.py`'s convention
(per utterance: 0 if the hypothesis is empty too, else 1).

Normalizers (NORMALIZERS; every one also applies Unicode NFC, so a decomposed "é" equals a composed
one, and collapses whitespace):
- "whisper" (default): Whisper's BasicTextNormalizer — lowercase, drop [bracketed] and
  (parenthesized) spans, turn punctuation and symbols into spaces (so "don't" -> "don t" on both
  sides), keep accents. Language independent; Whisper's English normalizer needs a spelling map
  that ships with the tokenizer, so it is not used.
- "seed-like": delete punctuation except apostrophes, lowercase. Close to Seed-TTS-eval's rule but
  NOT it, hence the name: Seed-TTS-eval deletes only ASCII and Chinese punctuation and defines the
  rule for English and Chinese only (other languages raise there), with no Unicode normalization;
  here every Unicode punctuation character goes (so also ¿ ¡ « », which Spanish and Italian need),
  and the typographic apostrophe ’ becomes ' first so "l’acqua" and "l'acqua" agree. Figures under
  it are comparable in spirit with Seed-TTS-eval's mean per-utterance WER, not equal to them.
- "none": only NFC and whitespace.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import jiwer

from evaluation.metrics.base import Metric, Ratio, Utterance
from s2s.registry import lookup

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})  # ’ and ʼ -> '


@functools.lru_cache(maxsize=1)
def _basic_normalizer():
    # Imported lazily: transformers is heavy and only the "whisper" mode needs it.
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def whisper_normalize(text: str) -> str:
    """Whisper's BasicTextNormalizer (see the module docstring)."""
    return _basic_normalizer()(text)


def seed_like_normalize(text: str) -> str:
    """Delete every Unicode punctuation mark except apostrophes, lowercase (see the module docstring)."""
    text = unicodedata.normalize("NFC", text).translate(_APOSTROPHES)
    text = "".join(c for c in text if c == "'" or not unicodedata.category(c).startswith("P"))
    return text.lower()


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "whisper": whisper_normalize,
    "seed-like": seed_like_normalize,
    "none": lambda text: text,
}


def normalize(text: str, mode: str = "whisper") -> str:
    """Text as it is compared: `mode` (a key of NORMALIZERS), then NFC and single spaces, stripped.

    An unknown mode raises s2s.errors.UnknownNameError with the closest name."""
    rule = lookup(NORMALIZERS, mode, "text normalizer")  # "seed" (renamed) gets "Did you mean 'seed-like'?"
    text = rule(unicodedata.normalize("NFC", text))
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def text_utterances(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = "whisper",
                    languages: Sequence[str] | None = None) -> list[Utterance]:
    """Pair references with hypotheses (same order), both normalized, as Utterances for text metrics."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: pass one hypothesis "
                         f"per reference, in the same order")
    languages = languages if languages is not None else [""] * len(references)
    return [Utterance(normalize(r, normalizer), normalize(h, normalizer), lang)
            for r, h, lang in zip(references, hypotheses, languages)]


@dataclass(frozen=True)
class Edits:
    """Alignment counts of a hypothesis against its reference (in words or characters)."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        return self.hits + self.substitutions + self.deletions


def word_edits(reference: str, hypothesis: str) -> Edits:
    """Word-level hits/S/D/I (texts as given: normalize first)."""
    o = jiwer.process_words(reference, hypothesis)
    return Edits(o.hits, o.substitutions, o.deletions, o.insertions)


def char_edits(reference: str, hypothesis: str) -> Edits:
    """Character-level hits/S/D/I, spaces included (texts as given: normalize first)."""
    o = jiwer.process_characters(reference, hypothesis)
    return Edits(o.hits, o.substitutions, o.deletions, o.insertions)


def word_error_rate(u: Utterance) -> Ratio:
    """Word errors over reference words of one utterance."""
    e = word_edits(u.reference, u.hypothesis)
    return Ratio(e.errors, e.reference_length)


def char_error_rate(u: Utterance) -> Ratio:
    """Character errors over reference characters of one utterance."""
    e = char_edits(u.reference, u.hypothesis)
    return Ratio(e.errors, e.reference_length)


WER = Metric("wer", word_error_rate, aggregate=("pooled", "mean"), label="WER")
CER = Metric("cer", char_error_rate, aggregate=("pooled", "mean"), label="CER")
