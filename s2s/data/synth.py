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
import torch
import torchaudio
from s2s.data.sentences import make_sentence, make_word_string
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
# Two styles of speech. "varied": grammatical sentences in random voices, rates and pitches (speech a
# model must generalize over). "miniature": strings of random words of the closed vocabulary, each word
# spoken alone, fast, in ONE voice per language, cut or padded to exactly MINIATURE_WORD_FRAMES coarse
# SNAC frames (170 ms: most words lose their ends) and concatenated: the speech the tiny trained TTS
# model reads (s2s/tiny_tts.py). A word then sounds, and is coded, the same wherever it falls, and word i
# fills frames 2i and 2i+1, so a 4-layer model can learn to read from an hour of it; from running speech
# it could not (README, "The miniature", has the measurements).
STYLES = ("varied", "miniature")
MINIATURE_VOICES = {"es": "es+m3", "it": "it+f2", "en": "en+m3"}
MINIATURE_WPM = 450  # espeak-ng's top rate: 2.8 frames per word on average before trimming
MINIATURE_RATE = 24000  # written at SNAC's rate, so that the frame grid survives (no resampling)
MINIATURE_GRID = 2048  # samples per coarse frame of a SNAC at hop 512 (the real one's and the tiny one's)
MINIATURE_WORD_FRAMES = 2
WORDS = {"varied": (3, 10), "miniature": (2, 4)}  # default words per utterance, by style


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


def _draw(lang: str, engine: str, rng: np.random.Generator, min_words: int, max_words: int,
          style: str = "varied") -> Utterance:
    if style == "miniature":
        text = make_word_string(lang, rng, min_words, max_words)
        voice = "slt" if engine == "flite" else MINIATURE_VOICES[lang]
        return Utterance(text, lang, voice, round(MINIATURE_WPM / 175, 3), -1 if engine == "flite" else 50)
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


def word_clip(word: str, lang: str, binary: str, engine: str = "espeak") -> np.ndarray:
    """One word of miniature speech: float32 at MINIATURE_RATE, silence trimmed, then cut or zero-padded
    to MINIATURE_WORD_FRAMES x MINIATURE_GRID samples."""
    utt = _draw(lang, engine, np.random.default_rng(0), 1, 1, "miniature")
    data, _ = synthesize(Utterance(word, lang, utt.voice, utt.speed, utt.pitch), binary, engine)
    wave, rate = sf.read(io.BytesIO(data), dtype="float32")
    wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, MINIATURE_RATE).numpy()
    loud = np.nonzero(np.abs(wave) > 1e-3)[0]
    if len(loud) == 0:
        raise DataError(f"{engine} produced silence for the word {word!r} ({lang})")
    size = MINIATURE_WORD_FRAMES * MINIATURE_GRID
    wave = wave[loud[0]: loud[-1] + 1][:size]
    return np.pad(wave, (0, size - len(wave)))


def _miniature_audio(utts: list[Utterance], binary: str, engine: str, workers: int, bar) -> list[bytes]:
    """WAV bytes of each utterance: its words' clips (each synthesized once) end to end."""
    words = sorted({(u.language, w) for u in utts for w in u.text.rstrip(".").lower().split()})
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        clips = dict(zip(words, pool.map(lambda lw: word_clip(lw[1], lw[0], binary, engine), words)))
    out = []
    for u in utts:
        wave = np.concatenate([clips[(u.language, w)] for w in u.text.rstrip(".").lower().split()])
        buf = io.BytesIO()
        sf.write(buf, wave, MINIATURE_RATE, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
        bar.update()
    return out


def synthesize_dataset(out: str | os.PathLike, langs: list[str] | str, n: int, seed: int = 0,
                       engine: str = "espeak", min_words: int | None = None, max_words: int | None = None,
                       min_seconds: float = 1.0, max_seconds: float = 4.0, workers: int = 2,
                       progress: bool = True, style: str = "varied", exclude: set[str] = frozenset()) -> Path:
    """Synthesize `n` utterances (round-robin over `langs`) and save them as a Dataset at `out`.

    `style` (STYLES): "varied" or "miniature" speech (see STYLES); words per utterance default to
    the style's (WORDS). Texts in `exclude` are never drawn. Miniature utterances are as long as
    their words: `min_seconds`/`max_seconds` apply to varied speech only.

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
    if style not in STYLES:
        raise DataError(f"unknown synthesis style {style!r}; choose one of {', '.join(STYLES)}")
    min_words = WORDS[style][0] if min_words is None else min_words
    max_words = WORDS[style][1] if max_words is None else max_words
    binary = _require(engine)

    rng = np.random.default_rng(seed)
    seen: set[str] = set(exclude)

    def draw(lang: str, lo: int, hi: int) -> Utterance:
        for _ in range(100):  # distinct sentences; fall back to a repeat if the range is tiny
            utt = _draw(lang, engine, rng, lo, hi, style)
            if utt.text not in seen:
                break
        seen.add(utt.text)
        return utt

    utts = [draw(langs[i % len(langs)], min_words, max_words) for i in range(n)]
    audio: list[bytes] = [b""] * n
    todo = [] if style == "miniature" else list(range(n))  # miniature: words x clips, no duration redraws
    bar = progress_bar(total=n, desc=f"synthesizing ({engine}, {style})", unit="utt", disable=not progress)
    if style == "miniature":
        audio = _miniature_audio(utts, binary, engine, workers, bar)
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
    p.add_argument("--min-words", type=int, default=None, help="default: 3 (varied), 2 (miniature)")
    p.add_argument("--max-words", type=int, default=None, help="default: 10 (varied), 4 (miniature)")
    p.add_argument("--workers", type=int, default=2, help="parallel synthesizer processes")
    p.add_argument("--style", choices=STYLES, default="varied",
                   help="varied: sentences in random voices and rates; miniature: random words, one voice per language")
    a = p.parse_args(argv)
    try:
        out = synthesize_dataset(a.out, a.langs, a.n, a.seed, a.engine, a.min_words, a.max_words,
                                  workers=a.workers, style=a.style)
    except UserError as e:  # anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.n} utterances to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
