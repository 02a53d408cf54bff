"""Build a small multilingual speech dataset offline with espeak-ng (es/it/en) or flite (en).

    python -m s2s.data.synth --langs es,it --n 240 --out data/synth

writes a `datasets.Dataset` (save_to_disk) with columns audio (WAV bytes), text, language,
voice, speed (relative to the engine's default rate) and pitch (espeak-ng -p; -1 for flite).
"""

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from s2s.data.sentences import make_sentence
from s2s.errors import DataError, UserError
from s2s.progress import progress_bar

# Base voices x variants (check `espeak-ng --voices=es`, ls .../espeak-ng-data/voices/!v).
# The mbrola voices listed there need the mbrola binary, which is not installed.
ESPEAK_VOICES = {"es": ["es", "es-419"], "it": ["it"], "en": ["en", "en-us", "en-gb-scotland"]}
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
ESPEAK_SPEED = (140, 190)  # words per minute; espeak-ng's default is 175
ESPEAK_PITCH = (30, 70)  # 0-99, default 50
FLITE_STRETCH = (0.85, 1.15)  # duration_stretch: >1 is slower
ENGINES = {"espeak": ("espeak-ng", "espeak-ng"), "flite": ("flite", "flite")}  # engine: (binary, apt package)


@dataclass
class Utterance:
    text: str
    language: str
    voice: str
    speed: float
    pitch: int


def _require(engine: str) -> str:
    """Path of the engine's binary, or a DataError saying which package to install."""
    if engine not in ENGINES:
        raise DataError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    binary, package = ENGINES[engine]
    path = shutil.which(binary)
    if path is None:
        raise DataError(f"{binary} not found on PATH; install it with: apt-get install {package}")
    return path


def _draw(lang: str, engine: str, rng: np.random.Generator, min_words: int, max_words: int) -> Utterance:
    text = make_sentence(lang, rng, min_words, max_words)
    if engine == "flite":
        return Utterance(text, lang, "slt", round(1 / rng.uniform(*FLITE_STRETCH), 3), -1)
    base = ESPEAK_VOICES[lang][rng.integers(len(ESPEAK_VOICES[lang]))]
    voice = f"{base}+{ESPEAK_VARIANTS[rng.integers(len(ESPEAK_VARIANTS))]}"
    wpm = int(rng.integers(ESPEAK_SPEED[0], ESPEAK_SPEED[1] + 1))
    return Utterance(text, lang, voice, round(wpm / 175, 3), int(rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1)))


def synthesize(utt: Utterance, binary: str, engine: str) -> tuple[bytes, float]:
    """Speak one utterance -> (WAV file bytes, duration in seconds)."""
    with tempfile.TemporaryDirectory(prefix="s2s-synth-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        if engine == "flite":
            cmd = [binary, "-voice", utt.voice, "--setf", f"duration_stretch={1 / utt.speed:.3f}",
                   "-t", utt.text, "-o", wav]
            stdin = None
        else:  # text on stdin: no argument parsing surprises
            cmd = [binary, "-v", utt.voice, "-s", str(round(utt.speed * 175)), "-p", str(utt.pitch),
                   "-w", wav, "--stdin"]
            stdin = utt.text
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not os.path.exists(wav):
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}) on {utt.text!r}: "
                               f"{proc.stderr.strip()[:300]}")
        data = Path(wav).read_bytes()
    info = sf.info(io.BytesIO(data))  # reading it back proves the file is a valid WAV
    return data, info.frames / info.samplerate


def synthesize_dataset(out: str | os.PathLike, langs: list[str] | str, n: int, seed: int = 0,
                       engine: str = "espeak", min_words: int = 3, max_words: int = 10,
                       min_seconds: float = 1.0, max_seconds: float = 4.0, workers: int = 2,
                       progress: bool = True) -> Path:
    """Synthesize `n` utterances (round-robin over `langs`) and save them as a Dataset at `out`.

    Sentences are distinct and drawn with `seed`; an utterance whose audio falls outside
    `min_seconds..max_seconds` is redrawn (up to 5 rounds). An existing dataset at `out`
    is replaced. Returns `Path(out)`.
    """
    import datasets  # slow import; keep `--help` fast

    langs = [l.strip() for l in langs.split(",")] if isinstance(langs, str) else list(langs)
    if n < 1 or not langs:
        raise DataError(f"need n >= 1 and at least one language, got n={n}, langs={langs}")
    if engine == "flite" and set(langs) != {"en"}:
        raise DataError(f"flite speaks English only; got langs={langs}. Use --engine espeak for es/it")
    bad = [l for l in langs if l not in ESPEAK_VOICES]
    if bad:
        raise DataError(f"no voices for languages {bad}; known: {sorted(ESPEAK_VOICES)}")
    out = Path(out)
    saved = (out / "dataset_info.json").exists() or (out / "dataset_dict.json").exists()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not saved)):
        raise DataError(f"{out} exists and is not a saved dataset (or an empty directory); refusing to overwrite it")
    binary = _require(engine)

    rng = np.random.default_rng(seed)
    seen: set[str] = set()

    def draw(lang: str, lo: int, hi: int) -> Utterance:
        for _ in range(100):  # distinct sentences; fall back to a repeat if the range is tiny
            utt = _draw(lang, engine, rng, lo, hi)
            if utt.text not in seen:
                break
        seen.add(utt.text)
        return utt

    utts = [draw(langs[i % len(langs)], min_words, max_words) for i in range(n)]
    audio: list[bytes] = [b""] * n
    todo = list(range(n))
    bar = progress_bar(total=n, desc=f"synthesizing ({engine})", unit="utt", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for round_ in range(1, 6):
            retry = []
            for i, (data, seconds) in zip(todo, pool.map(lambda i: synthesize(utts[i], binary, engine), todo)):
                if min_seconds <= seconds <= max_seconds or round_ == 5:
                    audio[i] = data
                    bar.update()
                else:
                    retry.append((i, seconds))
            # Redraw sequentially in index order, so the dataset depends on `seed` only; each
            # round narrows the word range towards the side that fits.
            for i, seconds in retry:
                if seconds > max_seconds:
                    lo, hi = min_words, max(min_words, max_words - 2 * round_)
                else:
                    lo, hi = min(max_words, min_words + 2 * round_), max_words
                utts[i] = draw(utts[i].language, lo, hi)
            todo = [i for i, _ in retry]
            if not todo:
                break
    bar.close()

    ds = datasets.Dataset.from_dict({
        "audio": [{"bytes": b, "path": f"{i:06d}.wav"} for i, b in enumerate(audio)],
        "text": [u.text for u in utts], "language": [u.language for u in utts],
        "voice": [u.voice for u in utts], "speed": [u.speed for u in utts], "pitch": [u.pitch for u in utts],
    }).cast_column("audio", datasets.Audio())  # bytes: nothing is decoded at build time
    # Write next to `out` and swap in, so an interrupted build never leaves half a dataset.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        ds.save_to_disk(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--langs", default="es,it", help="comma-separated: es, it, en")
    p.add_argument("--n", type=int, default=240, help="total utterances, round-robin over languages")
    p.add_argument("--out", default="data/synth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=sorted(ENGINES), default="espeak")
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-words", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="parallel synthesizer processes")
    a = p.parse_args(argv)
    try:
        out = synthesize_dataset(a.out, a.langs, a.n, a.seed, a.engine, a.min_words, a.max_words, workers=a.workers)
    except UserError as e:  # anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.n} utterances to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
