"""CPU cost of the wave metrics per utterance: DNSMOS, UTMOS, speaker similarity (and WER, for scale).

    .venv/bin/python -m bench.metrics [--quick] [--n N] [--repeats N] [--threads N] [--skip NAME,...]

N utterances of 2-4 s are synthesized (hypothesis: flite "slt"; reference: espeak-ng "en", the same
sentence) and resampled to 24 kHz, the rate the scorer hands the metrics. Each metric is scored
through its registered spec (`Metric.score`, exactly what `evaluation.score` runs), on CPU:

- warm-up: the first call, on one utterance: model load (from local files) + first-call overheads;
- then `--repeats` timed calls on all N utterances at once; the median / N is the cost per utterance,
  and / the seconds of audio, the real-time factor.

Weights: DNSMOS's and resemblyzer's ship in their wheels (the real models). UTMOS and WavLM run with
RANDOM weights of the real architectures (UTMOS22 strong learner, ~103M parameters; WavLM-base-plus
x-vector, the default WavLMConfig), built into a temporary directory: no checkpoint is reachable
offline, and the cost does not depend on the weights' values. spk_sim embeds two waves per utterance
(reference and hypothesis). WER times jiwer on the two texts only
(the ASR that produces a hypothesis is not in it). These are absolute times on a shared machine:
read them beside the load average. onnxruntime (DNSMOS) keeps its own thread pool (one per core);
`--threads` sets torch's only.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import soundfile as sf
import torch

from bench._common import add_threads_arg, apply_threads, header, loadavg
from evaluation.metrics.base import Utterance, resampled
from evaluation.metrics.quality import dnsmos_windows

SENTENCES = [
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
    "rice is often served in round bowls",
    "the juice of lemons makes fine punch",
    "the box was thrown beside the parked truck",
    "the hogs were fed chopped corn and garbage",
    "four hours of steady work faced us",
    "a large size in stockings is hard to sell",
    "the boy was there when the sun rose",
    "a rod is used to catch pink salmon",
]
SR = 24000


def synthesize(root: Path, n: int) -> list[Utterance]:
    """n (reference espeak-ng, hypothesis flite) pairs of the same sentence, both at 24 kHz."""
    utts = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        hyp, ref = root / f"hyp{i}.wav", root / f"ref{i}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(hyp)], check=True, capture_output=True)
        subprocess.run(["espeak-ng", "-v", "en", "-w", str(ref), text], check=True, capture_output=True)
        waves = [resampled(*sf.read(p, dtype="float32"), SR) for p in (ref, hyp)]
        utts.append(Utterance(reference=text, hypothesis=text.replace("the ", "a ", 1), reference_wave=waves[0],
                              hypothesis_wave=waves[1], sample_rate=SR))
    return utts


def random_utmos(root: Path) -> Path:
    from utmos_pytorch.utmos_torch import UTMOSModel

    torch.manual_seed(0)
    torch.save(UTMOSModel().state_dict(), root / "utmos_state_dict.pt")
    return root


def random_wavlm(root: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector
    from transformers.utils import logging

    logging.disable_progress_bar()  # its bars would interleave with the table
    torch.manual_seed(0)
    WavLMForXVector(WavLMConfig()).save_pretrained(root)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(root)
    return root


def cases(tmp: Path, skip: set[str]):
    """(name, backend, metric, options) for each benchmarked metric; random-weight files built here."""
    from evaluation.metrics.quality import MOS_DNSMOS, MOS_UTMOS, QualityConfig
    from evaluation.metrics.text import WER

    out = [("wer", "jiwer (texts only)", WER, None), ("dnsmos", "speechmos ONNX P.835", MOS_DNSMOS, QualityConfig())]
    if "utmos" not in skip:
        t0 = time.perf_counter()
        model = random_utmos(tmp)
        print(f"setup   : random UTMOS state dict written in {time.perf_counter() - t0:.1f} s (untimed)")
        out.append(("utmos", "UTMOS22 strong, RANDOM weights", MOS_UTMOS,
                    QualityConfig(utmos_model=str(model), device="cpu")))
    try:
        from evaluation.metrics.speaker import SPK_SIM, SpeakerConfig
    except ImportError as e:
        print(f"setup   : speaker similarity skipped: evaluation.metrics.speaker not importable ({e})")
        return out
    if "resemblyzer" not in skip:
        out.append(("spk_sim", "resemblyzer GE2E", SPK_SIM, SpeakerConfig(backend="resemblyzer", device="cpu")))
    if "wavlm" not in skip:
        t0 = time.perf_counter()
        model = random_wavlm(tmp / "wavlm")
        print(f"setup   : random WavLM x-vector (base-plus-sv size) written in {time.perf_counter() - t0:.1f} s (untimed)")
        out.append(("spk_sim", "WavLM x-vector, RANDOM weights", SPK_SIM,
                    SpeakerConfig(backend="wavlm", model=str(model), device="cpu")))
    return out


def timed(fn) -> float:
    """Seconds `fn()` takes from cold metric state: speaker similarity remembers the embeddings of waves it
    has seen (so that a scorer embeds each reference once), which would make every repeat free."""
    from evaluation.metrics import speaker

    speaker._EMBEDDINGS.clear()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10, help="utterances (default 10, --quick 3)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls on all N per metric (default 3, --quick 1)")
    p.add_argument("--skip", default="", help="comma-separated: utmos, resemblyzer, wavlm")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 utterances, 1 repeat")
    add_threads_arg(p)
    args = p.parse_args(argv)
    apply_threads(args)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's weight_norm deprecation, from the models
    n = 3 if args.quick and args.n == 10 else args.n
    repeats = args.repeats or (1 if args.quick else 3)

    header("per-utterance CPU cost of the wave metrics (WER for scale)")
    with tempfile.TemporaryDirectory(prefix="s2s-bench-metrics-") as tmp:
        tmp = Path(tmp)
        utts = synthesize(tmp, n)
        secs = [len(u.hypothesis_wave) / SR for u in utts]
        print(f"sizes   : {n} utterances, hypothesis {min(secs):.2f}-{max(secs):.2f} s (mean {statistics.mean(secs):.2f} s) "
              f"at {SR} Hz; {repeats} timed call(s) on all {n} per metric after one warm-up call on 1")
        # speechmos repeats a short clip by doubling it, so its window count swings with the length.
        windows = [len(dnsmos_windows(resampled(u.hypothesis_wave, SR, 16000).numpy())) for u in utts]
        print(f"dnsmos  : {sum(windows)} windows of 9.01 s for these {n} clips ({min(windows)}-{max(windows)} per clip)")
        rows = []
        for name, backend, metric, options in cases(tmp, set(filter(None, args.skip.split(",")))):
            warm = timed(lambda: metric.score(utts[:1], options))
            runs = [timed(lambda: metric.score(utts, options)) for _ in range(repeats)]
            med = statistics.median(runs)
            rows.append((name, backend, warm, med / n, med / sum(secs)))
            print(f"  done  : {name} ({backend}) warm-up {warm:.2f} s, runs {', '.join(f'{r:.2f}' for r in runs)} s",
                  flush=True)
    print(f"load    : {loadavg()} at end")
    print(f"\n{'metric':<9} {'backend':<32} {'warm-up s':>10} {'ms / utt':>9} {'x real time':>12}")
    for name, backend, warm, per_utt, rtf in rows:
        print(f"{name:<9} {backend:<32} {warm:>10.2f} {per_utt * 1e3:>9.2f} {rtf:>12.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
