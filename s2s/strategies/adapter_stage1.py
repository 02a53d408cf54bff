"""adapter_stage1: SpeechAdapter + ExpansionBlocks in front of the frozen LLM (the card's model).

Sequence per sample (the adapter's audio embeddings take the place of the text in Orpheus'
human turn, so the LLM is asked to speak what it heard):

    [SOH, start_of_text (, voice ":")] | audio embeds (10 Hz) | [EOT, EOH, SOA, SOS] | speech ids
                                                                                 targets: speech ids + EOS_speech

The ExpansionBlocks run causal self-attention over the whole embedded sequence and
cross-attention to the adapter output; their output is the LLM's `inputs_embeds`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import torch

from s2s.adapter import FRAME_SECONDS, SpeechAdapter
from s2s.expansion import OTHER_SLOT, ExpansionBlocks
from s2s.prepare import Batch
from s2s.search.space import TRAIN_SEARCH_SPACE
from s2s.strategies.base import Strategy, TargetLogits, adapt_audio, pad_right, target_logits, target_slots
from s2s.strategies.decoder import Decoder, Features
from s2s.tokens import FRAME, human_prefix, human_suffix, text_ids


@dataclass
class AdapterStage1Config:
    adapter_hidden: int = field(default=2048, metadata={"range": (1, None)})
    expansion_width: int = field(default=1024, metadata={"range": (2, None)})
    expansion_blocks: int = field(default=4, metadata={"range": (1, 64)})
    expansion_heads: int = field(default=16, metadata={"range": (1, 256)})
    expansion_ffn: int = field(default=4096, metadata={"range": (1, None)})
    voice: str = ""  # an Orpheus voice name (e.g. "javi") written before the audio, or none

    # Default hyperparameter search space (python -m experiments.search; format: s2s/search/space.py).
    SEARCH_SPACE: ClassVar[dict] = {**TRAIN_SEARCH_SPACE,
                                   "strategy.expansion_blocks": {"type": "int", "low": 1, "high": 4}}
    # The tiny preset's dimensions: a few hundred thousand parameters that train on 2 CPU cores.
    PRESET_VALUES: ClassVar[dict] = {"tiny": {"adapter_hidden": 256, "expansion_width": 64, "expansion_blocks": 2,
                                              "expansion_heads": 4, "expansion_ffn": 256}}


def speech_times(index: torch.Tensor, frame_time: float) -> torch.Tensor:
    """Time (adapter frames) of the positions predicting speech tokens number `index` [n] -> [n] float."""
    return (index // FRAME).float() * frame_time


class AdapterStage1(Strategy):
    name = "adapter_stage1"
    summary = "SpeechAdapter (5-frame concat) + ExpansionBlocks (self- and cross-attention) -> frozen LLM"
    Config = AdapterStage1Config

    def __init__(self, cfg: AdapterStage1Config, core):
        super().__init__(cfg, core)
        self.adapter = SpeechAdapter(core.whisper_dim, core.llm_dim, cfg.adapter_hidden)
        self.expansion = ExpansionBlocks(core.llm_dim, core.llm_dim, cfg.expansion_width, cfg.expansion_blocks,
                                         cfg.expansion_heads, cfg.expansion_ffn)
        layout = core.layout
        voice = text_ids(core.tokenizer, f"{cfg.voice}:", layout) if cfg.voice else [layout.start_of_text]
        self.prefix = human_prefix(layout) + voice
        self.suffix = human_suffix(layout)
        self.to(core.device)

    def audio_embeddings(self, batch: Batch, audio_order=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter output [B, Ta, D] and frame counts [B], optionally permuted across samples."""
        return adapt_audio(self.adapter, batch, self.core.device, audio_order)

    def frame_time(self) -> float:
        """One SNAC frame in adapter-frame (0.1 s) units: the time axis of cross-attention."""
        return self.core.frame_seconds / FRAME_SECONDS

    def build_inputs(self, batch: Batch, audio: torch.Tensor, alens: torch.Tensor) -> dict:
        """Embedded, right-padded sequences and the per-position metadata the blocks need."""
        core, dev = self.core, self.core.device
        n_pre, n_suf = len(self.prefix), len(self.suffix)
        frame_time = self.frame_time()
        seqs, slots, times, targets = [], [], [], []
        for i, speech in enumerate(batch.speech_tokens):
            a, n = int(alens[i]), len(speech)
            ids = torch.tensor(self.prefix + self.suffix, device=dev)
            emb = core.embed(torch.cat([ids, speech.to(dev)])).to(audio.dtype)
            seqs.append(torch.cat([emb[:n_pre], audio[i, :a], emb[n_pre:]]))
            head = n_pre + a + n_suf - 1  # positions before the one that predicts the first speech id
            slots.append(torch.cat([torch.full((head,), OTHER_SLOT, device=dev), target_slots(n, dev)]))
            t_audio = torch.arange(a, device=dev, dtype=torch.float32)
            t_speech = speech_times(torch.arange(n + 1, device=dev), frame_time)
            times.append(torch.cat([torch.zeros(n_pre, device=dev), t_audio, torch.zeros(n_suf - 1, device=dev),
                                    t_speech]))
            targets.append(torch.arange(head, head + n + 1, device=dev))
        x, mask = pad_right(seqs)
        return dict(x=x, mask=mask, slots=pad_right(slots, OTHER_SLOT)[0], times=pad_right(times)[0],
                    targets=targets)

    def expand(self, batch: Batch, audio_order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(embedded sequence x [B, L, D], expansion output [B, L, D], inputs metadata)."""
        dev = self.core.device
        audio, alens = self.audio_embeddings(batch, audio_order)
        inp = self.build_inputs(batch, audio, alens)
        audio_mask = torch.arange(audio.shape[1], device=dev)[None, :] < alens[:, None]
        expanded = self.expansion(inp["x"], audio, audio_mask, inp["slots"], inp["times"], inp["mask"])
        return inp["x"], expanded, inp

    def forward(self, batch: Batch, audio_order: torch.Tensor | None = None) -> TargetLogits:
        _, expanded, inp = self.expand(batch, audio_order)
        hidden = self.core.hidden_states(expanded, inp["mask"].long())
        return target_logits(self.core, hidden, inp["targets"], batch.speech_tokens)

    def decoder(self, batch: Batch, use_cache: bool = True) -> "AdapterDecoder":
        return AdapterDecoder(self, batch, use_cache)


class AdapterDecoder(Decoder):
    """Generation through adapter + ExpansionBlocks (their self-attention cached too) + LLM.

    `fuse(e, h)`, when given, turns embeddings e and expansion output h into the LLM inputs
    (gatefusion_stage2); by default the LLM reads h.
    """

    def __init__(self, model: AdapterStage1, batch: Batch, use_cache: bool = True,
                 fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        super().__init__(model.core, use_cache)
        self.model, self.batch, self.fuse = model, batch, fuse
        self.caches = [{} for _ in model.expansion.blocks] if use_cache else None
        self.n_tokens = 0  # speech tokens fed so far

    def prompt_features(self) -> list[Features]:
        dev = self.core.device
        self.audio, alens = self.model.audio_embeddings(self.batch)
        self.audio_mask = torch.arange(self.audio.shape[1], device=dev)[None, :] < alens[:, None]
        empty = replace(self.batch, speech_tokens=[torch.zeros(0, dtype=torch.long)] * len(self.batch))
        inp = self.model.build_inputs(empty, self.audio, alens)
        return [{"x": inp["x"][i, m], "slots": inp["slots"][i, m], "times": inp["times"][i, m]}
                for i, m in enumerate(inp["mask"])]

    def token_features(self, tokens: torch.Tensor) -> list[Features]:
        self.n_tokens += 1  # the new position predicts speech token number n_tokens
        x = self.core.embed(tokens).to(self.audio.dtype)
        index = torch.tensor([self.n_tokens], device=x.device)
        slot, time = index % FRAME, speech_times(index, self.model.frame_time())
        return [{"x": x[i:i + 1], "slots": slot, "times": time} for i in range(len(tokens))]

    def llm_inputs(self, features: Features, positions: torch.Tensor) -> torch.Tensor:
        x = features["x"]
        h = self.model.expansion(x, self.audio, self.audio_mask, features["slots"], features["times"], self.mask,
                                 positions, self.caches)
        return h if self.fuse is None else self.fuse(x, h)
