"""WER/CER against hand-computed cases, the normalizers, and the empty-text conventions."""

import jiwer
import pytest

from evaluation.wer import normalize, score_corpus, score_utterance, seed_tts_normalize


# --- word errors -----------------------------------------------------------------------------

def test_substitution():
    s = score_utterance("the cat sat", "the dog sat")
    assert (s.substitutions, s.deletions, s.insertions, s.ref_words) == (1, 0, 0, 3)
    assert s.wer == pytest.approx(1 / 3)


def test_deletion():
    s = score_utterance("the cat sat down", "the cat down")
    assert (s.substitutions, s.deletions, s.insertions, s.ref_words) == (0, 1, 0, 4)
    assert s.wer == pytest.approx(1 / 4)


def test_insertion_can_push_wer_above_one():
    s = score_utterance("hello", "hello big wide world")
    assert (s.substitutions, s.deletions, s.insertions, s.ref_words) == (0, 0, 3, 1)
    assert s.wer == pytest.approx(3.0)


def test_cer_counts_characters_including_spaces():
    s = score_utterance("abc de", "abd de")  # 6 reference chars, one substituted
    assert s.char_errors == 1 and s.ref_chars == 6
    assert s.cer == pytest.approx(1 / 6)


def test_corpus_and_mean_of_utterances_differ():
    # utt 1: 10 words, 0 errors; utt 2: 2 words, 1 deletion.
    refs = ["one two three four five six seven eight nine ten", "hi there"]
    hyps = ["one two three four five six seven eight nine ten", "hi"]
    scores, total = score_corpus(refs, hyps)
    assert [s.wer for s in scores] == [0.0, 0.5]
    assert total.wer_corpus == pytest.approx(1 / 12)  # pooled: 1 error / 12 reference words
    assert total.wer_mean == pytest.approx(0.25)  # Seed-TTS-eval: (0 + 0.5) / 2
    assert total.wer_corpus == pytest.approx(jiwer.wer(refs, hyps))  # jiwer on lists is the corpus figure
    # chars: utt 2 "hi there" (8) -> "hi": 6 deletions; utt 1 has 48 chars
    assert total.cer_corpus == pytest.approx(6 / 56)
    assert total.cer_mean == pytest.approx((0 + 6 / 8) / 2)
    assert (total.n, total.deletions, total.ref_words) == (2, 1, 12)


def test_summary_as_dict_is_flat_numbers():
    _, total = score_corpus(["a b"], ["a c"])
    d = total.as_dict()
    assert d["wer_corpus"] == 0.5 and d["wer_mean"] == 0.5 and d["n"] == 1.0
    assert all(isinstance(v, float) for v in d.values())


def test_mismatched_lengths_and_empty_input_are_errors():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score_corpus(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        score_corpus([], [])


# --- empty texts -----------------------------------------------------------------------------

def test_empty_reference_convention():
    both = score_utterance("", "")
    assert both.wer == 0.0 and both.cer == 0.0 and both.ref_words == 0
    one = score_utterance("", "x")
    assert one.wer == 1.0 and one.cer == 1.0 and one.insertions == 1
    # capped at 1 per utterance (jiwer itself would return the insertion count, 2)
    two = score_utterance("", "x y")
    assert two.wer == 1.0 and two.insertions == 2 and jiwer.wer("", "x y") == 2
    # a reference that normalizes to nothing counts as empty
    assert score_utterance("¿?!", "").wer == 0.0


def test_empty_hypothesis_is_all_deletions():
    s = score_utterance("una casa blanca", "")
    assert (s.deletions, s.ref_words, s.wer, s.cer) == (3, 3, 1.0, 1.0)


def test_corpus_with_empty_references():
    # the empty-reference utterance adds its 2 inserted words to the errors and 0 to the denominator
    scores, total = score_corpus(["", "a b c d"], ["x y", "a b c d"])
    assert [s.wer for s in scores] == [1.0, 0.0]
    assert total.wer_corpus == pytest.approx(2 / 4) and total.wer_mean == pytest.approx(0.5)
    assert total.empty_references == 1
    _, silent = score_corpus(["", ""], ["", ""])
    assert silent.wer_corpus == 0.0 and silent.wer_mean == 0.0
    _, noisy = score_corpus(["", ""], ["", "x"])
    assert noisy.wer_corpus == 1.0 and noisy.wer_mean == 0.5


# --- normalization ---------------------------------------------------------------------------

def test_whisper_normalizer_lowercases_and_drops_punctuation():
    assert normalize("Hello, World!  How are you?") == "hello world how are you"
    assert normalize("it's [noise] fine (really)") == "it s fine"  # apostrophe -> space, brackets dropped
    assert score_utterance("Hello, World!", "hello world").wer == 0.0


def test_seed_rule_keeps_apostrophes_and_deletes_other_punctuation():
    assert seed_tts_normalize("Don't STOP, it's fine!") == "don't stop it's fine"
    assert normalize("L’acqua è fredda.", "seed") == "l'acqua è fredda"  # typographic apostrophe unified
    assert normalize("well-known", "seed") == "wellknown"  # deleted, not replaced by a space (as Seed-TTS-eval)
    assert score_utterance("Don't stop.", "dont stop", normalizer="seed").wer == pytest.approx(0.5)


def test_none_normalizer_only_tidies_whitespace():
    assert normalize("  Hola,   Mundo ", "none") == "Hola, Mundo"
    assert score_utterance("Hola", "hola", normalizer="none").wer == 1.0


def test_unknown_normalizer_is_named():
    with pytest.raises(ValueError, match="unknown text normalizer 'basic'.*whisper, seed, none"):
        normalize("x", "basic")


@pytest.mark.parametrize("mode", ["whisper", "seed"])
def test_spanish_and_italian_accents_are_kept(mode):
    assert normalize("¿Qué pasó, señor? ¡Ñandú!", mode) == "qué pasó señor ñandú"
    assert normalize("Perché è già così", mode) == "perché è già così"
    # an accent is a different word: "que" for "qué" is a substitution
    s = score_utterance("¿Qué pasó?", "que pasó", normalizer=mode)
    assert s.substitutions == 1 and s.wer == 0.5
    assert s.cer == pytest.approx(1 / 8)  # "qué pasó": 8 chars, one substituted


def test_composed_and_decomposed_accents_are_equal():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    for mode in ("whisper", "seed", "none"):
        assert score_utterance(composed, decomposed, normalizer=mode).wer == 0.0
