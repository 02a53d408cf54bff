"""Session fixtures for the model/trainer tests: the tiny backbones, the frozen core, prepared items.

The tiny random backbones are built ONCE per session into a temporary directory (through the
same `FrozenCore(BackboneConfig(build_tiny=True))` path the tiny preset uses) and every test
shares the loaded core. Prepared items (SNAC target ids + Whisper states of the `synth_dataset`
fixture) are cached in a session cache directory, which the end-to-end MLflow run reuses.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_backbones")


@pytest.fixture(scope="session")
def tiny_backbone_cfg(tiny_backbone_dir):
    """BackboneConfig of the tiny preset pointing at a session tmp dir (built on first load), CPU fp32."""
    from s2s.backbones import BackboneConfig

    return BackboneConfig(whisper=str(tiny_backbone_dir / "whisper"), orpheus=str(tiny_backbone_dir / "orpheus"),
                          snac=str(tiny_backbone_dir / "snac"), build_tiny=True, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_core(tiny_backbone_cfg):
    """The frozen tiny core (Whisper encoder, Llama, SNAC), loaded once per session."""
    from s2s.backbones import FrozenCore

    return FrozenCore(tiny_backbone_cfg)


@pytest.fixture(scope="session")
def tiny_strategy_cfg():
    """The adapter_stage1 config of the tiny preset (tiny.yaml's `strategies.adapter_stage1`)."""
    from experiments.config import build_config

    return build_config("adapter_stage1", "tiny").strategy


@pytest.fixture(scope="session")
def prepared_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prepared_cache")


@pytest.fixture(scope="session")
def synth_examples(synth_dataset):
    """(train, eval) `Example` lists of the synth dataset: 8 train + 4 held-out eval utterances."""
    from s2s.data.loader import DataConfig, load_examples

    cfg = DataConfig(sources=[str(synth_dataset)], eval_size=4)
    return load_examples(cfg, "train", progress=False), load_examples(cfg, "eval", progress=False)


@pytest.fixture(scope="session")
def prepared_items(synth_examples, tiny_core, prepared_cache_dir):
    """All 12 synth utterances prepared by the tiny core (train first, then eval)."""
    from s2s.prepare import CacheConfig, prepare

    train, evals = synth_examples
    return prepare(train + evals, tiny_core, CacheConfig(dir=str(prepared_cache_dir)), progress=False)


@pytest.fixture(scope="session")
def make_batch(tiny_core):
    """items -> Batch, collated with the tiny core."""
    from s2s.prepare import make_batch as _make_batch

    return lambda items: _make_batch(list(items), tiny_core)
