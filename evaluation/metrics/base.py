"""What a metric is: a function of one utterance, plus how its values are aggregated.

Per-utterance compute is kept apart from aggregation (as lm-evaluation-harness does): a metric's
function scores one `Utterance`, and its spec names the aggregations the report shows. Returning a
`Ratio(errors, total)` instead of a float lets one function give both figures papers report for
error rates:
- "mean": the mean of the per-utterance rates. Short utterances weigh as much as long ones, so one
  wrong word in a 2-word sentence moves it a lot (Seed-TTS-eval reports this one, under its own
  text normalizer);
- "pooled": sum(errors) / sum(total) over the corpus — "corpus WER", what `jiwer.wer(list, list)`
  returns.

Empty totals (an empty reference, after normalization), defined explicitly because jiwer 4 returns
the raw insertion count for them (`jiwer.wer('', 'a b') == 2`):
- per utterance: the rate is 0 if there are no errors either, else 1 (so one such utterance moves
  the mean by at most 1/n);
- pooled: their errors (insertions) count, their zero total adds nothing to the denominator; a
  corpus whose total is 0 scores 0 without errors, else 1.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass(frozen=True)
class Utterance:
    """One scored item. Text metrics read `reference`/`hypothesis`: the texts as compared, i.e.
    already normalized by the scoring's text normalizer. Wave metrics (speaker similarity, MOS)
    read the waves, which text-only scoring leaves None."""

    reference: str = ""
    hypothesis: str = ""
    language: str = ""
    reference_wave: Any = None  # 1-D float tensor [T] at `sample_rate`
    hypothesis_wave: Any = None
    sample_rate: int | None = None


def rate(errors: float, total: float) -> float:
    """errors / total, with the empty-total convention of the module docstring."""
    if total == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / total


@dataclass(frozen=True)
class Ratio:
    """A per-utterance error count over its reference size (words, characters): its `rate` feeds
    the "mean" aggregation, the counts themselves the "pooled" one."""

    errors: float
    total: float

    @property
    def rate(self) -> float:
        return rate(self.errors, self.total)

    def __float__(self) -> float:
        return self.rate


# --- aggregations: a list of per-utterance values -> one figure ----------------------------------
# The first docstring line of each is printed under the report's table, so keep it short.

def mean(values: Sequence[float | Ratio]) -> float:
    """mean: the mean of the per-utterance values."""
    return sum(float(v) for v in values) / len(values)


def pooled(values: Sequence[float | Ratio]) -> float:
    """pooled: errors summed over all utterances / their totals summed (corpus-level)."""
    if not all(isinstance(v, Ratio) for v in values):
        raise ValueError("the 'pooled' aggregation needs Ratio(errors, total) values; this metric returns "
                         "plain numbers: aggregate it with 'mean' instead")
    return rate(sum(v.errors for v in values), sum(v.total for v in values))


def std(values: Sequence[float | Ratio]) -> float:
    """std: the population standard deviation of the per-utterance values."""
    m = mean(values)
    return math.sqrt(sum((float(v) - m) ** 2 for v in values) / len(values))


AGGREGATIONS: dict[str, Callable[[Sequence[float | Ratio]], float]] = {"mean": mean, "pooled": pooled, "std": std}
# What a metric may ask the scorer for: the texts, and (for later wave metrics) the two waves.
NEEDS = ("text", "reference_wave", "hypothesis_wave")


@dataclass(frozen=True)
class Metric:
    """A registered metric: how one utterance is scored, and how the values are aggregated and read.

    Scoring is either `fn(u: Utterance) -> float | Ratio`, one utterance at a time (text metrics), or
    `batch(utterances, options) -> list[float | Ratio]`, all at once (model-based metrics: they batch
    and load their model once per process). `options` is the metric's settings dataclass, the
    ScoreConfig field named by `options` (e.g. "speaker" -> ScoreConfig.speaker), or None.

    name: short identifier; figures are keyed '<name>_<aggregation>' in summary.json and MLflow and
    per-utterance columns '<system>_<name>' in utterances.csv. label: the name in printed reports;
    `detail(options)` adds what backend measured it ("resemblyzer GE2E").
    """

    name: str
    fn: Callable[[Utterance], float | Ratio] | None = None
    aggregate: tuple[str, ...] = ("mean", "pooled")
    higher_is_better: bool = False
    needs: tuple[str, ...] = ("text",)
    label: str = ""
    batch: Callable[[Sequence[Utterance], Any], list[float | Ratio]] | None = None
    options: str = ""
    detail: Callable[[Any], str] | None = None
    note: str = ""  # one sentence the report prints under its table: what the figure does and does not measure
    default: bool = True  # scored unless ScoreConfig.metrics names others (False: needs weights a user must supply)

    def __post_init__(self):
        # Fail when the spec is written, not halfway through a scoring run.
        if (self.fn is None) == (self.batch is None):
            raise ValueError(f"metric '{self.name}': give exactly one of fn (per utterance) or batch (all at once)")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"metric name '{self.name}' must be lowercase letters, digits and '_' "
                             f"(it becomes summary.json keys and MLflow metric names)")
        for agg in self.aggregate:
            if agg not in AGGREGATIONS:
                raise ValueError(f"metric '{self.name}': unknown aggregation '{agg}'; choose from "
                                 f"{', '.join(AGGREGATIONS)}")
        for need in self.needs:
            if need not in NEEDS:
                raise ValueError(f"metric '{self.name}': unknown need '{need}'; choose from {', '.join(NEEDS)}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def score(self, utterances: Sequence[Utterance], options: Any = None) -> list[float | Ratio]:
        """One value per utterance, in order."""
        if self.fn is not None:
            return [self.fn(u) for u in utterances]
        values = self.batch(utterances, options)
        if len(values) != len(utterances):
            raise ValueError(f"metric '{self.name}' returned {len(values)} values for {len(utterances)} utterances")
        return values

    def title(self, options: Any = None) -> str:
        """The label with its backend, e.g. "speaker similarity, resemblyzer GE2E d-vector"."""
        return f"{self.label}, {self.detail(options)}" if self.detail is not None else self.label

    def keys(self) -> list[str]:
        """The names of this metric's aggregated figures, e.g. ['wer_mean', 'wer_pooled']."""
        return [f"{self.name}_{agg}" for agg in self.aggregate]

    def describe(self) -> dict:
        """The spec as plain data (for summary.json, so a report can be read without the code)."""
        return {"label": self.label, "aggregate": list(self.aggregate), "higher_is_better": self.higher_is_better,
                "needs": list(self.needs), **({"note": self.note} if self.note else {})}


def evaluate(metrics: Sequence[Metric], utterances: Sequence[Utterance], options: dict[str, Any] | None = None
             ) -> tuple[dict[str, list[float | Ratio]], dict[str, float]]:
    """Score every utterance with every metric -> (per-utterance values by metric name, aggregated
    figures keyed '<name>_<aggregation>'). `options` maps a metric's `options` name to its settings."""
    if not utterances:
        raise ValueError("no utterances to score: pass at least one (reference, hypothesis) pair")
    options = options or {}
    values = {m.name: m.score(utterances, options.get(m.options)) for m in metrics}
    figures = {}
    for m in metrics:
        for agg, key in zip(m.aggregate, m.keys()):
            try:
                figures[key] = AGGREGATIONS[agg](values[m.name])
            except ValueError as e:
                raise ValueError(f"metric '{m.name}': {e}") from None
    return values, figures


def resampled(wave, sample_rate: int, target_rate: int) -> torch.Tensor:
    """A 1-D float32 wave [T] (tensor or array) at `sample_rate`, resampled to `target_rate` -> [T']."""
    import torchaudio.functional as AF

    wave = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    if sample_rate == target_rate or wave.numel() == 0:
        return wave
    return AF.resample(wave, sample_rate, target_rate)
