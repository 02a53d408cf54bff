"""Random backbones at the REAL sizes (or --reduced ones), and the synthesized data, for s2s/full_size.py.

    root, built_s = ensure_backbones(".cache/bench/full_size")          # root/{whisper,orpheus,snac}, once
    data = ensure_dataset(cache, seconds=2.0, n=8)                      # es/it espeak-ng utterances, once

Measuring a training step at the real dimensions needs the real architectures in the real formats,
not the real weights: Whisper-large-v3's encoder, Orpheus 3B (Llama-3.2-3B with the real Orpheus
token layout and a tokenizer of Llama-3's id layout) and SNAC 24 kHz are built here from their
configs with random weights, and saved with the libraries' own save functions, so `FrozenCore`
loads them exactly as it loads the real ones. A build is kept under its cache folder and is complete
only once MARKER is written; an interrupted one is redone. REDUCED has small widths and depths but
the same input sizes and token layout, for tests. s2s/full_size.py measures the training on them.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, WhisperConfig,
                          WhisperFeatureExtractor, WhisperModel)

with warnings.catch_warnings():  # snac's import calls the deprecated torch.jit.script
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from snac import SNAC

from s2s.data.sentences import make_sentence
from s2s.data.synth import synthesize_dataset

# --- the configurations ----------------------------------------------------------------------
# Whisper-large-v3 (REFERENCE §7; tests/test_params.py). FrozenCore keeps only the encoder, so the
# decoder is one layer: the real checkpoint's 32-layer decoder (0.9 B) is loaded and dropped at load
# time only, so this build understates the load-phase peak, not the training one.
WHISPER = dict(vocab_size=51866, d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
               num_mel_bins=128, max_source_positions=1500, decoder_layers=1, decoder_attention_heads=20,
               decoder_ffn_dim=5120, max_target_positions=448)
# Orpheus 3B (REFERENCE §2): Llama-3.2-3B plus 10 specials, 7 x 4096 audio ids and 2 spare ids.
LLAMA = dict(vocab_size=156940, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
             num_attention_heads=24, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
             rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192},
             max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
             bos_token_id=128000, eos_token_id=128009)
# hubertsiuzdak/snac_24khz's config.json (REFERENCE §3).
SNAC_24K = dict(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                vq_strides=[4, 2, 1], noise=True, depthwise=True)
# Reduced: small widths and depths, but the same 30 s Whisper input, 128 mel bins and the REAL token
# layout (vocab 156,940 over codebooks of 4096), so everything but the sizes is exercised.
REDUCED = {
    "whisper": {**WHISPER, "vocab_size": 64, "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4,
                "encoder_ffn_dim": 256, "decoder_attention_heads": 4, "decoder_ffn_dim": 256,
                "max_target_positions": 32, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
                "decoder_start_token_id": 3, "begin_suppress_tokens": None, "suppress_tokens": None},
    "orpheus": {**LLAMA, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32},
    "snac": {**SNAC_24K, "encoder_dim": 8, "decoder_dim": 64},
}
REAL = {"whisper": WHISPER, "orpheus": LLAMA, "snac": SNAC_24K}
TEXT_VOCAB = 128000  # Llama-3's BPE ids; its 256 special ids follow (<|begin_of_text|> = 128000)
LLAMA3_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>",
                   6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                   10: "<|python_tag|>"}
INIT_STD = 0.02
MARKER = "BUILD_COMPLETE.json"


# --- random backbones in the real formats -----------------------------------------------------
@torch.no_grad()
def init_random(model: torch.nn.Module, seed: int, std: float = INIT_STD) -> None:
    """Fill every parameter in place, once: norms 1 / 0, biases 0, other weights N(0, std).

    Cheaper than the libraries' own init (which draws twice: the torch default, then the model's);
    the values only have to be finite and of a plausible scale for a benchmark."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        norm = isinstance(module, torch.nn.LayerNorm) or "RMSNorm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if norm:
                p.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias":
                p.zero_()
            else:
                p.normal_(0.0, std, generator=g)


def _materialize(cls, config, dtype: torch.dtype, seed: int):
    """`cls(config)` built on the meta device (no memory, no init), then given `dtype` storage on the
    CPU and initialised once by `init_random`: a 3B model costs its bf16 bytes, not fp32 ones."""
    with torch.device("meta"):
        model = cls(config)
    model = model.to(dtype).to_empty(device="cpu")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    init_random(model, seed)
    return model.eval()


def build_tokenizer(out: Path, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Llama-3's id layout: 128,000 text ids (merges trained on synthetic es/it
    sentences, the rest unreachable fillers) and 256 special ids from 128,000, <|begin_of_text|> first
    and <|eot_id|> at 128,009, as Orpheus' layout expects (s2s/tokens.py)."""
    rng = np.random.default_rng(seed)
    texts = [make_sentence(lang, rng) for _ in range(300) for lang in ("es", "it")]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = dict(bpe.get_vocab())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    vocab.update({f"<|filler_{i}|>": i for i in range(len(vocab), TEXT_VOCAB)})
    specials, reserved = [], 0
    for k in range(256):
        name = LLAMA3_SPECIALS.get(k)
        if name is None:
            name, reserved = f"<|reserved_special_token_{reserved}|>", reserved + 1
        vocab[name] = TEXT_VOCAB + k
        specials.append(name)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)  # already in the vocabulary: they keep their ids
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=LLAMA3_SPECIALS[0], eos_token=LLAMA3_SPECIALS[9])
    fast.save_pretrained(out)
    return fast


def build_orpheus(out: Path, config: dict, seed: int = 0) -> None:
    """The tokenizer and a random bf16 LlamaForCausalLM of `config` (LLAMA or REDUCED["orpheus"]), saved
    with `save_pretrained` as AutoTokenizer / AutoModelForCausalLM read them."""
    build_tokenizer(out, seed)
    # 2 GB shards: safetensors turns a shard's tensors into bytes before writing it; small shards keep that copy small.
    model = _materialize(LlamaForCausalLM, LlamaConfig(**config), torch.bfloat16, seed)
    model.save_pretrained(out, max_shard_size="2GB")


def build_whisper(out: Path, config: dict, seed: int = 0) -> None:
    """A random bf16 WhisperModel of `config` and its feature extractor (`num_mel_bins` bins, 30 s windows)."""
    cfg = WhisperConfig(**config)
    _materialize(WhisperModel, cfg, torch.bfloat16, seed).save_pretrained(out, max_shard_size="2GB")
    WhisperFeatureExtractor(feature_size=cfg.num_mel_bins).save_pretrained(out)


def build_snac(out: Path, config: dict, seed: int = 0) -> None:
    """SNAC's own format (config.json + pytorch_model.bin, as s2s.backbones.load_snac reads it), float32.
    Its codes are not re-centred as s2s/tiny.py does: runs here set data.dedup_frames=false, so every
    frame is a target whatever the codes are."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(SNAC(**config).state_dict(), out / "pytorch_model.bin")


def backbones_dir(cache: str | os.PathLike, reduced: bool = False) -> Path:
    """Where `ensure_backbones` keeps one size; complete when it holds MARKER."""
    return Path(cache) / ("reduced" if reduced else "real")


def ensure_backbones(cache: str | os.PathLike, reduced: bool = False, seed: int = 0) -> tuple[Path, float | None]:
    """(cache/{real,reduced} holding whisper/, orpheus/, snac/; seconds spent building, or None if reused).

    Built once; `BUILD_COMPLETE.json` is written last, so a build that crashed is redone from scratch.
    The real build peaks at ~7.5 GB of RAM (the 3.3 B Llama in bf16; 7.3 GB measured) and writes 7.6 GB."""
    root = backbones_dir(cache, reduced)
    if (root / MARKER).is_file():
        return root, None
    if root.exists():
        shutil.rmtree(root)  # no marker: an interrupted build, never trusted
    t0 = time.perf_counter()
    configs = REDUCED if reduced else REAL
    build_whisper(root / "whisper", configs["whisper"], seed)
    build_orpheus(root / "orpheus", configs["orpheus"], seed)
    build_snac(root / "snac", configs["snac"], seed)
    seconds = time.perf_counter() - t0
    (root / MARKER).write_text(json.dumps({"configs": configs, "seed": seed, "build_seconds": seconds}, indent=1))
    return root, seconds


def ensure_dataset(cache: str | os.PathLike, seconds: float, n: int, seed: int = 0) -> Path:
    """`n` es/it espeak-ng utterances of about `seconds` s each (accepted within +-20%), built once."""
    import datasets
    path = Path(cache) / f"synth-{seconds:g}s-n{n}-seed{seed}"
    if not (path / "dataset_info.json").exists():
        words = max(3, round(2.0 * seconds))  # espeak-ng at 140-190 wpm says ~2.3-3.2 words per second
        was_enabled = datasets.is_progress_bar_enabled()  # save_to_disk's own bar would cut into the report
        datasets.disable_progress_bars()
        try:
            synthesize_dataset(path, ["es", "it"], n=n, seed=seed, min_words=words, progress=False,
                               max_words=max(words, round(3.2 * seconds)), min_seconds=0.8 * seconds,
                               max_seconds=1.2 * seconds)
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
    return path


def dataset_seconds(path: str | os.PathLike) -> list[float]:
    """Duration of every utterance of a synthesized dataset (from the WAV headers, nothing decoded)."""
    import io

    import datasets
    import soundfile as sf
    ds = datasets.load_from_disk(str(path)).cast_column("audio", datasets.Audio(decode=False))
    return [sf.info(io.BytesIO(a["bytes"])).duration for a in ds["audio"]]
