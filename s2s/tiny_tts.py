"""The miniature's TTS model: the tiny Llama, trained to read text into the tiny codec's codes.

The card's question is how best to teach a frozen, TRAINED text-to-speech LM to listen; with a
random frozen LM the question cannot be asked. So the tiny Llama is trained, once and briefly, as
Orpheus is: on `[SOH] text [EOT EOH SOA SOS] audio ids [EOS EOAI]` sequences (s2s/tokens.py), the
loss on the audio ids and end_of_speech. A fraction `text_dropout` of the sequences have an empty
text, so that the model also learns to continue speech it has no text for: the no-text floor of
s2s/brackets.py is then the model's own best guess, not a prompt it never saw.

What makes the text worth learning at this size (measured in the build's miniature.json):
- the corpus is "miniature" speech (s2s/data/synth.py): random strings of a closed vocabulary of
  ~175 words per language, one voice per language at one rate, so the text determines the speech
  and nothing but the text tells the next word;
- the codec's codes follow the speech (s2s/tiny_codec.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from s2s.progress import progress_bar
from s2s.tokens import TokenLayout, generation_prompt, speech_suffix


def tts_sequence(tokenizer, layout: TokenLayout, text: str, speech: torch.Tensor) -> tuple[list[int], int]:
    """(ids, first target index): the Orpheus TTS sequence of `text` ("" for none) and the audio ids
    `speech` [7n]; targets are ids[first:-1], the audio ids and end_of_speech."""
    prompt = generation_prompt(tokenizer, text, layout)
    return prompt + speech.tolist() + speech_suffix(layout), len(prompt)


def _batch(seqs: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L], labels [B, L] (-100 off target) and attention mask [B, L]."""
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), pad)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, (s, first) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, first : len(s) - 1] = torch.tensor(s[first:-1])  # audio ids + end_of_speech; not end_of_ai
    return ids, labels, mask


def train_tts(model, tokenizer, layout: TokenLayout, texts: list[str], speech: list[torch.Tensor],
              steps: int = 600, batch_size: int = 16, lr: float = 3e-3, text_dropout: float = 0.15,
              seed: int = 0, progress: bool = True) -> list[float]:
    """Train `model` (a LlamaForCausalLM) in place on the utterances (texts[i], audio ids speech[i] [7n]).

    AdamW, 50 warmup steps, cosine decay to lr/10; each sampled sequence loses its text with
    probability `text_dropout`. Deterministic given `seed` on a CPU. Returns the loss per step."""
    sequences = {(i, t): tts_sequence(tokenizer, layout, texts[i] if t else "", speech[i])
                 for i in range(len(texts)) for t in (True, False)}
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    losses = []
    bar = progress_bar(total=steps, desc="training the tiny TTS model", unit="step", disable=not progress)
    for step in range(steps):
        scale = min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        picks = rng.integers(len(texts), size=batch_size)
        keep_text = rng.random(batch_size) >= text_dropout
        ids, labels, mask = _batch([sequences[(int(i), bool(t))] for i, t in zip(picks, keep_text)], layout.pad)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return losses
