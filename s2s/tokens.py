"""Orpheus token layout: special ids, SNAC codes <-> audio token ids, and prompt construction.

Orpheus extends a Llama-3 text vocabulary with a few control tokens and 7 * 4096 audio tokens.
One coarse SNAC frame i (codebooks c0, c1, c2 at 1x, 2x and 4x the frame rate) becomes 7 tokens

    c0[i], c1[2i], c2[4i], c2[4i+1], c1[2i+1], c2[4i+2], c2[4i+3]

and the token at frame position k has id ``audio_offset + k * codebook_size + code``, so each
position owns its own disjoint id range. Pure torch/python; nothing here loads a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch

FRAME = 7  # audio tokens per coarse SNAC frame
# For each frame position k: which codebook it reads, and which sub-step inside the frame.
_POS_CODEBOOK = (0, 1, 2, 2, 1, 2, 2)
_POS_SUBSTEP = (0, 0, 0, 1, 1, 2, 3)


class TokenError(ValueError):
    """Malformed codes or token ids (bad range, wrong frame position, inconsistent lengths)."""


@dataclass(frozen=True)
class TokenLayout:
    """Id layout of an Orpheus-style vocabulary.

    Parametric so a tiny test preset (small text tokenizer, small codebook) shares the code path.
    """

    tokeniser_length: int = 128256
    start_of_text: int = 128000
    end_of_text: int = 128009
    codebook_size: int = 4096

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TokenError(f"TokenLayout.{f.name} must be an int, got {v!r} ({type(v).__name__})")
        if self.tokeniser_length <= 0 or self.codebook_size <= 0:
            raise TokenError(f"TokenLayout sizes must be positive, got tokeniser_length="
                             f"{self.tokeniser_length}, codebook_size={self.codebook_size}")
        for name in ("start_of_text", "end_of_text"):
            v = getattr(self, name)
            if not 0 <= v < self.tokeniser_length:
                raise TokenError(f"TokenLayout.{name}={v} must be a text id in "
                                 f"[0, tokeniser_length={self.tokeniser_length})")

    # Control tokens sit just above the text vocabulary (ids +8, +9 are unused by Orpheus).
    @property
    def start_of_speech(self) -> int: return self.tokeniser_length + 1
    @property
    def end_of_speech(self) -> int: return self.tokeniser_length + 2
    @property
    def start_of_human(self) -> int: return self.tokeniser_length + 3
    @property
    def end_of_human(self) -> int: return self.tokeniser_length + 4
    @property
    def start_of_ai(self) -> int: return self.tokeniser_length + 5
    @property
    def end_of_ai(self) -> int: return self.tokeniser_length + 6
    @property
    def pad(self) -> int: return self.tokeniser_length + 7
    @property
    def audio_offset(self) -> int: return self.tokeniser_length + 10
    @property
    def audio_end(self) -> int:
        """Exclusive upper bound of audio ids."""
        return self.audio_offset + FRAME * self.codebook_size
    @property
    def min_vocab_size(self) -> int:
        """Smallest LM vocabulary that can hold every id of this layout."""
        return self.audio_end

    def to_dict(self) -> dict[str, int]:
        """Plain-int dict of the defining fields (JSON checkpoint metadata)."""
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        """Inverse of :meth:`to_dict`; unknown keys are an error (they signal a schema mismatch)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TokenError(f"TokenLayout.from_dict: unknown keys {unknown}, expected a subset of {sorted(known)}")
        return cls(**{k: int(v) for k, v in d.items()})


ORPHEUS = TokenLayout()


# ---------------------------------------------------------------------------------------------
# SNAC codes <-> audio token ids

def frame_positions(n_tokens: int) -> torch.Tensor:
    """Frame position k (0..6) of each of ``n_tokens`` consecutive audio tokens. Returns LongTensor [n_tokens]."""
    return torch.arange(n_tokens, dtype=torch.long) % FRAME


def _position_offsets(layout: TokenLayout, device=None) -> torch.Tensor:
    """[7] id of code 0 at each frame position."""
    return layout.audio_offset + torch.arange(FRAME, dtype=torch.long, device=device) * layout.codebook_size


def codes_to_tokens(codes: Sequence[torch.Tensor], layout: TokenLayout = ORPHEUS) -> torch.Tensor:
    """SNAC codes -> Orpheus audio token ids.

    codes: 3 int tensors shaped [n], [2n], [4n] (or batched [B,n], [B,2n], [B,4n]).
    Returns int64 [7n] (or [B,7n]) on the device of ``codes[0]``.
    """
    if not isinstance(codes, (list, tuple)) or len(codes) != 3:
        got = f"{len(codes)} items" if isinstance(codes, (list, tuple)) else type(codes).__name__
        raise TokenError(f"codes_to_tokens expects a list/tuple of 3 codebooks [c0, c1, c2], got {got}")
    cs = [torch.as_tensor(c) for c in codes]
    for j, c in enumerate(cs):
        if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            raise TokenError(f"codebook c{j} must be an integer tensor, got dtype {c.dtype}")
        if c.dim() != cs[0].dim() or c.dim() not in (1, 2):
            raise TokenError("codebooks must all be 1-D [n] or all 2-D [B, n]; "
                             f"got shapes {[tuple(c.shape) for c in cs]}")
    n = cs[0].shape[-1]
    want = [(*cs[0].shape[:-1], m * n) for m in (1, 2, 4)]
    if [tuple(c.shape) for c in cs] != want:
        raise TokenError(f"inconsistent codebook shapes {[tuple(c.shape) for c in cs]}: with c0 of length {n} "
                         f"expected {want} (c1 twice and c2 four times the length of c0)")
    for j, c in enumerate(cs):
        bad = (c < 0) | (c >= layout.codebook_size)
        if bad.any():
            idx = bad.nonzero()[0].tolist()
            raise TokenError(f"codebook c{j} has code {int(c[tuple(idx)])} at index {tuple(idx)}, "
                             f"expected 0..{layout.codebook_size - 1}")
    c0, c1, c2 = (c.long() for c in cs)
    # Interleave into [..., n, 7] in frame-position order, then flatten frames.
    frames = torch.stack([c0, c1[..., 0::2], c2[..., 0::4], c2[..., 1::4],
                          c1[..., 1::2], c2[..., 2::4], c2[..., 3::4]], dim=-1)
    frames = frames + _position_offsets(layout, frames.device)
    return frames.reshape(*frames.shape[:-2], FRAME * n)


def _frames_to_codes(frames: torch.Tensor, layout: TokenLayout) -> list[torch.Tensor]:
    """[n, 7] valid audio ids -> codes [n], [2n], [4n]."""
    f = frames - _position_offsets(layout, frames.device)
    c0 = f[:, 0]
    c1 = torch.stack([f[:, 1], f[:, 4]], dim=1).reshape(-1)
    c2 = torch.stack([f[:, 2], f[:, 3], f[:, 5], f[:, 6]], dim=1).reshape(-1)
    return [c0, c1, c2]


def _position_range(k: int, layout: TokenLayout) -> tuple[int, int]:
    lo = layout.audio_offset + k * layout.codebook_size
    return lo, lo + layout.codebook_size - 1  # inclusive


def tokens_to_codes(tokens, layout: TokenLayout = ORPHEUS,
                    strict: bool = True) -> tuple[list[torch.Tensor], int]:
    """Orpheus audio token ids -> SNAC codes (inverse of :func:`codes_to_tokens`).

    tokens: 1-D tensor or list of ids, [7n] when well formed.
    Returns ([c0 [n], c1 [2n], c2 [4n]] as int64, n_skipped).

    strict=True: any id outside the audio range, at the wrong frame position, or a trailing
    partial frame raises TokenError; n_skipped is 0.
    strict=False (generation/streaming): a frame is kept only when its 7 tokens are all valid and
    in position order. On a bad token the scan drops the frame it falls in and resynchronises at
    the next position-0 id (the position ranges are disjoint, so that id marks a frame start);
    a trailing partial frame is dropped too. n_skipped = number of input tokens not in a kept frame.
    """
    t = torch.as_tensor(tokens)
    if t.numel() == 0:
        t = t.long()  # torch.as_tensor([]) is float32
    if t.dim() != 1:
        raise TokenError(f"tokens_to_codes expects a 1-D sequence of ids, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TokenError(f"tokens must be integer ids, got dtype {t.dtype}")
    t = t.long()
    cb = layout.codebook_size
    if strict:
        pos = frame_positions(len(t)).to(t.device)
        rel = t - layout.audio_offset
        outside = (rel < 0) | (rel >= FRAME * cb)
        if outside.any():
            i = int(outside.nonzero()[0])
            raise TokenError(f"token {int(t[i])} at index {i} is not an audio id, expected "
                             f"[{layout.audio_offset}, {layout.audio_end - 1}] (position {int(pos[i])}: "
                             f"{list(_position_range(int(pos[i]), layout))})")
        wrong = (rel // cb) != pos
        if wrong.any():
            i = int(wrong.nonzero()[0])
            k, got = int(pos[i]), int(rel[i]) // cb
            raise TokenError(f"token {int(t[i])} at index {i} belongs to frame position {got} but sits at "
                             f"position {k}, expected {list(_position_range(k, layout))}")
        if len(t) % FRAME:
            r = len(t) % FRAME
            raise TokenError(f"partial frame: {len(t)} audio tokens is not a multiple of {FRAME}; the last "
                             f"{r} token(s), from index {len(t) - r}, do not complete a frame")
        return _frames_to_codes(t.reshape(-1, FRAME), layout), 0

    ids = t.tolist()  # python scan: sequences are short and the logic is sequential
    lo = [layout.audio_offset + k * cb for k in range(FRAME)]

    def ok(j: int, k: int) -> bool:  # is ids[j] a valid id for frame position k?
        return lo[k] <= ids[j] < lo[k] + cb

    starts, j, n = [], 0, len(ids)
    while j < n:
        if not ok(j, 0):
            j += 1
            continue
        k = 1
        while k < FRAME and j + k < n and ok(j + k, k):
            k += 1
        if k == FRAME:
            starts.append(j)
            j += FRAME
        else:
            j += 1  # resync: the next position-0 id at or after j+1 starts the next candidate frame
    keep = torch.tensor([[s + k for k in range(FRAME)] for s in starts], dtype=torch.long,
                        device=t.device).reshape(-1, FRAME)
    return _frames_to_codes(t[keep], layout), n - FRAME * len(starts)


def dedup_frames(ids) -> torch.Tensor:
    """Drop every SNAC frame whose coarse code c0 equals the previous frame's (Orpheus' data prep).

    Orpheus' published data preparation (``remove_duplicate_frames``, applied to every training
    utterance) keeps the first frame and then a frame only when its first token (frame position
    k0, i.e. c0) differs from that of the last kept frame; the six fine codes are never compared,
    so a frame that repeats c0 is dropped even when its c1/c2 codes differ. Comparing with the last
    KEPT frame equals comparing with the previous input frame: every dropped frame has the kept
    one's c0. A run of equal c0 therefore collapses to its first frame.

    ids: 1-D Orpheus audio ids [7n] laid out as by :func:`codes_to_tokens` (the k0 id is
    ``audio_offset + c0``, so comparing ids compares c0). Returns int64 ids [7m], m <= n. The
    input is not modified.

    Effect on the audio: each dropped frame is 2048 samples (~85 ms at 24 kHz) of SNAC time, so
    the decoded target is SHORTER than the recorded utterance (stationary stretches, mostly
    silences and held sounds, are compressed); its codes no longer encode the original timing.
    """
    t = torch.as_tensor(ids)
    if t.numel() == 0:
        t = t.long()  # torch.as_tensor([]) is float32
    if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise TokenError(f"dedup_frames expects 1-D integer audio ids, got shape {tuple(t.shape)}, dtype {t.dtype}")
    if len(t) % FRAME:
        raise TokenError(f"dedup_frames: {len(t)} audio ids is not a whole number of {FRAME}-token frames")
    frames = t.long().reshape(-1, FRAME)
    keep = torch.ones(len(frames), dtype=torch.bool, device=t.device)
    keep[1:] = frames[1:, 0] != frames[:-1, 0]
    return frames[keep].reshape(-1)


# ---------------------------------------------------------------------------------------------
# Prompts

def text_ids(tokenizer, text: str, layout: TokenLayout = ORPHEUS) -> list[int]:
    """[start_of_text] + tokenizer ids of ``text`` (no tokenizer specials, so tiny tokenizers match Llama-3)."""
    ids = [int(i) for i in tokenizer(text, add_special_tokens=False).input_ids]
    bad = [i for i in ids if not 0 <= i < layout.tokeniser_length]
    if bad:
        # A text id at or above tokeniser_length would alias a control or audio token.
        raise TokenError(f"tokenizer produced ids {bad[:5]} for {text!r}, expected ids in "
                         f"[0, tokeniser_length={layout.tokeniser_length})")
    return [layout.start_of_text] + ids


def human_prefix(layout: TokenLayout = ORPHEUS) -> list[int]:
    """[start_of_human]."""
    return [layout.start_of_human]


def human_suffix(layout: TokenLayout = ORPHEUS) -> list[int]:
    """[end_of_text, end_of_human, start_of_ai, start_of_speech]: closes the text turn, opens audio."""
    return [layout.end_of_text, layout.end_of_human, layout.start_of_ai, layout.start_of_speech]


def speech_suffix(layout: TokenLayout = ORPHEUS) -> list[int]:
    """[end_of_speech, end_of_ai]: closes the audio turn (generation stops at end_of_speech)."""
    return [layout.end_of_speech, layout.end_of_ai]


def generation_prompt(tokenizer, text: str, layout: TokenLayout = ORPHEUS, voice: str | None = None) -> list[int]:
    """[SOH] + text_ids(f"{voice}: {text}" or text) + human_suffix; the LM continues with audio ids."""
    prompt = f"{voice}: {text}" if voice else text
    return human_prefix(layout) + text_ids(tokenizer, prompt, layout) + human_suffix(layout)


def training_sequence(tokenizer, text: str, codes: Sequence[torch.Tensor], layout: TokenLayout = ORPHEUS,
                      voice: str | None = None) -> list[int]:
    """generation_prompt + audio ids of unbatched ``codes`` ([n], [2n], [4n]) + speech_suffix."""
    audio = codes_to_tokens(codes, layout)
    if audio.dim() != 1:
        raise TokenError("training_sequence takes unbatched codes ([n], [2n], [4n]), "
                         f"got audio of shape {tuple(audio.shape)}")
    return generation_prompt(tokenizer, text, layout, voice) + audio.tolist() + speech_suffix(layout)
