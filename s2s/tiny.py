"""Tiny random backbones: the same three architectures, scaled down, saved in the real formats.

`ensure_tiny_backbones` writes a small Whisper (WhisperModel + feature extractor), a small
Llama with the Orpheus token layout (tokenizer with <|begin_of_text|>/<|eot_id|>, 10 special
ids, 7 x codebook audio ids, 2 spare) and a small SNAC, each with the library's own save
function; `FrozenCore` then loads them exactly as it loads the real models.

Random frozen weights mislead unless two things are fixed (REFERENCE section 8):
- a random SNAC encoder emits a nearly constant latent, so every frame gets the same code: each
  quantizer's input is re-centred on real (synthesized) speech, so codes vary with the audio;
- a random tied LLM head with std 0.02 cannot put much mass on any token, which puts a floor of
  several nats under any loss: the tied embedding is drawn with std 0.1;
- random, unstructured audio embeddings in 128 dimensions cannot express "any code of frame
  position k" (a distribution over a set of 256 ids needs a direction shared by the set), which
  puts a floor above ln(256) under the coarse-code (k0) loss whatever the model knows. A trained
  LM's embeddings cluster by codebook; here each frame position's 256 ids share a random
  centroid of norm POSITION_CENTROID_NORM added to their own random vectors.
These weights are random: results on this preset say the code works, not how good a method is.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, WhisperConfig,
                          WhisperFeatureExtractor, WhisperModel)

with warnings.catch_warnings():  # snac's import calls the deprecated torch.jit.script: keep that off every CLI's output
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from snac import SNAC

from s2s.data.loader import DataConfig, load_examples
from s2s.data.synth import synthesize_dataset

TINY_CODEBOOK = 256
TINY_TEXT_VOCAB = 512
POSITION_CENTROID_NORM = 0.5
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|pad|>"]
SNAC_CONFIG = dict(sampling_rate=24000, encoder_dim=8, encoder_rates=[2, 4, 8, 8], decoder_dim=64,
                   decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=TINY_CODEBOOK,
                   codebook_dim=8, vq_strides=[4, 2, 1], noise=True, depthwise=True)


def _calibration_speech(n: int = 24, seed: int = 1234) -> tuple[list[str], list[np.ndarray]]:
    """A few synthesized es/it utterances: text to train the tokenizer, audio to centre SNAC."""
    with tempfile.TemporaryDirectory() as tmp:
        path = synthesize_dataset(Path(tmp, "calib"), langs=["es", "it"], n=n, seed=seed)
        examples = load_examples(DataConfig(sources=[str(path)], eval_size=1), "train", progress=False)
    return [e.text for e in examples], [e.target24k.numpy() for e in examples]


def build_tokenizer(texts: list[str], out: Path):
    """Byte-level BPE of TINY_TEXT_VOCAB ids (any text encodes), saved as a fast HF tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_TEXT_VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                                   pad_token=SPECIALS[2])
    fast.save_pretrained(out)
    return fast


def build_orpheus(out: Path, texts: list[str], seed: int = 0) -> None:
    """A 4-layer, 128-wide Llama whose vocabulary has the Orpheus layout at tiny scale."""
    tokenizer = build_tokenizer(texts, out)
    text_vocab = max(len(tokenizer), TINY_TEXT_VOCAB)
    config = LlamaConfig(vocab_size=text_vocab + 12 + 7 * TINY_CODEBOOK, hidden_size=128, intermediate_size=384,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # std 0.1, not 0.02: see the module docstring
        emb = model.get_input_embeddings().weight
        emb.normal_(0.0, 0.1)
        # One shared direction per frame position, added to all its audio ids (see the docstring).
        first_audio = text_vocab + 10
        for k in range(7):
            block = slice(first_audio + k * TINY_CODEBOOK, first_audio + (k + 1) * TINY_CODEBOOK)
            emb[block] += torch.randn(config.hidden_size) * (POSITION_CENTROID_NORM / config.hidden_size ** 0.5)
    model.save_pretrained(out)


def build_whisper(out: Path, seed: int = 0) -> None:
    """A 2-layer, 64-wide Whisper; the encoder still takes 30 s (3000 mel frames) like the real one."""
    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                           decoder_layers=1, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                           max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=3, begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(seed)
    WhisperModel(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)


@torch.no_grad()
def recentre_quantizers(snac, waves24k: list[np.ndarray]) -> list[int]:
    """Shift each quantizer's in_proj bias so its input has zero mean over real speech.

    The quantizers pick codes by cosine similarity, so a latent with a large constant offset
    maps every frame to one code. Returns the number of distinct codes per codebook afterwards.
    """
    audio = torch.from_numpy(np.concatenate(waves24k)).float().view(1, 1, -1)
    residual = snac.encoder(snac.preprocess(audio))
    for q in snac.quantizer.quantizers:
        x = torch.nn.functional.avg_pool1d(residual, q.stride, q.stride) if q.stride > 1 else residual
        q.in_proj.bias -= q.in_proj(x).mean(dim=(0, 2))
        z_q, _ = q(residual)
        residual = residual - z_q
    return [int(c.unique().numel()) for c in snac.encode(audio)]


def build_snac(out: Path, waves24k: list[np.ndarray], seed: int = 0) -> list[int]:
    """A small SNAC (hop 512, 3 codebooks of 256 at strides 4/2/1) in its config.json + .bin format."""
    torch.manual_seed(seed)
    snac = SNAC(**SNAC_CONFIG).eval()
    distinct = recentre_quantizers(snac, waves24k)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(SNAC_CONFIG, indent=2))
    torch.save(snac.state_dict(), out / "pytorch_model.bin")
    (out / "calibration.json").write_text(json.dumps({"distinct_codes_per_codebook": distinct}))
    return distinct


def ensure_tiny_backbones(whisper_dir: str, orpheus_dir: str, snac_dir: str) -> None:
    """Build whichever tiny backbone directory is missing (once; later runs just load them)."""
    missing = [d for d in (whisper_dir, orpheus_dir, snac_dir) if not (Path(d) / "config.json").is_file()]
    if not missing:
        return
    print(f"building tiny random backbones in {sorted({str(Path(d).parent) for d in missing})} (once) ...")
    texts, waves = _calibration_speech()
    for d in missing:
        tmp = Path(str(d) + ".partial")  # written aside then renamed, so a crash leaves no half model
        if d == whisper_dir:
            build_whisper(tmp)
        elif d == orpheus_dir:
            build_orpheus(tmp, texts)
        else:
            build_snac(tmp, waves)
        Path(d).parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(d)
