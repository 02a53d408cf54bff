"""Streaming SNAC decoding: audio chunk by chunk as speech ids arrive, equal to decoding them all at once.

    decoder = StreamingDecoder(core, chunk_frames=1)
    for ids in ...:                      # Orpheus speech ids as they are generated, one or many at a time
        for chunk in decoder.push(ids):  # float32 [chunk_frames * 2048] 24 kHz samples, new ones only
            play(chunk)
    for chunk in decoder.flush():        # end of the utterance: the rest
        play(chunk)

Why windows with context are exact. SNAC 24 kHz's decoder has no attention (`attn_window_size`
null) and no causal state: it is convolutions ('same'-padded convs, transposed convs whose output
is aligned to the input grid) and pointwise ops, so every output sample depends only on the codes
within a fixed radius of it: its receptive field, `receptive_radius` (5634 samples one-sided by
the layer sizes, 2.75 frames; perturbing a frame of the tiny SNAC changes samples up to 4725 away).
Decoding a window of frames [s, e) gives the same samples as the whole utterance wherever the
window's own zero padding is out of reach: more than the radius from a cut edge, or at an edge the
utterance really has. So frames [a, b) are decoded from the window [a - L, b + R) with
L = R = ceil(radius / 2048) = 3 frames (`context_frames`), or from the true start/end when
closer, and exactly samples [a, b) are kept. A chunk of `chunk_frames` frames is emitted once the
R frames after it have arrived; `flush` decodes what is left up to the true end. Nothing is dropped
or duplicated, unlike Orpheus' reference decoder (the last 4 frames, keeping samples 2048:4096: one
frame of look-back, two of look-ahead, the first and last frames lost). The price: the first audio
waits for chunk_frames + R frames (4 with the defaults, 28 ids, as the reference decoder waits).
Smaller `lookback_frames`/`lookahead_frames` trade exactness for latency. Each chunk decodes
chunk + L + R frames, so streaming costs (chunk + 6) / chunk times the offline SNAC work (7x at 1).

SNAC's noise. Each of its DecoderBlocks adds `torch.randn` noise scaled by a learned projection
(NoiseBlock), so two decodes of the same codes differ, and a window decoded alone gets other noise
than the whole utterance at the same place. On the tiny random SNAC the noise is as loud as the
signal (two decodes of 24 frames differ by RMS 0.36, max 1.55, against a signal RMS of 0.34); how
loud it is in the released SNAC, whose projections were trained, is not measured here (no weights
offline). `SnacNoise` makes the noise a fixed function of (seed, block, absolute sample position):
the codec still gets noise of the same distribution, and every window gets exactly the noise the
whole utterance gets there. Streaming and the offline reference `decode_offline` use it, so
streamed == offline to float rounding (max 7e-7 on the tiny SNAC), and an output is reproducible
from its seed. `noise_seed=None` keeps SNAC's own random noise (then no two decodes agree).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from typing import Iterable, Iterator

import torch
from torch import nn

from s2s.errors import UserError
from s2s.generate import tokens_to_audio
from s2s.tokens import FRAME, tokens_to_codes

with warnings.catch_warnings():  # snac's import calls the deprecated torch.jit.script
    warnings.simplefilter("ignore")
    from snac.attention import LocalMHA
    from snac.layers import NoiseBlock


class StreamingError(UserError):
    """A SNAC or a streaming setting that cannot stream exactly."""


def frame_samples(snac) -> int:
    """Output samples per 7-token frame: the coarse codebook's stride times the hop (2048 at 24 kHz)."""
    return int(snac.hop_length) * int(snac.vq_strides[0])


def receptive_radius(snac) -> int:
    """One-sided receptive field of SNAC's decoder in output samples, an upper bound from its layers.

    Walks the decoder in forward order keeping `rate` (output samples per step at the current
    layer, the hop on the latent): a conv of kernel k, dilation d reaches (k-1)d/2 steps each way;
    a transposed conv of kernel k, stride s, padding p reaches ceil(max(p, k-1-p)/s) input steps.
    """
    rate, radius = int(snac.hop_length), 0
    for m in snac.decoder.modules():
        if isinstance(m, LocalMHA):
            # Its windows sit at fixed multiples of window_size on the latent: a decoding window that
            # starts elsewhere regroups them, and no context makes that exact.
            raise StreamingError(f"this SNAC decoder has local attention (attn_window_size={m.window_size}); "
                                 f"streaming decodes exactly only attention-free SNACs such as "
                                 f"hubertsiuzdak/snac_24khz: set backbones.snac to one")
        if isinstance(m, nn.ConvTranspose1d):
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
            radius += math.ceil(max(p, k - 1 - p) / s) * rate
            rate //= s
        elif isinstance(m, nn.Conv1d):
            radius += (m.kernel_size[0] - 1) * m.dilation[0] // 2 * rate
    return radius


def context_frames(snac) -> int:
    """Frames of context on each side that make windowed decoding exact (3 for SNAC 24 kHz)."""
    return math.ceil(receptive_radius(snac) / frame_samples(snac))


class SnacNoise:
    """SNAC's decoder noise as a fixed function of (seed, noise block, absolute position).

    Noise is made in pieces of `PIECE` positions, each from its own seeded generator, and kept (a
    few MB for the longest utterance: positions restart at 0 for every utterance), so any window
    of any block costs only the pieces it touches.
    """

    PIECE = 4096

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._pieces: dict[tuple, torch.Tensor] = {}

    def values(self, block: int, start: int, length: int, device, dtype) -> torch.Tensor:
        """Noise of `block` at positions [start, start + length) -> [length]."""
        first, last = start // self.PIECE, (start + length - 1) // self.PIECE
        parts = [self._piece(block, j, torch.device(device), dtype) for j in range(first, last + 1)]
        return torch.cat(parts)[start - first * self.PIECE:][:length]

    def _piece(self, block: int, j: int, device, dtype) -> torch.Tensor:
        key = (block, j, device, dtype)
        if key not in self._pieces:
            # One generator per piece: any piece is reproducible without drawing the ones before it.
            # torch's CPU generator (mt19937) keeps only 32 bits of a seed: hash the key down to them.
            key32 = int.from_bytes(hashlib.blake2b(f"{self.seed},{block},{j}".encode(), digest_size=4).digest(), "big")
            gen = torch.Generator().manual_seed(key32)
            self._pieces[key] = torch.randn(self.PIECE, generator=gen).to(device, dtype)
        return self._pieces[key]

    @contextlib.contextmanager
    def applied(self, snac, first_frame: int = 0):
        """Within it, `snac`'s NoiseBlocks take this noise for a decode that starts at frame `first_frame`.

        Patches the blocks' `forward` for the duration only: not for two threads decoding with one SNAC.
        """
        blocks = noise_blocks(snac)
        latent_start = first_frame * int(snac.vq_strides[0])
        saved = [m.__dict__.get("forward") for m, _ in blocks]
        for b, (m, upsampling) in enumerate(blocks):
            m.forward = self._forward(m, b, latent_start * upsampling)
        try:
            yield
        finally:
            for (m, _), old in zip(blocks, saved):
                del m.forward
                if old is not None:
                    m.forward = old

    def _forward(self, block: nn.Module, index: int, start: int):
        def forward(x: torch.Tensor) -> torch.Tensor:  # NoiseBlock.forward with fixed instead of fresh noise
            noise = self.values(index, start, x.shape[-1], x.device, x.dtype)
            return x + noise.view(1, 1, -1) * block.linear(x)
        return forward


def noise_blocks(snac) -> list[tuple[nn.Module, int]]:
    """SNAC's NoiseBlocks in forward order, each with its rate in steps per latent step."""
    out, upsampling = [], 1
    for m in snac.decoder.modules():
        if isinstance(m, nn.ConvTranspose1d):
            upsampling *= m.stride[0]
        elif isinstance(m, NoiseBlock):
            out.append((m, upsampling))
    return out


def _noise(noise: SnacNoise | None, snac, first_frame: int = 0):
    return contextlib.nullcontext() if noise is None else noise.applied(snac, first_frame)


def decode_offline(core, tokens: torch.Tensor, noise_seed: int | None = 0) -> tuple[torch.Tensor, int]:
    """The whole utterance at once, the reference a stream equals: `tokens_to_audio` (lenient:
    ([2048 n] float32 samples, ids dropped as broken frames)) with `SnacNoise(noise_seed)`
    (None: SNAC's own random noise)."""
    with _noise(None if noise_seed is None else SnacNoise(noise_seed), core.snac):
        return tokens_to_audio(core, tokens)


class FrameParser:
    """Speech ids one at a time -> whole frames, exactly the frames `tokens_to_codes(strict=False)`
    finds in the whole sequence.

    That scan keeps a frame only when 7 valid ids follow in position order, and otherwise retries
    from the next id. Its decision about a frame depends on that frame's ids only, so a frame ends
    at the id that completes it; until then the one frame that can still complete starts at the
    last position-0 id seen (ids after a position-0 id that would start another frame are
    positions 1..6), so everything before it can be forgotten.
    """

    def __init__(self, layout):
        self.layout = layout
        self.pending: list[int] = []  # ids since the last frame, from the last position-0 id
        self.seen = 0
        self.frames = 0

    @property
    def skipped(self) -> int:
        """Ids so far not in a frame (those still pending included): `tokens_to_codes`' n_skipped."""
        return self.seen - FRAME * self.frames

    def push(self, token: int) -> torch.Tensor | None:
        """Add one id; returns the frame [7] it completes, or None."""
        self.pending.append(int(token))
        self.seen += 1
        codes, _ = tokens_to_codes(self.pending, self.layout, strict=False)
        if codes[0].numel():  # only the new id can have completed a frame: it is the last 7
            frame, self.pending = torch.tensor(self.pending[-FRAME:]), []
            self.frames += 1
            return frame
        lo = self.layout.audio_offset
        starts = [j for j, t in enumerate(self.pending) if lo <= t < lo + self.layout.codebook_size]
        self.pending = self.pending[starts[-1]:] if starts else []
        return None


class StreamingDecoder:
    """Speech ids in, 24 kHz chunks out; the chunks concatenated equal `decode_offline` of all the ids.

    chunk_frames: frames per emitted chunk (2048 samples each). lookback_frames / lookahead_frames:
    context decoded around each chunk and thrown away; None = `context_frames(snac)`, the exact
    amount. noise_seed: SNAC's noise is `SnacNoise(noise_seed)` (module docstring); give
    `decode_offline` the same seed to compare. None: SNAC's own random noise (streamed != offline).
    """

    def __init__(self, core, chunk_frames: int = 1, lookback_frames: int | None = None,
                 lookahead_frames: int | None = None, noise_seed: int | None = 0):
        exact = context_frames(core.snac)
        self.lookback = exact if lookback_frames is None else lookback_frames
        self.lookahead = exact if lookahead_frames is None else lookahead_frames
        for name, value in (("chunk_frames", chunk_frames), ("lookback_frames", self.lookback),
                            ("lookahead_frames", self.lookahead)):
            if not isinstance(value, int) or value < (1 if name == "chunk_frames" else 0):
                raise StreamingError(f"{name}={value!r}: expected an integer >= {1 if name == 'chunk_frames' else 0}")
        self.core, self.chunk = core, chunk_frames
        self.noise = None if noise_seed is None else SnacNoise(noise_seed)
        self.parser = FrameParser(core.layout)
        self.frames: list[torch.Tensor] = []  # every whole frame so far, [7] ids each
        self.emitted = 0  # frames whose samples have been returned

    @property
    def skipped(self) -> int:
        """Ids dropped as broken frames so far (as `tokens_to_audio` counts them)."""
        return self.parser.skipped

    def push(self, ids: int | Iterable[int] | torch.Tensor) -> list[torch.Tensor]:
        """Add speech ids; returns the chunks [chunk_frames * 2048] that became exact (maybe none)."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        for t in ids:
            frame = self.parser.push(t)
            if frame is not None:
                self.frames.append(frame)
        out = []
        while len(self.frames) - self.emitted >= self.chunk + self.lookahead:
            out.append(self._decode(self.emitted + self.chunk, self.emitted + self.chunk + self.lookahead))
        return out

    def flush(self) -> list[torch.Tensor]:
        """The utterance has ended: the remaining frames' samples, decoded up to its true end ([] if none)."""
        if len(self.frames) == self.emitted:
            return []
        return [self._decode(len(self.frames), len(self.frames))]

    def _decode(self, last: int, end: int) -> torch.Tensor:
        """Samples of frames [emitted, last) from a window [emitted - lookback, end) -> [2048 (last - emitted)]."""
        first = self.emitted
        start = max(0, first - self.lookback)
        codes, _ = tokens_to_codes(torch.cat(self.frames[start:end]), self.core.layout)
        with _noise(self.noise, self.core.snac, start):
            wave = self.core.decode_codes(codes)
        n = frame_samples(self.core.snac)
        self.emitted = last
        return wave[(first - start) * n:(last - start) * n]


def stream_audio(core, ids: Iterable, **kwargs) -> Iterator[torch.Tensor]:
    """Chunks of a stream of speech ids (each item an id or a tensor/list of ids); kwargs: StreamingDecoder's."""
    decoder = StreamingDecoder(core, **kwargs)
    for item in ids:
        yield from decoder.push(item)
    yield from decoder.flush()
