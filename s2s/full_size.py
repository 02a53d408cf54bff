"""One training step at the REAL dimensions, on random weights: time, memory and FLOPs.

    root, built_s = ensure_backbones(".cache/bench/full_size")   # s2s/full_size_build.py, built once
    result = run_isolated("measure", backbones=root, data=..., ...)  # a fresh process per configuration

The backbones (random weights, real sizes and formats) and the synthesized data come from
s2s/full_size_build.py. `measure` trains adapter_stage1 on them through the normal full-preset path
(`build_config(..., "full", overrides)` and `s2s.experiment.train`), times each optimizer step from
the trainer's own metric log and reads the peak memory after loading (CUDA max allocated, or VmHWM).
`run_isolated` runs it, or the build, in a fresh process, so each configuration's peak is its own.
The analytic memory and FLOPs model the measurements are printed beside is s2s/costs.py.
`--reduced` sizes (small widths, the same code path and the same token layout) are for tests.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from s2s.adapter import STACK
from s2s.costs import Dims, Sample
from s2s.experiment_config import ExperimentConfig
from s2s.full_size_build import ensure_backbones


# --- the measurement --------------------------------------------------------------------------
def reduced_strategy_overrides() -> list[str]:
    """strategy.*=... for reduced runs: the card model's (adapter_stage1's) own tiny-preset dimensions."""
    from s2s.experiment_config import strategy_class
    return [f"strategy.{k}={v}"
            for k, v in strategy_class(ExperimentConfig.strategy_name).Config.PRESET_VALUES["tiny"].items()]


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
    """`field` of /proc/self/status in KiB (0 if absent); OSError where there is no procfs."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux: clear_refs 5 resets VmHWM), so the next peak is that of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # VmHWM, not ru_maxrss: exec() carries the parent's peak into ru_maxrss and clear_refs 5 resets only VmHWM.
    try:
        return _proc_kb("VmHWM") * 1024
    except OSError:  # no procfs: ru_maxrss (KiB on Linux), which may include the parent's peak
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    forward). The first step (warm-up) is not timed. Peak memory: CUDA max allocated, or peak RSS (VmHWM),
    from the end of loading the core (the load phase's own peak is returned beside it).
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
