"""Which samples go into which micro-batch: length grouping, and the planned order the DataLoader reads."""
from __future__ import annotations

import numpy as np
import torch


class Plan:
    """A DataLoader batch sampler over planned micro-batches (an endless iterator of index lists)."""

    def __init__(self, plan):
        self.plan = plan

    def __iter__(self):
        return self.plan


def group_by_length(order: torch.Tensor, lengths: np.ndarray, batch_size: int, window: int,
                    generator: torch.Generator) -> torch.Tensor:
    """`order` [n] re-arranged so that consecutive runs of `batch_size` have similar lengths.

    Windows of `window * batch_size` consecutive samples are each sorted by length (longest first)
    and cut into micro-batches, whose order inside the window is then shuffled with `generator`:
    batches stay random in which samples they hold and when they come, but pad little."""
    size = window * batch_size
    out = []
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        chunk = chunk[torch.from_numpy(np.argsort(-lengths[chunk.numpy()], kind="stable"))]
        batches = list(chunk.split(batch_size))
        whole = len(chunk) // batch_size  # a short last batch (end of the epoch) stays last: the rest align
        out += [batches[i] for i in torch.randperm(whole, generator=generator).tolist()] + batches[whole:]
    return torch.cat(out) if out else order
