"""Word and character error rates of ASR transcripts against reference texts (jiwer 4).

Two figures per metric, because papers report both and they differ (REFERENCE section 5):
- corpus WER: total word errors (S + D + I) over all utterances / total reference words — what
  `jiwer.wer(list_of_refs, list_of_hyps)` returns;
- mean WER: the mean of per-utterance WERs — Seed-TTS-eval's figure. Short utterances weigh as
  much as long ones, so one wrong word in a 2-word sentence moves it a lot.
CER is the same over characters (spaces included, as jiwer counts them).

Both texts are normalized first (`normalize`), with one of
- "whisper" (default): Whisper's BasicTextNormalizer — lowercase, drop [bracketed] and
  (parenthesized) spans, turn punctuation and symbols into spaces (so "don't" -> "don t" on both
  sides), keep accents. Language independent; Whisper's English normalizer needs a spelling map
  that ships with the tokenizer, so it is not used.
- "seed": Seed-TTS-eval's rule — delete punctuation except apostrophes, lowercase. Seed-TTS-eval
  deletes ASCII and CJK punctuation; here every Unicode punctuation character (so also ¿ ¡ « »),
  and the typographic apostrophe ’ becomes ' first so "l’acqua" and "l'acqua" agree.
- "none": only whitespace is tidied.
Every mode applies Unicode NFC (a decomposed "é" equals a composed one) and collapses whitespace.

Empty references (after normalization), defined explicitly because jiwer 4 returns the raw
insertion count for them (`jiwer.wer('', 'a b') == 2`):
- per utterance: WER/CER = 0 if the hypothesis is empty too, else 1 (so `wer('', '') == 0`,
  `wer('', 'x') == 1`, and one such utterance can move the mean by at most 1/n);
- corpus: their inserted words count as errors, their (zero) reference words add nothing to the
  denominator; a corpus with no reference words at all scores 0 without errors, else 1.
An empty hypothesis against a non-empty reference is all deletions: WER = 1.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import asdict, dataclass

import jiwer

NORMALIZERS = ("whisper", "seed", "none")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})  # ’ and ʼ -> '


@functools.lru_cache(maxsize=1)
def _basic_normalizer():
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def seed_tts_normalize(text: str) -> str:
    """Seed-TTS-eval's rule: delete punctuation except apostrophes, lowercase (see the module docstring)."""
    text = unicodedata.normalize("NFC", text).translate(_APOSTROPHES)
    text = "".join(c for c in text if c == "'" or not unicodedata.category(c).startswith("P"))
    return text.lower()


def normalize(text: str, mode: str = "whisper") -> str:
    """Text as it is compared: `mode` in NORMALIZERS, then NFC and single spaces, stripped."""
    if mode not in NORMALIZERS:
        raise ValueError(f"unknown text normalizer '{mode}': choose one of {', '.join(NORMALIZERS)}")
    text = unicodedata.normalize("NFC", text)
    if mode == "whisper":
        text = _basic_normalizer()(text)
    elif mode == "seed":
        text = seed_tts_normalize(text)
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


@dataclass(frozen=True)
class UtteranceScore:
    """Errors of one hypothesis against its reference, both normalized (the strings compared)."""

    reference: str
    hypothesis: str
    wer: float
    cer: float
    substitutions: int  # word level
    deletions: int
    insertions: int
    ref_words: int
    char_errors: int  # S + D + I at character level
    ref_chars: int

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


@dataclass(frozen=True)
class CorpusScore:
    """Summary over n utterances: corpus (pooled) and mean-of-utterance rates, and the pooled counts."""

    n: int
    wer_corpus: float
    wer_mean: float  # Seed-TTS-eval's figure
    cer_corpus: float
    cer_mean: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    char_errors: int
    ref_chars: int
    empty_references: int  # utterances whose normalized reference has no words

    def as_dict(self) -> dict[str, float]:
        """Flat name -> number, e.g. for `mlflow.log_metrics`."""
        return {k: float(v) for k, v in asdict(self).items()}


def _rate(errors: int, total: int) -> float:
    # The empty-reference convention of the module docstring.
    if total == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / total


def score_utterance(reference: str, hypothesis: str, normalizer: str = "whisper") -> UtteranceScore:
    """WER/CER and word-level S/D/I of one hypothesis against one reference (texts are normalized first)."""
    ref, hyp = normalize(reference, normalizer), normalize(hypothesis, normalizer)
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    ref_words = words.hits + words.substitutions + words.deletions
    ref_chars = chars.hits + chars.substitutions + chars.deletions
    word_errors = words.substitutions + words.deletions + words.insertions
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    return UtteranceScore(reference=ref, hypothesis=hyp, wer=_rate(word_errors, ref_words),
                          cer=_rate(char_errors, ref_chars), substitutions=words.substitutions,
                          deletions=words.deletions, insertions=words.insertions, ref_words=ref_words,
                          char_errors=char_errors, ref_chars=ref_chars)


def summarize(scores: list[UtteranceScore]) -> CorpusScore:
    """Pool utterance scores into corpus and mean rates (n >= 1)."""
    if not scores:
        raise ValueError("no utterances to score: pass at least one (reference, hypothesis) pair")
    S, D, I = (sum(getattr(s, k) for s in scores) for k in ("substitutions", "deletions", "insertions"))
    ref_words = sum(s.ref_words for s in scores)
    char_errors, ref_chars = sum(s.char_errors for s in scores), sum(s.ref_chars for s in scores)
    n = len(scores)
    return CorpusScore(n=n, wer_corpus=_rate(S + D + I, ref_words), wer_mean=sum(s.wer for s in scores) / n,
                       cer_corpus=_rate(char_errors, ref_chars), cer_mean=sum(s.cer for s in scores) / n,
                       substitutions=S, deletions=D, insertions=I, ref_words=ref_words, char_errors=char_errors,
                       ref_chars=ref_chars, empty_references=sum(s.ref_words == 0 for s in scores))


def score_corpus(references: list[str], hypotheses: list[str],
                 normalizer: str = "whisper") -> tuple[list[UtteranceScore], CorpusScore]:
    """Score hypotheses against references pairwise -> (per-utterance scores, corpus summary)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: pass one hypothesis "
                         f"per reference, in the same order")
    scores = [score_utterance(r, h, normalizer) for r, h in zip(references, hypotheses)]
    return scores, summarize(scores)
