"""The miniature: tiny backbones of the real architectures, two of them trained, in the real formats.

`ensure_tiny_backbones` builds, once, into the tiny preset's three directories (.cache/s2s/tiny):
- **whisper**: a 2-layer, 64-wide Whisper with random weights (WhisperModel + feature extractor);
- **snac**: a small SNAC (hop 512, 3 codebooks of 256 at strides 4/2/1) whose quantizers are fitted
  to speech (s2s/tiny_codec.py), so that its codes follow what is said;
- **orpheus**: a 4-layer, 128-wide Llama with the Orpheus token layout at tiny scale, trained as a
  TTS model on that codec's codes (s2s/tiny_tts.py), so that it really reads.
`FrozenCore` then loads them exactly as it loads the real models.

The TTS model and codec learn from their own corpus of "miniature" speech (s2s/data/synth.py): random
word strings in one voice per language, synthesized with espeak-ng from a seed of their own and held
apart from any dataset's recordings by text (its texts are kept in miniature.json, with what the
build measured: the held-out loss and accuracy of the TTS model given no text and given the text,
overall and on the coarse codes k0, the codec's code use and reconstruction distance, the build times).
Whisper stays random, and so does everything that listens with it: the miniature tests whether a
method can teach a trained TTS model to listen, not how well real speech is recognized.
"""
from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
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
from s2s.threads import one_thread
from s2s.tiny_codec import fit_quantizers, reconstruction_db
from s2s.tiny_tts import train_tts
from s2s.tokens import TokenLayout, codes_to_tokens

TINY_CODEBOOK = 256
TINY_TEXT_VOCAB = 1024  # room for every word of the miniature's vocabulary as one token
CORPUS_SIZE = 6000  # utterances the codec and the TTS model learn from (about 50 minutes of speech)
CORPUS_SEED = 1234  # not a seed any dataset of the project is synthesized with
HELD_OUT = 200  # of them, kept for measuring the TTS model
CODEC_FIT = 300  # utterances the quantizers are fitted on (about 9 minutes of speech)
TTS_STEPS = 1800
MINIATURE_FILE = "miniature.json"
FLOOR_KEY, TOPLINE_KEY = "no_text", "text"  # s2s.brackets' FLOOR and TOPLINE (not imported: a cycle)
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|pad|>"]
SNAC_CONFIG = dict(sampling_rate=24000, encoder_dim=8, encoder_rates=[2, 4, 8, 8], decoder_dim=64,
                   decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=TINY_CODEBOOK,
                   codebook_dim=8, vq_strides=[4, 2, 1], noise=True, depthwise=True)


def miniature_corpus(out: Path, seed: int = CORPUS_SEED, progress: bool = True):
    """The TTS corpus: CORPUS_SIZE miniature utterances -> (train, held_out) Examples."""
    path = synthesize_dataset(out, langs=["es", "it"], n=CORPUS_SIZE, seed=seed, style="miniature", progress=progress)
    cfg = DataConfig(sources=[str(path)], eval_size=HELD_OUT, speaker_column="voice")
    return load_examples(cfg, "train", progress=False), load_examples(cfg, "eval", progress=False)


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


def build_orpheus(out: Path, texts: list[str], codes: list[list[torch.Tensor]], seed: int = 0,
                  progress: bool = True) -> dict:
    """A 4-layer, 128-wide Llama with the Orpheus layout at tiny scale, trained to read `texts` into
    their SNAC `codes` (s2s/tiny_tts.py). Returns what training logged."""
    tokenizer = build_tokenizer(texts, out)
    text_vocab = max(len(tokenizer), TINY_TEXT_VOCAB)
    config = LlamaConfig(vocab_size=text_vocab + 12 + 7 * TINY_CODEBOOK, hidden_size=128, intermediate_size=384,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    layout = TokenLayout(tokeniser_length=text_vocab, start_of_text=tokenizer.convert_tokens_to_ids(SPECIALS[0]),
                         end_of_text=tokenizer.convert_tokens_to_ids(SPECIALS[1]), codebook_size=TINY_CODEBOOK)
    speech = [codes_to_tokens(c, layout) for c in codes]
    losses = train_tts(model, tokenizer, layout, texts, speech, steps=TTS_STEPS, seed=seed, progress=progress)
    model.save_pretrained(out)
    return {"steps": TTS_STEPS, "train_loss_last_50": float(np.mean(losses[-50:]))}


def build_whisper(out: Path, seed: int = 0) -> None:
    """A 2-layer, 64-wide Whisper; the encoder still takes 30 s (3000 mel frames) like the real one."""
    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                           decoder_layers=1, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                           max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=3, begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(seed)
    WhisperModel(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)


def build_snac(out: Path, waves24k: list[np.ndarray], seed: int = 0):
    """A small SNAC (hop 512, 3 codebooks of 256 at strides 4/2/1), its quantizers fitted to `waves24k`
    (s2s/tiny_codec.py), in SNAC's config.json + pytorch_model.bin format -> (the fit's figures, the SNAC)."""
    torch.manual_seed(seed)
    snac = SNAC(**SNAC_CONFIG).eval()
    used = fit_quantizers(snac, waves24k[:CODEC_FIT], seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(SNAC_CONFIG, indent=2))
    torch.save(snac.state_dict(), out / "pytorch_model.bin")
    return {"fitted_on_utterances": min(CODEC_FIT, len(waves24k)), "distinct_codes_per_codebook": used}, snac


def _codes(snac, waves24k: list[np.ndarray]) -> list[list[torch.Tensor]]:
    """SNAC codes ([n], [2n], [4n]) of each waveform, encoded alone (as preparation does)."""
    def encode(w: np.ndarray) -> list[torch.Tensor]:
        with torch.inference_mode():  # thread-local: set in the worker thread itself
            return [c[0] for c in snac.encode(torch.from_numpy(w).float().view(1, 1, -1))]

    with ThreadPoolExecutor(2) as pool:  # two single-threaded encoders at once
        return list(pool.map(encode, waves24k))


def measure(backbones: dict[str, str], held_out: list) -> dict:
    """The built TTS model's held-out loss and accuracy given no text and given the text, overall and
    on k0, through the loading and scoring code every run uses (FrozenCore, s2s/brackets.py)."""
    from s2s.backbones import BackboneConfig, FrozenCore  # imports this module: here, not at the top
    from s2s.brackets import bracket, score_brackets
    from s2s.prepare import PreparedExample

    core = FrozenCore(BackboneConfig(**backbones, device="cpu", dtype="float32"))
    items = [PreparedExample(e.key, e.text, e.language, codes_to_tokens(core.encode_codes(e.target24k), core.layout),
                             torch.zeros(1, core.whisper_dim), None) for e in held_out]
    metrics = score_brackets(core, items, batch_size=16)
    floor, topline = bracket(metrics, FLOOR_KEY), bracket(metrics, TOPLINE_KEY)
    return {"held_out_utterances": len(items), FLOOR_KEY: floor, TOPLINE_KEY: topline,
            "text_gap": floor["eval/loss"] - topline["eval/loss"],
            "text_gap_k0": floor["eval/loss_k0"] - topline["eval/loss_k0"]}


def ensure_tiny_backbones(whisper_dir: str, orpheus_dir: str, snac_dir: str, progress: bool = True) -> None:
    """Build whichever tiny backbone is missing (once; later runs just load them).

    The codec and the TTS model are a pair (the model reads that codec's codes): either missing
    rebuilds both. Each directory is written aside and renamed, so a crash leaves no half model;
    a lock file lets one process build while others wait for it."""
    dirs = {"whisper": Path(whisper_dir), "orpheus": Path(orpheus_dir), "snac": Path(snac_dir)}
    done = lambda: all((d / "config.json").is_file() for d in dirs.values())  # noqa: E731
    if done():
        return
    root = dirs["orpheus"].parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same directories: wait for it
        if done():
            return
        _build(dirs, progress)


def _build(dirs: dict[str, Path], progress: bool) -> None:
    t0 = time.perf_counter()
    print(f"building the miniature's backbones in {sorted({str(d.parent) for d in dirs.values()})} (once, "
          "about 5 minutes on 2 cores) ...", flush=True)
    seconds = {}
    # One intra-op thread: the build's numbers then do not depend on the machine's core count (and SNAC's
    # small convolutions run much faster, s2s/threads.py).
    with one_thread():
        if not (dirs["whisper"] / "config.json").is_file():
            _install(dirs["whisper"], build_whisper)
        if all((dirs[k] / "config.json").is_file() for k in ("orpheus", "snac")):
            return
        with tempfile.TemporaryDirectory() as tmp:
            train, held_out = miniature_corpus(Path(tmp, "corpus"), progress=progress)
        seconds["corpus"] = time.perf_counter() - t0
        waves = [e.target24k.numpy() for e in train]
        snac_tmp, orpheus_tmp = (Path(str(dirs[k]) + ".partial") for k in ("snac", "orpheus"))
        for d in (snac_tmp, orpheus_tmp, dirs["snac"], dirs["orpheus"]):
            shutil.rmtree(d, ignore_errors=True)
        codec, snac = build_snac(snac_tmp, waves)
        seconds["codec_fit"] = time.perf_counter() - t0 - sum(seconds.values())
        codes = _codes(snac, waves)
        seconds["encode"] = time.perf_counter() - t0 - sum(seconds.values())
        tts = build_orpheus(orpheus_tmp, [e.text for e in train], codes, progress=progress)
        seconds["tts_training"] = time.perf_counter() - t0 - sum(seconds.values())
        report = {"codec": codec, "tts": tts,
                  "measured": measure({"whisper": str(dirs["whisper"]), "orpheus": str(orpheus_tmp),
                                       "snac": str(snac_tmp)}, held_out)}
        report["codec"]["reconstruction_db"] = reconstruction_db(snac, [e.target24k.numpy() for e in held_out[:20]])
        seconds["measure"] = time.perf_counter() - t0 - sum(seconds.values())
        report["build_seconds"] = {**{k: round(v, 1) for k, v in seconds.items()},
                                   "total": round(time.perf_counter() - t0, 1)}
        report["corpus"] = {"seed": CORPUS_SEED, "train_texts": [e.text for e in train],
                            "held_out_texts": [e.text for e in held_out]}
        (orpheus_tmp / MINIATURE_FILE).write_text(json.dumps(report, indent=1))
        snac_tmp.rename(dirs["snac"])
        orpheus_tmp.rename(dirs["orpheus"])
    print(describe(report), flush=True)


def _install(out: Path, build) -> None:
    tmp = Path(str(out) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    tmp.rename(out)


def describe(report: dict) -> str:
    """What the build measured (miniature.json), in a few lines."""
    m, f, t = report["measured"], report["measured"][FLOOR_KEY], report["measured"][TOPLINE_KEY]
    return (f"miniature built in {report['build_seconds']['total']:.0f} s: the tiny TTS model on "
            f"{m['held_out_utterances']} held-out utterances, given no text / the text: loss {f['eval/loss']:.3f} / "
            f"{t['eval/loss']:.3f}, accuracy {f['eval/acc']:.3f} / {t['eval/acc']:.3f}; on the coarse codes k0: "
            f"loss {f['eval/loss_k0']:.3f} / {t['eval/loss_k0']:.3f} (the text is worth {m['text_gap_k0']:.2f} nats "
            f"per k0), accuracy {f['eval/acc_k0']:.3f} / {t['eval/acc_k0']:.3f}. Codec: "
            f"{report['codec']['distinct_codes_per_codebook']} codes in use, reconstruction "
            f"{report['codec']['reconstruction_db']:.1f} dB log-mel distance (its decoder is random: not speech)")


def miniature_report(orpheus_dir: str) -> dict | None:
    """The build's measurements (miniature.json) next to a tiny TTS model, or None for other models."""
    path = Path(orpheus_dir) / MINIATURE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


if __name__ == "__main__":  # python -m s2s.tiny: build the tiny preset's backbones if missing, print what was measured
    root = Path(".cache/s2s/tiny")
    ensure_tiny_backbones(*(str(root / k) for k in ("whisper", "orpheus", "snac")))
    print(describe(miniature_report(str(root / "orpheus"))))
