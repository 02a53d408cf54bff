"""backbones.gradient_checkpointing: the frozen LLM's activations are recomputed in the backward pass;
the gradients that reach the trainable modules are those of the plain backward, to float rounding."""
from __future__ import annotations

import dataclasses

import torch

from s2s.backbones import FrozenCore
from s2s.experiment_config import build_config, strategy_class
from s2s.metrics import token_loss_sum
from s2s.prepare import make_batch


def grads(core, items, strategy: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = build_config(strategy, "tiny")
    model = strategy_class(strategy)(cfg.strategy, core)
    out = model(make_batch(items, core))
    token_loss_sum(out).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_with_and_without_checkpointing_are_equal(tiny_backbone_cfg, prepared_items):
    items = prepared_items[:4]
    plain = FrozenCore(dataclasses.replace(tiny_backbone_cfg, gradient_checkpointing=False))
    checkpointed = FrozenCore(dataclasses.replace(tiny_backbone_cfg, gradient_checkpointing=True))
    assert checkpointed.llm.is_gradient_checkpointing and not plain.llm.is_gradient_checkpointing
    for strategy in ("adapter_stage1", "istlm_interleaved"):
        a, b = grads(plain, items, strategy), grads(checkpointed, items, strategy)
        assert a.keys() == b.keys() and a
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name
        assert any(g.abs().sum() > 0 for g in a.values())  # the gradients are not trivially zero
