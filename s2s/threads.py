"""Torch's intra-op threads, where their number matters.

On a CPU with few cores that other processes share (DataLoader workers, a second run), OpenMP
threads spin while they wait for each other and are preempted: SNAC's small convolutions then run
far slower on two threads than on one (measured on this project's 2-core machine: the real-size
SNAC encoded 10 utterances in 4.7-6.1 s on two threads, 0.9 s on one; the tiny one 40 in 7.9 s
against 0.55 s). `one_thread()` runs a block on one.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    """Run the block with one intra-op thread (process-wide), then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
