"""Word and character error rates of ASR transcripts against reference texts (jiwer 4), and the
text normalizers applied to both sides before they are compared.

WER: word errors (substitutions + deletions + insertions) / reference words, as a `Ratio`, so it
aggregates both as the mean per-utterance WER and as the pooled (corpus) WER (`base.py`; Seed-TTS-eval
reports the mean per utterance, under its own normalizer: the mean WER under "seed" below is its figure
for the same transcripts, for en and zh; under any other normalizer neither figure is). CER is
the same over characters, spaces included, as jiwer counts them. An empty hypothesis against a
non-empty reference is all deletions (WER 1); empty references follow `base.py`'s convention
(per utterance: 0 if the hypothesis is empty too, else 1).

Normalizers (NORMALIZERS). Each is called as `fn(text, language)`, `language` being the utterance's
ISO 639-1 code ("" when unknown); only "seed" reads it. Every one but "seed" also applies Unicode NFC,
so a decomposed "é" equals a composed one, and collapses whitespace to single spaces:
- "whisper" (default): Whisper's BasicTextNormalizer — lowercase, drop [bracketed] and
  (parenthesized) spans, turn punctuation and symbols into spaces (so "don't" -> "don t" on both
  sides), keep accents. Language independent; Whisper's English normalizer needs a spelling map
  that ships with the tokenizer, so it is not used.
- "seed": Seed-TTS-eval's rule, exactly (`run_wer.py`, `process_one`, BytedanceSpeech/seed-tts-eval
  at commit 95003fe, unchanged since): delete every character of `zhon.hanzi.punctuation +
  string.punctuation` except the ASCII apostrophe ' (so ASCII punctuation, the typographic ’ ‘ “ ”,
  – —, …, · and the ideographic space U+3000 go, while ¿ ¡ « » and Unicode letters stay);
  `replace("  ", " ")` once (three spaces become two); then for "zh" (or "zh-*") join the
  characters with single spaces (spaces included, so each space becomes three) and do not
  lowercase; for "en" lowercase (`str.lower`). Nothing else: no Unicode normalization, no
  whitespace tidying, no number conversion. Seed-TTS-eval defines en and zh only (others raise
  there); every other language ("es", "it", "" ...) gets the English rule here, which is this
  project's extension, not theirs. Reference and hypothesis are treated the same. What is
  reproduced is the text handed to jiwer: jiwer's default word transform (collapse runs of
  whitespace, strip, split on " ") then makes the WER of these strings equal Seed-TTS-eval's
  per-utterance WER (their `compute_measures` ran that same transform). Not reproduced: their
  ASR (Whisper-large-v3 for en, Paraformer for zh) and its zh-only `zhconv.convert(hyp,
  "zh-cn")` of the transcript to simplified characters, and their crash on a reference that is
  empty after normalization (here: `base.py`'s empty-reference convention). CER under "seed" is
  not a Seed-TTS-eval figure (jiwer's character transform keeps leftover spaces; for zh their WER
  is already per character).
- "seed-like": delete punctuation except apostrophes, lowercase. Close to "seed" but NOT it, hence
  the name: every Unicode punctuation character goes (so also ¿ ¡ « », which Spanish and Italian
  need), the typographic apostrophe ’ becomes ' first so "l’acqua" and "l'acqua" agree (under
  "seed" ’ is deleted: "lacqua"), the ASCII symbols $ + < = > ^ ` | ~ stay (under "seed" they go),
  NFC and whitespace tidying apply, and every language is treated alike (no zh character split).
  Figures under it are comparable in spirit with Seed-TTS-eval's mean per-utterance WER, not
  equal to them.
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

Normalizer = Callable[[str, str], str]
"""A text normalizer: fn(text, language) -> the text as compared (language: ISO 639-1 code or "")."""


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


@functools.lru_cache(maxsize=1)
def _seed_deletions() -> dict[int, None]:
    """str.translate table deleting Seed-TTS-eval's `punctuation_all` but the apostrophe.

    run_wer.py deletes the characters one by one with str.replace; each is a single character, so
    deleting them all at once is the same. zhon.hanzi.punctuation has been the same 82 characters
    in every zhon 2.x (zhon 1.x lacks the fullwidth full stop U+FF0E); tests pin the string."""
    import string

    try:
        from zhon.hanzi import punctuation
    except ImportError as e:  # pragma: no cover - zhon is a dependency
        raise ImportError("the 'seed' text normalizer needs zhon (pip install 'zhon>=2,<3')") from e
    return {ord(c): None for c in punctuation + string.punctuation if c != "'"}


def _is_chinese(language: str) -> bool:
    code = (language or "").strip().lower().replace("_", "-").split("-")[0]
    return code == "zh"


def seed_normalize(text: str, language: str = "") -> str:
    """Seed-TTS-eval's run_wer.py text rule, exactly (see the module docstring): delete zhon + ASCII
    punctuation but ', replace double spaces once, then zh: space-join the characters; any other
    language (their en; es, it, "" by this project's extension): lowercase."""
    text = text.translate(_seed_deletions())
    text = text.replace("  ", " ")
    if _is_chinese(language):
        return " ".join([x for x in text])
    return text.lower()


def _tidy(text: str) -> str:
    """NFC, whitespace runs to one space, stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def _tidied(rule: Callable[[str], str]) -> Normalizer:
    """`rule` on the NFC text, then NFC and single spaces (the language is not used)."""
    def normalizer(text: str, language: str = "") -> str:
        return _tidy(rule(unicodedata.normalize("NFC", text)))

    normalizer.__name__ = normalizer.__qualname__ = f"tidied_{getattr(rule, '__name__', 'rule')}"
    return normalizer


NORMALIZERS: dict[str, Normalizer] = {
    "whisper": _tidied(whisper_normalize),
    "seed-like": _tidied(seed_like_normalize),
    "none": _tidied(lambda text: text),
    "seed": seed_normalize,  # exact: no NFC, no whitespace tidying
}


def normalize(text: str, mode: str = "whisper", language: str = "") -> str:
    """Text as it is compared under `mode` (a key of NORMALIZERS) for an utterance in `language`
    (ISO 639-1 code; only "seed" reads it: "zh" splits characters, anything else gets the English rule).

    An unknown mode raises s2s.errors.UnknownNameError with the closest name."""
    return lookup(NORMALIZERS, mode, "text normalizer")(text, language)


def text_utterances(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = "whisper",
                    languages: Sequence[str] | None = None) -> list[Utterance]:
    """Pair references with hypotheses (same order), both normalized in their utterance's language,
    as Utterances for text metrics."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: pass one hypothesis "
                         f"per reference, in the same order")
    languages = languages if languages is not None else [""] * len(references)
    if len(languages) != len(references):
        raise ValueError(f"{len(references)} references but {len(languages)} languages: pass one language "
                         f"per reference, in the same order")
    return [Utterance(normalize(r, normalizer, lang), normalize(h, normalizer, lang), lang)
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
