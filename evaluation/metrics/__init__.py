"""Per-utterance evaluation metrics, chosen by name (beside the ASR backends in evaluation/asr/).

Adding a metric (speaker similarity, MOS, ...):
1. In `evaluation/metrics/<family>.py`, one function per utterance, `fn(u: Utterance) -> float | Ratio`
   (`base.py`: a `Ratio(errors, total)` gives both the mean and the pooled figure), and its spec beside
   it: `Metric(name, fn, aggregate=("mean",), higher_is_better=..., needs=(...))`.
2. One line in METRICS below.
3. A unit test on hand-worked pairs, empty references included (tests/test_metrics.py).
The report's columns, summary.json keys ('<name>_<aggregation>') and MLflow names
(eval/asr/<system>/<name>_<aggregation>) come from the spec; the report code is not edited.
Today `evaluation.report.summarize` computes the metrics that need only the texts (`needs=("text",)`);
a metric needing waves is registered the same way and waits for the scorer to hand it waves.
"""
from __future__ import annotations

from typing import Sequence

from evaluation.metrics.base import AGGREGATIONS, Metric, Ratio, Utterance, evaluate
from evaluation.metrics.text import CER, NORMALIZERS, WER, normalize, text_utterances
from s2s.registry import lookup

METRICS: dict[str, Metric] = {
    WER.name: WER,
    CER.name: CER,
}


def get_metric(name: str) -> Metric:
    """The metric registered as `name`; an unknown name raises s2s.errors.UnknownNameError with the closest one."""
    return lookup(METRICS, name, "metric")


def text_metrics() -> list[Metric]:
    """The registered metrics computable from the two texts alone, in registry order."""
    return [m for m in METRICS.values() if set(m.needs) <= {"text"}]


def score_texts(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = "whisper",
                languages: Sequence[str] | None = None, metrics: Sequence[Metric] | None = None
                ) -> tuple[list[Utterance], dict[str, list[float | Ratio]], dict[str, float]]:
    """Score hypotheses against references pairwise with `metrics` (default: every text metric in METRICS).

    Returns (the normalized Utterances, per-utterance values by metric name, figures keyed
    '<name>_<aggregation>', e.g. 'wer_pooled' and 'wer_mean').
    """
    utterances = text_utterances(references, hypotheses, normalizer, languages)
    values, figures = evaluate(text_metrics() if metrics is None else metrics, utterances)
    return utterances, values, figures


__all__ = ["AGGREGATIONS", "METRICS", "NORMALIZERS", "Metric", "Ratio", "Utterance", "evaluate", "get_metric",
           "normalize", "score_texts", "text_metrics"]
