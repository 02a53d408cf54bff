"""Decode, validate and resample one audio sample.

Every way a sample can be unusable ends in `BadSample(reason)`, so the loader can skip and
count it instead of dying on a traceback from deep inside soundfile or FFmpeg.
"""

import io
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

REASONS = ("unreadable", "empty", "silent", "nan", "too_long", "missing_text")


class BadSample(Exception):
    """A sample that cannot be used. `reason` is one of `REASONS`; the message names the sample."""

    def __init__(self, reason: str, detail: str = "", sample: str | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown BadSample reason {reason!r}; expected one of {REASONS}")
        self.reason, self.detail, self.sample = reason, detail, sample
        where = f"sample {sample}" if sample else "sample"
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))


def _describe(value) -> str:
    """A short name for a sample value, for error messages."""
    if isinstance(value, dict):
        return repr(value.get("path")) if value.get("path") else f"<{len(value.get('bytes') or b'')} bytes>"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return repr(value)[:100]


def _short(e: Exception) -> str:
    """The informative tail of a decoder error (drops buffer reprs and C++ source paths)."""
    return f"{type(e).__name__}: {str(e).rsplit(': ', 1)[-1].strip()}"


def _as_channels_first(arr: np.ndarray) -> np.ndarray:
    """[T] -> [1, T]; [T, C] (more samples than channels) -> [C, T]."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        return arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"audio array must be 1-D or 2-D, got shape {arr.shape}")
    return arr.T if arr.shape[0] > arr.shape[1] else arr


def _decode_source(source: bytes | str, sample: str | None) -> tuple[np.ndarray, int]:
    """Decode encoded bytes or a file path: soundfile first, torchcodec (FFmpeg) as fallback."""
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                           dtype="float32", always_2d=True)  # [T, C]
        return np.ascontiguousarray(data.T), int(sr)
    except Exception as e:  # libsndfile raises several types; any failure means "try FFmpeg"
        sf_error = _short(e)
    try:
        # Imported lazily: FFmpeg libraries load on first use and only formats such as
        # mp3/opus/m4a that libsndfile can't read get this far.
        from torchcodec.decoders import AudioDecoder

        samples = AudioDecoder(source).get_all_samples()  # data [C, T] float32
        return samples.data.numpy().astype(np.float32, copy=False), int(samples.sample_rate)
    except Exception as e:
        raise BadSample("unreadable", f"soundfile: {sf_error}; torchcodec: {_short(e)}", sample) from None


def decode_audio(value, sample: str | None = None) -> tuple[np.ndarray, int]:
    """Decode one audio value to a float32 array [channels, T] and its sample rate.

    `value` may be what a `datasets` Audio(decode=False) column holds (dict with "bytes"
    and/or "path"), a path, raw encoded bytes, a dict with "array" + "sampling_rate", or a
    torchcodec AudioDecoder (a decoded datasets Audio column). `sample` names the sample
    in errors. Raises BadSample("unreadable") on any failure.
    """
    if sample is None:
        sample = _describe(value)
    try:
        if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder
            samples = value.get_all_samples()
            return samples.data.numpy().astype(np.float32, copy=False), int(samples.sample_rate)
        if isinstance(value, dict) and value.get("array") is not None:
            sr = value.get("sampling_rate")
            if not isinstance(sr, (int, np.integer)) or sr <= 0:
                raise ValueError(f"bad sampling_rate {sr!r}")
            return _as_channels_first(value["array"]), int(sr)
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                value = value["bytes"]
            elif value.get("path"):
                value = value["path"]
            else:
                raise ValueError("dict has neither 'bytes' nor 'path' nor 'array'")
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            if not os.path.isfile(value):
                raise FileNotFoundError(f"no such file {value!r}")
        elif not isinstance(value, bytes):
            raise TypeError(f"cannot decode audio from {type(value).__name__}")
        if isinstance(value, bytes) and not value:
            raise ValueError("zero bytes")
    except BadSample:
        raise
    except Exception as e:
        raise BadSample("unreadable", f"{type(e).__name__}: {e}", sample) from None
    return _decode_source(value, sample)


def prepare_waveform(array: np.ndarray, sr: int, *, max_seconds: float = 30.0, silence_peak: float = 1e-4,
                     sample: str | None = None) -> np.ndarray:
    """Validate a decoded waveform [C, T] or [T] and return it as mono float32 [T].

    Raises BadSample: "empty" (no samples), "nan" (NaN/inf anywhere), "silent" (peak below
    `silence_peak`), "too_long" (over `max_seconds`).
    """
    wave = np.asarray(array, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=0)  # channels-first mono mix; a NaN in any channel survives it
    elif wave.ndim != 1:
        raise BadSample("unreadable", f"waveform must be [C, T] or [T], got shape {wave.shape}", sample)
    if wave.size == 0:
        raise BadSample("empty", "0 samples", sample)
    if not np.isfinite(wave).all():
        raise BadSample("nan", f"{int((~np.isfinite(wave)).sum())} non-finite samples", sample)
    peak = float(np.abs(wave).max())
    if peak < silence_peak:
        raise BadSample("silent", f"peak {peak:.2g} < {silence_peak:g}", sample)
    seconds = wave.size / sr
    if seconds > max_seconds:
        raise BadSample("too_long", f"{seconds:.1f} s > max_seconds={max_seconds:g}", sample)
    return np.ascontiguousarray(wave)


def resample(wave: torch.Tensor | np.ndarray, sr_in: int, sr_out: int) -> torch.Tensor:
    """Resample a mono waveform [T] from `sr_in` to `sr_out` Hz -> float32 tensor [T']."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if int(sr_in) == int(sr_out):
        return wave
    return torchaudio.functional.resample(wave, int(sr_in), int(sr_out))


def check_text(text, sample: str | None = None) -> str:
    """Return the stripped transcript, or raise BadSample("missing_text") for None, non-text,
    non-UTF-8 bytes, or empty/whitespace-only text."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample("missing_text", "text bytes are not UTF-8", sample) from None
    if not isinstance(text, str):
        raise BadSample("missing_text", f"text is {type(text).__name__}, not str", sample)
    text = text.strip()
    if not text:
        raise BadSample("missing_text", "text is empty", sample)
    return text
