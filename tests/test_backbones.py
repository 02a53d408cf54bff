"""The frozen core: the tiny preset through the real loading path, the token layout, SNAC codes,
and the errors for missing or broken backbones."""

import json
import math
import shutil

import pytest
import torch

from s2s.backbones import BackboneConfig, BackboneError, FrozenCore, load_snac, snac_frames
from s2s.tokens import FRAME


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for this process (huggingface_hub reads the variable once, at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- the tiny preset loads like the real one ------------------------------------------------

def test_tiny_backbones_are_written_in_the_real_formats(tiny_core, tiny_backbone_dir):
    whisper, orpheus, snac = (tiny_backbone_dir / n for n in ("whisper", "orpheus", "snac"))
    assert (whisper / "config.json").is_file() and (whisper / "preprocessor_config.json").is_file()
    assert (orpheus / "config.json").is_file() and (orpheus / "tokenizer.json").is_file()
    assert (snac / "config.json").is_file() and (snac / "pytorch_model.bin").is_file()
    assert not list(tiny_backbone_dir.glob("*.partial"))


def test_core_is_frozen(tiny_core):
    for name in ("whisper", "llm", "snac"):
        module = getattr(tiny_core, name)
        params = list(module.parameters())
        assert params, name
        assert not any(p.requires_grad for p in params), f"{name} has trainable weights"
    assert not tiny_core.whisper.training and not tiny_core.snac.training
    assert not tiny_core.llm.training  # on CPU no gradient checkpointing, so eval mode
    # the Whisper decoder is dropped: only the encoder is kept
    assert type(tiny_core.whisper).__name__ == "WhisperEncoder"
    assert tiny_core.device.type == "cpu" and tiny_core.dtype == torch.float32


def test_token_layout_is_derived_from_the_backbones(tiny_core):
    layout, vocab = tiny_core.layout, tiny_core.llm.config.vocab_size
    assert layout.codebook_size == 256 == tiny_core.snac.quantizer.codebook_size
    # text vocab + 10 specials + 7 codebooks of audio ids + 2 spare ids == the LLM vocabulary
    assert layout.audio_offset == layout.tokeniser_length + 10
    assert layout.audio_end == layout.audio_offset + FRAME * 256
    assert layout.audio_end + 2 == vocab
    assert layout.min_vocab_size <= vocab
    assert len(tiny_core.tokenizer) <= layout.audio_offset
    tok = tiny_core.tokenizer
    assert layout.start_of_text == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert layout.end_of_text == tok.convert_tokens_to_ids("<|eot_id|>")
    assert layout.start_of_text != layout.end_of_text
    assert tiny_core.whisper_dim == tiny_core.whisper.config.d_model == 64
    assert tiny_core.llm_dim == 128


def test_fitted_tiny_snac_gives_many_distinct_codes(tiny_core, synth_examples, prepared_items):
    from snac import SNAC

    from s2s.tiny import SNAC_CONFIG

    examples = synth_examples[0] + synth_examples[1]  # the order `prepared_items` was prepared in
    assert [it.key for it in prepared_items] == [ex.key for ex in examples]
    offset = tiny_core.layout.audio_offset

    def coarse(item):  # the c0 codes: frame position 0 of the prepared target ids
        return set((item.speech_tokens[0::FRAME] - offset).tolist())

    centred = set().union(*(coarse(it) for it in prepared_items))
    assert len(centred) > 20, f"only {len(centred)} distinct coarse codes over {len(examples)} utterances"

    # the same architecture and seed WITHOUT the fit (s2s/tiny_codec.py): the almost constant code of REFERENCE §8
    torch.manual_seed(0)
    raw = SNAC(**SNAC_CONFIG).eval()
    few = range(3)
    with torch.no_grad():
        uncentred = set().union(*(set(raw.encode(examples[i].target24k.view(1, 1, -1))[0].flatten().tolist())
                                  for i in few))
    centred_few = set().union(*(coarse(prepared_items[i]) for i in few))
    assert len(uncentred) <= 10 and len(centred_few) >= 5 * len(uncentred), (len(centred_few), len(uncentred))


def test_encode_speech_is_trimmed_to_the_utterance(tiny_core):
    lengths = [16000, 8001, 23999, 320 * 7]
    waves = [torch.randn(n) * 0.1 for n in lengths]
    states = tiny_core.encode_speech(waves)
    assert [tuple(s.shape) for s in states] == [(math.ceil(n / 320), 64) for n in lengths]
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() for s in states)
    # batching does not change an utterance's states (each is padded to 30 s on its own)
    alone = tiny_core.encode_speech([waves[1]])[0]
    torch.testing.assert_close(alone, states[1], atol=1e-4, rtol=1e-4)


def test_snac_encode_decode_shapes(tiny_core, synth_examples):
    wave = synth_examples[0][0].target24k[:10_000]  # not a multiple of 2048: SNAC pads it
    n = snac_frames(len(wave))
    c0, c1, c2 = tiny_core.encode_codes(wave)
    assert (c0.shape, c1.shape, c2.shape) == ((n,), (2 * n,), (4 * n,))
    assert all(c.dtype == torch.int64 and int(c.min()) >= 0 and int(c.max()) < 256 for c in (c0, c1, c2))
    audio = tiny_core.decode_codes([c0, c1, c2])
    assert audio.shape == (2048 * n,) and audio.dtype == torch.float32
    assert tiny_core.frame_seconds == pytest.approx(2048 / 24000)


def test_core_embed_and_logits_shapes(tiny_core):
    ids = torch.tensor([[tiny_core.layout.start_of_speech, tiny_core.layout.audio_offset]])
    emb = tiny_core.embed(ids)
    assert emb.shape == (1, 2, 128)
    hidden = tiny_core.hidden_states(emb, torch.ones(1, 2, dtype=torch.long))
    assert hidden.shape == (1, 2, 128)
    logits = tiny_core.logits(hidden[0])
    assert logits.shape == (2, tiny_core.llm.config.vocab_size) and logits.dtype == torch.float32


# --- missing and broken backbones ----------------------------------------------------------

def test_missing_hub_model_offline_says_what_to_do(offline, tiny_backbone_cfg, tiny_core):
    cfg = BackboneConfig(whisper="openai/whisper-large-v3", orpheus=tiny_backbone_cfg.orpheus,
                         snac=tiny_backbone_cfg.snac, device="cpu")
    with pytest.raises(BackboneError) as info:
        FrozenCore(cfg)
    msg = str(info.value)
    assert "openai/whisper-large-v3" in msg
    assert "local" in msg and "backbones.whisper=DIR" in msg
    assert "--preset tiny" in msg


def test_missing_snac_hub_model_offline(offline):
    with pytest.raises(BackboneError) as info:
        load_snac("hubertsiuzdak/snac_24khz")
    assert "hubertsiuzdak/snac_24khz" in str(info.value) and "--preset tiny" in str(info.value)


def test_broken_local_whisper_dir_is_named(offline, tmp_path, tiny_backbone_cfg, tiny_core):
    broken = tmp_path / "whisper_broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cfg = BackboneConfig(whisper=str(broken), orpheus=tiny_backbone_cfg.orpheus, snac=tiny_backbone_cfg.snac,
                         device="cpu")
    with pytest.raises(BackboneError, match="exists but could not be loaded") as info:
        FrozenCore(cfg)
    assert str(broken) in str(info.value) and "whisper" in str(info.value)


def test_broken_local_orpheus_dir_is_named(offline, tmp_path, tiny_backbone_cfg, tiny_core):
    broken = tmp_path / "orpheus_broken"
    broken.mkdir()
    shutil.copy(f"{tiny_backbone_cfg.orpheus}/config.json", broken / "config.json")  # no tokenizer, no weights
    cfg = BackboneConfig(whisper=tiny_backbone_cfg.whisper, orpheus=str(broken), snac=tiny_backbone_cfg.snac,
                         device="cpu")
    with pytest.raises(BackboneError) as info:
        FrozenCore(cfg)
    assert str(broken) in str(info.value) and "orpheus" in str(info.value)


@pytest.mark.parametrize("damage", ["no_weights", "truncated_weights", "bad_config_keys"])
def test_broken_local_snac_dir_is_named(tmp_path, tiny_backbone_cfg, tiny_core, damage):
    broken = tmp_path / "snac_broken"
    shutil.copytree(tiny_backbone_cfg.snac, broken)
    weights = broken / "pytorch_model.bin"
    if damage == "no_weights":
        weights.unlink()
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (broken / "config.json").write_text(json.dumps({"not_a_snac_argument": 1}))
    with pytest.raises(BackboneError) as info:
        load_snac(str(broken))
    assert str(broken) in str(info.value) and "snac" in str(info.value)


def test_cuda_requested_without_cuda_is_an_error(tiny_backbone_cfg):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    cfg = BackboneConfig(whisper=tiny_backbone_cfg.whisper, orpheus=tiny_backbone_cfg.orpheus,
                         snac=tiny_backbone_cfg.snac, device="cuda")
    with pytest.raises(BackboneError, match="backbones.device=cpu"):
        FrozenCore(cfg)
