"""What `evaluation.score` leaves behind: the summary, a row per utterance, wavs, a plot, MLflow.

    <out>/summary.json      every figure, with the settings that produced it
    <out>/utterances.csv    reference, transcripts, every metric (WER, CER, speaker similarity, MOS, ...)
                            per system, durations, token counts
    <out>/scores.png        per-utterance values of each metric, a box per system
    <out>/wavs/NNN-<key>.wav  the generated speech (24 kHz), and NNN-<key>-reference.wav its reference

A "system" is one row of the report: the generated speech, and the toplines and floor that say what
the figures mean on this data (the reference audio itself, its codec round trip, another speaker's
utterance). The metrics, their summary.json keys, csv columns, MLflow names and report columns all
follow the specs in `evaluation.metrics.METRICS`: adding a metric does not touch this file.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.metrics import AGGREGATIONS, METRICS, Metric, evaluate
from evaluation.metrics.text import text_utterances
from s2s.progress import progress_bar
from s2s.tracking import Run, TrackingConfig, TrackingError


SYSTEMS = {"generated": "generated speech", "reference": "reference audio (topline)",
           "snac_roundtrip": "reference via SNAC (topline)",
           "other_speaker": "another speaker's utterance (floor)"}


@dataclass
class System:
    """What one report row scores, per utterance (in the examples' order).

    texts: ASR transcripts (None: no text metric applies). waves: 1-D float tensors at the codec's
    rate (None: no wave metric applies). paired: metrics that compare the wave with the reference wave
    apply (False for the reference itself: it would be compared with itself). pairs_only: only those
    apply (the other-speaker floor exists for speaker similarity alone).
    """

    texts: list[str] | None = None
    waves: list | None = None
    paired: bool = True
    pairs_only: bool = False

    def takes(self, m: Metric) -> bool:
        """Whether metric `m` has what it needs here."""
        needs = set(m.needs)
        return not (("text" in needs and self.texts is None) or ("hypothesis_wave" in needs and self.waves is None)
                    or ("reference_wave" in needs and not self.paired)
                    or (self.pairs_only and "reference_wave" not in needs))


def summarize(examples: list, generated: list[dict], systems: dict[str, System], normalizer: str,
              sample_rate: int, metrics: list[Metric] | None = None, options: dict[str, Any] | None = None,
              progress: bool = False) -> tuple[dict, list[dict]]:
    """Figures per system for every metric it takes, and one row per utterance.

    metrics: default every registered metric (METRICS, read at call time: a metric added there shows
    up without edits here). options: a metric's settings by its `options` name (e.g. "speaker").
    summary["scores"][system] holds n and '<metric>_<aggregation>' (e.g. wer_pooled, spk_sim_mean);
    summary["metrics"] the specs, so that the report and MLflow names follow the registry.
    """
    metrics = list(METRICS.values()) if metrics is None else metrics
    options = options or {}
    refs, languages = [e.text for e in examples], [e.language for e in examples]
    per_system, values = {}, {}
    todo = {name: [m for m in metrics if system.takes(m)] for name, system in systems.items()}
    bar = progress_bar(total=sum(map(len, todo.values())), desc="metrics", unit="metric", disable=not progress)
    for name, system in systems.items():
        used = todo[name]
        if not used:
            continue
        texts = system.texts if system.texts is not None else [""] * len(refs)
        utterances = [dataclasses.replace(u, reference_wave=e.target24k, sample_rate=sample_rate,
                                          hypothesis_wave=None if system.waves is None else system.waves[i])
                      for i, (u, e) in enumerate(zip(text_utterances(refs, texts, normalizer, languages), examples))]
        values[name], per_system[name] = {}, {"n": len(refs)}
        for m in used:  # one at a time, so that the bar moves (a model-based metric takes ~0.1-1 s per utterance)
            bar.set_postfix_str(f"{m.name} of {name}")
            got, figures = evaluate([m], utterances, options)
            values[name].update(got)
            per_system[name].update(figures)
            bar.update(1)
    bar.close()
    rows = []
    for i, (e, g) in enumerate(zip(examples, generated)):
        row = {"index": i, "key": e.key, "language": e.language, "speaker": getattr(e, "speaker", ""),
               "reference_text": e.text, "input_seconds": round(len(e.wave16k) / 16000, 3),
               "reference_seconds": round(len(e.target24k) / 24000, 3),
               "generated_seconds": round(len(g["wave"]) / sample_rate, 3), "generated_tokens": g["tokens"],
               "stopped_at_end_of_speech": g["stopped"], "dropped_tokens": g["dropped_tokens"]}
        for name, by_metric in values.items():
            if systems[name].texts is not None:
                row[f"{name}_hypothesis"] = systems[name].texts[i]
            row.update({f"{name}_{metric}": round(float(v[i]), 4) for metric, v in by_metric.items()})
        rows.append(row)
    used = [m for m in metrics if any(m.name in v for v in values.values())]
    summary = {"n": len(examples), "normalizer": normalizer, "scores": per_system,
               "metrics": {m.name: {**m.describe(), "title": m.title(options.get(m.options))} for m in used},
               "metric_settings": {m.options: dataclasses.asdict(options[m.options]) for m in used
                                   if m.options and dataclasses.is_dataclass(options.get(m.options))},
               "generated_audio_seconds": sum(len(g["wave"]) for g in generated) / sample_rate,
               "stopped_fraction": sum(g["stopped"] for g in generated) / max(1, len(generated))}
    return summary, rows


def _plot(path: Path, rows: list[dict], summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = summary["metrics"]
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 3.8), squeeze=False)
    for ax, (name, spec) in zip(axes[0], specs.items()):
        systems = [s for s in summary["scores"] if f"{s}_{name}" in rows[0]]
        ax.boxplot([[r[f"{s}_{name}"] for r in rows] for s in systems], showmeans=True)
        ax.set_xticks(range(1, len(systems) + 1), [textwrap.fill(SYSTEMS.get(s, s), 18) for s in systems], fontsize=7)
        note = f", {summary['normalizer']} normalizer" if "text" in spec["needs"] else ""
        ax.set_title(f"{spec['title']}{note}", fontsize=8)
        ax.set_ylabel(f"per utterance ({'higher' if spec['higher_is_better'] else 'lower'} is better)", fontsize=8)
    fig.suptitle(f"{len(rows)} utterances (triangle: mean)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: Path, summary: dict, rows: list[dict], examples: list, generated: list[dict],
                  sample_rate: int) -> None:
    """summary.json, utterances.csv, scores.png and the generated wavs under `out_dir`."""
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    wavs = out_dir / "wavs"
    wavs.mkdir(exist_ok=True)
    for row, g, e in zip(rows, generated, examples):
        # The reference beside each answer, so that both can be heard from the MLflow UI's artifacts.
        for kind, wave, rate in (("wav", g["wave"], sample_rate), ("reference_wav", e.target24k, 24000)):
            name = f"{row['index']:03d}-{row['key']}{'-reference' if kind == 'reference_wav' else ''}.wav"
            sf.write(wavs / name, wave.clamp(-1, 1).numpy(), rate, subtype="PCM_16")
            row[kind] = f"wavs/{name}"
    with open(out_dir / "utterances.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if summary["metrics"]:
        _plot(out_dir / "scores.png", rows, summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False))


def flat_metrics(summary: dict) -> dict[str, float]:
    """The summary's numbers as MLflow metric names under eval/: the generated speech's as
    eval/<metric>_<aggregation>, plus eval/<metric> for its first aggregation (eval/wer = wer_pooled,
    eval/spk_sim = spk_sim_mean: what `search --metric` and `compare` read); the other systems' as
    eval/<system>/<metric>_<aggregation>."""
    out = {k: v for k, v in summary.get("teacher_forced", {}).items()}
    for system, scores in summary["scores"].items():
        out.update({(f"eval/{k}" if system == "generated" else f"eval/{system}/{k}"): v for k, v in scores.items()
                    if k != "n"})
    for name, spec in summary["metrics"].items():
        primary = f"{name}_{spec['aggregate'][0]}"
        if primary in summary["scores"].get("generated", {}):
            out[f"eval/{name}"] = summary["scores"]["generated"][primary]
    for k in ("real_time_factor", "stopped_fraction", "generated_audio_seconds"):
        out[f"eval/{k}"] = summary[k]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def scoring_run(meta: dict, cfg, checkpoint: Path):
    """The MLflow run the results go to, opened before any work (so an unreachable store fails
    first): the checkpoint's training run when its store still holds it (a `Run` opened by id is
    only looked at, its status never changes), else a new run (ends FAILED if scoring fails)."""
    run_id, uri = meta.get("mlflow_run_id"), meta.get("tracking_uri")
    stale_sqlite = bool(uri) and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file()
    if run_id and uri and not stale_sqlite:  # (MLflow would silently create an empty store at a stale path)
        try:
            return Run(TrackingConfig(uri=uri), run_id=run_id)
        except TrackingError:  # another machine's store, a deleted run: a new run instead
            pass
    return Run(cfg.tracking, {"s2s.strategy": cfg.strategy_name, "s2s.scored_checkpoint": str(checkpoint)})


def log_results(run, summary: dict, out_dir: Path, step: int) -> None:
    """eval/ metrics at the checkpoint's step and the output files as artifacts under eval/<out dir name>.

    The outputs are already on disk, so a tracking failure here is a warning, not a lost evaluation.
    """
    try:
        run.log_metrics(flat_metrics(summary), step)
        run.log_artifact(out_dir, f"eval/{out_dir.name}")
    except Exception as e:  # noqa: BLE001 - whatever the store raises, the files are safe
        warnings.warn(f"MLflow logging failed ({type(e).__name__}: {e}); the results are in {out_dir}", stacklevel=2)


def _metric_table(summary: dict) -> list[str]:
    """One block per metric spec in the summary: its label (with the text normalizer, for text
    metrics), a column per aggregation, a row per system; then what each aggregation means."""
    lines, used = [], []
    for name, spec in summary["metrics"].items():
        title = spec.get("title", spec["label"]) + (f", {summary['normalizer']} normalizer" if "text" in spec["needs"]
                                                    else "")
        better = "higher is better" if spec["higher_is_better"] else "lower is better"
        lines.append(f"  {title:44s}" + "".join(f" {agg:>8s}" for agg in spec["aggregate"]) + f"  ({better})")
        for system, scores in summary["scores"].items():
            if f"{name}_{spec['aggregate'][0]}" in scores:
                lines.append(f"    {SYSTEMS.get(system, system):42s}"
                             + "".join(f" {scores[f'{name}_{agg}']:8.3f}" for agg in spec["aggregate"]))
        used += [agg for agg in spec["aggregate"] if agg not in used]
    # The docstrings' first lines say what each column is (e.g. pooled = corpus-level).
    lines += [f"  {AGGREGATIONS[agg].__doc__.splitlines()[0]}" for agg in used]
    lines += [f"  {spec['label']}: {spec['note']}" for spec in summary["metrics"].values() if spec.get("note")]
    if summary["normalizer"] == "seed" and any("text" in spec["needs"] for spec in summary["metrics"].values()):
        lines.append("  seed normalizer: Seed-TTS-eval's run_wer.py rule, which it defines for en and zh only; other "
                     "languages get its English rule here. Its figure is WER mean (CER under it is ours, not theirs)")
    if summary.get("other_speaker"):
        lines.append(f"  {SYSTEMS['other_speaker']}: {summary['other_speaker']}")
    return lines


def format_report(summary: dict, out_dir: Path) -> str:
    """The human-readable report the command prints."""
    lines = [f"checkpoint: {summary['checkpoint']}  ({summary['strategy']}, step {summary['step']}, "
             f"{summary['preset']} preset)"]
    if summary["preset"] == "tiny":
        asr = " and a tiny random Whisper as ASR" if (summary.get("asr") or {}).get("tiny") else ""
        lines.append(f"  tiny preset: random backbones{asr}; these figures test the pipeline, not a method")
    tf = summary.get("teacher_forced") or {}
    if tf:
        lines.append(f"teacher-forced: loss {tf['eval/tf/loss']:.4f} nats/target token, accuracy "
                     f"{tf['eval/tf/acc']:.3f}, k0 loss {tf.get('eval/tf/loss_k0', float('nan')):.4f}")
    asr = summary["asr"]
    if asr:
        lines.append(f"ASR: {asr['backend']} ({asr['model'] or 'default'}), text normalizer '{summary['normalizer']}', "
                     f"{summary['n']} utterances")
    else:
        lines.append(f"{summary['n']} utterances; no text metric chosen, so no ASR")
    lines += _metric_table(summary)
    lines.append(f"generation: {summary['generated_audio_seconds']:.1f} s of audio in "
                 f"{summary['generation_seconds']:.1f} s (real-time factor {summary['real_time_factor']:.2f}); "
                 f"{summary['stopped_fraction']:.0%} ended with end_of_speech")
    lines.append(f"outputs: {out_dir}/ (summary.json, utterances.csv, scores.png, wavs/)")
    if summary.get("mlflow_run_id"):
        lines.append(f"MLflow run: {summary['mlflow_run_id']} (metrics eval/..., artifacts eval/{Path(out_dir).name})")
    return "\n".join(lines)



