"""Session fixtures for the model/trainer tests: the tiny backbones, the frozen core, prepared items.

The tiny backbones are the tiny preset's, built once into .cache/s2s/tiny (through the same
`FrozenCore(BackboneConfig(build_tiny=True))` path the preset uses, shared with `make demo`), and
every test shares the loaded core. Prepared items (SNAC target ids + Whisper states of the `synth_dataset`
fixture) are cached in a session cache directory, which the end-to-end MLflow run reuses.

`tiny_model(name)` / `build_tiny_model` build ANY registered strategy over the tiny backbones from
its name alone (its upstream stage first, when it `requires` one): the tests that hold for every
strategy are parametrized over `list(STRATEGIES)` and use them, so a new strategy is covered
without editing them.
"""
from __future__ import annotations

import dataclasses

import pytest

from s2s.tokens import FRAME


def short_run(synth_dataset, backbones, cache_dir, tracking_root, out_dir, **extra) -> list[str]:
    """key=value overrides for a short tiny run on the test data and backbones, with its store and
    checkpoints under the given folders; `extra` ({"train.max_steps": 4, ...}) adds or replaces keys."""
    values = {
        "tracking.root": tracking_root, "data.sources": f"[{synth_dataset}]", "data.eval_size": 4,
        "synth_if_missing": 0, "backbones.whisper": backbones.whisper, "backbones.orpheus": backbones.orpheus,
        "backbones.snac": backbones.snac, "backbones.device": "cpu", "cache.dir": cache_dir,
        "train.max_steps": 3, "train.eval_every": 1, "train.batch_size": 2, "train.out_dir": out_dir, "listen": 0, **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def tiny_backbone_dir():
    """The tiny preset's own cached build (.cache/s2s/tiny): the miniature takes minutes to build
    (s2s/tiny.py), so the suite and `make demo` share one build; tests only read it."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / ".cache" / "s2s" / "tiny"


@pytest.fixture(scope="session")
def tiny_backbone_cfg(tiny_backbone_dir):
    """BackboneConfig of the tiny preset's backbones (built on first load), CPU fp32."""
    from s2s.backbones import BackboneConfig

    return BackboneConfig(whisper=str(tiny_backbone_dir / "whisper"), orpheus=str(tiny_backbone_dir / "orpheus"),
                          snac=str(tiny_backbone_dir / "snac"), build_tiny=True, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_core(tiny_backbone_cfg):
    """The frozen tiny core (Whisper encoder, Llama, SNAC), loaded once per session."""
    from s2s.backbones import FrozenCore

    return FrozenCore(tiny_backbone_cfg)


@pytest.fixture(scope="session")
def tiny_strategy_cfg():
    """The adapter_stage1 config of the tiny preset (tiny.yaml's `strategies.adapter_stage1`)."""
    from s2s.experiment_config import build_config

    return build_config("adapter_stage1", "tiny").strategy


@pytest.fixture(scope="session")
def prepared_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prepared_cache")


@pytest.fixture(scope="session")
def synth_examples(synth_dataset):
    """(train, eval) `Example` lists of the synth dataset: 8 train + 4 held-out eval utterances."""
    from s2s.data.loader import DataConfig, load_examples

    cfg = DataConfig(sources=[str(synth_dataset)], eval_size=4)
    return load_examples(cfg, "train", progress=False), load_examples(cfg, "eval", progress=False)


@pytest.fixture(scope="session")
def prepared_items(synth_examples, tiny_core, prepared_cache_dir):
    """All 12 synth utterances prepared by the tiny core (train first, then eval)."""
    from s2s.prepare import CacheConfig, prepare

    train, evals = synth_examples
    return prepare(train + evals, tiny_core, CacheConfig(dir=str(prepared_cache_dir)), progress=False)


@pytest.fixture(scope="session")
def make_batch(tiny_core):
    """items -> Batch, collated with the tiny core."""
    from s2s.prepare import make_batch as _make_batch

    return lambda items: _make_batch(list(items), tiny_core)


# --- any registered strategy over the tiny core ----------------------------------------------

def backbone_overrides(backbones) -> list[str]:
    """`key=value` overrides that point a config at the backbones of `backbones` (a BackboneConfig)."""
    return [f"backbones.{k}={getattr(backbones, k)}" for k in ("whisper", "orpheus", "snac", "build_tiny", "device",
                                                                "dtype")]


def checkpoint_meta(cfg, model) -> dict:
    """meta.json of a checkpoint of `model` as `s2s.experiment.train` writes it, less the run's bookkeeping:
    what `load_trained` and an upstream-consuming strategy read (strategy, resolved config, its own extras)."""
    from s2s.experiment_config import as_dict

    return {"strategy": cfg.strategy_name, "config": as_dict(cfg), **model.checkpoint_meta()}


def perturb_zero_parameters(model, seed: int = 0, std: float = 0.05) -> list[str]:
    """Give every trainable parameter that starts at zero (output projections, gate scales, LoRA B) small
    random values, so that every trainable path changes the output; returns their names."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
                names.append(n)
    return names


def build_tiny_model(name: str, backbones, workdir, seed: int = 0, perturb: bool = True):
    """(config, model in eval mode) of the registered strategy `name` on the tiny preset, generically.

    The config is `build_config(name, "tiny")` pointed at `backbones`. A strategy that `requires` another
    gets that upstream strategy built the same way (recursively), saved as a checkpoint under `workdir`
    and its directory set as the requiring key. Each model gets a FrozenCore of its own (0.3 s on the tiny
    backbones), so a strategy that adapts the LLM (LoRA) cannot leak into another.
    With `perturb`, zero-initialised trainable parameters get small random values
    (`perturb_zero_parameters`); `perturb=False` gives the model as a run starts it. An upstream stage is
    always perturbed: it stands in for a trained run (a stage-1 expansion that is still the identity
    would give a stage-2 gate nothing to blend).
    """
    from pathlib import Path

    import torch

    from s2s.backbones import FrozenCore
    from s2s.checkpoint import save_checkpoint
    from s2s.config import set_value
    from s2s.experiment import build_strategy
    from s2s.experiment_config import build_config, strategy_class

    cfg = build_config(name, "tiny", backbone_overrides(backbones))
    up = strategy_class(name).requires
    if up is not None:
        up_cfg, up_model = build_tiny_model(up.strategy, backbones, workdir, seed)
        ckpt = save_checkpoint(Path(workdir) / f"{up.strategy}-for-{name}-seed{seed}", up_model.trainable_state_dict(),
                               checkpoint_meta(up_cfg, up_model))
        set_value(cfg, up.key, str(ckpt))
    torch.manual_seed(seed)
    model = build_strategy(cfg, FrozenCore(cfg.backbones))
    if perturb:
        perturb_zero_parameters(model, seed)
    return cfg, model.eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_core, tiny_backbone_cfg, tmp_path_factory):
    """name -> (config, model): any registered strategy over the tiny backbones (`build_tiny_model`),
    built once per name and session. Shared: use it in eval mode and do not train it; build your own
    with `build_tiny_model` to change weights. Depends on tiny_core so that the backbones exist."""
    built: dict = {}
    workdir = tmp_path_factory.mktemp("strategies")

    def get(name: str):
        if name not in built:
            built[name] = build_tiny_model(name, tiny_backbone_cfg, workdir)
        return built[name]
    return get


def clip(items, first_frame: int, n_frames: int):
    """Copies of prepared items whose targets are only SNAC frames [first_frame, first_frame + n_frames):
    real audio, real (shorter) targets, so a training step costs little."""
    return [dataclasses.replace(it, speech_tokens=it.speech_tokens[FRAME * first_frame:FRAME * (first_frame + n_frames)])
            for it in items]


@pytest.fixture(scope="session")
def short_items(prepared_items):
    """The 8 train utterances with 3-frame targets from their middle (frames 5..7)."""
    return clip(prepared_items[:8], 5, 3)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (use: pytestmark = pytest.mark.usefixtures("one_torch_thread")): on a
    shared 2-core machine two intra-op threads make small models (an LSTM, a tiny SNAC) erratically 5-40x
    slower, and their figures do not depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_tiny(tmp_path_factory, synth_dataset, backbones, cache_dir, name: str, **extra) -> dict:
    """A short adapter_stage1 run on the tiny preset (2 steps unless `extra` says otherwise) with its own
    MLflow store and output folder under tmp; returns `s2s.experiment.train`'s result."""
    from s2s.experiment import train
    from s2s.experiment_config import build_config

    root = tmp_path_factory.mktemp(f"{name}_mlflow")
    out = tmp_path_factory.mktemp(f"{name}_run") / "out"
    values = {"train.max_steps": 2, "train.eval_every": 2, "train.progress": "false", **extra}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = build_config("adapter_stage1", "tiny", short_run(synth_dataset, backbones, cache_dir, root, out, **values))
        return train(cfg, progress=False)
