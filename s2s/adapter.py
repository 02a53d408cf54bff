"""SpeechAdapter: Whisper encoder states -> LLM-width audio embeddings (the card's ~19M module).

Five consecutive 50 Hz encoder frames are concatenated (20 ms x 5 = 0.1 s per output frame,
10 Hz), then Linear -> GELU -> Linear -> LayerNorm. At Whisper-large-v3 (1280) -> Orpheus
(3072): 6400 -> 2048 -> 3072, 19.4M parameters.
"""
from __future__ import annotations

import torch
from torch import nn

STACK = 5  # encoder frames per adapter frame
FRAME_SECONDS = 0.1  # one adapter frame


class SpeechAdapter(nn.Module):
    def __init__(self, d_whisper: int, d_llm: int, hidden: int = 2048, stack: int = STACK):
        super().__init__()
        self.stack = stack
        self.proj = nn.Sequential(nn.Linear(d_whisper * stack, hidden), nn.GELU(), nn.Linear(hidden, d_llm),
                                  nn.LayerNorm(d_llm))

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, T, D_w] (right-padded), lengths [B] -> (embeds [B, ceil(T/5), D], frame lengths [B])."""
        b, t, d = states.shape
        pad = (-t) % self.stack
        if pad:
            states = nn.functional.pad(states, (0, 0, 0, pad))
        stacked = states.reshape(b, (t + pad) // self.stack, d * self.stack)
        return self.proj(stacked), (lengths + self.stack - 1) // self.stack
