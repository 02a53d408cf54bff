"""A tiny random Whisper ASR model (WhisperForConditionalGeneration + processor) in the real format.

`build_tiny_whisper_asr(out)` writes what `openai/whisper-large-v3` ships — config.json, weights,
generation_config.json, preprocessor_config.json and a byte-level BPE tokenizer — at tiny scale,
so the evaluation code loads it through the same `from_pretrained` path as the real model and
`generate(language="es", task="transcribe")` builds the real decoder prompt
<|startoftranscript|><|es|><|transcribe|><|notimestamps|>.

The vocabulary has Whisper's layout: BPE tokens, then <|endoftext|>, <|startoftranscript|>, one
token per Whisper language, <|translate|>, <|transcribe|>, <|startoflm|>, <|startofprev|>,
<|nospeech|>, <|notimestamps|>, then the 1501 timestamp tokens <|0.00|> ... <|30.00|> (the
generation code takes every id above <|notimestamps|> as a timestamp). The weights are random:
its transcripts are garbage by design.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (AddedToken, GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                          WhisperForConditionalGeneration, WhisperTokenizer)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

TINY_BPE_VOCAB = 384  # 256 byte symbols + merges
TIMESTAMPS = 1501  # 0.00 ... 30.00 s in steps of 0.02 s, as in Whisper
MAX_TARGET_POSITIONS = 64

# A little text for the BPE merges; what it learns does not matter, only that any text encodes.
_BPE_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "el perro come la comida en la casa de mi madre",
    "il gatto dorme sul divano della nonna ogni giorno",
    "¿qué tal estás? perché no? l'acqua è fredda, ñandú",
]


def _special_tokens() -> list[str]:
    return (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
            + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
               "<|notimestamps|>"])


def build_tiny_whisper_tokenizer(out: Path):
    """A WhisperTokenizer over a small byte-level BPE plus Whisper's special and timestamp tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY_BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_BPE_TEXT * 4, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = WhisperTokenizer(vocab=trained["vocab"], merges=merges)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in _special_tokens()],
                         special_tokens=True)
    # Timestamps are ordinary added tokens in Whisper (decode() keeps them unless asked otherwise).
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", normalized=False) for i in range(TIMESTAMPS)])
    tokenizer.save_pretrained(out)
    return tokenizer


def build_tiny_whisper_asr(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random multilingual Whisper ASR model to `out` (created) and return the path.

    Loads with `WhisperForConditionalGeneration.from_pretrained(out)` and
    `WhisperProcessor.from_pretrained(out)`; 80 mel bins, 30-s windows like the real model.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_whisper_tokenizer(out)
    ids = tokenizer.convert_tokens_to_ids
    eot, sot, no_ts = ids("<|endoftext|>"), ids("<|startoftranscript|>"), ids("<|notimestamps|>")
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=2,
                           encoder_attention_heads=4, decoder_layers=2, decoder_attention_heads=4,
                           encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500,
                           max_target_positions=MAX_TARGET_POSITIONS, pad_token_id=eot, bos_token_id=eot,
                           eos_token_id=eot, decoder_start_token_id=sot, begin_suppress_tokens=None,
                           suppress_tokens=None)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():
        # Zero timestamp rows of the tied embedding / output projection: their logits are then 0
        # while the best text token's is > 0, so the random model never emits a timestamp, which
        # generate() would otherwise parse as segment boundaries even in short-form decoding.
        model.get_input_embeddings().weight[no_ts + 1:] = 0.0
    # The fields Whisper's generate() reads to force language and task (as in the real
    # generation_config.json of openai/whisper-large-v3).
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=MAX_TARGET_POSITIONS, is_multilingual=True, no_timestamps_token_id=no_ts,
        lang_to_id={f"<|{c}|>": ids(f"<|{c}|>") for c in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        prev_sot_token_id=ids("<|startofprev|>"), begin_suppress_tokens=[], suppress_tokens=[])
    model.save_pretrained(out)
    # Saved apart (preprocessor_config.json + tokenizer files), as in the hub repository, rather
    # than as one processor_config.json, so loading goes through the path the real model takes.
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out
