"""Loss and teacher-forced metrics over target tokens, defined exactly.

- `token_loss_sum`: the SUM of per-token cross-entropies (with optional label smoothing) of
  the target tokens; the trainer divides by the number of target tokens of the whole
  optimizer step, so the reported loss is nats per target token.
- `evaluate`: loss (no smoothing) in nats per target token, token accuracy, and both per
  frame position k0..k6 and for end_of_speech, summed over the eval set before dividing.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F

from s2s.strategies.base import GROUP_NAMES, TargetLogits


def token_loss_sum(out: TargetLogits, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy over the N target tokens (scalar)."""
    return F.cross_entropy(out.logits, out.labels, reduction="sum", label_smoothing=label_smoothing)


def token_loss_sums(out: TargetLogits, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed loss sum to optimize, plain NLL sum to report) from ONE log-softmax over [N, V].

    Label smoothing eps mixes the target with a uniform distribution over V:
    loss = (1 - eps) * nll + eps * mean_v(-log p_v), exactly what F.cross_entropy computes.
    """
    logp = F.log_softmax(out.logits, dim=-1)
    nll = -logp.gather(1, out.labels[:, None]).squeeze(1)
    if not label_smoothing:
        return nll.sum(), nll.sum().detach()
    smooth = -logp.mean(dim=-1)
    return ((1 - label_smoothing) * nll + label_smoothing * smooth).sum(), nll.sum().detach()


class TokenStats:
    """Running sums of per-token loss and correctness, overall and per group."""

    def __init__(self):
        self.loss, self.correct, self.count = defaultdict(float), defaultdict(float), defaultdict(int)

    @torch.no_grad()
    def add(self, out: TargetLogits) -> None:
        nll = F.cross_entropy(out.logits, out.labels, reduction="none")
        hit = (out.logits.argmax(-1) == out.labels).float()
        for g, name in enumerate(GROUP_NAMES):
            sel = out.groups == g
            if sel.any():
                self.loss[name] += nll[sel].sum().item()
                self.correct[name] += hit[sel].sum().item()
                self.count[name] += int(sel.sum())
        self.loss["all"] += nll.sum().item()
        self.correct["all"] += hit.sum().item()
        self.count["all"] += len(nll)

    def summary(self, prefix: str = "eval") -> dict[str, float]:
        out = {}
        for name, n in self.count.items():
            tag = "" if name == "all" else f"_{name}"
            out[f"{prefix}/loss{tag}"] = self.loss[name] / n
            out[f"{prefix}/acc{tag}"] = self.correct[name] / n
        out[f"{prefix}/tokens"] = float(self.count["all"])
        return out


@torch.no_grad()
def evaluate(model, items: list, collate: Callable, batch_size: int, prefix: str = "eval",
             shuffle_audio_seed: int | None = None) -> dict[str, float]:
    """Teacher-forced metrics of `model` on `items`.

    With `shuffle_audio_seed`, every sample listens to another sample's audio (a fixed
    derangement of the whole eval set), the ablation that measures how much the model listens.
    """
    was_training = model.training
    model.eval()
    stats = TokenStats()
    order = None
    if shuffle_audio_seed is not None:
        g = torch.Generator().manual_seed(shuffle_audio_seed)
        n = len(items)
        order = (torch.arange(n) + 1 + torch.randint(0, max(n - 1, 1), (1,), generator=g)) % n if n > 1 else None
    for start in range(0, len(items), batch_size):
        idx = list(range(start, min(start + batch_size, len(items))))
        if order is None:
            stats.add(model(collate([items[i] for i in idx])))
        else:  # batch the sample with the one whose audio it gets, then permute inside the batch
            partners = [int(order[i]) for i in idx]
            batch = collate([items[i] for i in idx] + [items[j] for j in partners])
            k = len(idx)
            swap = torch.cat([torch.arange(k, 2 * k), torch.arange(k)])
            out = model(batch, audio_order=swap)
            keep = out.sample < k
            stats.add(TargetLogits(out.logits[keep], out.labels[keep], out.groups[keep], out.sample[keep]))
    model.train(was_training)
    return stats.summary(prefix)
