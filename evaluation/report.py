"""What `evaluation.score` leaves behind: the summary, a row per utterance, wavs, a plot, MLflow.

    <out>/summary.json      every figure, with the settings that produced it
    <out>/utterances.csv    reference, transcripts, every metric (WER, CER, ...), durations, token counts
    <out>/wer.png           per-utterance WER of the generated speech next to the toplines
    <out>/wavs/NNN-<key>.wav  the generated speech (24 kHz)

The metrics, their summary.json keys, csv columns, MLflow names and report columns all follow the
specs in `evaluation.metrics.METRICS`: adding a metric does not touch this file.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

from evaluation.metrics import AGGREGATIONS, score_texts, text_metrics
from s2s.tracking import Run, TrackingConfig, TrackingError


SYSTEMS = {"generated": "generated speech", "reference": "reference audio (topline)",
           "snac_roundtrip": "reference via SNAC (topline)"}


def summarize(examples: list, generated: list[dict], hyps: dict[str, list[str]], normalizer: str,
              sample_rate: int) -> tuple[dict, list[dict]]:
    """Figures per system (generated, toplines) for every text metric in METRICS, and one row per utterance.

    summary["asr_scores"][system] holds n and '<metric>_<aggregation>' (e.g. wer_pooled, wer_mean);
    summary["metrics"] the specs, so that the report and MLflow names follow the registry.
    """

    metrics = text_metrics()  # read at call time: a metric added to METRICS shows up without edits here
    refs, languages = [e.text for e in examples], [e.language for e in examples]
    per_system, values = {}, {}
    for system, texts in hyps.items():
        _, values[system], figures = score_texts(refs, texts, normalizer, languages, metrics)
        per_system[system] = {"n": len(refs), **figures}
    rows = []
    for i, (e, g) in enumerate(zip(examples, generated)):
        row = {"index": i, "key": e.key, "language": e.language, "reference_text": e.text,
               "input_seconds": round(len(e.wave16k) / 16000, 3),
               "reference_seconds": round(len(e.target24k) / 24000, 3),
               "generated_seconds": round(len(g["wave"]) / sample_rate, 3), "generated_tokens": g["tokens"],
               "stopped_at_end_of_speech": g["stopped"], "dropped_tokens": g["dropped_tokens"]}
        for system, by_metric in values.items():
            row[f"{system}_hypothesis"] = hyps[system][i]
            row.update({f"{system}_{name}": round(float(v[i]), 4) for name, v in by_metric.items()})
        rows.append(row)
    summary = {"n": len(examples), "normalizer": normalizer, "asr_scores": per_system,
               "metrics": {m.name: m.describe() for m in metrics},
               "generated_audio_seconds": sum(len(g["wave"]) for g in generated) / sample_rate,
               "stopped_fraction": sum(g["stopped"] for g in generated) / max(1, len(generated))}
    return summary, rows


def _plot(path: Path, rows: list[dict], systems: list[str], normalizer: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = [[r[f"{s}_wer"] for r in rows] for s in systems]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(systems) + 1), [SYSTEMS[s].replace(" (topline)", "\n(topline)") for s in systems])
    ax.set_ylabel(f"WER per utterance ({normalizer} normalizer)")
    ax.set_title(f"ASR-WER, {len(rows)} utterances (triangle: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: Path, summary: dict, rows: list[dict], examples: list, generated: list[dict],
                  sample_rate: int) -> None:
    """summary.json, utterances.csv, wer.png and the generated wavs under `out_dir`."""
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    wavs = out_dir / "wavs"
    wavs.mkdir(exist_ok=True)
    for row, g in zip(rows, generated):
        name = f"{row['index']:03d}-{row['key']}.wav"
        sf.write(wavs / name, g["wave"].clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")
        row["wav"] = f"wavs/{name}"
    with open(out_dir / "utterances.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if "wer" in summary["metrics"]:  # the plot is of WER only; other metrics are in the csv
        _plot(out_dir / "wer.png", rows, list(summary["asr_scores"]), summary["normalizer"])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False))


def flat_metrics(summary: dict) -> dict[str, float]:
    """The summary's numbers as MLflow metric names under eval/."""
    out = {k: v for k, v in summary.get("teacher_forced", {}).items()}
    for system, scores in summary["asr_scores"].items():
        out.update({f"eval/asr/{system}/{k}": v for k, v in scores.items()})
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
        title = spec["label"] + (f" ({summary['normalizer']} normalizer)" if "text" in spec["needs"] else "")
        better = "higher is better" if spec["higher_is_better"] else "lower is better"
        lines.append(f"  {title:34s}" + "".join(f" {agg:>8s}" for agg in spec["aggregate"]) + f"  ({better})")
        for system, scores in summary["asr_scores"].items():
            lines.append(f"    {SYSTEMS.get(system, system):32s}"
                         + "".join(f" {scores[f'{name}_{agg}']:8.3f}" for agg in spec["aggregate"]))
        used += [agg for agg in spec["aggregate"] if agg not in used]
    # The docstrings' first lines say what each column is (e.g. pooled = corpus-level).
    lines += [f"  {AGGREGATIONS[agg].__doc__.splitlines()[0]}" for agg in used]
    return lines


def format_report(summary: dict, out_dir: Path) -> str:
    """The human-readable report the command prints."""
    lines = [f"checkpoint: {summary['checkpoint']}  ({summary['strategy']}, step {summary['step']}, "
             f"{summary['preset']} preset)"]
    if summary["preset"] == "tiny":
        asr = " and a tiny random Whisper as ASR" if summary["asr"].get("tiny") else ""
        lines.append(f"  tiny preset: random backbones{asr}; these figures test the pipeline, not a method")
    tf = summary.get("teacher_forced") or {}
    if tf:
        lines.append(f"teacher-forced: loss {tf['eval/tf/loss']:.4f} nats/target token, accuracy "
                     f"{tf['eval/tf/acc']:.3f}, k0 loss {tf.get('eval/tf/loss_k0', float('nan')):.4f}")
    asr = summary["asr"]
    lines.append(f"ASR: {asr['backend']} ({asr['model'] or 'default'}), text normalizer '{summary['normalizer']}', "
                 f"{summary['n']} utterances")
    lines += _metric_table(summary)
    lines.append(f"generation: {summary['generated_audio_seconds']:.1f} s of audio in "
                 f"{summary['generation_seconds']:.1f} s (real-time factor {summary['real_time_factor']:.2f}); "
                 f"{summary['stopped_fraction']:.0%} ended with end_of_speech")
    lines.append(f"outputs: {out_dir}/ (summary.json, utterances.csv, wer.png, wavs/)")
    if summary.get("mlflow_run_id"):
        lines.append(f"MLflow run: {summary['mlflow_run_id']} (metrics eval/..., artifacts eval/{Path(out_dir).name})")
    return "\n".join(lines)



