"""The frozen core: Whisper encoder, Orpheus LLM (+ tokenizer) and the SNAC codec.

Each backbone is loaded from a hub id or a local directory through the libraries' own
`from_pretrained` (SNAC: its config.json + pytorch_model.bin format, read with
`weights_only=True`). The tiny preset saves small random models in exactly these formats
(`s2s/tiny.py`) and loads them back through the functions below, so the loading code that
runs in the tests is the code that loads the real models.

Frozen means: `requires_grad=False`, eval mode, never handed to an optimizer, bf16 on CUDA.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

with warnings.catch_warnings():  # snac's import calls the deprecated torch.jit.script: keep that off every CLI's output
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from snac import SNAC

from s2s.errors import UserError
from s2s.threads import one_thread
from s2s.tiny import ensure_tiny_backbones
from s2s.tokens import TokenLayout

WHISPER_FRAME_SAMPLES = 320  # 16 kHz, hop 160, conv stride 2 -> one encoder state per 20 ms
SNAC_HOP = 512


class BackboneError(UserError):
    """A backbone that cannot be loaded, with what to do about it."""


@dataclass
class BackboneConfig:
    whisper: str = "openai/whisper-large-v3"
    orpheus: str = "canopylabs/3b-es_it-ft-research_release"
    snac: str = "hubertsiuzdak/snac_24khz"
    # Build the tiny random backbones into the three directories above when they are missing.
    build_tiny: bool = False
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    # auto: bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow and imprecise).
    dtype: str = field(default="auto", metadata={"choices": ("auto", "float32", "bfloat16")})
    # Recompute the frozen LLM's activations in the backward pass instead of keeping them: less memory,
    # about a third more compute; gradients equal to float rounding (tests/test_gradient_checkpointing.py).
    # Off by default; the full preset turns it on (a 3B LLM's activations are what fills 24 GB).
    gradient_checkpointing: bool = False


def _device_and_dtype(cfg: BackboneConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise BackboneError("backbones.device=cuda but no CUDA device is visible; use backbones.device=cpu")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          cfg.device if cfg.device != "auto" else "cpu")
    if cfg.dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, cfg.dtype)


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_pretrained(loader, source: str, what: str, use_dir: str, error: type[Exception] = None, **kwargs):
    """`loader(source, **kwargs)` (a `from_pretrained`), failing with `error` that says what to do:
    for a broken local directory, what broke; for weights neither local nor on the hub, how to get
    them (`huggingface-cli download`) and `use_dir` (how to pass the directory, e.g. "backbones.whisper=DIR")."""
    error = error or BackboneError
    try:
        return loader(source, **kwargs)
    except Exception as e:  # a local directory can be broken in many ways (bad config keys, truncated weights)
        if os.path.isdir(source):
            raise error(f"the {what} directory '{source}' exists but could not be loaded "
                        f"({type(e).__name__}: {e})") from None
        if not isinstance(e, (OSError, ValueError)):
            raise
        raise error(f"could not load the {what} '{source}': it is not a local directory and the model hub could "
                    f"not provide it ({type(e).__name__}: {str(e).splitlines()[0][:200]}).\nFix: on a machine "
                    f"with internet run `huggingface-cli download {source} --local-dir DIR`, then {use_dir}.") from None


def _from_pretrained(kind: str, loader, source: str, **kwargs):
    return load_pretrained(loader, source, f"{kind} backbone", f"pass backbones.{kind}=DIR; or train offline on "
                           f"small random models with --preset tiny", **kwargs)


def load_snac(source: str):
    """SNAC from a hub id or a directory with config.json + pytorch_model.bin."""
    def _load(src):
        if os.path.isdir(src):
            config_path, weights_path = Path(src, "config.json"), Path(src, "pytorch_model.bin")
        else:
            config_path = hf_hub_download(src, "config.json")
            weights_path = hf_hub_download(src, "pytorch_model.bin")
        model = SNAC(**json.loads(Path(config_path).read_text()))
        # weights_only: a checkpoint must never run code when it is read.
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        return model
    return _from_pretrained("snac", _load, source)


def fingerprint(source: str) -> str:
    """A short id of a backbone's weights, to key caches: the hub id, or a hash of a directory's files."""
    path = Path(source)
    if not path.is_dir():
        return source.replace("/", "--")
    h = hashlib.sha1()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"{path.name}-{h.hexdigest()[:12]}"


class FrozenCore:
    """The three frozen backbones, and the few operations strategies and data prep need.

    Not an nn.Module on purpose: a strategy keeps a reference to it without registering its
    parameters, so state dicts and optimizers only ever see the trainable weights.
    """

    def __init__(self, cfg: BackboneConfig):
        self.cfg = cfg
        if cfg.build_tiny:
            ensure_tiny_backbones(cfg.whisper, cfg.orpheus, cfg.snac)
        self.device, self.dtype = _device_and_dtype(cfg)

        self.feature_extractor = _from_pretrained("whisper", WhisperFeatureExtractor.from_pretrained, cfg.whisper)
        whisper = _from_pretrained("whisper", WhisperModel.from_pretrained, cfg.whisper, dtype=self.dtype)
        self.whisper = _freeze(whisper.get_encoder()).to(self.device)  # the decoder is dropped here
        del whisper

        self.tokenizer = _from_pretrained("orpheus", AutoTokenizer.from_pretrained, cfg.orpheus)
        self.llm = _freeze(_from_pretrained("orpheus", AutoModelForCausalLM.from_pretrained, cfg.orpheus,
                                            dtype=self.dtype)).to(self.device)
        if cfg.gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.llm.train()  # HF only checkpoints in train mode; Llama has no dropout, so outputs are unchanged

        # SNAC stays float32 even on CUDA: it is small (20M) and its codes must not depend on rounding.
        self.snac = _freeze(load_snac(cfg.snac)).to(self.device)
        self.layout = self._token_layout()

    def _token_layout(self) -> TokenLayout:
        """Orpheus appends 10 special ids, 7 codebooks of audio ids and 2 spare ids to the text vocab."""
        codebook = self.snac.quantizer.codebook_size
        vocab = self.llm.config.vocab_size
        tokeniser_length = vocab - 7 * codebook - 12
        layout = TokenLayout(tokeniser_length=tokeniser_length,
                             start_of_text=self.tokenizer.convert_tokens_to_ids("<|begin_of_text|>"),
                             end_of_text=self.tokenizer.convert_tokens_to_ids("<|eot_id|>"),
                             codebook_size=codebook)
        if len(self.tokenizer) > layout.audio_offset:
            raise BackboneError(f"the Orpheus tokenizer has {len(self.tokenizer)} tokens, more than the text "
                                f"vocabulary {tokeniser_length} implied by vocab_size {vocab} and SNAC codebook {codebook}")
        return layout

    # --- sizes -------------------------------------------------------------------------
    @property
    def whisper_dim(self) -> int:
        return self.whisper.config.d_model

    @property
    def llm_dim(self) -> int:
        return self.llm.config.hidden_size

    @property
    def frame_seconds(self) -> float:
        """Duration of one 7-token SNAC frame (2048 / 24000 s for the real codec)."""
        return self.snac.hop_length * self.snac.vq_strides[0] / self.snac.sampling_rate

    def ids(self) -> dict[str, str]:
        return {"whisper": self.cfg.whisper, "orpheus": self.cfg.orpheus, "snac": self.cfg.snac}

    # --- operations --------------------------------------------------------------------
    @torch.no_grad()
    def encode_speech(self, waves16k: list[torch.Tensor]) -> list[torch.Tensor]:
        """Whisper encoder states, trimmed to each utterance: list of [T_i, D_w] float32 (CPU).

        The encoder only accepts exactly 30 s of mel frames, so each input is padded to that
        and the states past the utterance's end (ceil(samples / 320)) are cut off.
        """
        feats = self.feature_extractor([w.numpy() for w in waves16k], sampling_rate=16000,
                                       return_tensors="pt").input_features
        states = self.whisper(feats.to(self.device, self.dtype)).last_hidden_state.float().cpu()
        return [s[: math.ceil(len(w) / WHISPER_FRAME_SAMPLES)] for s, w in zip(states, waves16k)]

    @torch.no_grad()
    def encode_codes(self, wave24k: torch.Tensor) -> list[torch.Tensor]:
        """SNAC codes of one 24 kHz waveform [T]: 3 int64 tensors [n], [2n], [4n] (CPU)."""
        with self._snac_threads():
            codes = self.snac.encode(wave24k.view(1, 1, -1).to(self.device, torch.float32))
        return [c[0].cpu() for c in codes]

    def _snac_threads(self):
        """One intra-op thread for SNAC on a CPU (s2s/threads.py: two ran it 5-14x slower here)."""
        return one_thread() if self.device.type == "cpu" else contextlib.nullcontext()

    @torch.no_grad()
    def encode_codes_batch(self, waves24k: list[torch.Tensor], max_seconds: float | None = None) -> list[list[torch.Tensor]]:
        """`encode_codes` of many waveforms, batched where that changes nothing.

        SNAC right-pads a waveform alone with zeros to a whole number of frames. Padding it further
        (to a longer neighbour's length) changes its last 2-3 frames: past the signal, the encoder's
        intermediate convolutions see their own bias activations where, alone, they would see zero
        padding. So only waveforms with the SAME number of frames share a batch, each padded exactly
        as SNAC pads it alone: the codes are those of `encode_codes` (tests/test_shards.py). A batch
        holds at most `max_seconds` of audio (at least one waveform): the encoder's first layers keep
        [B, C, T] activations at the full sample rate, and bigger batches only churn memory."""
        pad_to = self.snac.hop_length * math.lcm(self.snac.vq_strides[0], self.snac.attn_window_size or 1)
        frames = [max(1, math.ceil(len(w) / pad_to)) for w in waves24k]
        out: list = [None] * len(waves24k)
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(frames):
            groups.setdefault(n, []).append(i)
        if max_seconds is None:  # by default 60 s on a GPU; on a CPU one at a time: its convolutions gain
            # nothing from batching (bench/README.md), and a batch's activations would only raise the peak memory
            max_seconds = 60.0 if self.device.type == "cuda" else 0.0
        per_batch = max(1, int(max_seconds * 24_000) // pad_to)  # frames
        for n, members in groups.items():
            max_batch = max(1, per_batch // n)
            for start in range(0, len(members), max_batch):
                idx = members[start:start + max_batch]
                x = torch.zeros(len(idx), 1, n * pad_to)
                for row, i in enumerate(idx):
                    x[row, 0, :len(waves24k[i])] = waves24k[i]
                with self._snac_threads():
                    codes = self.snac.encode(x.to(self.device, torch.float32))
                for row, i in enumerate(idx):
                    out[i] = [c[row].cpu() for c in codes]
        return out

    @torch.no_grad()
    def decode_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """SNAC codes [n],[2n],[4n] -> 24 kHz waveform [2048 n] float32 (CPU)."""
        out = self.snac.decode([c.view(1, -1).to(self.device) for c in codes])
        return out.view(-1).float().cpu()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """LLM input embeddings of token ids [...] -> [..., H]."""
        return self.llm.get_input_embeddings()(ids.to(self.device))

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Run the frozen LLM body on [B, L, H] embeddings -> last hidden states [B, L, H].

        Training passes right-padded sequences and no positions. Incremental decoding passes
        `cache` (a transformers `DynamicCache`, extended in place), `attention_mask` [B, past + L]
        over every position so far and `position_ids` [B, L] (padding may sit anywhere).
        """
        kwargs = {"use_cache": False} if cache is None else {self._cache_keyword: cache, "use_cache": True}
        out = self.llm.model(inputs_embeds=inputs_embeds.to(self.dtype), attention_mask=attention_mask,
                             position_ids=position_ids, **kwargs)
        return out.last_hidden_state

    @functools.cached_property
    def _cache_keyword(self) -> str:
        # transformers renamed `past_key_values` to `cache` (5.24 warns on the old name; 5.17 lacks the new one)
        params = inspect.signature(type(self.llm.model).forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on selected hidden states [N, H] -> [N, V] float32."""
        return self.llm.lm_head(hidden).float()


def autocast(device):
    """bf16 autocast on CUDA, where the frozen backbones run in bf16 and trainable modules stay
    float32; a no-op on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda")


def snac_frames(samples_24k: int) -> int:
    """How many 7-token frames SNAC gives for a waveform of this length (it pads to 2048 samples)."""
    return math.ceil(samples_24k / (4 * SNAC_HOP))
