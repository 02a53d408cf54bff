"""Scoring a checkpoint as the speech-to-speech papers do: generate, transcribe, WER; the library
behind `python -m evaluation.score` (evaluation/score.py) and `compare --score`.

`score(checkpoint, overrides, ScoreConfig)` rebuilds the strategy and backbones from the
checkpoint, reports teacher-forced loss and accuracy per frame position, generates speech for
the eval split, transcribes it and the two toplines (reference audio, SNAC round trip), and
writes and logs the results (evaluation/report.py).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evaluation.asr import build_asr
from evaluation.metrics.text import NORMALIZERS
from evaluation.report import log_results, scoring_run, summarize, write_outputs
from s2s.backbones import autocast
from s2s.checkpoint import is_weights_file
from s2s.config import validate
from s2s.data.loader import SkipCounter, load_examples
from s2s.errors import DataError
from s2s.experiment import load_trained
from s2s.generate import GenerationConfig, generate, tokens_to_audio
from s2s.metrics import evaluate
from s2s.prepare import make_batch, prepare
from s2s.progress import progress_bar
from s2s.tiny_asr import build_tiny_whisper_asr
from s2s.tracking import TrackingConfig

FULL_ASR_MODEL = "openai/whisper-large-v3"


@dataclass
class AsrConfig:
    backend: str = "whisper"  # see evaluation/asr/__init__.py
    model: str = ""  # "" = the preset's: openai/whisper-large-v3 (full), a tiny random Whisper (tiny)
    device: str = "auto"
    batch_size: int = field(default=8, metadata={"range": (1, None)})


@dataclass
class ScoreConfig:
    n: int | None = field(default=None, metadata={"range": (1, None)})  # eval utterances (None = all)
    out: str = ""  # "" = outputs/score/<checkpoint name>-<time>
    toplines: bool = True
    teacher_forced: bool = True
    normalizer: str = field(default="whisper", metadata={"choices": tuple(NORMALIZERS)})  # evaluation/metrics/text.py
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)


def load_for_scoring(checkpoint: str, overrides: list[str], score_cfg: ScoreConfig):
    """(experiment config, core, strategy, checkpoint meta); each override goes to the config that has its key.

    `checkpoint` is a checkpoint directory, or a plain weights file (`.pt`, e.g. the card's) read with
    `torch.load(weights_only=True)`: then `strategy_name=NAME` and `preset=P` among the overrides say
    what to build (s2s.experiment.load_trained), and the meta has no MLflow run (a new run is opened)
    and step None.
    """
    cfg, core, model, meta = load_trained(checkpoint, overrides, others=[score_cfg])
    validate(score_cfg)
    if not any(o.startswith("tracking.") for o in overrides):  # the training machine's store is not this one's
        cfg.tracking = TrackingConfig()
    return cfg, core, model, meta


def eval_examples(cfg, n: int | None, progress: bool):
    """The eval split's examples (raw audio kept for the toplines) and skip counts."""
    skips = SkipCounter()
    examples = load_examples(cfg.data, "eval", skips, progress=progress)
    return (examples[:n] if n else examples), skips


def generate_all(model, items: list, collate, gen: GenerationConfig, progress: bool) -> list[dict]:
    """Generated speech per item: tokens, 24 kHz wave, whether it stopped, timings."""
    out = []
    bar = progress_bar(total=len(items), desc="generate", unit="utt", disable=not progress)
    for start in range(0, len(items), gen.batch_size):
        chunk = items[start:start + gen.batch_size]
        t0 = time.perf_counter()
        result = generate(model, collate(chunk), gen)
        seconds = time.perf_counter() - t0
        for tokens, stopped in zip(result.tokens, result.stopped):
            wave, dropped = tokens_to_audio(model.core, tokens)
            out.append({"tokens": len(tokens), "stopped": stopped, "dropped_tokens": dropped, "wave": wave,
                        "batch_seconds": seconds})
        bar.update(len(chunk))
    bar.close()
    return out


def transcribe(asr, waves: list[torch.Tensor], sample_rate: int, languages: list[str], desc: str,
               progress: bool, batch_size: int) -> list[str]:
    """ASR of every wave (an empty wave transcribes to "" without calling the backend)."""
    texts = [""] * len(waves)
    todo = [i for i, w in enumerate(waves) if w.numel() > 0]
    bar = progress_bar(total=len(todo), desc=desc, unit="utt", disable=not progress)
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        for i, text in zip(idx, asr.transcribe([waves[i] for i in idx], sample_rate, [languages[i] for i in idx])):
            texts[i] = text
        bar.update(len(idx))
    bar.close()
    return texts


def asr_model_for(cfg, score_cfg: ScoreConfig) -> tuple[str | None, bool]:
    """(ASR model, whether it is the tiny random one): the user's, else the preset's."""
    if score_cfg.asr.model or score_cfg.asr.backend != "whisper":
        return score_cfg.asr.model or None, False
    if cfg.preset == "tiny":  # built once, beside the tiny backbones
        path = Path(cfg.backbones.whisper).parent / "whisper_asr"
        if not (path / "config.json").is_file():
            build_tiny_whisper_asr(path)
        return str(path), True
    return FULL_ASR_MODEL, False


def transcripts(asr, examples: list, items: list, generated: list[dict], core, score_cfg: ScoreConfig,
                progress: bool) -> dict[str, list[str]]:
    """ASR of the generated speech and, with toplines, of the reference and its SNAC round trip."""
    langs, sr, bs = [e.language for e in examples], core.snac.sampling_rate, score_cfg.asr.batch_size
    run = lambda waves, desc: transcribe(asr, waves, sr, langs, desc, progress, bs)  # noqa: E731
    hyps = {"generated": run([g["wave"] for g in generated], "asr generated")}
    if score_cfg.toplines:
        hyps["reference"] = run([e.target24k for e in examples], "asr reference")
        # The prepared targets are SNAC's codes of the reference: decoding them is the round trip.
        roundtrip = [tokens_to_audio(core, it.speech_tokens)[0] for it in
                     progress_bar(items, desc="snac round trip", unit="utt", disable=not progress)]
        hyps["snac_roundtrip"] = run(roundtrip, "asr round trip")
    return hyps


def score(checkpoint: str, overrides: list[str] = (), score_cfg: ScoreConfig | None = None,
          progress: bool = True) -> dict:
    """Score `checkpoint`; returns the summary (also written to disk and MLflow) and the output dir."""
    score_cfg = score_cfg or ScoreConfig()
    cfg, core, model, meta = load_for_scoring(checkpoint, list(overrides), score_cfg)
    ckpt_dir = Path(checkpoint).resolve()
    weights_file = is_weights_file(ckpt_dir)  # a plain .pt names itself; no run or step to borrow from it
    if ckpt_dir.is_file() and not weights_file:  # its model.safetensors or meta.json was named
        ckpt_dir = ckpt_dir.parent
    ckpt_name = ckpt_dir.stem if weights_file else ckpt_dir.name  # outputs/score/final-<time>, ckpt-<time> for ckpt.pt
    with scoring_run(meta, cfg, ckpt_dir) as run:
        examples, skips = eval_examples(cfg, score_cfg.n, progress)
        if not examples:
            raise DataError(f"no usable eval utterances in {cfg.data.sources} (skipped: {skips.as_dict()}); "
                             f"point data.sources (or --data) at a dataset with an eval split")
        items = prepare(examples, core, cfg.cache, progress, "prepare eval", dedup_frames=cfg.data.dedup_frames)
        collate = lambda chunk: make_batch(chunk, core)  # noqa: E731
        model.eval()
        teacher = {}
        if score_cfg.teacher_forced:
            with autocast(core.device):
                teacher = evaluate(model, items, collate, cfg.train.eval_batch_size, prefix="eval/tf")
        t0 = time.perf_counter()
        generated = generate_all(model, items, collate, score_cfg.generation, progress)
        gen_seconds = time.perf_counter() - t0

        asr_model, tiny_asr = asr_model_for(cfg, score_cfg)
        asr = build_asr(score_cfg.asr.backend, model=asr_model, device=score_cfg.asr.device,
                        batch_size=score_cfg.asr.batch_size)
        hyps = transcripts(asr, examples, items, generated, core, score_cfg, progress)
        summary, rows = summarize(examples, generated, hyps, score_cfg.normalizer, core.snac.sampling_rate)
        summary.update({
            "checkpoint": str(ckpt_dir), "strategy": cfg.strategy_name, "preset": cfg.preset, "step": meta.get("step"),
            "asr": {"backend": score_cfg.asr.backend, "model": asr_model, "tiny": tiny_asr},
            "generation": dataclasses.asdict(score_cfg.generation), "teacher_forced": teacher,
            "skipped_samples": skips.as_dict(), "generation_seconds": gen_seconds,
            "real_time_factor": gen_seconds / max(1e-9, summary["generated_audio_seconds"]),
            "mlflow_run_id": run.run_id,
        })
        out_dir = Path(score_cfg.out or Path("outputs") / "score" /
                       f"{ckpt_name}-{time.strftime('%Y%m%d-%H%M%S')}")
        write_outputs(out_dir, summary, rows, examples, generated, core.snac.sampling_rate)
        log_results(run, summary, out_dir, int(meta.get("step") or 0))
    return {"summary": summary, "out_dir": out_dir, "rows": rows}
