"""Speech in, speech out: one recording through a trained checkpoint, offline or streamed.

    python -m s2s.infer CKPT INPUT.wav --out OUT.wav [--stream] [--seed N] [--temperature T] [--top-p P]
                        [--max-new-tokens N] [--json FILE] [--text TEXT] [key=value ...]

    session = Session("outputs/adapter_stage1/<run id>/final")      # loads the model once
    for chunk in session.stream(wave, sample_rate):                 # 24 kHz float32 [n], as decoded
        play(chunk)
    result = session.run(wave, sample_rate)                         # InferResult: wave [T], timings

CKPT is anything `evaluation.score` takes: a checkpoint directory, or a plain `.pt` with
`--strategy NAME [--preset P]`. `key=value` overrides go to the checkpoint's config (`backbones.*`,
`data.max_seconds`, ...) or to this command's (`generation.*`: sampling, `seed`, `max_new_tokens`;
`streaming.*`: `chunk_frames`, `lookback_frames`, `lookahead_frames`, see s2s/streaming.py).

Any sample rate and channel count is mixed down and resampled (16 kHz for Whisper); an empty,
silent, unreadable, or too long input (over the checkpoint's `data.max_seconds`, at most Whisper's
30 s window) is a one-line error. Sampling is seeded (`generation.seed`, default 0) and SNAC's
decoder noise is keyed to the same seed, so the same input and options give the same tokens and
the same samples, and `--stream` writes the file the offline run writes (to float rounding). The
output (float WAV, or any format soundfile writes, by its suffix) is written only on success,
to a temporary name renamed into place.

Timings: time to first audio is from the call (the input is complete) to the first decoded
samples (offline: the whole wave); real-time factor is the call's compute time over the seconds
of audio; tokens/s counts decoder steps over the time spent in the language model.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generator, Iterator

import numpy as np
import soundfile as sf
import torch

from s2s.config import validate
from s2s.data.audio import BadSample, decode_audio, prepare_waveform, resample
from s2s.data.loader import ENCODER_SR
from s2s.errors import UserError
from s2s.experiment import load_trained
from s2s.experiment_config import PRESETS
from s2s.files import atomic_write
from s2s.generate import GenerationConfig, generate_steps
from s2s.prepare import PreparedExample, make_batch
from s2s.progress import progress_bar, quiet_library_bars
from s2s.streaming import StreamingDecoder, context_frames, decode_offline


@dataclass
class StreamConfig:
    chunk_frames: int = field(default=1, metadata={"range": (1, None)})  # frames (2048 samples, 85 ms) per chunk
    # Context decoded around each chunk and dropped; None = exact (SNAC's receptive field, 3 frames).
    lookback_frames: int | None = field(default=None, metadata={"range": (0, None)})
    lookahead_frames: int | None = field(default=None, metadata={"range": (0, None)})  # delays the first audio


@dataclass
class InferConfig:
    """This command's own settings: the `generation.*` and `streaming.*` override keys."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    streaming: StreamConfig = field(default_factory=StreamConfig)


class InputError(UserError):
    """An input recording or transcript that cannot be used, or an output that cannot be written."""


@dataclass
class InferResult:
    wave: torch.Tensor  # [T] float32 at 24 kHz
    tokens: torch.Tensor  # [n] int64 speech ids generated (end_of_speech excluded)
    stopped: bool  # ended with end_of_speech (not max_new_tokens)
    time_to_first_audio_s: float | None  # None: no audio
    real_time_factor: float | None  # compute seconds / audio seconds; None: no audio
    tokens_per_second: float  # decoder steps / seconds in the language model
    audio_seconds: float
    dropped_tokens: int  # ids not in a whole frame (see s2s.tokens.tokens_to_codes, strict=False)
    streamed: bool

    def summary(self) -> dict:
        """Everything but the tensors (token count instead), JSON-ready."""
        out = {k: v for k, v in asdict(self).items() if k not in ("wave", "tokens")}
        return {**out, "tokens": len(self.tokens)}


_FIXES = {"unreadable": "give an audio file that soundfile or FFmpeg reads (wav, flac, mp3, ...)",
          "empty": "it has no samples: give a recording of speech",
          "silent": "it holds no sound: give a recording of speech",
          "nan": "it holds NaN or infinite samples: export it again",
          "too_long": "cut it shorter (the limit is the checkpoint's data.max_seconds, at most Whisper's 30 s)"}


def _input_error(e: BadSample, name: str) -> InputError:
    return InputError(f"{name}: {e.reason}" + (f" ({e.detail})" if e.detail else "") + f"; {_FIXES[e.reason]}")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """An audio file -> (float32 [channels, T], sample rate); InputError when it cannot be read."""
    try:
        return decode_audio(str(path), sample=str(path))
    except BadSample as e:
        raise _input_error(e, str(path)) from None


class Session:
    """A checkpoint loaded once, for any number of utterances (one at a time: SNAC's noise is patched
    in per decode, so two threads must not share a Session).

    `overrides` are `key=value` strings as on the command line; `generation` and `streaming` are
    the starting values of the `generation.*` / `streaming.*` keys, which overrides may change.
    """

    def __init__(self, checkpoint: str | Path, overrides=(), generation: GenerationConfig | None = None,
                 streaming: StreamConfig | None = None):
        self.config = InferConfig(copy.deepcopy(generation or GenerationConfig()),
                                  copy.deepcopy(streaming or StreamConfig()))
        self.cfg, self.core, self.model, self.meta = load_trained(str(checkpoint), list(overrides),
                                                                  others=[self.config])
        validate(self.config)
        self.model.eval()
        self.sample_rate = int(self.core.snac.sampling_rate)
        fe = self.core.feature_extractor  # Whisper sees one 30 s window; longer input would be cut silently
        self.max_seconds = min(float(self.cfg.data.max_seconds), fe.n_samples / fe.sampling_rate)
        context_frames(self.core.snac)  # a SNAC that cannot stream exactly fails here, not mid-utterance
        self.needs_text = self.model.reads_text
        self.last_result: InferResult | None = None

    @property
    def generation(self) -> GenerationConfig:
        return self.config.generation

    def input_wave(self, wave, sample_rate: int, name: str = "input") -> torch.Tensor:
        """Any [T] / [C, T] (or [T, C]) array or tensor at any rate -> mono float32 [T16] at 16 kHz."""
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().float().cpu().numpy()
        wave = np.asarray(wave, dtype=np.float32)
        if wave.size == 0:  # [C, 0] would pass for [T=C, 0 channels] below; it is empty either way
            wave = wave.reshape(0)
        try:
            array, sr = decode_audio({"array": wave, "sampling_rate": sample_rate}, name)
            mono = prepare_waveform(array, sr, max_seconds=self.max_seconds, sample=name)
        except BadSample as e:
            raise _input_error(e, name) from None
        return resample(mono, sr, ENCODER_SR)

    def batch(self, wave, sample_rate: int, text: str = "", name: str = "input"):
        """A one-utterance `Batch` (Whisper states of the input, no target); `name` names it in errors."""
        if self.needs_text and not text.strip():
            raise InputError("this checkpoint's strategy reads the transcript of the input, not its audio "
                             "(strategy.interleave_source=text): pass it with --text '...' (text= in the API)")
        item = PreparedExample("input", text, "", torch.zeros(0, dtype=torch.long), None,
                               self.input_wave(wave, sample_rate, name))
        return make_batch([item], self.core)

    def stream(self, wave, sample_rate: int, text: str = "", progress: bool = False,
               name: str = "input") -> Generator[torch.Tensor, None, InferResult]:
        """24 kHz float32 chunks [n] as they are decoded; they add up to `run(...).wave`.

        The input is checked and encoded at the call (a bad input raises here); the generator's
        return value (and `last_result`) is the InferResult. Time the caller holds a chunk is not
        counted in the timings.
        """
        t0 = time.perf_counter()
        batch = self.batch(wave, sample_rate, text, name)
        return self._stream(batch, t0, time.perf_counter(), progress)

    def _stream(self, batch, t0: float, returned: float, progress: bool) -> Generator[torch.Tensor, None, InferResult]:
        away = time.perf_counter() - returned  # between stream() returning and the first next()
        tally = _Tally()
        s = self.config.streaming
        decoder = StreamingDecoder(self.core, s.chunk_frames, s.lookback_frames, s.lookahead_frames,
                                   noise_seed=self.generation.seed)
        first, chunks = None, []

        def out(pieces):
            nonlocal first, away
            for chunk in pieces:
                first = first if first is not None else time.perf_counter() - t0 - away
                chunks.append(chunk)
                paused = time.perf_counter()
                yield chunk
                away += time.perf_counter() - paused

        for token in self._speech_ids(batch, tally, progress):
            yield from out(decoder.push(token))
        yield from out(decoder.flush())
        wave = torch.cat(chunks) if chunks else torch.zeros(0)
        return self._result(wave, tally, decoder.skipped, first, time.perf_counter() - t0 - away, streamed=True)

    def run(self, wave, sample_rate: int, text: str = "", stream: bool = False, progress: bool = False,
            name: str = "input") -> InferResult:
        """The whole answer. stream=True decodes chunk by chunk (the timings then say when the first
        chunk was ready); the wave is the same either way."""
        if stream:
            chunks = self.stream(wave, sample_rate, text, progress, name)
            while True:
                try:
                    next(chunks)
                except StopIteration as done:
                    return done.value
        t0 = time.perf_counter()
        tally = _Tally()
        for _ in self._speech_ids(self.batch(wave, sample_rate, text, name), tally, progress):
            pass
        audio, dropped = decode_offline(self.core, torch.tensor(tally.tokens, dtype=torch.long), self.generation.seed)
        total = time.perf_counter() - t0
        return self._result(audio, tally, dropped, total if audio.numel() else None, total, streamed=False)

    def _speech_ids(self, batch, tally: "_Tally", progress: bool) -> Iterator[int]:
        """The speech ids of the one sample as they are sampled; `tally` records them and the LM time."""
        steps = generate_steps(self.model, batch, self.generation)
        with progress_bar(total=self.generation.max_new_tokens, desc="generate", unit="tok",
                          disable=not progress) as bar:
            while True:
                t = time.perf_counter()
                step = next(steps, None)
                tally.lm_seconds += time.perf_counter() - t
                if step is None:
                    return
                tally.steps += 1
                bar.update()
                tally.stopped |= bool(step.stopped[0])
                if bool(step.emitted[0]):
                    tally.tokens.append(int(step.tokens[0]))
                    yield tally.tokens[-1]

    def _result(self, wave: torch.Tensor, tally: "_Tally", dropped: int, first: float | None, busy: float,
                streamed: bool) -> InferResult:
        seconds = len(wave) / self.sample_rate
        result = InferResult(wave=wave, tokens=torch.tensor(tally.tokens, dtype=torch.long), stopped=tally.stopped,
                             time_to_first_audio_s=first, real_time_factor=busy / seconds if seconds else None,
                             tokens_per_second=tally.steps / max(tally.lm_seconds, 1e-9), audio_seconds=seconds,
                             dropped_tokens=dropped, streamed=streamed)
        self.last_result = result
        return result


@dataclass
class _Tally:
    tokens: list[int] = field(default_factory=list)
    stopped: bool = False
    steps: int = 0
    lm_seconds: float = 0.0


# --- the command --------------------------------------------------------------------------------

def _output_format(path: Path) -> str:
    """soundfile's format for `path`'s suffix; InputError before any work when it has none or the folder is missing."""
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise InputError(f"--out {path}: soundfile writes no '{path.suffix}' files; use .wav or .flac")
    _check_folder(path, "--out")
    return fmt


def _check_folder(path: Path, flag: str) -> None:
    if path.is_dir():
        raise InputError(f"{flag} {path} is a directory: give a file name")
    if not path.parent.is_dir():
        raise InputError(f"{flag} {path}: the folder {path.parent} does not exist; create it first")


def write_wave(path: Path, wave: torch.Tensor, sample_rate: int) -> None:
    """Float WAV (exact samples) or whatever the suffix names, written atomically."""
    fmt = _output_format(path)
    atomic_write(path, lambda tmp: sf.write(tmp, wave.numpy(), sample_rate, format=fmt,
                                                subtype="FLOAT" if fmt == "WAV" else None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s2s.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory, or a plain .pt state dict (with --strategy)")
    parser.add_argument("input", help="the recording to answer (any format soundfile or FFmpeg reads)")
    parser.add_argument("overrides", nargs="*", help="key=value: the checkpoint's config, generation.* or streaming.*")
    parser.add_argument("--out", required=True, help="the 24 kHz answer (.wav: float samples; .flac, ...)")
    parser.add_argument("--stream", action="store_true", help="decode chunk by chunk as tokens arrive (same file)")
    parser.add_argument("--seed", type=int, help="sampling and SNAC noise seed (sets generation.seed; default 0)")
    parser.add_argument("--temperature", type=float, help="sets generation.temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, help="sets generation.top_p")
    parser.add_argument("--max-new-tokens", type=int, help="sets generation.max_new_tokens (7 per 85 ms frame)")
    parser.add_argument("--chunk-frames", type=int,
                        help="with --stream: frames per chunk (sets streaming.chunk_frames)")
    parser.add_argument("--text", default="", help="the input's transcript, for a strategy that reads it")
    parser.add_argument("--json", help="also write the timings and the output path to this JSON file")
    parser.add_argument("--strategy", help="the strategy a plain .pt state dict is loaded into (sets strategy_name)")
    parser.add_argument("--preset", choices=PRESETS, help="the preset a .pt's config starts from (default tiny)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_intermixed_args(argv)
    quiet_library_bars()
    settings = (("generation.seed", args.seed), ("generation.temperature", args.temperature),
                ("generation.top_p", args.top_p), ("generation.max_new_tokens", args.max_new_tokens),
                ("streaming.chunk_frames", args.chunk_frames), ("strategy_name", args.strategy),
                ("preset", args.preset))
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in settings if v is not None]
    out, report = Path(args.out), Path(args.json) if args.json else None
    try:
        _output_format(out)  # before the model loads: a bad path costs nothing
        if report is not None:
            _check_folder(report, "--json")
        wave, rate = read_audio(args.input)
        session = Session(args.checkpoint, overrides)
        result = session.run(wave, rate, text=args.text, stream=args.stream, progress=not args.no_progress,
                             name=args.input)
        if not result.wave.numel():
            raise InputError(f"the model generated no whole audio frame ({len(result.tokens)} speech ids, "
                             f"{'then end_of_speech' if result.stopped else 'then max_new_tokens'}); nothing written: "
                             f"a frame takes 7 ids: raise --max-new-tokens, set generation.min_new_tokens=7 "
                             f"or try another --seed")
        write_wave(out, result.wave, session.sample_rate)
        if report is not None:
            summary = {"output": str(out), "input": args.input, "checkpoint": args.checkpoint,
                       "seed": session.generation.seed, **result.summary()}
            atomic_write(report, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    except UserError as e:  # says what was wrong and how to fix it; anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"time to first audio {result.time_to_first_audio_s:.3f} s ({'streamed' if result.streamed else 'offline'})"
          f" | real-time factor {result.real_time_factor:.3f} | {result.tokens_per_second:.1f} tokens/s | "
          f"{result.audio_seconds:.2f} s of audio, {len(result.tokens)} speech ids"
          f"{'' if result.stopped else ' (stopped at max_new_tokens)'}")
    print(f"wrote {out}" + (f" and {report}" if report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
