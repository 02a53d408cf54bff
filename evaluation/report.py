"""What `evaluation.score` leaves behind: the summary, a row per utterance, wavs, a plot, MLflow.

    <out>/summary.json      every figure, with the settings that produced it
    <out>/utterances.csv    reference, transcripts, WER/CER, durations, token counts per utterance
    <out>/wer.png           per-utterance WER of the generated speech next to the toplines
    <out>/wavs/NNN-<key>.wav  the generated speech (24 kHz)
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path


SYSTEMS = {"generated": "generated speech", "reference": "reference audio (topline)",
           "snac_roundtrip": "reference via SNAC (topline)"}


def summarize(examples: list, generated: list[dict], hyps: dict[str, list[str]], normalizer: str,
              sample_rate: int) -> tuple[dict, list[dict]]:
    """Corpus figures per system (generated, toplines) and one row per utterance."""
    from evaluation.wer import score_corpus

    refs = [e.text for e in examples]
    per_system, scored = {}, {}
    for system, texts in hyps.items():
        scored[system], corpus = score_corpus(refs, texts, normalizer)
        per_system[system] = corpus.as_dict()
    rows = []
    for i, (e, g) in enumerate(zip(examples, generated)):
        row = {"index": i, "key": e.key, "language": e.language, "reference_text": e.text,
               "input_seconds": round(len(e.wave16k) / 16000, 3),
               "reference_seconds": round(len(e.target24k) / 24000, 3),
               "generated_seconds": round(len(g["wave"]) / sample_rate, 3), "generated_tokens": g["tokens"],
               "stopped_at_end_of_speech": g["stopped"], "dropped_tokens": g["dropped_tokens"]}
        for system, utts in scored.items():
            row.update({f"{system}_hypothesis": hyps[system][i], f"{system}_wer": round(utts[i].wer, 4),
                        f"{system}_cer": round(utts[i].cer, 4)})
        rows.append(row)
    summary = {"n": len(examples), "normalizer": normalizer, "asr_scores": per_system,
               "generated_audio_seconds": sum(len(g["wave"]) for g in generated) / sample_rate,
               "stopped_fraction": sum(g["stopped"] for g in generated) / max(1, len(generated))}
    return summary, rows


def _plot(path: Path, rows: list[dict], systems: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = [[r[f"{s}_wer"] for r in rows] for s in systems]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(systems) + 1), [SYSTEMS[s].replace(" (topline)", "\n(topline)") for s in systems])
    ax.set_ylabel("WER per utterance")
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
    _plot(out_dir / "wer.png", rows, list(summary["asr_scores"]))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False))


def flat_metrics(summary: dict) -> dict[str, float]:
    """The summary's numbers as MLflow metric names under eval/."""
    out = {k: v for k, v in summary.get("teacher_forced", {}).items()}
    for system, scores in summary["asr_scores"].items():
        out.update({f"eval/asr/{system}/{k}": v for k, v in scores.items()})
    for k in ("real_time_factor", "stopped_fraction", "generated_audio_seconds"):
        out[f"eval/{k}"] = summary[k]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def existing_run(meta: dict):
    """(client, run id) of the checkpoint's training run when its store and the run are still there."""
    from mlflow.tracking import MlflowClient

    run_id, uri = meta.get("mlflow_run_id"), meta.get("tracking_uri")
    if not run_id or not uri:
        return None
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None  # MLflow would silently create an empty store there
    try:
        client = MlflowClient(uri)
        client.get_run(run_id)
        return client, run_id
    except Exception:  # another machine's store, a deleted run: log to a new run instead
        return None


def check_tracking(meta: dict, cfg) -> None:
    """Fail before any generation when the results would have nowhere to go: no training run to
    log to and the configured store does not answer (TrackingError naming the URI and the fix)."""
    from s2s.tracking import check_reachable, tracking_uri

    if existing_run(meta) is None:
        check_reachable(tracking_uri(cfg.tracking), root=cfg.tracking.root)


def log_to_mlflow(meta: dict, cfg, summary: dict, out_dir: Path) -> str | None:
    """Log eval/ metrics and the outputs to the checkpoint's run, else to a new run; returns its id.

    The outputs are already on disk, so a tracking failure is a warning, not a lost evaluation.
    """
    from s2s.tracking import Run, TrackingError

    metrics, step = flat_metrics(summary), int(meta.get("step") or 0)
    artifact_path = f"eval/{out_dir.name}"
    try:
        found = existing_run(meta)
        if found:
            client, run_id = found
            from mlflow.entities import Metric
            import time
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
            client.log_artifacts(run_id, str(out_dir), artifact_path)
            return run_id
        tags = {"s2s.strategy": summary["strategy"], "s2s.scored_checkpoint": summary["checkpoint"]}
        with Run(cfg.tracking, tags) as run:
            run.log_metrics(metrics, step)
            run.log_artifact(out_dir, artifact_path)
            return run.run_id
    except (TrackingError, OSError) as e:
        warnings.warn(f"MLflow logging failed ({e}); the results are in {out_dir}", stacklevel=2)
        return None


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
    lines.append(f"  {'':32s} {'WER corpus':>10s} {'WER mean':>9s} {'CER corpus':>10s} {'CER mean':>9s}")
    for system, s in summary["asr_scores"].items():
        lines.append(f"  {SYSTEMS[system]:32s} {s['wer_corpus']:10.3f} {s['wer_mean']:9.3f} {s['cer_corpus']:10.3f} "
                     f"{s['cer_mean']:9.3f}")
    lines.append(f"generation: {summary['generated_audio_seconds']:.1f} s of audio in "
                 f"{summary['generation_seconds']:.1f} s (real-time factor {summary['real_time_factor']:.2f}); "
                 f"{summary['stopped_fraction']:.0%} ended with end_of_speech")
    lines.append(f"outputs: {out_dir}/ (summary.json, utterances.csv, wer.png, wavs/)")
    if summary.get("mlflow_run_id"):
        lines.append(f"MLflow run: {summary['mlflow_run_id']} (metrics eval/..., artifacts eval/{Path(out_dir).name})")
    return "\n".join(lines)



