"""The analytic cost of training adapter_stage1 at any size: parameters, FLOPs and memory of a step.

`Dims` holds the sizes (Orpheus/Llama, the Whisper encoder, the trainable modules); `step_flops` and
`step_memory` give a step's model FLOPs and peak memory by part, `card_projection` the card's 3
epochs over 500 h. `bench.full_size` prints them beside its measurements (s2s/full_size.py), and
tests/test_full_size.py checks them against the real modules.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

from s2s.adapter import STACK
from s2s.expansion import N_SLOTS

SNAC_TOKENS_PER_SECOND = 7 * 24000 / 2048  # 82.03: one 7-token frame per 2048 samples at 24 kHz
ADAPTER_HZ = 50 / STACK  # Whisper's 50 Hz states, 5 per adapter position
PROMPT_POSITIONS = 6  # adapter_stage1: [SOH, start_of_text] before the audio, [EOT, EOH, SOA, SOS] after
CARD = {"hours": 500, "utterances": 200_000, "epochs": 3}  # the card's data: ~500 h, 200K samples, 3 epochs
# Dense bf16 peak (FLOP/s) by device name, most specific first.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("RTX 4090", 165e12),
             ("L40S", 362e12))


class Sample(NamedTuple):
    """One utterance of a step: L positions through the LLM, Ta adapter frames, N target tokens (n + 1)."""
    L: int
    Ta: int
    N: int


@dataclass(frozen=True)
class Dims:
    """The sizes the analytic model needs: Orpheus (Llama), the Whisper encoder, adapter_stage1's modules."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    w_dim: int
    w_layers: int
    w_ffn: int
    w_mels: int
    w_frames: int
    adapter_hidden: int
    width: int
    blocks: int
    x_ffn: int

    @classmethod
    def of(cls, llama, whisper, strategy) -> "Dims":
        """From a LlamaConfig, a WhisperConfig and an AdapterStage1Config."""
        head_dim = getattr(llama, "head_dim", None) or llama.hidden_size // llama.num_attention_heads
        return cls(llama.hidden_size, llama.intermediate_size, llama.num_hidden_layers, llama.num_attention_heads,
                   llama.num_key_value_heads, head_dim, llama.vocab_size, bool(llama.tie_word_embeddings),
                   whisper.d_model, whisper.encoder_layers, whisper.encoder_ffn_dim, whisper.num_mel_bins,
                   whisper.max_source_positions, strategy.adapter_hidden, strategy.expansion_width,
                   strategy.expansion_blocks, strategy.expansion_ffn)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def param_counts(d: Dims) -> dict[str, int]:
    """Parameters of each module, by formula (tests/test_full_size.py holds them to the modules')."""
    H, q, kv, w, f, W = d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.w_dim, d.w_ffn, d.width
    llm_linear = d.layers * (2 * H * q + 2 * H * kv + 3 * H * d.intermediate)  # q, o; k, v; gate, up, down
    w_layer = 4 * w * w + 3 * w + 2 * w * f + f + w + 4 * w  # q, v, o biased, k not; fc1, fc2; 2 LayerNorms
    block = 3 * W + 8 * (W * W + W) + 3 * W * d.x_ffn  # 3 RMSNorms; self- and cross-attention; SwiGLU
    return {"llm_linear": llm_linear,
            "llm": llm_linear + (2 * d.layers + 1) * H + d.vocab * H * (1 if d.tied else 2),
            "whisper_encoder": 3 * d.w_mels * w + w + 3 * w * w + w + d.w_frames * w + d.w_layers * w_layer + 2 * w,
            "adapter": STACK * w * d.adapter_hidden + d.adapter_hidden + d.adapter_hidden * H + 3 * H,
            "expansion": 2 * (H * W + W) + N_SLOTS * W + d.blocks * block + W + W * H + H}


def _block_forward_flops(d: Dims, s: Sample) -> float:
    """One sample through the ExpansionBlocks' blocks (their projections in and out excluded)."""
    W = d.width
    return d.blocks * (2 * (6 * W * W + 3 * W * d.x_ffn) * s.L + 2 * 2 * W * W * s.Ta + 4 * W * s.L * (s.L + s.Ta))


def step_flops(d: Dims, samples: list[Sample], checkpointing: bool, whisper_utterances: int) -> dict[str, float]:
    """Model FLOPs of one step over `samples` (their real positions: padding is not counted).

    A multiply-add is 2 FLOPs; attention counts QK^T and AV over the whole L x L square (PaLM's
    convention, no causal discount). The frozen LLM's backward computes input gradients only (no
    weight-gradient matmuls): its matmuls once more, attention twice; the LM head runs at the N targets
    only. Checkpointing adds one forward of the layers. Trainable modules: 3 x forward (input and weight
    gradients). Whisper: `whisper_utterances` forwards of 30 s (1500 frames whatever the length)."""
    p, H, W, w = param_counts(d), d.hidden, d.width, d.w_dim
    body = sum(2 * p["llm_linear"] * s.L for s in samples)
    attn = sum(4 * d.layers * d.heads * d.head_dim * s.L ** 2 for s in samples)
    head = sum(2 * H * d.vocab * s.N for s in samples)
    adapter = 2 * (STACK * w * d.adapter_hidden + d.adapter_hidden * H)
    # + in_proj and out_proj per position, mem_proj and the adapter per adapter frame
    trainable = sum(_block_forward_flops(d, s) + 4 * H * W * s.L + (2 * H * W + adapter) * s.Ta for s in samples)
    n = d.w_frames
    convs = 2 * 3 * d.w_mels * w * 2 * n + 2 * 3 * w * w * n  # kernel 3 over 3000 mel frames, then stride 2
    whisper = convs + d.w_layers * (2 * (4 * w * w + 2 * w * d.w_ffn) * n + 4 * w * n * n)
    out = {"llm_forward": body + attn + head, "llm_backward": body + 2 * attn + head,
           "llm_recompute": body + attn if checkpointing else 0, "whisper": whisper * whisper_utterances,
           "trainable": 3 * trainable}
    out["total"] = sum(out.values())
    return out


def _expansion_activations(d: Dims, B: int, L: int, Ta: int, a: int) -> tuple[float, float]:
    """(around the blocks, one block): bytes autograd keeps for the ExpansionBlocks, `a` bytes per value.
    A block keeps 17 W-wide values per position (3 RMSNorms x input, normalized, output; q, k, v, output
    and o_proj's input of self-attention; q, output and o_proj's input of cross-attention), 4 of the
    SwiGLU width, 3 W-wide per adapter frame (cross k, v, and the memory) and the masks (L + Ta per position)."""
    W = d.width
    block = B * L * a * (17 * W + 4 * d.x_ffn) + B * Ta * a * 3 * W + B * L * (L + Ta) * a
    return B * L * (a * (d.hidden + 3 * W) + 8) + B * Ta * a * d.hidden, block


def step_memory(d: Dims, samples: list[Sample], checkpointing: bool, llm_bytes: int = 2, act_bytes: int = 4,
                snac_params: int = 0) -> dict[str, float]:
    """Analytic peak memory (bytes) of a training step, every term held at once (an upper estimate).

    llm_bytes: the frozen backbones' dtype size (bf16: 2); act_bytes: the trainable modules' saved
    activations (4 on CPU; about 2 under CUDA autocast). Activations are what autograd saves (checked
    against saved-tensor hooks in tests/test_full_size.py). A frozen Linear saves nothing (no weight
    gradient), so an LLM layer keeps two fp32 RMSNorm inputs, q, k and v (repeated to every head: HF
    does so when there is padding) and the attention output, SiLU's input and output and up_proj's
    output; checkpointed, it keeps its input only (`llm_activations`: what the forward saves) and the
    backward recomputes one layer at a time; one more layer stands for the backward's working set
    (`backward_working_set`). The SDPA kernel keeps no L x L scores (the math fallback
    would add B x heads x L^2 per layer). Logits: only at the N targets, float32: the logits and the
    log-softmax kept (8 bytes per value) and the backward's gradients (~10 more)."""
    p, H, s, a = param_counts(d), d.hidden, llm_bytes, act_bytes
    B, L, Ta, N = len(samples), max(x.L for x in samples), max(x.Ta for x in samples), sum(x.N for x in samples)
    layer = B * L * (8 * H + 4 * s * d.heads * d.head_dim + 3 * s * d.intermediate)
    kept = d.layers * B * L * H * s if checkpointing else d.layers * layer
    around, block = _expansion_activations(d, B, L, Ta, a)
    out = {"frozen_weights": (p["llm"] + p["whisper_encoder"]) * s + 4 * snac_params,  # SNAC stays float32
           "trainable_state": 16 * (p["adapter"] + p["expansion"]),  # fp32 weights, grads, AdamW m and v
           "llm_activations": kept + 4 * B * L * H + B * L * L * s,  # + final norm, attention mask
           "backward_working_set": layer * (2 if checkpointing else 1),  # + the recomputed layer
           "expansion_activations": around + d.blocks * block,
           "adapter_activations": B * Ta * a * (STACK * d.w_dim + 2 * d.adapter_hidden + H),
           "logits": 18 * N * d.vocab}
    out["total"] = sum(out.values())
    return out


def expansion_checkpointing(d: Dims, samples: list[Sample], act_bytes: int = 4) -> dict[str, float]:
    """What checkpointing each ExpansionBlock would change: bytes saved (the blocks would keep their W-wide
    inputs plus one block recomputed) and FLOPs added (one more forward of the blocks)."""
    B, L, Ta = len(samples), max(x.L for x in samples), max(x.Ta for x in samples)
    _, block = _expansion_activations(d, B, L, Ta, act_bytes)
    kept = d.blocks * B * L * d.width * act_bytes + block  # every block's input, and one block recomputed
    return {"activations": d.blocks * block, "saved_bytes": d.blocks * block - kept,
            "extra_flops": sum(_block_forward_flops(d, s) for s in samples)}


def utterance(seconds: float, prompt: int = PROMPT_POSITIONS) -> Sample:
    """The shape of one utterance of `seconds` s re-spoken by adapter_stage1 (every SNAC frame a target)."""
    ta = math.ceil(math.ceil(seconds * 50) / STACK)
    n = 7 * math.ceil(seconds * 24000 / 2048)
    return Sample(prompt + ta + n, ta, n + 1)


def card_projection(d: Dims, checkpointing: bool = True, whisper_cached: bool = False) -> dict[str, float]:
    """The card's training (3 epochs over ~500 h in 200K utterances of the mean length, ~9 s) by formula:
    LLM positions = epochs x (hours x 3600 x (82.03 SNAC tokens + 10 adapter frames per second)
    + utterances x 6 prompt positions); targets = epochs x (hours x 3600 x 82.03 + utterances);
    FLOPs = epochs x utterances x step_flops(one mean utterance)."""
    seconds = CARD["hours"] * 3600 / CARD["utterances"]
    per_utterance = step_flops(d, [utterance(seconds)], checkpointing, 0 if whisper_cached else 1)["total"]
    audio, utterances = CARD["epochs"] * CARD["hours"] * 3600, CARD["epochs"] * CARD["utterances"]  # seconds, count
    return {"seconds_per_utterance": seconds, "flops_per_utterance": per_utterance,
            "llm_positions": audio * (SNAC_TOKENS_PER_SECOND + ADAPTER_HZ) + utterances * PROMPT_POSITIONS,
            "targets": audio * SNAC_TOKENS_PER_SECOND + utterances, "flops": utterances * per_utterance}


def peak_bf16(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a known GPU, by name; None when unknown (a CPU included)."""
    return next((peak for key, peak in PEAK_BF16 if key.lower() in device_name.lower()), None)
