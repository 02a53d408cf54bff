"""ExpansionBlocks: the card's ~100M trainable stack between the embeddings and the frozen LLM.

    x [B, L, D] --in_proj--> h [B, L, W] + slot embedding
    N x [ causal self-attention (RoPE over sequence index)
          cross-attention to the adapter output (RoPE over time, in 0.1 s units)
          SwiGLU FFN ]                                                   (pre-RMSNorm, residual)
    out = x + out_proj(norm(h))   (out_proj starts at zero: at step 0 the LLM sees x unchanged)

Why the positions (REFERENCE section 8): without them the blocks cannot tell which part of the
audio a speech position should listen to and learn only token statistics. Cross-attention
queries carry the time of the frame their next token belongs to, keys the time of their
adapter frame, so relative rotary phases line audio and speech up. The "slot" is the frame
position (k0..k6) of the token a position predicts, or `OTHER_SLOT` outside the speech span.

Sizing: the card gives ~100M for four blocks but no width. Default W=1024, SwiGLU 4096, 16 heads,
with 3072<->1024 projections (and one 3072->1024 projection of the audio memory): 93.4M at D=3072.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_SLOTS = 8  # k0..k6, and OTHER_SLOT
OTHER_SLOT = 7


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of x [B, H, L, Dh] at (possibly fractional) positions [B, L]."""
    dh = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh))
    ang = positions.float()[:, None, :, None] * inv  # [B, 1, L, Dh/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def _split(self, x):
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, x, memory, q_pos, k_pos, mask=None, cache=None, static=False):
        """x [B, Lq, W], memory [B, Lk, W], q_pos [B, Lq], k_pos [B, Lk], mask bool [B, 1, Lq, Lk] or None.

        `cache` (a dict, optional) keeps keys/values for generation: appended to on every call,
        or, with `static` (cross-attention to a fixed memory), computed once and reused.
        """
        q = rope(self._split(self.q(x)), q_pos)
        if static and cache:
            k, v = cache["k"], cache["v"]
        else:
            k = rope(self._split(self.k(memory)), k_pos)
            v = self._split(self.v(memory))
            if cache is not None and "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate, self.up = nn.Linear(width, hidden, bias=False), nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.RMSNorm(width), nn.RMSNorm(width), nn.RMSNorm(width)
        self.self_attn, self.cross_attn = Attention(width, heads), Attention(width, heads)
        self.ffn = SwiGLU(width, ffn)

    def forward(self, h, memory, pos, times, mem_times, self_mask, cross_mask, cache=None):
        x = self.n1(h)
        h = h + self.self_attn(x, x, pos, pos, self_mask, cache)
        cross_cache = cache.setdefault("cross", {}) if cache is not None else None
        h = h + self.cross_attn(self.n2(h), memory, times, mem_times, cross_mask, cross_cache, static=True)
        return h + self.ffn(self.n3(h))


class ExpansionBlocks(nn.Module):
    def __init__(self, d_model: int, d_audio: int, width: int = 1024, n_blocks: int = 4, heads: int = 16,
                 ffn: int = 4096):
        super().__init__()
        if width % heads or (width // heads) % 2:
            raise ValueError(f"expansion width {width} must split into {heads} heads of even size")
        self.in_proj, self.mem_proj = nn.Linear(d_model, width), nn.Linear(d_audio, width)
        self.slot = nn.Embedding(N_SLOTS, width)
        self.blocks = nn.ModuleList(Block(width, heads, ffn) for _ in range(n_blocks))
        self.norm = nn.RMSNorm(width)
        self.out_proj = nn.Linear(width, d_model)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor, slots: torch.Tensor,
                times: torch.Tensor, pad_mask: torch.Tensor, positions: torch.Tensor | None = None,
                caches: list[dict] | None = None) -> torch.Tensor:
        """Expand the sequence.

        x [B, L, D] embedded sequence; audio [B, Ta, Da] adapter output, audio_mask [B, Ta] bool;
        slots [B, L] long; times [B, L] float (0.1 s units); pad_mask [B, past + L] bool (True = a
        real position), over the cached positions too when there are any.
        positions [B, L] and caches (one dict per block) are given in incremental generation:
        then x holds only the new positions (padding may sit anywhere, so rotary positions are
        given) and self-attention also sees the cached ones. Returns [B, L, D].
        """
        b, n, _ = x.shape
        if positions is None:
            positions = torch.arange(n, device=x.device).expand(b, n)
        past = caches[0]["k"].shape[2] if caches and "k" in caches[0] else 0
        key_index = torch.arange(past + n, device=x.device)
        query_index = key_index[past:, None]
        # Every query also sees itself: a left-padded position with no real key would otherwise
        # get an all-masked softmax (NaN) that the LLM would later read through its values.
        self_mask = ((key_index <= query_index) & pad_mask[:, None, :]) | (key_index == query_index)
        self_mask = self_mask[:, None]
        cross_mask = audio_mask[:, None, None, :].expand(b, 1, n, audio.shape[1])
        mem_times = torch.arange(audio.shape[1], device=x.device).expand(b, -1)

        h = self.in_proj(x) + self.slot(slots)
        cached_memory = bool(caches and caches[0].get("cross"))
        memory = None if cached_memory else self.mem_proj(audio)  # its keys/values are already cached
        for i, block in enumerate(self.blocks):
            h = block(h, memory, positions, times, mem_times, self_mask, cross_mask, caches[i] if caches else None)
        return x + self.out_proj(self.norm(h))
