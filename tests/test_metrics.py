"""The metric registry (evaluation/metrics/): WER/CER against hand-computed cases, mean vs pooled
aggregation, the empty-text conventions, the normalizers, and a new metric reaching the report."""

import jiwer
import pytest

from evaluation.metrics import (AGGREGATIONS, METRICS, Metric, Ratio, Utterance, evaluate, get_metric, normalize,
                                score_texts)
from evaluation.metrics.text import CER, NORMALIZERS, WER, char_edits, seed_like_normalize, text_utterances, word_edits
from s2s.errors import UnknownNameError


def one(reference, hypothesis, normalizer="whisper"):
    """(word edits, WER ratio, CER ratio) of one pair, normalized as the scorer does."""
    [u] = text_utterances([reference], [hypothesis], normalizer)
    return word_edits(u.reference, u.hypothesis), WER.fn(u), CER.fn(u)


# --- word and character errors ----------------------------------------------------------------

def test_substitution():
    e, wer, _ = one("the cat sat", "the dog sat")
    assert (e.substitutions, e.deletions, e.insertions, e.reference_length) == (1, 0, 0, 3)
    assert wer == Ratio(1, 3) and wer.rate == pytest.approx(1 / 3)


def test_deletion():
    e, wer, _ = one("the cat sat down", "the cat down")
    assert (e.substitutions, e.deletions, e.insertions, e.reference_length) == (0, 1, 0, 4)
    assert wer.rate == pytest.approx(1 / 4)


def test_insertion_can_push_wer_above_one():
    e, wer, _ = one("hello", "hello big wide world")
    assert (e.substitutions, e.deletions, e.insertions, e.reference_length) == (0, 0, 3, 1)
    assert wer.rate == pytest.approx(3.0)


def test_cer_counts_characters_including_spaces():
    e = char_edits("abc de", "abd de")  # 6 reference chars, one substituted
    assert e.errors == 1 and e.reference_length == 6
    assert one("abc de", "abd de")[2].rate == pytest.approx(1 / 6)


# --- aggregation: mean of per-utterance rates vs pooled ---------------------------------------

def test_corpus_pooled_and_mean_of_utterances_differ():
    # utt 1: 10 words, 0 errors; utt 2: 2 words, 1 deletion.
    refs = ["one two three four five six seven eight nine ten", "hi there"]
    hyps = ["one two three four five six seven eight nine ten", "hi"]
    _, values, figures = score_texts(refs, hyps)
    assert values["wer"] == [Ratio(0, 10), Ratio(1, 2)]
    assert figures["wer_pooled"] == pytest.approx(1 / 12)  # 1 error / 12 reference words
    assert figures["wer_mean"] == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert figures["wer_pooled"] == pytest.approx(jiwer.wer(refs, hyps))  # jiwer on lists is the pooled figure
    # chars: utt 2 "hi there" (8) -> "hi": 6 deletions; utt 1 has 48 chars
    assert figures["cer_pooled"] == pytest.approx(6 / 56)
    assert figures["cer_mean"] == pytest.approx((0 + 6 / 8) / 2)
    assert set(figures) == {"wer_pooled", "wer_mean", "cer_pooled", "cer_mean"}


def test_named_aggregations_on_hand_worked_values():
    values = [Ratio(0, 10), Ratio(1, 2), Ratio(3, 0)]  # rates 0, 0.5, 1 (empty reference with insertions)
    assert AGGREGATIONS["mean"](values) == pytest.approx(0.5)
    assert AGGREGATIONS["pooled"](values) == pytest.approx(4 / 12)
    assert AGGREGATIONS["std"](values) == pytest.approx((0.5 / 3) ** 0.5)  # population std of 0, .5, 1
    assert AGGREGATIONS["mean"]([0.2, 0.4]) == pytest.approx(0.3)  # plain floats aggregate too


def test_pooled_needs_ratios():
    plain = Metric("plain", lambda u: 0.5, aggregate=("pooled",))
    with pytest.raises(ValueError, match="metric 'plain'.*'pooled' aggregation needs Ratio"):
        evaluate([plain], [Utterance("a", "a")])


def test_mismatched_lengths_and_empty_input_are_errors():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score_texts(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        score_texts([], [])


# --- empty texts -----------------------------------------------------------------------------

def test_empty_reference_convention():
    e, wer, cer = one("", "")
    assert wer.rate == 0.0 and cer.rate == 0.0 and e.reference_length == 0
    e, wer, cer = one("", "x")
    assert wer.rate == 1.0 and cer.rate == 1.0 and e.insertions == 1
    # capped at 1 per utterance (jiwer itself would return the insertion count, 2)
    e, wer, _ = one("", "x y")
    assert wer == Ratio(2, 0) and wer.rate == 1.0 and jiwer.wer("", "x y") == 2
    # a reference that normalizes to nothing counts as empty
    assert one("¿?!", "")[1].rate == 0.0


def test_empty_hypothesis_is_all_deletions():
    e, wer, cer = one("una casa blanca", "")
    assert (e.deletions, e.reference_length, wer.rate, cer.rate) == (3, 3, 1.0, 1.0)


def test_corpus_with_empty_references():
    # the empty-reference utterance adds its 2 inserted words to the errors and 0 to the denominator
    _, values, figures = score_texts(["", "a b c d"], ["x y", "a b c d"])
    assert [v.rate for v in values["wer"]] == [1.0, 0.0]
    assert figures["wer_pooled"] == pytest.approx(2 / 4) and figures["wer_mean"] == pytest.approx(0.5)
    _, _, silent = score_texts(["", ""], ["", ""])
    assert silent["wer_pooled"] == 0.0 and silent["wer_mean"] == 0.0
    _, _, noisy = score_texts(["", ""], ["", "x"])
    assert noisy["wer_pooled"] == 1.0 and noisy["wer_mean"] == 0.5


# --- normalization ---------------------------------------------------------------------------

def test_whisper_normalizer_lowercases_and_drops_punctuation():
    assert normalize("Hello, World!  How are you?") == "hello world how are you"
    assert normalize("it's [noise] fine (really)") == "it s fine"  # apostrophe -> space, brackets dropped
    assert one("Hello, World!", "hello world")[1].rate == 0.0


def test_seed_like_rule_keeps_apostrophes_and_deletes_other_punctuation():
    assert seed_like_normalize("Don't STOP, it's fine!") == "don't stop it's fine"
    assert normalize("L’acqua è fredda.", "seed-like") == "l'acqua è fredda"  # typographic apostrophe unified
    assert normalize("well-known", "seed-like") == "wellknown"  # deleted, not replaced by a space (as Seed-TTS-eval)
    assert one("Don't stop.", "dont stop", "seed-like")[1].rate == pytest.approx(0.5)


def test_seed_is_exact_and_seed_like_is_kept():
    assert list(NORMALIZERS) == ["whisper", "seed-like", "none", "seed"]
    assert normalize("L’acqua è fredda.", "seed", "it") == "lacqua è fredda"  # ’ deleted, as Seed-TTS-eval does
    assert normalize("L’acqua è fredda.", "seed-like") == "l'acqua è fredda"
    with pytest.raises(UnknownNameError, match="unknown text normalizer 'sed'. Did you mean 'seed'"):
        normalize("x", "sed")


def test_none_normalizer_only_tidies_whitespace():
    assert normalize("  Hola,   Mundo ", "none") == "Hola, Mundo"
    assert one("Hola", "hola", "none")[1].rate == 1.0


def test_unknown_normalizer_is_named():
    with pytest.raises(UnknownNameError, match="unknown text normalizer 'basic'.*whisper, seed-like, none"):
        normalize("x", "basic")


@pytest.mark.parametrize("mode", ["whisper", "seed-like"])
def test_spanish_and_italian_accents_are_kept(mode):
    assert normalize("¿Qué pasó, señor? ¡Ñandú!", mode) == "qué pasó señor ñandú"
    assert normalize("Perché è già così", mode) == "perché è già così"
    # an accent is a different word: "que" for "qué" is a substitution
    e, wer, cer = one("¿Qué pasó?", "que pasó", mode)
    assert e.substitutions == 1 and wer.rate == 0.5
    assert cer.rate == pytest.approx(1 / 8)  # "qué pasó": 8 chars, one substituted


def test_composed_and_decomposed_accents_are_equal():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    for mode in NORMALIZERS:  # except seed: Seed-TTS-eval applies no Unicode normalization
        assert one(composed, decomposed, mode)[1].rate == (1.0 if mode == "seed" else 0.0)


# --- the registry ------------------------------------------------------------------------------

def test_registry_lookup_and_spec_checks():
    assert get_metric("wer") is METRICS["wer"] and WER.keys() == ["wer_pooled", "wer_mean"]
    with pytest.raises(UnknownNameError, match="unknown metric 'wre'. Did you mean 'wer'.*Available: wer, cer, spk_sim"):
        get_metric("wre")
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        Metric("x", lambda u: 0.0, aggregate=("median",))
    with pytest.raises(ValueError, match="lowercase"):
        Metric("Speaker Sim", lambda u: 0.0)


def test_a_registered_toy_metric_reaches_summary_rows_report_and_mlflow_names(monkeypatch, tmp_path):
    """A metric added to METRICS alone shows up in summarize's output, the csv rows, the printed report
    and the MLflow names; report.py is not edited. Examples are stand-ins with the fields summarize reads."""
    from types import SimpleNamespace

    import torch

    from evaluation.report import System, flat_metrics, format_report, summarize

    def exact(u):  # 1 when the normalized texts are equal
        return float(u.reference == u.hypothesis)

    monkeypatch.setitem(METRICS, "exact_match", Metric("exact_match", exact, aggregate=("mean",),
                                                       higher_is_better=True, label="Exact match"))
    examples = [SimpleNamespace(key=f"k{i}", language="es", text=t, wave16k=torch.zeros(1600),
                                target24k=torch.zeros(2400)) for i, t in enumerate(["Hola, mundo.", "Sí"])]
    generated = [{"wave": torch.zeros(2048), "tokens": 7, "stopped": True, "dropped_tokens": 0}] * 2
    systems = {"generated": System(texts=["hola mundo", "no"]), "reference": System(texts=["hola mundo", "sí"])}
    summary, rows = summarize(examples, generated, systems, "whisper", 24000)

    assert summary["scores"]["generated"] == pytest.approx(
        {"n": 2, "wer_pooled": 1 / 3, "wer_mean": 0.5, "cer_pooled": 2 / 12, "cer_mean": 0.5, "exact_match_mean": 0.5})
    assert summary["scores"]["reference"]["exact_match_mean"] == 1.0
    assert summary["metrics"]["exact_match"] == {"label": "Exact match", "aggregate": ["mean"], "title": "Exact match",
                                                 "higher_is_better": True, "needs": ["text"]}
    assert [r["generated_exact_match"] for r in rows] == [1.0, 0.0] and rows[1]["generated_wer"] == 1.0

    summary.update(checkpoint="ckpt", strategy="s", step=1, preset="full", asr={"backend": "whisper", "model": ""},
                   generation_seconds=1.0, real_time_factor=1.0)  # what evaluation.score adds
    flat = flat_metrics(summary)
    assert flat["eval/exact_match_mean"] == flat["eval/exact_match"] == 0.5
    assert flat["eval/reference/exact_match_mean"] == 1.0 and flat["eval/wer"] == flat["eval/wer_pooled"]
    report = format_report(summary, tmp_path)
    assert "WER, whisper normalizer" in report and "CER, whisper normalizer" in report
    assert "Exact match, whisper normalizer" in report and "higher is better" in report
    assert "pooled: errors summed" in report and "mean: the mean of the per-utterance values" in report


def test_metrics_needing_waves_are_not_computed_from_texts(monkeypatch):
    monkeypatch.setitem(METRICS, "sim", Metric("sim", lambda u: 1 / 0, aggregate=("mean",),
                                               needs=("reference_wave", "hypothesis_wave")))
    _, values, _ = score_texts(["a"], ["a"])
    assert set(values) == {"wer", "cer"}


def test_a_registered_wave_metric_is_batched_per_system_with_its_options(monkeypatch):
    """A batch metric reading waves gets every utterance of a system in one call, with the settings its
    spec names; it skips the systems that lack what it needs (the floor takes only pair metrics)."""
    from types import SimpleNamespace

    import torch

    from evaluation.report import System, summarize

    calls = []

    def peak(utterances, options):
        calls.append((len(utterances), options, utterances[0].sample_rate))
        return [float(u.hypothesis_wave.abs().max()) for u in utterances]

    monkeypatch.setitem(METRICS, "peak", Metric("peak", batch=peak, aggregate=("mean",), needs=("hypothesis_wave",),
                                                higher_is_better=True, options="loudness", label="peak"))
    examples = [SimpleNamespace(key=f"k{i}", language="es", text="hola", wave16k=torch.zeros(1600),
                                target24k=torch.full((2400,), 0.5)) for i in range(2)]
    generated = [{"wave": torch.full((2048,), v), "tokens": 7, "stopped": True, "dropped_tokens": 0} for v in (0.1, 0.3)]
    systems = {"generated": System(waves=[g["wave"] for g in generated]),
               "reference": System(waves=[e.target24k for e in examples], paired=False),
               "other_speaker": System(waves=[e.target24k for e in examples], pairs_only=True)}
    summary, rows = summarize(examples, generated, systems, "whisper", 24000, [METRICS["peak"], METRICS["wer"]],
                              {"loudness": "the settings"})
    assert calls == [(2, "the settings", 24000), (2, "the settings", 24000)]  # generated, reference; not the floor
    assert summary["scores"]["generated"]["peak_mean"] == pytest.approx(0.2)
    assert summary["scores"]["reference"] == {"n": 2, "peak_mean": 0.5}  # no transcripts: no WER
    assert "other_speaker" not in summary["scores"] and list(summary["metrics"]) == ["peak"]
    assert [r["generated_peak"] for r in rows] == pytest.approx([0.1, 0.3])


def test_a_batch_metric_must_return_one_value_per_utterance():
    bad = Metric("bad", batch=lambda utts, o: [0.0], aggregate=("mean",), needs=("hypothesis_wave",))
    with pytest.raises(ValueError, match="returned 1 values for 2 utterances"):
        evaluate([bad], [Utterance(), Utterance()])
    with pytest.raises(ValueError, match="exactly one of fn"):
        Metric("both", fn=lambda u: 0.0, batch=lambda u, o: [])


def test_unknown_metric_names_in_the_score_config_are_named():
    from evaluation.scoring import ScoreConfig, chosen_metrics

    assert [m.name for m in chosen_metrics(ScoreConfig())] == ["wer", "cer", "spk_sim", "mos_dnsmos"]  # utmos: opt-in
    assert [m.name for m in chosen_metrics(ScoreConfig(metrics=["spk_sim", "wer"]))] == ["spk_sim", "wer"]
    with pytest.raises(UnknownNameError, match="unknown metric 'spk_simm'. Did you mean 'spk_sim'"):
        chosen_metrics(ScoreConfig(metrics=["spk_simm"]))
