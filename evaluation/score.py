"""Score a checkpoint the way the speech-to-speech papers do: generate, then ASR-WER, speaker
similarity and quality (MOS), each beside toplines that say what the figure means on this data.

    python -m evaluation.score outputs/adapter_stage1/<run id>/final
    python -m evaluation.score CKPT --asr pocketsphinx --n 20 generation.temperature=0
    python -m evaluation.score CKPT --data my/dataset:es asr.model=/models/whisper-large-v3
    python -m evaluation.score CKPT --metrics wer,spk_sim speaker.backend=wavlm speaker.model=/models/wavlm-sv
    python -m evaluation.score CKPT --metrics mos_utmos quality.utmos_model=/models/utmos

The strategy and backbones are rebuilt from the checkpoint's metadata (weights are read with
safetensors only: nothing in a checkpoint is ever executed); `key=value` overrides apply to that
config (`backbones.orpheus=DIR`, `data.eval_size=64`) or to this command's own settings
(`generation.*`, `asr.*`, `speaker.*`, `quality.*`, `metrics`, `n`, `normalizer`, ...; see `ScoreConfig`).

Reported, on the eval split: teacher-forced loss (nats per target token) and accuracy per
frame position; then for the generated speech each chosen metric (default: wer, cer, spk_sim,
mos_dnsmos; the README's table says what each measures): ASR-WER/CER, corpus-level and mean per
utterance; speaker similarity to the reference; a MOS predictor. Beside them, the toplines that
separate codec and ASR error from the model's: the reference audio, and the reference after a SNAC
encode/decode round trip; and for speaker similarity the floor: another speaker's utterance.
Outputs: summary.json, utterances.csv, scores.png, the wavs, logged to the checkpoint's MLflow run
(`eval/wer`, `eval/spk_sim`, `eval/mos_dnsmos`, ...) when it exists.
"""
from __future__ import annotations

import argparse
import sys

from evaluation.report import format_report
from evaluation.scoring import score
from s2s.errors import UserError
from s2s.progress import quiet_library_bars
from s2s.experiment_config import PRESETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.epilog = ("A plain weights file (CKPT.pt, e.g. the design card's {\"adapter\": ..., \"expansion\": ...})\n"
                     "carries no meta: pass --strategy NAME, and --preset and key=value overrides for its\n"
                     "dimensions. It is read with torch.load(weights_only=True): a pickle that would run code is\n"
                     "refused. `python -m s2s.export CKPT OUT.pt` writes a checkpoint in that layout.")
    parser.add_argument("checkpoint", help="a checkpoint directory (holding model.safetensors and meta.json), or a "
                        "plain .pt state dict (with --strategy)")
    parser.add_argument("overrides", nargs="*", help="key=value: the checkpoint's config or this command's")
    parser.add_argument("--strategy", help="the strategy a plain .pt state dict is loaded into (sets strategy_name)")
    parser.add_argument("--preset", choices=PRESETS, help="the preset a .pt's config starts from (default tiny; "
                        "sets preset)")
    parser.add_argument("--data", action="append", help="eval data source(s) instead of the checkpoint's "
                        "(a save_to_disk dir or hub id[:config]); sets data.sources")
    parser.add_argument("--asr", help="ASR backend (sets asr.backend): whisper or pocketsphinx")
    parser.add_argument("--metrics", help="comma-separated metric names (sets metrics), e.g. wer,spk_sim,mos_dnsmos; "
                        "default: every metric that runs offline")
    parser.add_argument("--n", type=int, help="score the first N eval utterances (sets n)")
    parser.add_argument("--out", help="output directory (sets out)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_intermixed_args(argv)
    quiet_library_bars()
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.sources=[{','.join(args.data)}]")
    overrides += [f"{k}={v}" for k, v in (("asr.backend", args.asr), ("n", args.n), ("out", args.out),
                                          ("metrics", args.metrics),
                                          ("strategy_name", args.strategy), ("preset", args.preset)) if v]
    try:
        result = score(args.checkpoint, overrides, progress=not args.no_progress)
    except UserError as e:  # says what was wrong and how to fix it; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result["summary"], result["out_dir"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
