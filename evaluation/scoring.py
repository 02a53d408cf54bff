"""Scoring a checkpoint as the speech-to-speech papers do: generate, then intelligibility (ASR-WER),
speaker similarity and quality (a MOS predictor); the library behind `python -m evaluation.score`
(evaluation/score.py), `compare --score` and `search --metric`.

`score(checkpoint, overrides, ScoreConfig)` rebuilds the strategy and backbones from the
checkpoint, reports teacher-forced loss and accuracy per frame position, generates speech for
the eval split and scores it with the chosen metrics (evaluation/metrics/) beside the toplines
(the reference audio, its SNAC round trip) and the speaker-similarity floor (another speaker's
utterance), and writes and logs the results (evaluation/report.py).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evaluation.asr import build_asr
from evaluation.metrics import METRICS, Metric, get_metric
from evaluation.metrics.quality import QualityConfig
from evaluation.metrics.speaker import SpeakerConfig
from evaluation.metrics.text import NORMALIZERS
from evaluation.report import System, log_results, scoring_run, summarize, write_outputs
from s2s.backbones import autocast
from s2s.checkpoint import is_weights_file
from s2s.config import ConfigError, validate
from s2s.data.loader import SkipCounter, load_examples
from s2s.errors import DataError
from s2s.registry import lookup
from s2s.experiment import load_trained
from s2s.generate import GenerationConfig, generate
from s2s.metrics import evaluate
from s2s.prepare import make_batch, prepare
from s2s.progress import progress_bar
from s2s.streaming import decode_offline
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
    # Names in evaluation.metrics.METRICS; None = every metric that runs offline (wer, cer, spk_sim, mos_dnsmos).
    metrics: list[str] | None = None
    normalizer: str = field(default="whisper", metadata={"choices": tuple(NORMALIZERS)})  # evaluation/metrics/text.py
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    speaker: SpeakerConfig = field(default_factory=SpeakerConfig)  # evaluation/metrics/speaker.py
    quality: QualityConfig = field(default_factory=QualityConfig)  # evaluation/metrics/quality.py


def chosen_metrics(score_cfg: ScoreConfig) -> list[Metric]:
    """The metrics `score_cfg.metrics` names (UnknownNameError with the closest name), or the defaults."""
    if score_cfg.metrics is None:
        return [m for m in METRICS.values() if m.default]
    if not score_cfg.metrics:
        raise ConfigError(f"metrics is empty: name at least one of {', '.join(METRICS)} (e.g. --metrics wer,spk_sim)")
    return [get_metric(name) for name in dict.fromkeys(score_cfg.metrics)]


def figure_named(name: str) -> tuple[Metric, str]:
    """The generated speech's figure that MLflow logs as `name`: 'eval/wer' (a metric's first
    aggregation) or 'eval/wer_mean' -> (its metric, 'wer_pooled' / 'wer_mean'). An unknown name raises
    UnknownNameError with the closest one."""
    names = {}
    for m in METRICS.values():
        names[f"eval/{m.name}"] = (m, m.keys()[0])
        names.update({f"eval/{key}": (m, key) for key, agg in zip(m.keys(), m.aggregate) if agg != "std"})
    return lookup(names, name, "scored figure")


def metric_options(score_cfg: ScoreConfig, metrics: list[Metric]) -> dict:
    """Each metric's settings, by its `options` name (the ScoreConfig field that holds them)."""
    return {m.options: getattr(score_cfg, m.options) for m in metrics if m.options}


def other_speaker(examples: list) -> tuple[list[int] | None, str]:
    """For each utterance, the index of another speaker's utterance to compare its reference with (the
    speaker-similarity floor), and a sentence saying how it was chosen; None when there is none."""
    n, speakers = len(examples), [e.speaker for e in examples]
    if n < 2:
        return None, "not scored: it needs at least 2 eval utterances"
    if not all(speakers):  # no speaker column: a different utterance is the best guess
        return [(i + 1) % n for i in range(n)], ("speakers unknown (set data.speaker_column), so each reference is "
                                                 "compared with the next eval utterance, maybe the same speaker's")
    idx = [next(((i + k) % n for k in range(1, n) if speakers[(i + k) % n] != speakers[i]), None) for i in range(n)]
    if None in idx:
        return None, f"not scored: every eval utterance is by speaker {speakers[0]}"
    return idx, (f"each reference against the next eval utterance by a different speaker "
                 f"({len(set(speakers))} speakers, data.speaker_column)")


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
            wave, dropped = decode_offline(model.core, tokens, gen.seed)  # SNAC's noise seeded too
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


def roundtrip_waves(core, items: list, progress: bool, seed: int = 0) -> list[torch.Tensor]:
    """The reference after SNAC: the prepared targets are SNAC's codes of the reference, so decoding them
    is the round trip (with SNAC's decoder noise seeded, as for the generated speech)."""
    return [decode_offline(core, it.speech_tokens, seed)[0] for it in
            progress_bar(items, desc="snac round trip", unit="utt", disable=not progress)]


@functools.lru_cache(maxsize=2)
def _asr(backend: str, model: str | None, device: str, batch_size: int):
    # Once per process: compare and search score many checkpoints with the same ASR.
    return build_asr(backend, model=model, device=device, batch_size=batch_size)


def scored_systems(examples: list, items: list, generated: list[dict], core, score_cfg: ScoreConfig,
                   metrics: list[Metric], asr_model: str | None, progress: bool) -> tuple[dict[str, System], str]:
    """The report's rows: the generated speech and, with toplines, the reference audio, its SNAC round
    trip and another speaker's utterance; transcribed when a chosen metric reads text. Returns the
    systems and how the other-speaker utterances were chosen ("" without toplines)."""
    systems = {"generated": System(waves=[g["wave"] for g in generated])}
    how = ""
    if score_cfg.toplines:
        systems["reference"] = System(waves=[e.target24k for e in examples], paired=False)
        roundtrip = roundtrip_waves(core, items, progress, score_cfg.generation.seed)
        systems["snac_roundtrip"] = System(waves=roundtrip)
        idx, how = other_speaker(examples)
        if idx is not None and any("reference_wave" in m.needs for m in metrics):
            systems["other_speaker"] = System(waves=[examples[j].target24k for j in idx], pairs_only=True)
    if any("text" in m.needs for m in metrics):
        asr = _asr(score_cfg.asr.backend, asr_model, score_cfg.asr.device, score_cfg.asr.batch_size)
        langs, sr, bs = [e.language for e in examples], core.snac.sampling_rate, score_cfg.asr.batch_size
        for name, system in systems.items():
            if not system.pairs_only:
                system.texts = transcribe(asr, system.waves, sr, langs, f"asr {name}", progress, bs)
    return systems, how


def score(checkpoint: str, overrides: list[str] = (), score_cfg: ScoreConfig | None = None,
          progress: bool = True) -> dict:
    """Score `checkpoint`; returns the summary (also written to disk and MLflow) and the output dir."""
    score_cfg = score_cfg or ScoreConfig()
    cfg, core, model, meta = load_for_scoring(checkpoint, list(overrides), score_cfg)
    metrics = chosen_metrics(score_cfg)  # an unknown name fails before any work
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

        uses_text = any("text" in m.needs for m in metrics)
        asr_model, tiny_asr = asr_model_for(cfg, score_cfg) if uses_text else (None, False)
        systems, how = scored_systems(examples, items, generated, core, score_cfg, metrics, asr_model, progress)
        summary, rows = summarize(examples, generated, systems, score_cfg.normalizer, core.snac.sampling_rate,
                                  metrics, metric_options(score_cfg, metrics), progress)
        summary.update({
            "checkpoint": str(ckpt_dir), "strategy": cfg.strategy_name, "preset": cfg.preset, "step": meta.get("step"),
            "asr": {"backend": score_cfg.asr.backend, "model": asr_model, "tiny": tiny_asr} if uses_text else None,
            "other_speaker": how if "other_speaker" in summary["scores"] else "",
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
