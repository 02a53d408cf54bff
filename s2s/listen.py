"""Listening samples: a few eval utterances spoken by a trained model, saved as wavs next to the
target they were trained towards, so that runs can be heard side by side in the MLflow UI
(artifacts `listen/` of each run; s2s/experiment.py logs them after training).

The target is the utterance's SNAC codes decoded (what the model is taught to produce, codec
included), not the raw recording, which the prepared data no longer holds. Generation is greedy and
SNAC's decoder noise seeded (s2s/streaming.py), so the wavs of a run are reproducible.
"""
from __future__ import annotations

from pathlib import Path

import soundfile as sf

from s2s.generate import GenerationConfig, generate
from s2s.streaming import decode_offline

FRAME = 7  # speech ids per SNAC frame


def write_listening_samples(model, items: list, collate, out_dir: Path, n: int) -> list[Path]:
    """Generate speech greedily for the first `n` of `items` (PreparedExamples) and write
    `NN-<key>-generated.wav` and `NN-<key>-target.wav` (24 kHz, 16-bit) under `out_dir`; returns the files.

    An untrained model may never say end_of_speech: generation stops at twice the longest target plus
    4 frames, so the samples cost about as much as the targets' length, whatever the model does."""
    chosen = items[:n]
    if not chosen:
        return []
    longest = max(len(it.speech_tokens) for it in chosen)
    cfg = GenerationConfig(temperature=0.0, max_new_tokens=2 * longest + 4 * FRAME, batch_size=len(chosen))
    result = generate(model, collate(chosen), cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    rate = model.core.snac.sampling_rate
    for i, (it, tokens) in enumerate(zip(chosen, result.tokens)):
        for kind, ids in (("generated", tokens), ("target", it.speech_tokens)):
            wave, _ = decode_offline(model.core, ids, cfg.seed)  # seeded SNAC noise: reproducible wavs
            path = out_dir / f"{i:02d}-{it.key}-{kind}.wav"
            sf.write(path, wave.clamp(-1, 1).numpy(), rate, subtype="PCM_16")
            files.append(path)
    return files
