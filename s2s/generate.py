"""Speech-to-speech generation: a trained strategy's speech tokens -> SNAC codes -> 24 kHz audio.

    out = generate(model, batch, GenerationConfig(temperature=0))   # greedy, KV-cached
    wave, skipped = tokens_to_audio(core, out.tokens[0])
    for step in generate_steps(model, batch, cfg): ...               # the same loop, step by step

Sampling is Orpheus' usual recipe (temperature, nucleus top_p, repetition penalty, using the
transformers logits processors). `constrain` keeps every sampled id decodable: at frame position
k only the 4096 (codebook) ids of position k may follow, and end_of_speech only between frames,
as it always sits in training. A sample stops at end_of_speech or `max_new_tokens`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopPLogitsWarper)

from s2s.backbones import autocast
from s2s.tokens import FRAME, tokens_to_codes


@dataclass
class GenerationConfig:
    temperature: float = field(default=0.6, metadata={"range": (0.0, None)})  # 0 = greedy
    top_p: float = field(default=0.95, metadata={"range": (0.0, 1.0)})
    repetition_penalty: float = field(default=1.1, metadata={"range": (0.0, None)})  # 1 = none
    max_new_tokens: int = field(default=1400, metadata={"range": (1, None)})  # 1400 ids = 200 frames = 17 s
    min_new_tokens: int = field(default=0, metadata={"range": (0, None)})  # end_of_speech is masked before
    constrain: bool = True
    seed: int = 0
    batch_size: int = field(default=8, metadata={"range": (1, None)})
    use_cache: bool = True  # False: recompute the whole sequence every step (the slow reference)


@dataclass
class Generated:
    tokens: list[torch.Tensor]  # per sample, the speech ids [n_i] (end_of_speech excluded)
    stopped: list[bool]  # per sample, whether it ended with end_of_speech (not max_new_tokens)
    steps: int  # decoder steps run for the batch


def allowed_ids(layout, position: int, vocab: int, device) -> torch.Tensor:
    """Bool [V]: ids that may follow at frame `position` (its codebook ids; end_of_speech at 0)."""
    ok = torch.zeros(vocab, dtype=torch.bool, device=device)
    lo = layout.audio_offset + position * layout.codebook_size
    ok[lo:lo + layout.codebook_size] = True
    if position == 0:
        ok[layout.end_of_speech] = True
    return ok


def _processors(cfg: GenerationConfig) -> list:
    procs = []
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.temperature > 0:
        procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


def next_tokens(logits: torch.Tensor, history: torch.Tensor, processors: list, greedy: bool,
                allowed: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Pick the next id per sample: logits [B, V], history [B, t] ids so far, allowed [V] bool -> [B]."""
    scores = logits.float()
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    for proc in processors:
        scores = proc(history, scores)
    if greedy:
        return scores.argmax(-1)
    probs = torch.softmax(scores, -1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).view(-1).to(logits.device)


def step_masks(layout, vocab: int, cfg: GenerationConfig, device) -> tuple[list, list]:
    """Allowed ids per frame position: (before min_new_tokens: end_of_speech masked, after), each
    a list of FRAME bool [V] masks or Nones (nothing masked). Built once per generation."""
    late = [allowed_ids(layout, k, vocab, device) for k in range(FRAME)] if cfg.constrain else [None] * FRAME
    no_end = torch.ones(vocab, dtype=torch.bool, device=device)
    no_end[layout.end_of_speech] = False
    early = [no_end if m is None else m & no_end for m in late]
    return early, late


@dataclass
class Step:
    """One decoder step of a batch: what `generate_steps` yields."""
    tokens: torch.Tensor  # [B] int64 ids chosen at this step (end_of_speech for finished samples)
    emitted: torch.Tensor  # [B] bool: the id is a new speech token of that sample (not end, not idle)
    stopped: torch.Tensor  # [B] bool: the sample said end_of_speech at this step
    index: int  # 0-based step number


@torch.no_grad()
def generate_steps(model, batch, cfg: GenerationConfig = GenerationConfig()) -> Iterator[Step]:
    """The sampling loop as a generator: yields a `Step` per decoder step, as soon as it is sampled.

    `model` is a Strategy, `batch` a `s2s.prepare.Batch`. Ends when every sample has said
    end_of_speech or after `cfg.max_new_tokens` steps; a finished sample is fed end_of_speech (and
    yields it with emitted=False) while the others go on. Streaming consumers (s2s/infer.py) turn
    each step into audio as it arrives; `generate` collects them. The model is in eval mode while
    the generator runs and gets its mode back when it ends or is closed.
    """
    core = model.core
    layout, device = core.layout, core.device
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(cfg.seed)
        with autocast(device):
            decoder = model.decoder(batch, cfg.use_cache)
            logits = decoder.start()
        b = len(batch)
        history = torch.zeros(b, 0, dtype=torch.long, device=device)  # the repetition penalty reads it
        done = torch.zeros(b, dtype=torch.bool, device=device)
        early, late = step_masks(layout, logits.shape[-1], cfg, device)
        processors = _processors(cfg)
        for t in range(cfg.max_new_tokens):
            allowed = (early if t < cfg.min_new_tokens else late)[t % FRAME]
            tokens = next_tokens(logits, history, processors, cfg.temperature == 0, allowed, generator)
            tokens = torch.where(done, torch.full_like(tokens, layout.end_of_speech), tokens)
            ended = tokens == layout.end_of_speech
            step = Step(tokens, ~done & ~ended, ended & ~done, t)
            done = done | ended
            history = torch.cat([history, tokens[:, None]], 1)
            yield step
            if done.all() or t == cfg.max_new_tokens - 1:
                break
            with autocast(device):
                logits = decoder.step(tokens)
    finally:
        model.train(was_training)


def generate(model, batch, cfg: GenerationConfig = GenerationConfig()) -> Generated:
    """Generate speech tokens for every sample of `batch` (a `s2s.prepare.Batch`) with `model` (a Strategy)."""
    tokens, emitted, stopped = [], [], None
    for step in generate_steps(model, batch, cfg):
        tokens.append(step.tokens)
        emitted.append(step.emitted)
        stopped = step.stopped if stopped is None else stopped | step.stopped
    ids = torch.stack(tokens, 1).cpu()  # [B, steps]
    # A sample's speech tokens are a prefix of its ids: once it has ended it only idles.
    lengths = torch.stack(emitted, 1).sum(1).tolist()
    return Generated([ids[i, :n] for i, n in enumerate(lengths)], stopped.tolist(), len(tokens))


def tokens_to_audio(core, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Speech ids [n] -> (24 kHz waveform [2048 * frames] float32, ids dropped as broken frames).

    Decoding is lenient (a broken frame is dropped, not an error): sampling without `constrain`
    can produce ids that fit no frame.
    """
    codes, skipped = tokens_to_codes(tokens, core.layout, strict=False)
    if codes[0].numel() == 0:
        return torch.zeros(0), skipped
    return core.decode_codes(codes), skipped
