"""Shared helpers: the benchmark dataset, the tiny-preset config and the report header."""
from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from s2s.data.loader import load_examples
from s2s.data.synth import synthesize_dataset
from s2s.experiment_config import build_config

BENCH_CACHE = Path(".cache/bench")
# Enough utterances for 64 training items plus a small held-out eval split.
SYNTH_N = 72
EVAL_SIZE = 8


def ensure_dataset(n: int = SYNTH_N, seed: int = 0) -> Path:
    """A synthesized es/it dataset under .cache/bench (built once with espeak-ng)."""
    path = BENCH_CACHE / f"synth-n{n}-seed{seed}"
    if not (path / "dataset_info.json").exists():
        print(f"building the benchmark dataset {path} ({n} utterances, once) ...", flush=True)
        synthesize_dataset(path, langs=["es", "it"], n=n, seed=seed, progress=False)
    return path


def tiny_config(max_train: int, extra: list[str] = ()):
    """The tiny preset's adapter_stage1 config, pointed at the benchmark dataset.

    The tiny backbones are the preset's own build, .cache/s2s/tiny (s2s/tiny.py builds it once,
    under a lock, so a benchmark and a run started together do not both build it).
    """
    data = ensure_dataset()
    tiny = Path(".cache/s2s/tiny")
    overrides = [f"data.sources=[{data}]", f"data.eval_size={EVAL_SIZE}", f"data.max_samples={max_train}",
                 "train.progress=false", "backbones.build_tiny=true",
                 *(f"backbones.{k}={tiny / k}" for k in ("whisper", "orpheus", "snac")), *extra]
    return build_config("adapter_stage1", "tiny", overrides)


def load_train_examples(cfg) -> list:
    return load_examples(cfg.data, "train", progress=False)


def add_threads_arg(parser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1; 0 = torch's default, one per core). One thread "
                             "keeps the measurement steady when other processes share the cores")


def apply_threads(args) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def header(title: str) -> None:
    """What ran, where: the exact command, the machine and the torch threading."""
    exe = Path(sys.executable)
    exe = exe.relative_to(Path.cwd()).as_posix() if exe.is_relative_to(Path.cwd()) else str(exe)
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    target = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    cmd = " ".join([exe, *target, *map(shlex.quote, sys.argv[1:])])
    print(f"== {title}")
    print(f"command : {cmd}")
    print(f"machine : {platform.node()} | {platform.machine()} | {os.cpu_count()} logical cores "
          f"(usable {len(os.sched_getaffinity(0))}) | {platform.processor() or _cpu_model()}")
    print(f"python  : {platform.python_version()} | torch {torch.__version__} | intra-op threads "
          f"{torch.get_num_threads()} | inter-op threads {torch.get_num_interop_threads()} | "
          f"cuda {'yes' if torch.cuda.is_available() else 'no'}")
    print(f"load    : {loadavg()} at start (other processes share these cores: compare ratios, not times)")


def loadavg() -> str:
    """The 1/5/15-minute load averages: how busy the machine was around a measurement."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


# --- peak memory of a whole run, in its own process ------------------------------------------

# The run's own peak is VmHWM (/proc/self/status), not ru_maxrss: on Linux exec() carries the high-water
# RSS of the memory it replaces into the process's ru_maxrss, and a subprocess starts as (a vfork or fork
# of) its parent, so ru_maxrss never reads below the PARENT's peak. Under pytest that parent has loaded
# the tiny core and built the noise dataset, and it peaked 2.4 GB after building 256 utterances: the
# 8N run "peaked" there while its own peak was 1.5 GB (tests/test_constant_memory.py). VmHWM is the
# high-water mark of the run's own address space since exec (resident anonymous and file-backed pages
# alike, as ru_maxrss counts them).
_PEAK_CHILD = """
import resource, sys
from experiments.run import main
code = main(sys.argv[1:])
try:
    kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):  # no procfs: ru_maxrss, which may include the parent's peak (see above)
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("PEAK_RSS_KB", kb)
sys.exit(code)
"""


def noise_dataset(path: Path, n: int, seconds: float, seed: int = 0) -> str:
    """n utterances of `seconds` s of quiet noise with a text each, saved with save_to_disk: for
    measurements where the size of the data matters and its content does not."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    audio = [{"array": (0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), "sampling_rate": 16000}
             for _ in range(n)]
    ds = datasets.Dataset.from_dict({"audio": audio, "text": [f"frase número {i}" for i in range(n)]})
    ds.cast_column("audio", datasets.Audio()).save_to_disk(str(path))
    return str(path)


def peak_rss_of_run(strategy: str, overrides: list[str], timeout: float = 1800) -> float:
    """Peak RSS in MB of `python -m experiments.run STRATEGY OVERRIDES --no-progress`, run in a child
    process (a peak is per process, so each measured run needs its own): the child's VmHWM, which the
    caller's own memory does not raise (see _PEAK_CHILD). DataLoader workers are not counted."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _PEAK_CHILD, strategy, *overrides, "--no-progress"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the measured run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    kb = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    return int(kb[0]) / 1024
