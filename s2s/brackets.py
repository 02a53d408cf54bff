"""The two brackets of a strategy's loss: the frozen TTS model with no input, and with the transcript.

A strategy teaches the frozen LM to speak what it hears. Two untrained systems bracket how well
it can do on the same eval utterances, scored exactly as a strategy is (s2s/metrics.py):

- the **no-text floor**: the LM given the Orpheus prompt with an empty text, then teacher-forced
  on the target speech ids: what it predicts from the speech so far alone;
- the **text topline**: the LM given the true transcript (`generation_prompt`), as in TTS.

A strategy whose loss sits at the floor has learned nothing the LM could use; one at the
topline listens as well as reading the transcript would let it. `fraction_to_topline` puts a
strategy on that scale, which compares across sizes where raw losses do not. (An adapter may
beat the topline: it hears the target audio itself, not only its words.)
"""
from __future__ import annotations

import torch
from torch import nn

from s2s.backbones import autocast
from s2s.metrics import evaluate
from s2s.prepare import Batch, make_batch
from s2s.strategies.base import TargetLogits, pad_right, target_logits
from s2s.tokens import generation_prompt

FLOOR, TOPLINE = "no_text", "text"


class PromptedTTS(nn.Module):
    """The frozen core as a TTS model: [SOH] text [EOT EOH SOA SOS] speech, no trainable weights.

    `with_text=False` empties the text (the floor). Called like a strategy: batch -> TargetLogits
    over each sample's n speech ids and end_of_speech.
    """

    def __init__(self, core, with_text: bool):
        super().__init__()
        self.core, self.with_text = core, with_text

    def forward(self, batch: Batch, audio_order: torch.Tensor | None = None) -> TargetLogits:
        core, dev = self.core, self.core.device
        seqs, targets = [], []
        for text, speech in zip(batch.texts, batch.speech_tokens):
            prompt = generation_prompt(core.tokenizer, text if self.with_text else "", core.layout)
            ids = torch.tensor(prompt + speech.tolist(), device=dev)
            seqs.append(core.embed(ids))
            # the last prompt position predicts the first speech id; the last speech id, end_of_speech
            targets.append(torch.arange(len(prompt) - 1, len(ids), device=dev))
        x, mask = pad_right(seqs)
        hidden = core.hidden_states(x, mask.long())
        return target_logits(core, hidden, targets, batch.speech_tokens)


@torch.no_grad()
def score_brackets(core, items: list, batch_size: int) -> dict[str, float]:
    """The frozen core on prepared eval `items`, given no text and given the transcript, with the
    numerics of the trainer's evaluation: {"brackets/no_text/loss": ..., "brackets/text/loss_k0": ...,
    ...}, every figure `s2s.metrics.evaluate` reports, under the prefix of its bracket."""
    collate = lambda batch: make_batch(batch, core)  # noqa: E731
    out = {}
    with autocast(core.device):
        for name, with_text in ((FLOOR, False), (TOPLINE, True)):
            out.update(evaluate(PromptedTTS(core, with_text), items, collate, batch_size, prefix=f"brackets/{name}"))
    return out


def bracket(metrics: dict[str, float], name: str) -> dict[str, float]:
    """One bracket's figures out of `score_brackets`' dict, named as eval metrics ("eval/loss", ...)."""
    head = f"brackets/{name}/"
    return {"eval/" + k[len(head):]: v for k, v in metrics.items() if k.startswith(head)}


def fraction_to_topline(loss: float, floor: float, topline: float) -> float:
    """How far `loss` has come from the floor towards the topline: 0 at the floor, 1 at the topline
    (above 1: better than the transcript; below 0: worse than no input). NaN when they coincide."""
    gap = floor - topline
    return (floor - loss) / gap if abs(gap) > 1e-9 else float("nan")


def summary_line(metrics: dict[str, float], run: dict[str, float], label: str = "miniature") -> str:
    """The line `make demo` ends with, for scripts to read: the brackets (`score_brackets`' dict) and
    the run's final eval metrics, overall and on the coarse codes k0."""
    floor, topline = bracket(metrics, FLOOR), bracket(metrics, TOPLINE)
    return (f"{label}: no-text floor {floor['eval/loss']:.3f}, text topline {topline['eval/loss']:.3f}, "
            f"this run {run['eval/loss']:.3f} (k0: {floor['eval/loss_k0']:.3f}, {topline['eval/loss_k0']:.3f}, "
            f"{run['eval/loss_k0']:.3f})")
