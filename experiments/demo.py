"""The browser demo: speak (or upload speech), hear the model answer as it generates.

    python -m experiments.demo                                   # the newest finished checkpoint in mlruns/
    python -m experiments.demo outputs/adapter_stage1/<run id>/final --port 7861
    python -m experiments.demo CKPT generation.temperature=0 generation.max_new_tokens=700
    python -m experiments.demo CKPT --asr whisper asr.model=/models/whisper-large-v3 --language it
    python -m experiments.demo CKPT --asr pocketsphinx --language en    # offline, English only

Serves on 127.0.0.1 only, unless --host says otherwise (--host 0.0.0.0 lets anyone who reaches the
port run the model). The page streams the generated speech, offers it as a 24 kHz wav and shows
the time to first audio and the real-time factor; with --asr, transcripts of input and output.
`key=value` overrides: `asr.model=`, `asr.device=`, `asr.batch_size=` for the transcripts; the
rest go to the model, as for `python -m s2s.infer`: `generation.*` (sampling, `seed`,
`max_new_tokens`), `streaming.*` (`chunk_frames`: 85 ms frames per chunk), or the checkpoint's
config (`backbones.orpheus=DIR`, `backbones.device=cuda`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from s2s.config import apply_overrides
from s2s.demo import DEFAULT_HOST, DEFAULT_PORT, LANGUAGES, build_app, finished_checkpoints, launch, newest_checkpoint
from s2s.errors import UserError
from s2s.progress import quiet_library_bars


@dataclass
class AsrSettings:
    """The `asr.*` override keys; every other key goes to the Session (the checkpoint's config,
    `generation.*`, `streaming.*`)."""
    model: str = ""  # "" = the backend's default (whisper: openai/whisper-large-v3)
    device: str = "auto"
    batch_size: int = field(default=1, metadata={"range": (1, None)})


@dataclass
class DemoConfig:
    asr: AsrSettings = field(default_factory=AsrSettings)


def split_overrides(overrides: list[str]) -> tuple[DemoConfig, list[str]]:
    """(the `asr.*` settings, the overrides left for the Session)."""
    ours = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] == "asr"]
    cfg = DemoConfig()
    apply_overrides(cfg, ours)
    return cfg, [o for o in overrides if o not in ours]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint directory; default: the newest finished one in "
                        "the MLflow store")
    parser.add_argument("overrides", nargs="*", help="key=value: asr.*, generation.*, streaming.*, or the "
                        "checkpoint's config")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this "
                        f"machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--asr", choices=("whisper", "pocketsphinx"), help="show ASR transcripts of input and "
                        "output with this backend (off by default)")
    parser.add_argument("--language", choices=LANGUAGES, help="the transcripts' language (default: es; en with "
                        "pocketsphinx)")
    parser.add_argument("--tracking-uri", help="the MLflow store to find checkpoints in (default: "
                        "$MLFLOW_TRACKING_URI, else mlruns/mlflow.db)")
    args = parser.parse_intermixed_args(argv)
    if args.checkpoint and "=" in args.checkpoint and not Path(args.checkpoint).exists():
        args.overrides.insert(0, args.checkpoint)  # `demo key=value ...`: an override, not a checkpoint
        args.checkpoint = None
    quiet_library_bars()
    try:
        cfg, overrides = split_overrides(args.overrides)
        found = finished_checkpoints(args.tracking_uri) if args.checkpoint is None else []
        checkpoint = args.checkpoint or newest_checkpoint(args.tracking_uri)
        from s2s.infer import Session  # loads torch and transformers: after the cheap checks

        def load(path: str):
            return Session(path, overrides=overrides)

        print(f"loading {checkpoint}", flush=True)
        session = load(checkpoint)
        asr = None
        if args.asr:
            from evaluation.asr import build_asr

            asr = build_asr(args.asr, model=cfg.asr.model or None, device=cfg.asr.device,
                            batch_size=cfg.asr.batch_size)
        language = args.language or ("en" if args.asr == "pocketsphinx" else "es")
        app = build_app(session, asr, language=language, checkpoints=found, load_session=load, current=checkpoint)
        launch(app, args.host, args.port)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
