"""istlm_interleaved: the IST-LM-style baseline; interleaved input and speech chunks, no expansion.

Sequence per sample (REFERENCE section 4: IST-LM interleaves fixed-size text and speech chunks
with no alignment; its best text:speech ratio was 1:3):

    [SOH, start_of_text, EOT, EOH, SOA, SOS] | I_1 S_1 | I_2 S_2 | ... | remaining speech | (EOS_speech)

I_j are `input_chunk` input embeddings: the SpeechAdapter's audio embeddings
(`interleave_source=audio`) or the transcript's token embeddings (`interleave_source=text`, the
literal IST-LM text-to-speech setting); S_j are `speech_chunk` speech tokens. When the input runs
out, the remaining speech tokens follow. The loss is on speech tokens and end_of_speech only.
The LLM stays frozen unless `lora_rank` > 0, which trains low-rank adapters on it (peft).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from s2s.adapter import SpeechAdapter
from s2s.prepare import Batch
from s2s.search.space import TRAIN_SEARCH_SPACE
from s2s.config import ConfigError
from s2s.strategies.base import Strategy, TargetLogits, adapt_audio, pad_right, target_logits
from s2s.strategies.decoder import Decoder, Features
from s2s.tokens import human_prefix, human_suffix, text_ids


@dataclass
class IstlmInterleavedConfig:
    adapter_hidden: int = field(default=2048, metadata={"range": (1, None)})
    input_chunk: int = field(default=4, metadata={"range": (1, None)})  # the "1" of 1:3
    speech_chunk: int = field(default=12, metadata={"range": (1, None)})  # the "3" of 1:3
    interleave_source: str = field(default="audio", metadata={"choices": ("audio", "text")})
    lora_rank: int = field(default=0, metadata={"range": (0, 1024)})  # 0 = LLM fully frozen
    lora_alpha: float = field(default=16.0, metadata={"range": (0.0, None)})
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    # Default hyperparameter search space (python -m experiments.search; format: s2s/search/space.py).
    SEARCH_SPACE: ClassVar[dict] = {**TRAIN_SEARCH_SPACE,
                                   "strategy.lora_rank": {"type": "categorical", "choices": [0, 4, 8, 16]}}
    PRESET_VALUES: ClassVar[dict] = {"tiny": {"adapter_hidden": 256}}  # the tiny preset's adapter width


def interleave_layout(n_input: int, n_speech: int, input_chunk: int, speech_chunk: int) -> list[tuple[str, int, int]]:
    """The chunk plan: a list of (kind, start, end) with kind "input" or "speech", in sequence order."""
    plan, i, s = [], 0, 0
    while i < n_input or s < n_speech:
        if i < n_input:
            plan.append(("input", i, min(i + input_chunk, n_input)))
            i = plan[-1][2]
        step = speech_chunk if i < n_input else n_speech - s  # once the input is used up, all the rest
        if s < n_speech and step > 0:
            plan.append(("speech", s, min(s + step, n_speech)))
            s = plan[-1][2]
    return plan


class IstlmInterleaved(Strategy):
    name = "istlm_interleaved"
    summary = "IST-LM-style baseline: fixed-size input/speech chunks interleaved (1:3), no expansion; optional LoRA"
    Config = IstlmInterleavedConfig

    def __init__(self, cfg: IstlmInterleavedConfig, core):
        super().__init__(cfg, core)
        if cfg.interleave_source == "text" and not cfg.lora_rank:
            raise ConfigError("istlm_interleaved with strategy.interleave_source=text and strategy.lora_rank=0 has "
                             "nothing to train (the text embeddings and the LLM are frozen): set strategy.lora_rank=8")
        self.adapter = SpeechAdapter(core.whisper_dim, core.llm_dim, cfg.adapter_hidden) \
            if cfg.interleave_source == "audio" else None
        layout = core.layout
        self.prompt = human_prefix(layout) + [layout.start_of_text] + human_suffix(layout)
        if cfg.lora_rank:
            # peft takes seconds to import; only LoRA runs pay for it.
            from peft import LoraConfig, inject_adapter_in_model
            inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                               target_modules=cfg.lora_targets), core.llm)
            core.adapted_by = self.name  # the shared core is no longer the plain frozen LLM
            # Registered here so the LoRA weights are this strategy's (state dict, optimizer);
            # the frozen base weights inside these layers keep requires_grad=False.
            self.lora = torch.nn.ModuleList(m for n, m in core.llm.named_modules()
                                            if n.split(".")[-1] in ("lora_A", "lora_B"))
        self.to(core.device)

    def inputs(self, batch: Batch, audio_order=None) -> list[torch.Tensor]:
        """Per sample, the input embeddings to interleave: [A_i, D] audio or [T_i, D] text."""
        if self.adapter is None:
            order = audio_order.tolist() if audio_order is not None else range(len(batch))
            texts = [batch.texts[j] for j in order]
            return [self.core.embed(torch.tensor(text_ids(self.core.tokenizer, t, self.core.layout)[1:]))
                    for t in texts]
        audio, alens = adapt_audio(self.adapter, batch, self.core.device, audio_order)
        return [audio[i, : int(alens[i])] for i in range(len(batch))]

    @property
    def reads_text(self) -> bool:
        return self.cfg.interleave_source == "text"

    def forward(self, batch: Batch, audio_order: torch.Tensor | None = None) -> TargetLogits:
        core, dev, cfg = self.core, self.core.device, self.cfg
        inputs = self.inputs(batch, audio_order)
        prompt = torch.tensor(self.prompt, device=dev)
        seqs, targets = [], []
        for inp, speech in zip(inputs, batch.speech_tokens):
            speech = speech.to(dev)
            emb_prompt, emb_speech = core.embed(prompt), core.embed(speech)
            dtype = inp.dtype if self.adapter is not None else emb_prompt.dtype
            parts, pos, target_pos = [emb_prompt.to(dtype)], len(prompt), []
            last_speech = pos - 1
            for kind, a, b in interleave_layout(len(inp), len(speech), cfg.input_chunk, cfg.speech_chunk):
                chunk = inp[a:b] if kind == "input" else emb_speech[a:b].to(dtype)
                if kind == "speech":  # the position before each speech token predicts it
                    target_pos += list(range(pos - 1, pos + b - a - 1))
                    last_speech = pos + b - a - 1
                parts.append(chunk)
                pos += b - a
            # the last speech token predicts end_of_speech (input chunks may follow a short target)
            target_pos.append(last_speech)
            seqs.append(torch.cat(parts))
            targets.append(torch.tensor(target_pos, device=dev))
        x, mask = pad_right(seqs)
        hidden = core.hidden_states(x, mask.long())
        return target_logits(core, hidden, targets, batch.speech_tokens)

    def decoder(self, batch: Batch, use_cache: bool = True) -> "IstlmDecoder":
        return IstlmDecoder(self, batch, use_cache)


class IstlmDecoder(Decoder):
    """Generation in the training layout: after every `speech_chunk` generated tokens, while
    input remains, the next `input_chunk` input embeddings are appended and the next token is
    read after them. (end_of_speech is thus only read where training taught it whenever the
    input runs out before the speech does, the usual case: 1:3 chunks of 10 Hz audio
    embeddings and 86 Hz speech tokens.)"""

    def __init__(self, model: IstlmInterleaved, batch: Batch, use_cache: bool = True):
        super().__init__(model.core, use_cache)
        self.model, self.batch = model, batch
        self.n_tokens = 0
        self.cursor: list[int] = []  # per sample, input positions appended so far

    def prompt_features(self) -> list[Features]:
        self.inputs = self.model.inputs(self.batch)
        prompt = self.core.embed(torch.tensor(self.model.prompt, device=self.core.device))
        self.dtype = self.inputs[0].dtype if self.inputs else prompt.dtype
        chunk = self.model.cfg.input_chunk
        self.cursor = [min(chunk, len(inp)) for inp in self.inputs]
        return [{"x": torch.cat([prompt.to(self.dtype), inp[:chunk]])} for inp in self.inputs]

    def token_features(self, tokens: torch.Tensor) -> list[Features]:
        self.n_tokens += 1
        x = self.core.embed(tokens).to(self.dtype)
        boundary = self.n_tokens % self.model.cfg.speech_chunk == 0
        blocks = []
        for i, inp in enumerate(self.inputs):
            block = x[i:i + 1]
            if boundary and self.cursor[i] < len(inp):
                end = self.cursor[i] + self.model.cfg.input_chunk
                block = torch.cat([block, inp[self.cursor[i]:end]])
                self.cursor[i] = min(end, len(inp))
            blocks.append({"x": block})
        return blocks
