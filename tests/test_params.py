"""Parameter counts at the REAL dimensions (built on the meta device: no memory, no download)."""

import pytest
import torch

from s2s.adapter import SpeechAdapter
from s2s.expansion import ExpansionBlocks


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_speech_adapter_is_19_4m_at_whisper_large_to_orpheus():
    with torch.device("meta"):
        adapter = SpeechAdapter(1280, 3072)
    # 6400 -> 2048 -> 3072 + LayerNorm(3072) = 19,409,920
    assert n_params(adapter) == pytest.approx(19.4e6, rel=0.02)
    assert adapter.proj[0].in_features == 5 * 1280


def test_expansion_blocks_default_is_about_100m():
    with torch.device("meta"):
        expansion = ExpansionBlocks(3072, 3072)
    assert len(expansion.blocks) == 4
    assert n_params(expansion) == pytest.approx(100e6, rel=0.10)


def test_trainable_total_is_about_119m():
    """The card: adapter + expansion ~119M trainable (within 10%)."""
    with torch.device("meta"):
        total = n_params(SpeechAdapter(1280, 3072)) + n_params(ExpansionBlocks(3072, 3072))
    assert total == pytest.approx(119e6, rel=0.10)


def test_orpheus_llama_is_about_3_3b():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=156940, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # tied: the embedding matrix is counted once
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert n_params(model) == pytest.approx(3.3e9, rel=0.05)


def test_whisper_large_v3_encoder_is_about_0_64b():
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(vocab_size=51866, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                           decoder_layers=32, decoder_attention_heads=20, encoder_ffn_dim=5120,
                           decoder_ffn_dim=5120, num_mel_bins=128, max_source_positions=1500,
                           max_target_positions=448)
    with torch.device("meta"):
        model = WhisperModel(config)
    assert n_params(model.encoder) == pytest.approx(0.64e9, rel=0.05)
    # the whole model (decoder included) is ~1.5B: FrozenCore keeps only the encoder
    assert n_params(model) == pytest.approx(1.55e9, rel=0.05)


def test_adapter_stage1_trainable_state_holds_no_frozen_weights(tiny_core, tiny_strategy_cfg):
    from s2s.strategies import AdapterStage1

    model = AdapterStage1(tiny_strategy_cfg, tiny_core)
    state = model.trainable_state_dict()
    assert state and all(k.startswith(("adapter.", "expansion.")) for k in state), sorted(state)[:5]
    assert sum(t.numel() for t in state.values()) == model.n_trainable() == n_params(model)
    # the frozen core is not registered: neither the full state dict nor the parameters see it
    assert all(k.startswith(("adapter.", "expansion.")) for k in model.state_dict())
    frozen = {id(p) for m in (tiny_core.whisper, tiny_core.llm, tiny_core.snac) for p in m.parameters()}
    assert not any(id(p) in frozen for p in model.parameters())
    assert not any(t.data_ptr() == p.data_ptr() for t in state.values()
                   for m in (tiny_core.llm,) for p in m.parameters())
    # and the frozen weights are not trainable
    assert not any(p.requires_grad for m in (tiny_core.whisper, tiny_core.llm, tiny_core.snac)
                   for p in m.parameters())
