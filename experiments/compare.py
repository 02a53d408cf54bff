"""Compare strategies honestly: same data split, same step budget, same seeds, loss defined exactly,
and the same ASR scoring of every final checkpoint.

    python -m experiments.compare adapter_stage1 istlm_interleaved --seeds 2
    python -m experiments.compare adapter_stage1 gatefusion_stage2 --seeds 3 train.max_steps=500
    python -m experiments.compare adapter_stage1 istlm_interleaved istlm_interleaved:strategy.lora_rank=8
    python -m experiments.compare adapter_stage1 istlm_interleaved --score 50 score.asr.model=/models/whisper-large-v3

Overrides apply to every strategy; `NAME:key=value` applies to one; `score.KEY=VALUE` sets the
scoring (evaluation/scoring.py: ScoreConfig, e.g. score.generation.max_new_tokens=700). Each
(strategy, seed) run is a child of one parent MLflow run; a finished run with the identical resolved
config is reused. A strategy that builds on another's checkpoint (its `requires`, e.g. a stage-2
strategy on a stage-1 run) trains after that strategy, starting from the same seed's run, unless its
key is given; its row states the whole step budget.
`--score N` (default 8; 0 = off) generates speech for the first N eval utterances from every final
checkpoint (greedy unless score.generation.temperature is set) and scores it as evaluation.score does:
ASR-WER, CER, speaker similarity and MOS (score.metrics=wer,spk_sim picks), beside the toplines (the
reference audio, its SNAC round trip) and the speaker-similarity floor (another speaker); the scores
are logged to each run. A reused run keeps the scores compare gave it before with identical settings, else is scored again.
Writes a markdown table, a PNG of eval-loss curves and a JSON of the figures; logs them to the parent.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from evaluation.report import SYSTEMS, flat_metrics
from evaluation.scoring import ScoreConfig, chosen_metrics, metric_options, score
from s2s.compare import Scorer, compare, plan
from s2s.config import ConfigError, apply_overrides, validate
from s2s.errors import UserError
from s2s.experiment_config import PRESETS
from s2s.progress import quiet_library_bars
from s2s.tracking import ui_command

SCORE_PREFIX = "score."


def make_scorer(n: int, overrides: list[str], progress: bool) -> Scorer:
    """evaluation.scoring.score as compare's callback: the same N utterances and settings for every run."""
    cfg = ScoreConfig(n=n, teacher_forced=False)  # compare has the teacher-forced losses already
    cfg.generation.temperature = 0.0  # greedy: seeds differ only by their model
    apply_overrides(cfg, overrides)
    validate(cfg)

    metrics = chosen_metrics(cfg)
    options = metric_options(cfg, metrics)

    def fn(checkpoint: str, out_dir: Path, toplines: bool) -> dict:
        s = score(checkpoint, (), dataclasses.replace(cfg, toplines=toplines, out=str(out_dir)), progress)["summary"]
        systems = dict(s["scores"])
        return {"generated": systems.pop("generated"), "toplines": systems, "run_id": s["mlflow_run_id"],
                "step": s["step"], "tiny_asr": bool((s["asr"] or {}).get("tiny")), "mlflow": flat_metrics(s)}

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "toplines")}
    settings["metrics"] = [m.name for m in metrics]  # the defaults spelled out: a new default is a new setting
    g, asr = cfg.generation, cfg.asr
    how = "greedily" if g.temperature == 0 else f"temperature {g.temperature}, top_p {g.top_p}, seed {g.seed}"
    measured = []
    for m in metrics:
        what = f"{m.title(options.get(m.options))}, {m.aggregate[0]}"
        measured.append(what + (f", '{cfg.normalizer}' text normalizer" if "text" in m.needs else ""))
    asr_used = any("text" in m.needs for m in metrics)
    description = (f"on the first {n} eval utterances, speech generated {how} (repetition penalty "
                   f"{g.repetition_penalty}, at most {g.max_new_tokens} tokens)"
                   + (f", transcribed by {asr.backend} ({asr.model or 'the preset default'})" if asr_used else "")
                   + f"; {'; '.join(measured)}")
    columns = tuple((m.label, m.keys()[0]) for m in metrics)
    return Scorer(fn, settings, description, columns=columns,
                  labels={k: v for k, v in SYSTEMS.items() if k != "generated"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="+", help="strategy names, then key=value, NAME:key=value or score.key=value")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--score", type=int, default=8, metavar="N",
                        help="ASR-score the first N eval utterances of every final checkpoint (0: off; default 8)")
    parser.add_argument("--out", default=None, help="report folder (default reports/compare-<time>)")
    parser.add_argument("--no-reuse", action="store_true", help="retrain even if an identical finished run exists")
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_intermixed_args(argv)
    quiet_library_bars()
    strategies = [x for x in a.args if "=" not in x]
    overrides = [x for x in a.args if "=" in x and not x.startswith(SCORE_PREFIX)]
    score_overrides = [x[len(SCORE_PREFIX):] for x in a.args if x.startswith(SCORE_PREFIX)]
    out = Path(a.out or f"reports/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        if a.score < 0:
            raise ConfigError(f"--score must be 0 (off) or a number of utterances, got {a.score}")
        p = plan(strategies, a.preset, a.seeds, overrides)
        scorer = make_scorer(a.score, score_overrides, not a.no_progress) if a.score else None
        if score_overrides and scorer is None:
            raise ConfigError(f"'{SCORE_PREFIX}{score_overrides[0]}': score.* settings need scoring on "
                              f"(--score N with N > 0)")
        result = compare(p, out, reuse=not a.no_reuse, progress=not a.no_progress, scorer=scorer)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C/SIGTERM: the run in progress saved a checkpoint and ended KILLED
        print(f"\ninterrupted ({e or 'Ctrl-C'}); run the same command again: finished runs are reused",
              file=sys.stderr)
        return getattr(e, "exit_code", 130)
    print("\n" + result["report"])
    print(f"report: {out}/comparison.md, plot: {out}/eval_loss.png")
    print(f"MLflow parent run: {result['parent_run_id']}\nopen the UI: {ui_command(result['uri'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
