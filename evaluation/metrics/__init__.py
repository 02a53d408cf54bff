"""Per-utterance evaluation metrics, chosen by name (beside the ASR backends in evaluation/asr/).

    text.py     wer, cer: ASR transcripts against the reference text, under a text normalizer
    speaker.py  spk_sim: speaker-embedding cosine of the generated and the reference speech
    quality.py  mos_dnsmos, mos_utmos: predicted MOS of the generated speech alone

Adding a metric:
1. In `evaluation/metrics/<family>.py`, either one function per utterance, `fn(u: Utterance) -> float |
   Ratio` (`base.py`: a `Ratio(errors, total)` gives both the mean and the pooled figure), or, for a
   model-based metric, `batch(utterances, options) -> list[float]` that batches and loads its model once
   per process; and its spec beside it: `Metric(name, fn=... | batch=..., aggregate=("mean",),
   higher_is_better=..., needs=(...), options="<its ScoreConfig field>")`.
2. One line in METRICS below (and, if it has settings, their dataclass as a ScoreConfig field).
3. A unit test on hand-worked or synthesized cases.
The report's columns, summary.json keys ('<name>_<aggregation>'), MLflow names (eval/<name>_<aggregation>,
eval/<system>/...), compare's columns and search's --metric names come from the spec; the report code
is not edited.
"""
from __future__ import annotations

from typing import Sequence

from evaluation.metrics.base import AGGREGATIONS, Metric, Ratio, Utterance, evaluate
from evaluation.metrics.quality import MOS_DNSMOS, MOS_UTMOS
from evaluation.metrics.speaker import SPK_SIM
from evaluation.metrics.text import CER, NORMALIZERS, WER, normalize, text_utterances
from s2s.registry import lookup

METRICS: dict[str, Metric] = {
    WER.name: WER,
    CER.name: CER,
    SPK_SIM.name: SPK_SIM,
    MOS_DNSMOS.name: MOS_DNSMOS,
    MOS_UTMOS.name: MOS_UTMOS,
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
