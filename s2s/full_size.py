"""One training step at the REAL dimensions, on random weights: time, memory and FLOPs.

    root, built_s = ensure_backbones(".cache/bench/full_size")   # root/{whisper,orpheus,snac}, built once
    result = run_isolated("measure", backbones=root, data=..., ...)  # a fresh process per configuration

The three backbones are built at their real sizes (Whisper-large-v3's encoder, Orpheus 3B with the
real Orpheus token layout, SNAC 24 kHz) with random weights and saved with the libraries' own save
functions, so `FrozenCore` loads them exactly as it loads the real ones. `measure` then trains
adapter_stage1 through the normal full-preset path (`build_config(..., "full", overrides)` and
`s2s.experiment.train`) and times each optimizer step from the trainer's own metric log.
The analytic memory and FLOPs model the measurements are printed beside is s2s/costs.py.
`--reduced` sizes (small widths, the same code path and the same token layout) are for tests.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
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

from s2s.adapter import STACK
from s2s.data.sentences import make_sentence
from s2s.data.synth import synthesize_dataset
from s2s.costs import Dims, Sample
from s2s.experiment_config import ExperimentConfig

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


def reduced_strategy_overrides() -> list[str]:
    """strategy.*=... for reduced runs: the card model's (adapter_stage1's) own tiny-preset dimensions."""
    from s2s.experiment_config import strategy_class
    return [f"strategy.{k}={v}"
            for k, v in strategy_class(ExperimentConfig.strategy_name).Config.PRESET_VALUES["tiny"].items()]


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


# --- the measurement --------------------------------------------------------------------------
def overrides(backbones: Path, data: Path, n_train: int, max_steps: int, checkpointing: bool, device: str,
              work: Path, cache: Path, extra: list[str] = ()) -> list[str]:
    """The key=value overrides of one measured run over the full preset: every data.* key it relies on
    is set here, so the preset's own data section (MLS, its columns and caps) plays no part; the rest
    (data.num_workers, train.group_by_length, cache.cache_speech_states, ...) stays the preset's."""
    db = (work / "mlruns" / "mlflow.db").resolve()
    return [*(f"backbones.{k}={Path(backbones) / k}" for k in ("whisper", "orpheus", "snac")),
            "backbones.build_tiny=false", "backbones.dtype=bfloat16", f"backbones.device={device}",
            f"backbones.gradient_checkpointing={str(checkpointing).lower()}",
            f"data.sources=[{data}]", "data.audio_column=audio", "data.text_column=text",
            "data.language_column=language", "data.speaker_column=voice", "data.target_audio_column=null",
            "data.train_split=train", "data.eval_split=null", "data.eval_size=1", f"data.max_samples={n_train}",
            "data.max_hours=null",
            "data.max_seconds=30", "data.dedup_frames=false",  # every SNAC frame a target: 82 tokens per second
            "train.batch_size=2", "train.grad_accum=1", f"train.max_steps={max_steps}", f"train.eval_every={max_steps}",
            "train.eval_batch_size=1", "train.checkpoint_every=0", "train.progress=false",
            f"train.out_dir={work / 'out'}", f"tracking.root={work / 'mlruns'}", f"tracking.uri=sqlite:///{db}",
            "tracking.experiment=full_size", f"cache.dir={cache}", "listen=0", "synth_if_missing=0", *extra]


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux: clear_refs 5), so the next peak is that of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class _Probe:
    """Records what one FrozenCore's LLM and Whisper encoder are given, and Whisper's time: wraps the
    instance's `hidden_states` and `encode_speech` (the class's methods are untouched)."""

    def __init__(self, core):
        self.core, self.llm, self.whisper = core, [], []
        hidden_states, encode_speech = core.hidden_states, core.encode_speech

        def probed_hidden_states(inputs_embeds, attention_mask, *args, **kwargs):
            self.llm.append((time.perf_counter(), [int(n) for n in attention_mask.sum(1)]))
            return hidden_states(inputs_embeds, attention_mask, *args, **kwargs)

        def probed_encode_speech(waves):
            t0 = time.perf_counter()
            states = encode_speech(waves)  # returns CPU tensors: the device is synchronized
            self.whisper.append((t0, time.perf_counter(), [len(s) for s in states]))
            return states

        core.hidden_states, core.encode_speech = probed_hidden_states, probed_encode_speech

    def restore(self) -> None:
        del self.core.hidden_states, self.core.encode_speech

    def step(self, t0: float, t1: float, n_targets: int) -> tuple[list[Sample], int, float, float]:
        """(per-sample shapes, utterances Whisper encoded, Whisper seconds, end time) of the optimizer step
        logged at t1 after a log at t0. It ends at t1, or where the evaluation that followed it began."""
        forward, lengths = next(((t, ls) for t, ls in self.llm if t0 < t <= t1), (None, None))  # grad_accum 1
        if forward is None:
            raise RuntimeError("no LLM forward went through FrozenCore.hidden_states during a training step: "
                               "s2s.full_size._Probe needs updating to how strategies call the LLM now")
        calls = [(a, b, frames) for a, b, frames in self.whisper if t0 < b <= forward]  # collating its batch
        later = [t for t, _ in self.llm if forward < t <= t1] + [a for a, _, _ in self.whisper if forward < a <= t1]
        frames = [f for _, _, fs in calls for f in fs]
        if len(frames) == len(lengths):
            ta = [math.ceil(f / STACK) for f in frames]
            # Prompt positions per sample, from L = prompt + Ta + n and N = sum(n + 1) over the batch.
            prompt = (sum(lengths) - sum(ta) - n_targets + len(lengths)) / len(lengths)
            samples = [Sample(L, a, round(L - prompt - a + 1)) for L, a in zip(lengths, ta)]
        else:  # states came from a cache: split by the rates (10 adapter frames, 82 targets per second)
            samples = [Sample(L, round(L * 10 / 92.03), round(n_targets * L / sum(lengths))) for L in lengths]
        return samples, len(frames), sum(b - a for a, b, _ in calls), min(later, default=t1)


def measure(backbones: str, data: str, n_train: int, steps: int, checkpointing: bool, device: str, work: str,
            cache: str, extra: list[str] = (), threads: int = 0) -> dict:
    """Train adapter_stage1 for 1 + `steps` optimizer steps of batch 2 through `s2s.experiment.train` and
    return what they cost (a JSON-able dict; run it in a fresh process for per-configuration peaks).

    A step's time is the interval between the trainer's metric logs (one per step), so it includes
    collating the batch (the Whisper encoder, when states are not cached) and the optimizer step; the
    last step's ends where the evaluation after it begins (the first call into the core after the step's
    forward). The first step (warm-up) is not timed. Peak memory: CUDA max allocated, or peak RSS, from
    the end of loading the core (the load phase's own peak is returned beside it).
    """
    from s2s.experiment import shared_core, train
    from s2s.experiment_config import build_config

    if threads > 0:
        torch.set_num_threads(threads)
    work = Path(work)
    (work / "mlruns").mkdir(parents=True, exist_ok=True)
    rss_start = _proc_kb("VmRSS") * 1024
    cfg = build_config(ExperimentConfig.strategy_name, "full", overrides(Path(backbones), Path(data), n_train, steps + 1,
                                                           checkpointing, device, work, Path(cache), list(extra)))
    t0 = time.perf_counter()
    core = shared_core(cfg.backbones)  # train() gets this same core: one per backbone config and process
    load_s = time.perf_counter() - t0
    load_peak, rss_loaded = _peak_bytes(core.device), _proc_kb("VmRSS") * 1024
    if core.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(core.device)
    peak_reset = _reset_peak() if core.device.type == "cpu" else True
    probe, logs = _Probe(core), []

    def on_run(run):  # the trainer logs through run.log_metrics once per step: timestamp each call
        log = run.log_metrics

        def timed(metrics, step):
            logs.append((time.perf_counter(), step, {k: float(v) for k, v in metrics.items()}))
            log(metrics, step)
        run.log_metrics = timed

    try:
        result = train(cfg, progress=False, on_run=on_run)
    finally:
        probe.restore()
    peak = _peak_bytes(core.device)
    train_logs = [(i, s, m) for i, (_, s, m) in enumerate(logs) if "train/loss" in m]
    timed_steps = []
    for i, step, metrics in train_logs[1:]:
        start = logs[i - 1][0]
        samples, utts, whisper_s, end = probe.step(start, logs[i][0], int(metrics["train/tokens"]))
        timed_steps.append({"step": step, "seconds": end - start, "tokens": metrics["train/tokens"],
                            "loss": metrics["train/loss"], "samples": [list(x) for x in samples],
                            "whisper_utterances": utts, "whisper_seconds": whisper_s})
    return {"checkpointing": checkpointing, "device": str(core.device), "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(core.device) if core.device.type == "cuda" else "cpu",
            "dims": Dims.of(core.llm.config, core.whisper.config, cfg.strategy).as_dict(),
            "snac_params": sum(p.numel() for p in core.snac.parameters()),
            "n_trainable": result["n_trainable"], "steps": timed_steps, "load_seconds": load_s,
            "rss_start": rss_start, "rss_loaded": rss_loaded, "load_peak": load_peak, "peak": peak,
            "peak_from_load_end": peak_reset, "whisper_cached": cfg.cache.cache_speech_states,
            "skipped_steps": max((m.get("train/skipped_steps", 0) for _, _, m in train_logs), default=0)}


# --- running in a fresh process ---------------------------------------------------------------
def _build(**kwargs) -> dict:
    root, seconds = ensure_backbones(**kwargs)
    return {"root": str(root), "seconds": seconds}


COMMANDS = {"measure": measure, "build": _build}


def run_isolated(command: str, log: str | os.PathLike | None = None, **kwargs) -> dict:
    """`COMMANDS[command](**kwargs)` in a fresh Python process: its own peak memory, and all it allocated
    returned to the OS when it ends. Output goes to `log` (else inherited). RuntimeError if it fails."""
    with tempfile.TemporaryDirectory(prefix="s2s-full-size-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "s2s.full_size", command, json.dumps(kwargs, default=str), str(result)]
        with open(log, "w") if log else open(os.devnull, "w") as out:
            proc = subprocess.run(cmd, stdout=out if log else None, stderr=subprocess.STDOUT if log else None)
        if proc.returncode != 0 or not result.is_file():
            tail = Path(log).read_text()[-3000:] if log else "(see the output above)"
            raise RuntimeError(f"`{command}` failed in its subprocess (exit {proc.returncode}):\n{tail}")
        return json.loads(result.read_text())


if __name__ == "__main__":  # the child side of run_isolated: COMMAND KWARGS_JSON RESULT_PATH
    _command, _kwargs, _out = sys.argv[1:4]
    Path(_out).write_text(json.dumps(COMMANDS[_command](**json.loads(_kwargs))))
