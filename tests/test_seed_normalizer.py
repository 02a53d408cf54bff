"""The "seed" text normalizer (evaluation/metrics/text.py) against Seed-TTS-eval's own code.

`seed_tts_eval_process_one` below is `process_one` of run_wer.py in BytedanceSpeech/seed-tts-eval,
commit 95003fe41923e46cf45d14a13143b0879f38415e (the only commit touching run_wer.py; HEAD
752f4297f090c46bb1a55a1f7439e5944ddefe8d has the same file), with its normalization lines copied
verbatim. Two changes only, so it can run here: `lang` (a module global read from sys.argv[3] there)
is a parameter, and it returns the normalized (truth, hypo) instead of calling
`jiwer.compute_measures(truth, hypo)`. That call is reproduced by `seed_tts_eval_wer`: in jiwer 3.0.x
(the jiwer of June 2024; compute_measures is gone from jiwer 4) compute_measures(truth, hypothesis)
is `process_words(reference=truth, hypothesis=hypothesis)` with the default transform `wer_default`
(RemoveMultipleSpaces, Strip, ReduceToListOfListOfWords), the same default jiwer 4's process_words has.
"""
import string

import jiwer
import numpy as np
import pytest
from zhon.hanzi import punctuation

from evaluation.metrics import score_texts
from evaluation.metrics.text import NORMALIZERS, normalize, seed_normalize, text_utterances, word_edits

# --- Seed-TTS-eval, run_wer.py @ 95003fe (verbatim but for `lang` as a parameter and the return) ---------

punctuation_all = punctuation + string.punctuation


def seed_tts_eval_process_one(hypo, truth, lang):
    raw_truth = truth
    raw_hypo = hypo

    for x in punctuation_all:
        if x == '\'':
            continue
        truth = truth.replace(x, '')
        hypo = hypo.replace(x, '')

    truth = truth.replace('  ', ' ')
    hypo = hypo.replace('  ', ' ')

    if lang == "zh":
        truth = " ".join([x for x in truth])
        hypo = " ".join([x for x in hypo])
    elif lang == "en":
        truth = truth.lower()
        hypo = hypo.lower()
    else:
        raise NotImplementedError

    return truth, hypo


def seed_tts_eval_text(text, lang):
    """One text as Seed-TTS-eval normalizes it (reference and hypothesis get the same treatment)."""
    truth, hypo = seed_tts_eval_process_one(text, text, lang)
    assert truth == hypo
    return truth


def seed_tts_eval_wer(reference, hypothesis, lang):
    """Seed-TTS-eval's per-utterance WER: its normalization, then compute_measures(truth, hypo)["wer"]."""
    truth, hypo = seed_tts_eval_process_one(hypothesis, reference, lang)
    return jiwer.process_words(truth, hypo).wer


# --- the table: (text, language, what Seed-TTS-eval makes of it, worked by the code above) ---------------

# For "es" and "it" Seed-TTS-eval has no rule (it raises): ours applies its English rule.
CASES = [
    # apostrophes: the ASCII one stays; the typographic ’ is in zhon.hanzi.punctuation and is deleted
    ("Don't STOP, it's fine!", "en", "don't stop it's fine"),
    ("l'acqua", "it", "l'acqua"),
    ("L’acqua è fredda.", "it", "lacqua è fredda"),
    ("‘Quoted’ and “double”", "en", "quoted and double"),
    ("the ＇fullwidth＇ one", "en", "the fullwidth one"),  # U+FF07 is not the ASCII apostrophe: deleted
    # accents are kept, uppercase accented letters are lowercased by str.lower
    ("¿Qué tal?", "es", "¿qué tal"),  # ¿ and ¡ are in neither set: kept
    ("¡Hola, señor!", "es", "¡hola señor"),
    ("perché", "it", "perché"),
    ("È così", "it", "è così"),
    ("ÀÉÌÒÙ Ñ", "es", "àéìòù ñ"),
    # numerals are not spelled out; the point of "1.5" is deleted, not replaced by a space
    ("3 gatti", "it", "3 gatti"),
    ("1.5", "es", "15"),
    ("Costa 3,50 € (o 4$)", "it", "costa 350 € o 4"),  # € is not in either set; $ ( ) are
    # Italian elisions
    ("dell'anno", "it", "dell'anno"),
    ("c'è", "it", "c'è"),
    ("Dell’Anno, C’È", "it", "dellanno cè"),
    # Spanish guillemets are kept (neither ASCII nor in zhon), dashes and ellipses go
    ("«Hola», dijo.", "es", "«hola» dijo"),
    ("sí — no… tal vez", "es", "sí no tal vez"),  # " — " -> "  " -> " ": deletion comes before the replace
    ("sí  —  no", "es", "sí  no"),  # "  —  " -> 4 spaces -> 2: one pass
    ("well-known", "en", "wellknown"),
    # spaces: "  " -> " " once, in one left-to-right pass
    ("a  b", "en", "a b"),
    ("a   b", "en", "a  b"),
    ("a    b", "en", "a  b"),
    ("a     b", "en", "a   b"),
    ("a , b", "en", "a b"),  # " , " -> "  " -> " "
    (" Hello world. ", "en", " hello world "),  # leading/trailing spaces are not stripped
    ("tab\there\u00a0nbsp", "en", "tab\there\u00a0nbsp"),  # other whitespace is left alone
    ("ideographic\u3000space", "en", "ideographicspace"),  # U+3000 is in zhon.hanzi.punctuation
    # no Unicode normalization: a decomposed é stays decomposed
    ("cafe\u0301", "en", "cafe\u0301"),
    ("CAFÉ", "en", "café"),
    # Chinese: punctuation deleted, characters space-joined, nothing lowercased
    ("你好，世界。", "zh", "你 好 世 界"),
    ("《红楼梦》是一本书！", "zh", "红 楼 梦 是 一 本 书"),
    ("我有3个iPhone", "zh", "我 有 3 个 i P h o n e"),
    ("你好 世界", "zh", "你 好   世 界"),  # the space is a character too
    ("「引号」…——", "zh", "引 号"),
]


@pytest.mark.parametrize("text,language,expected", CASES)
def test_seed_normalizer_equals_seed_tts_eval(text, language, expected):
    seed_language = "zh" if language == "zh" else "en"  # es/it: the English rule
    assert seed_tts_eval_text(text, seed_language) == expected  # the table was worked by their code
    assert seed_normalize(text, language) == expected
    assert normalize(text, "seed", language) == expected  # no NFC or whitespace tidying on top


@pytest.mark.parametrize("language", ["es", "it", "en", "", "fr", "EN"])
def test_every_language_but_zh_gets_the_english_rule(language):
    for text, _, _ in CASES:
        assert normalize(text, "seed", language) == seed_tts_eval_text(text, "en")


@pytest.mark.parametrize("language", ["zh", "ZH", "zh-CN", "zh_tw"])
def test_zh_codes_get_the_chinese_rule(language):
    assert normalize("你好，世界。ABC", "seed", language) == "你 好 世 界 A B C"


def test_seed_tts_eval_rejects_other_languages():
    # what "the English rule for es/it" extends: their code has no rule for other languages
    with pytest.raises(NotImplementedError):
        seed_tts_eval_process_one("hola", "hola", "es")


def test_zhon_punctuation_is_the_one_seed_tts_eval_used():
    # zhon 2.0.0 .. 2.1.1 (Seed-TTS-eval, June 2024, did not pin zhon; 2.0.2 was current then): 82 characters.
    # zhon 1.x lacks the fullwidth full stop U+FF0E.
    assert punctuation == (
        "＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､\u3000、〃〈〉《》「」『』【】〔〕〖〗〘〙〚〛"
        "〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏﹑﹔·．！？｡。")
    assert len(punctuation) == 82


def test_every_punctuation_character_but_the_apostrophe_is_deleted():
    kept = "'"
    for c in punctuation_all:
        assert seed_normalize(f"a{c}b", "en") == ("a'b" if c == kept else "ab"), repr(c)


def test_other_normalizers_ignore_the_language():
    for mode in ("whisper", "seed-like", "none"):
        for text, _, _ in CASES:
            assert normalize(text, mode, "zh") == normalize(text, mode, "es") == normalize(text, mode)


def test_seed_keeps_what_seed_like_unifies():
    # the difference between the two, on the typographic apostrophe and on NFC
    assert normalize("l’acqua", "seed-like") == "l'acqua" and normalize("l’acqua", "seed", "it") == "lacqua"
    assert normalize("cafe\u0301", "seed-like") == "café" and normalize("cafe\u0301", "seed", "en") == "cafe\u0301"
    assert normalize("¿Qué?", "seed-like") == "qué" and normalize("¿Qué?", "seed", "es") == "¿qué"
    assert normalize("1+1=2 $", "seed-like") == "1+1=2 $" and normalize("1+1=2 $", "seed", "en") == "112 "
    assert list(NORMALIZERS)[-1] == "seed"


def test_text_utterances_normalize_each_utterance_in_its_language():
    refs, hyps = ["你好，世界。", "¿Qué TAL?"], ["你好世界", "que tal"]
    a, b = text_utterances(refs, hyps, "seed", ["zh", "es"])
    assert (a.reference, a.hypothesis, a.language) == ("你 好 世 界", "你 好 世 界", "zh")
    assert (b.reference, b.hypothesis, b.language) == ("¿qué tal", "que tal", "es")
    with pytest.raises(ValueError, match="2 references but 1 languages"):
        text_utterances(refs, hyps, "seed", ["zh"])


# --- WER: ours under "seed" equals Seed-TTS-eval's procedure -------------------------------------------

PAIRS = [  # (reference, hypothesis as an ASR would give it, language)
    ("Don't stop, it's fine!", " Don't stop. It's fine.", "en"),  # Whisper's leading space
    ("Hello world, how are you?", " hello, world how r you", "en"),
    ("a  b   c", "a b c", "en"),  # leftover double spaces: jiwer's default transform collapses them
    ("A — B", "a b", "en"),
    ("L’acqua è fredda.", "L'acqua è fredda.", "it"),  # ’ deleted vs ' kept: one substitution
    ("dell'anno, c'è «tempo».", "Dell'anno c'è tempo", "it"),  # « » kept in the reference only
    ("¿Qué tal? Bien, 1.5 euros.", "Que tal bien 1,5 euros", "es"),
    ("你好，世界。", "你好世界", "zh"),
    ("今天 天气很好！", "今天天气真好", "zh"),
    ("我有3个iPhone。", "我有三个 iphone", "zh"),
]


def test_per_utterance_wer_equals_seed_tts_eval():
    refs, hyps, langs = map(list, zip(*PAIRS))
    utterances, values, figures = score_texts(refs, hyps, "seed", langs)
    expected = [seed_tts_eval_wer(r, h, "zh" if lang == "zh" else "en") for r, h, lang in PAIRS]
    assert [v.rate for v in values["wer"]] == pytest.approx(expected)
    assert figures["wer_mean"] == pytest.approx(np.mean(expected))  # average_wer.py: np.mean of the rates
    assert len(set(expected)) > 2  # the pairs are not all trivially equal


def test_leftover_spaces_do_not_change_word_edits():
    # the "seed" strings keep double spaces; jiwer's default word transform makes them irrelevant
    ref, hyp = normalize("X  —  y,   z", "seed", "en"), normalize("x y z", "seed", "en")
    assert ref == "x  y  z" and hyp == "x y z"
    e = word_edits(ref, hyp)
    assert (e.hits, e.substitutions, e.deletions, e.insertions) == (3, 0, 0, 0)
    assert word_edits(" ".join(ref.split()), hyp) == e
