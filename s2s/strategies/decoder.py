"""Incremental decoding: a strategy's speech-token generation, one position block at a time.

A `Decoder` holds a batch of growing sequences. Samples differ in length (their audio does),
so every appended block is LEFT-padded: each sample's newest position is the block's last
column, and the logits for the next token are read there for the whole batch. Padding thus
sits between blocks; the attention masks skip it and rotary positions count real positions
only (`cumsum(mask) - 1`), so a sample sees exactly the sequence it would see alone.

With `use_cache` the frozen LLM (a transformers `DynamicCache`) and any strategy module with
self-attention keep their keys and values, and each step runs the new positions only. Without
it every step recomputes the whole sequence: the slow reference that the cached path must
equal token for token (tests/test_generate.py).

A strategy's decoder supplies two things: the per-position features of the prompt and of each
new token (`prompt_features`, `token_features`), and, if it transforms embeddings before the
LLM (the ExpansionBlocks), `llm_inputs`.
"""
from __future__ import annotations

import torch

Features = dict[str, torch.Tensor]  # per position: "x" embeddings [n, D], plus e.g. "slots" [n], "times" [n]


def _left_pad(blocks: list[Features]) -> tuple[Features, torch.Tensor]:
    """Per-sample feature blocks of n_i positions -> batched [B, max n, ...] left-padded, and mask [B, max n]."""
    n = max(len(b["x"]) for b in blocks)
    out = {}
    for key in blocks[0]:
        first = blocks[0][key]
        padded = first.new_zeros((len(blocks), n, *first.shape[1:]))
        for i, b in enumerate(blocks):
            padded[i, n - len(b[key]):] = b[key]
        out[key] = padded
    lengths = torch.tensor([len(b["x"]) for b in blocks], device=first.device)
    mask = torch.arange(n, device=first.device)[None, :] >= (n - lengths)[:, None]
    return out, mask


class Decoder:
    """Generation state of one batch; `start()` -> logits [B, V] of the first speech token,
    then `step(tokens [B])` -> logits [B, V] of the following one."""

    def __init__(self, core, use_cache: bool = True):
        self.core, self.use_cache = core, use_cache
        self.features: Features = {}  # without a cache: every position so far, [B, L, ...]
        self.mask: torch.Tensor | None = None  # [B, L] bool, True = a real position
        self.llm_cache = None
        if use_cache:
            from transformers import DynamicCache
            self.llm_cache = DynamicCache()

    # --- what a strategy provides -----------------------------------------------------------
    def prompt_features(self) -> list[Features]:
        """Per sample, the positions up to the one predicting the first speech token."""
        raise NotImplementedError

    def token_features(self, tokens: torch.Tensor) -> list[Features]:
        """Per sample, the positions that follow once `tokens` [B] were generated (at least the token)."""
        raise NotImplementedError

    def llm_inputs(self, features: Features, positions: torch.Tensor) -> torch.Tensor:
        """LLM input embeddings [B, n, D] of the positions `features` [B, n, ...] hold (with a cache
        the new ones, without it all); `positions` [B, n] count real positions; `self.mask`
        [B, L] covers every position so far."""
        return features["x"]

    # --- the shared machinery ---------------------------------------------------------------
    def start(self) -> torch.Tensor:
        return self._append(self.prompt_features())

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._append(self.token_features(tokens))

    @torch.no_grad()
    def _append(self, blocks: list[Features]) -> torch.Tensor:
        new, new_mask = _left_pad(blocks)
        first = 0 if self.mask is None else self.mask.shape[1]
        self.mask = new_mask if self.mask is None else torch.cat([self.mask, new_mask], 1)
        if self.use_cache:  # the caches hold the past: only the new positions run
            run = new
        else:  # the reference recomputes everything, so it keeps every position's features
            self.features = new if not self.features else {k: torch.cat([self.features[k], new[k]], 1)
                                                           for k in self.features}
            run, first = self.features, 0
        positions = (self.mask.long().cumsum(1) - 1).clamp(min=0)[:, first:]
        embeds = self.llm_inputs(run, positions)
        hidden = self.core.hidden_states(embeds, self.mask.long(), positions, self.llm_cache)
        return self.core.logits(hidden[:, -1])
