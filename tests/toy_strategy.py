"""toy_linear: a fourth strategy that exists only in the tests, the proof that adding a strategy is
one file plus one registry line (tests/test_toy_strategy.py adds that line with monkeypatch).

The smallest strategy that listens: STACK consecutive Whisper frames concatenated, one nn.Linear
to the LLM width, no expansion blocks. The audio embeddings take the place of the text in
Orpheus' human turn, as in adapter_stage1:

    [SOH, start_of_text] | audio embeds | [EOT, EOH, SOA, SOS] | speech ids
                                                            targets: speech ids + EOS_speech
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from s2s.prepare import Batch
from s2s.strategies.base import Strategy, TargetLogits, adapt_audio, pad_right, target_logits
from s2s.strategies.decoder import Decoder, Features
from s2s.tokens import human_prefix, human_suffix


@dataclass
class ToyLinearConfig:
    stack: int = field(default=5, metadata={"range": (1, 32)})  # Whisper frames per audio embedding

    SEARCH_SPACE: ClassVar[dict] = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    PRESET_VALUES: ClassVar[dict] = {"tiny": {"stack": 4}}


class LinearAdapter(nn.Module):
    """states [B, T, D_w] and lengths [B] -> embeddings [B, ceil(T / stack), D] and their lengths (the
    interface of s2s.adapter.SpeechAdapter, which `adapt_audio` calls)."""

    def __init__(self, d_whisper: int, d_llm: int, stack: int):
        super().__init__()
        self.stack = stack
        self.proj = nn.Linear(d_whisper * stack, d_llm)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = states.shape
        states = nn.functional.pad(states, (0, 0, 0, (-t) % self.stack))
        return self.proj(states.reshape(b, -1, d * self.stack)), (lengths + self.stack - 1) // self.stack


class ToyLinear(Strategy):
    name = "toy_linear"
    summary = "test-only: stacked Whisper frames -> one Linear, audio in place of the text, no expansion"
    Config = ToyLinearConfig

    def __init__(self, cfg: ToyLinearConfig, core):
        super().__init__(cfg, core)
        self.adapter = LinearAdapter(core.whisper_dim, core.llm_dim, cfg.stack)
        self.prefix = human_prefix(core.layout) + [core.layout.start_of_text]
        self.suffix = human_suffix(core.layout)
        self.to(core.device)

    def prompts(self, batch: Batch, audio_order=None) -> list[torch.Tensor]:
        """Per sample, the embedded positions up to the one predicting the first speech token."""
        audio, alens = adapt_audio(self.adapter, batch, self.core.device, audio_order)
        pre, suf = (self.core.embed(torch.tensor(ids, device=self.core.device)).to(audio.dtype)
                    for ids in (self.prefix, self.suffix))
        return [torch.cat([pre, audio[i, :int(alens[i])], suf]) for i in range(len(batch))]

    def forward(self, batch: Batch, audio_order: torch.Tensor | None = None) -> TargetLogits:
        dev, seqs, targets = self.core.device, [], []
        for prompt, speech in zip(self.prompts(batch, audio_order), batch.speech_tokens):
            seqs.append(torch.cat([prompt, self.core.embed(speech.to(dev)).to(prompt.dtype)]))
            targets.append(torch.arange(len(prompt) - 1, len(prompt) + len(speech), device=dev))
        x, mask = pad_right(seqs)
        return target_logits(self.core, self.core.hidden_states(x, mask.long()), targets, batch.speech_tokens)

    def decoder(self, batch: Batch, use_cache: bool = True) -> "ToyDecoder":
        return ToyDecoder(self, batch, use_cache)


class ToyDecoder(Decoder):
    """The prompt, then each generated token's embedding: the LLM reads the embeddings as they are."""

    def __init__(self, model: ToyLinear, batch: Batch, use_cache: bool = True):
        super().__init__(model.core, use_cache)
        self.model, self.batch = model, batch

    def prompt_features(self) -> list[Features]:
        prompts = self.model.prompts(self.batch)
        self.dtype = prompts[0].dtype
        return [{"x": p} for p in prompts]

    def token_features(self, tokens: torch.Tensor) -> list[Features]:
        x = self.core.embed(tokens).to(self.dtype)
        return [{"x": x[i:i + 1]} for i in range(len(tokens))]
