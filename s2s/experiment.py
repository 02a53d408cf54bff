"""One experiment end to end: data -> frozen core -> strategy -> trainer -> MLflow.

    cfg = build_config("adapter_stage1", "tiny", ["train.max_steps=50"])   # s2s/experiment_config.py
    result = train(cfg)                          # trains, checkpoints, logs; returns the figures
    cfg, core, model, meta = load_trained(result["checkpoint"])

The command lines (experiments/run.py, compare.py, search.py), evaluation/ and bench/ call these.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from s2s.backbones import BackboneConfig, FrozenCore
from s2s.brackets import score_brackets
from s2s.card_layout import load_state
from s2s.checkpoint import (STATE_FILE, CheckpointError, is_weights_file, load_checkpoint, load_state_file,
                            set_aside_after)
from s2s.config import ConfigError, apply_overrides_many, flatten, validate
from s2s.data.loader import SkipCounter, load_examples
from s2s.data.synth import synthesize_dataset
from s2s.distributed import SilentRun, barrier, broadcast, init_from_env
from s2s.experiment_config import (PRESETS, ExperimentConfig, as_dict, build_config, config_from_dict, config_hash,
                                   strategy_class)
from s2s.listen import write_listening_samples
from s2s.prepare import make_batch
from s2s.shards import prepare_split
from s2s.resume import RunLock, check_resumable, locate
from s2s.stop import StopSignals
from s2s.strategies import STRATEGIES, Strategy
from s2s.tiny import ensure_tiny_backbones, miniature_report
from s2s.tracking import Run, tracking_uri
from s2s.trainer import Trainer


def ensure_synth_data(cfg: ExperimentConfig) -> None:
    """Synthesize `synth_dir` when it is a data source, missing, and `synth_if_missing` asks for it.

    With tiny backbones, their TTS corpus' texts are excluded: the frozen TTS model never heard
    these recordings (s2s/tiny.py)."""
    synth = Path(cfg.synth_dir)
    if cfg.synth_if_missing and cfg.synth_dir in cfg.data.sources and not synth.exists():
        exclude: set[str] = set()
        if cfg.backbones.build_tiny:
            ensure_tiny_backbones(cfg.backbones.whisper, cfg.backbones.orpheus, cfg.backbones.snac)
            report = miniature_report(cfg.backbones.orpheus)
            if report is not None:
                exclude = set(report["corpus"]["train_texts"]) | set(report["corpus"]["held_out_texts"])
        print(f"{synth} is missing: synthesizing {cfg.synth_if_missing} es/it utterances ({cfg.synth_style} "
              "style) with espeak-ng (once)")
        synthesize_dataset(synth, langs=["es", "it"], n=cfg.synth_if_missing, seed=0, style=cfg.synth_style,
                           exclude=exclude)


def ensure_shared_files(cfg: ExperimentConfig) -> None:
    """Make the synthetic data and tiny backbones now, before parallel workers would race to."""
    if cfg.backbones.build_tiny:
        ensure_tiny_backbones(cfg.backbones.whisper, cfg.backbones.orpheus, cfg.backbones.snac)
    ensure_synth_data(cfg)


def load_data(cfg: ExperimentConfig, progress: bool = True):
    """(train examples, eval examples, counts of skipped samples), all in memory: for small data."""
    ensure_synth_data(cfg)
    skips = SkipCounter()
    train_ex = load_examples(cfg.data, "train", skips, progress=progress)
    eval_ex = load_examples(cfg.data, "eval", skips, progress=progress)
    return train_ex, eval_ex, skips


_PREPARED: dict[str, tuple] = {}  # data + cache config and core -> the process's prepared data


def prepared_data(cfg: ExperimentConfig, core: FrozenCore, progress: bool = True):
    """(train PreparedSplit, eval items (a list), skip counts): what is missing of the prepared shards
    is prepared first (s2s/shards.py), then training reads them memory-mapped.

    Once per process for a given data/cache config and core: the runs of a comparison and the trials
    of a search share it."""
    key = json.dumps([dataclasses.asdict(cfg.data), dataclasses.asdict(cfg.cache),
                      dataclasses.asdict(core.cfg)], sort_keys=True,
                     default=str)
    if key not in _PREPARED:
        ensure_synth_data(cfg)
        skips = SkipCounter()
        train_items = prepare_split(cfg.data, cfg.cache, core, "train", skips, progress)
        eval_items = list(prepare_split(cfg.data, cfg.cache, core, "eval", skips, progress))
        _PREPARED.clear()  # one dataset at a time, as for cores
        _PREPARED[key] = (train_items, eval_items, skips)
    train_items, eval_items, skips = _PREPARED[key]
    return train_items, eval_items, copy.deepcopy(skips)


_BRACKETS: dict[str, dict] = {}  # eval data and backbones -> the frozen LM's brackets (s2s/brackets.py)


def brackets_of(cfg: ExperimentConfig, core: FrozenCore, eval_items: list) -> dict[str, float]:
    """`score_brackets` of the frozen core on the eval items, once per process for given eval data and
    backbones: they do not depend on the strategy, so the runs of a comparison and the trials of a
    search share them (two eval passes of the frozen LM each, at full scale minutes on a GPU)."""
    key = json.dumps([dataclasses.asdict(cfg.data), dataclasses.asdict(cfg.cache), dataclasses.asdict(core.cfg),
                      cfg.train.eval_batch_size], sort_keys=True, default=str)
    if key not in _BRACKETS:
        _BRACKETS.clear()
        _BRACKETS[key] = score_brackets(core, eval_items, cfg.train.eval_batch_size)
    return dict(_BRACKETS[key])


def prepare_dataset(cfg: ExperimentConfig, progress: bool = True) -> dict:
    """Prepare the train and eval splits of `cfg` ahead of training (what is missing of them) ->
    a summary: samples, hours of audio, skip counts, the shard directories and their size on disk."""
    started = time.time()
    core = shared_core(cfg.backbones)
    train_items, eval_items, skips = prepared_data(cfg, core, progress)
    dirs = sorted({str(Path(p).parent) for p, _ in train_items.shards})
    disk = sum(f.stat().st_size for d in dirs for f in Path(d).glob("shard-*"))
    return {"train_samples": len(train_items), "train_hours": train_items.hours(), "eval_samples": len(eval_items),
            "skipped": skips.as_dict(), "shard_dirs": dirs, "disk_bytes": disk, "seconds": time.time() - started}


def build_strategy(cfg: ExperimentConfig, core: FrozenCore) -> Strategy:
    """A freshly initialised strategy of `cfg` over `core` (seed the RNG first for reproducible weights)."""
    return strategy_class(cfg.strategy_name)(cfg.strategy, core)


def load_trained(checkpoint: str, overrides: list[str] = (), others: list = ()):
    """Rebuild (config, core, strategy, checkpoint meta) from a checkpoint; `overrides` as on the
    command line.

    `checkpoint`: an s2s checkpoint directory (or its model.safetensors / meta.json), whose meta.json
    gives the strategy and resolved config; or a plain weights file (a `.pt` such as the card's
    `{"adapter": state_dict, "expansion": state_dict}`), which carries no meta: the overrides
    `strategy_name=NAME` (required; `--strategy` on the command lines) and `preset=P` (default tiny)
    say what to build, see `_load_weights_file`. For a directory they may only repeat its meta.
    `others`: further configs (dataclasses) that take the overrides whose first section they own.
    """
    # strategy_name= and preset= choose the config a weights file is read with; they are taken out
    # before the rest apply (the preset decides the defaults, it is not a label to set afterwards).
    chosen = {k.strip(): v.strip() for k, _, v in (o.partition("=") for o in overrides if "=" in o)
              if k.strip() in ("strategy_name", "preset")}
    overrides = [o for o in overrides if "=" not in o or o.partition("=")[0].strip() not in chosen]
    if is_weights_file(checkpoint):
        return _load_weights_file(checkpoint, chosen, overrides, others)
    weights, meta = load_checkpoint(checkpoint)
    if not isinstance(meta.get("config"), dict) or "strategy_name" not in meta["config"]:
        raise CheckpointError(f"{checkpoint}: meta.json has no 'config' with a 'strategy_name'; not a checkpoint "
                              f"written by s2s (or written by an incompatible version)")
    for key, value in chosen.items():
        if value != str(meta["config"].get(key)):
            raise CheckpointError(f"{checkpoint} is a checkpoint of {key} '{meta['config'].get(key)}' (its meta.json "
                                  f"says so), not '{value}'; --strategy/--preset are for plain weights files (.pt) "
                                  f"only: drop them")
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{checkpoint}: the config in meta.json cannot be rebuilt ({e})") from None
    apply_overrides_many([cfg, *others], list(overrides))
    validate(cfg)
    core = shared_core(cfg.backbones)
    model = strategy_class(cfg.strategy_name).from_checkpoint(cfg.strategy, core, meta)
    try:
        model.load_trainable_state_dict(weights)
    except CheckpointError as e:
        raise CheckpointError(f"{checkpoint}: {e}") from None
    return cfg, core, model, meta


_CORES: dict[str, FrozenCore] = {}  # backbone config -> the process's frozen core


def shared_core(cfg: BackboneConfig) -> FrozenCore:
    """The frozen core for backbone config `cfg`, loaded once per process: the runs of a comparison,
    the trials of a search and the checkpoints they score share it (a 3B LLM takes a minute to load).

    A strategy that changes the core (LoRA layers injected into the LLM mark it `adapted_by`) leaves a
    core nobody else may use: the next caller gets a freshly loaded one, so a run after a LoRA run
    computes exactly what it would in a fresh process."""
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    core = _CORES.get(key)
    if core is None or getattr(core, "adapted_by", None):
        _CORES.clear()  # one core at a time: an old one is freed as soon as its last model is
        core = _CORES[key] = FrozenCore(cfg)
    return core


def _load_weights_file(path: str, chosen: dict, overrides: list[str], others: list):
    """`load_trained` of a plain weights file: (config, core, strategy, synthetic meta).

    The config is `build_config(chosen["strategy_name"], chosen.get("preset", "tiny"))` with the
    overrides applied (each to the config of `[cfg, *others]` that owns its key); the file's tensors
    are mapped onto the strategy's modules by top-level name (s2s/card_layout.py) and must all fit.
    The meta has no step and no MLflow run: {"strategy", "config", "step": None, "weights_file"}; the
    strategy is rebuilt from it with `from_checkpoint`, as from a directory's meta.json (a strategy
    with an upstream stage takes that stage's architecture from the preset, its weights from the file).
    """
    weights = load_state_file(path)  # first: a refused pickle is reported whatever else is wrong
    name = chosen.get("strategy_name")
    if not name:
        raise CheckpointError(f"{path} is a plain weights file with no meta.json, so its strategy and dimensions are "
                              f"not known: pass --strategy NAME (strategy_name=NAME), one of "
                              f"{', '.join(STRATEGIES)}; the dimensions come from --preset (default tiny; "
                              f"{', '.join(PRESETS)}) and key=value overrides")
    cfg = build_config(name, chosen.get("preset") or "tiny")
    apply_overrides_many([cfg, *others], list(overrides))
    validate(cfg)
    core = shared_core(cfg.backbones)
    meta = {"strategy": name, "config": as_dict(cfg), "step": None, "weights_file": str(Path(path).resolve())}
    model = strategy_class(name).from_checkpoint(cfg.strategy, core, meta)
    load_state(model, weights, str(path))
    return cfg, core, model, meta


def resume_point(cfg: ExperimentConfig):
    """The checked checkpoint `cfg.resume` names (s2s/resume.py); ResumeError/CheckpointError otherwise."""
    point = locate(cfg.resume, tracking_uri(cfg.tracking))
    check_resumable(point, as_dict(cfg))
    return point


def _open_run(cfg: ExperimentConfig, point, parent_run_id: str | None) -> Run:
    """A new MLflow run, or the resumed checkpoint's own run (in the store it was logged to)."""
    if point is not None:  # the store it was logged to, unless tracking.uri says where that store is now
        tracking = dataclasses.replace(cfg.tracking, uri=cfg.tracking.uri or point.meta.get("tracking_uri"))
        return Run(tracking, run_id=point.meta["mlflow_run_id"])
    # The commit is Run's standard mlflow.source.git.commit tag.
    tags = {"s2s.strategy": cfg.strategy_name, "s2s.preset": cfg.preset,
            "s2s.config_hash": config_hash(cfg),
            **{f"s2s.backbone.{k}": getattr(cfg.backbones, k) for k in ("whisper", "orpheus", "snac")}}
    # A readable name (the user's tracking.run_name wins): strategy, preset, seed.
    return Run(cfg.tracking, tags, parent_run_id=parent_run_id,
               run_name=f"{cfg.strategy_name} {cfg.preset} seed{cfg.train.seed}")


def log_data_inputs(run: Run, cfg: ExperimentConfig, n_train: int, n_eval: int) -> None:
    """Record what the run trained and was evaluated on as MLflow run inputs (the UI's dataset
    column): one per data source and split, with the split's size over all sources."""
    held_out = cfg.data.eval_split is None  # the eval set is held out of the train split
    eval_split = f"{cfg.data.train_split} (held out: {cfg.data.eval_size})" if held_out else cfg.data.eval_split
    for source in cfg.data.sources:
        run.log_dataset(Path(source).name or source, source, cfg.data.train_split, n_train, context="training")
        run.log_dataset(Path(source).name or source, source, eval_split, n_eval, context="evaluation")


def _run_dir(cfg: ExperimentConfig, run_id: str, parent_run_id: str | None) -> str:
    """Where a new run writes its checkpoints: one folder per run unless the user chose one."""
    if cfg.train.out_dir == "outputs":
        return str(Path("outputs") / cfg.strategy_name / run_id)
    if parent_run_id:  # one of several runs (a comparison, a search) sharing the chosen folder: one each
        return str(Path(cfg.train.out_dir) / cfg.strategy_name / run_id)
    return cfg.train.out_dir


def train(cfg: ExperimentConfig, parent_run_id: str | None = None, progress: bool = True,
          on_eval=None, on_run=None) -> dict:
    """Run one experiment end to end; returns the trainer's result plus the run id.

    `on_eval(step, eval_metrics)`, if given, is called after every evaluation (the trainer's hook);
    an exception it raises stops training and ends the run (optuna.TrialPruned: KILLED, tagged pruned).
    `on_run(run)`, if given, is called with a new run's `s2s.tracking.Run` as soon as it exists (a
    search tags its trial's run there).
    With `cfg.resume` the checkpoint's run continues: the same MLflow run (RUNNING again) and
    out_dir, its trainable weights, optimizer, scheduler, RNG and data position, so the result is
    bit for bit that of the uninterrupted run. SIGINT/SIGTERM during training save a checkpoint and
    raise s2s.stop.Interrupted (the run ends KILLED); earlier they raise it at once.
    The run folder is decided before anything is logged, so meta.json and the MLflow params name
    the folder really used (cfg.train.out_dir is set to it).
    """
    cfg.train.progress = cfg.train.progress and progress
    with contextlib.ExitStack() as stack:
        stack.enter_context(StopSignals(defer=False))  # the trainer defers them while it can save
        rank, world = init_from_env(cfg.backbones.device)
        cfg.train.progress = cfg.train.progress and rank == 0
        point = resume_point(cfg) if cfg.resume else None  # checked before anything is opened or trained
        if rank == 0:  # the run's bookkeeping: one process does it
            if point is not None:  # before the run is touched: a run still training elsewhere is left alone
                stack.enter_context(RunLock(point.out_dir))
            run = stack.enter_context(_open_run(cfg, point, parent_run_id))
        if point is not None:
            resolved = point.meta["config"]
            cfg.train.out_dir = str(point.out_dir)
        elif rank == 0:
            cfg.train.out_dir = _run_dir(cfg, run.run_id, parent_run_id)
            resolved = as_dict(cfg)
            run.log_params(flatten(resolved))
            run.log_dict(resolved, "config.yaml")
            run.set_tags({"s2s.out_dir": str(Path(cfg.train.out_dir).resolve())})  # where resume=<run id> looks
            if on_run is not None:
                on_run(run)
        shared = broadcast((run.run_id, run.uri, cfg.train.out_dir) if rank == 0 else None)
        if rank != 0:
            run, cfg.train.out_dir = SilentRun(shared[0], shared[1]), shared[2]
            resolved = point.meta["config"] if point is not None else as_dict(cfg)
        if world > 1:
            print(f"rank {rank}/{world}: global batch {cfg.train.batch_size} x {cfg.train.grad_accum} x {world} = "
                  f"{cfg.train.batch_size * cfg.train.grad_accum * world} samples per optimizer step")
            run.log_params({"world_size": world})
        core = shared_core(cfg.backbones)
        if rank != 0:
            barrier()  # rank 0 prepares the data first; the others then read its shards
        train_items, eval_items, skips = prepared_data(cfg, core, progress and rank == 0)
        if rank == 0:
            barrier()
        if point is None:
            run.log_metrics({**skips.as_dict(), "data/train_samples": len(train_items),
                             "data/eval_samples": len(eval_items), "data/train_hours": train_items.hours()}, 0)
            log_data_inputs(run, cfg, len(train_items), len(eval_items))
        bracket_metrics = {}
        if cfg.brackets and rank == 0:  # before build_strategy: a LoRA strategy changes the core's LLM
            bracket_metrics = brackets_of(cfg, core, eval_items)
            if point is None:
                run.log_metrics(bracket_metrics, 0)
        torch.manual_seed(cfg.train.seed)  # the seed decides the initial trainable weights too
        model = build_strategy(cfg, core)
        if point is not None:
            try:
                model.load_trainable_state_dict(point.weights)
            except CheckpointError as e:
                raise CheckpointError(f"resume: {point.path}: {e}") from None
        else:
            run.log_params({"n_trainable_params": model.n_trainable()})
            if rank == 0:
                stack.enter_context(RunLock(cfg.train.out_dir))  # creates the folder: only once data and model are there
        meta = lambda: {"strategy": cfg.strategy_name, "config": resolved, "backbones": core.ids(),  # noqa: E731
                        "layout": core.layout.to_dict(), "mlflow_run_id": run.run_id, "tracking_uri": run.uri,
                        **model.checkpoint_meta()}
        trainer = Trainer(cfg.train, model, train_items, eval_items, lambda items: make_batch(items, core),
                          log=run.log_metrics, meta=meta, on_eval=on_eval or (lambda step, metrics: None),
                          num_workers=cfg.data.num_workers)
        if point is not None:
            try:
                trainer.load_state_dict(point.state)
            except ValueError as e:  # the trainer's own check of a state that does not fit this run
                raise CheckpointError(f"resume: {point.path / STATE_FILE}: {e}") from None
            # Only now, with everything loaded, does the run change: RUNNING again, same id, same out_dir.
            for d in set_aside_after(point.out_dir, point.step) if rank == 0 else ():
                print(f"set aside {d}: a checkpoint past step {point.step} belongs to the abandoned continuation")
            run.reopen({"s2s.resumed_from": str(point.path.resolve()), "s2s.resumed_at_step": str(point.step)})
            print(f"resuming MLflow run {run.run_id} at step {point.step} from {point.path}")
        result = trainer.fit()
        if rank != 0:  # rank 0 saved, evaluated and logged
            return {**result, "rank": rank, "run_id": run.run_id, "tracking_uri": run.uri, "model": model}
        run.log_metrics({"time/wall_seconds": result["wall_seconds"]}, result["steps"])
        run.log_artifact(result["checkpoint"], "checkpoint")
        if cfg.listen:
            listen_dir = Path(cfg.train.out_dir) / "listen"
            write_listening_samples(model, eval_items, trainer.collate, listen_dir, cfg.listen)
            run.log_artifact(listen_dir, "listen")
        run.set_tags({"s2s.checkpoint": str(Path(result["checkpoint"]).resolve())})
        return {**result, "run_id": run.run_id, "tracking_uri": run.uri, "n_trainable": model.n_trainable(),
                "brackets": bracket_metrics,
                "model": model, "eval_items": eval_items, "collate": trainer.collate}
