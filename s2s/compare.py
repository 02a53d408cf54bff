"""Comparing strategies honestly: the same data split, step budget and seeds, the loss defined exactly,
and (optionally) the same ASR scoring of every final checkpoint. The library behind
`python -m experiments.compare`.

    p = plan(["adapter_stage1", "istlm_interleaved"], "tiny", seeds=2, overrides=["train.max_steps=50"])
    result = compare(p, Path("reports/x"), scorer=None)   # trains (or reuses), evaluates, writes the report
    print(result["report"])

- `plan` resolves one config per (strategy, seed), in dependency order: a strategy whose `requires`
  names another listed strategy trains after it, on the same seed's checkpoint.
- `run_one` trains a run or reuses a finished one with the identical config hash, and evaluates its
  checkpoint with shuffled audio (the listening ablation).
- Scoring generated speech lives in evaluation/, which s2s never imports: it comes in as a `Scorer`
  (a callback plus the settings that decide its figures); see `score_results`.
- `table` and `plot` (s2s/compare_report.py) turn the results into comparison.md and eval_loss.png.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from s2s.backbones import autocast
from s2s.checkpoint import CheckpointError, load_meta
from s2s.config import ConfigError, get_value, set_value
from s2s.experiment import load_trained, prepared_data, train
from s2s.experiment_config import ExperimentConfig, build_config, config_hash, strategy_class
from s2s.compare_report import plot, table
from s2s.metrics import evaluate
from s2s.prepare import make_batch
from s2s.strategies import STRATEGIES
from s2s.tracking import Run, find_finished_run, log_metrics

SCORE_TAG = "s2s.compare_scores."  # + settings key: a child run's figures, as compare scored them (JSON)


# --- the plan -------------------------------------------------------------------------------

def overrides_for(name: str, overrides: list[str]) -> list[str]:
    """The overrides that apply to strategy `name`: plain `key=value`, and its own `NAME:key=value`."""
    out = []
    for o in overrides:
        head = o.split("=", 1)[0]
        if ":" in head:
            target, rest = o.split(":", 1)
            if target == name:
                out.append(rest)
        else:
            out.append(o)
    return out


def stage_order(strategies: list[str]) -> list[str]:
    """`strategies` with every listed upstream stage (a strategy's `requires`) before its dependants."""
    done: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in seen:
            raise ConfigError(f"strategies require each other in a cycle: {' -> '.join(seen + (name,))}")
        up = STRATEGIES[name].requires
        if up and up.strategy in strategies:
            visit(up.strategy, seen + (name,))
        done.append(name)

    for n in strategies:
        visit(n, ())
    return done


@dataclass
class Plan:
    strategies: list[str]  # as given: the table's row order
    preset: str
    seeds: int
    overrides: list[str]
    cfgs: dict[tuple[str, int], ExperimentConfig]  # (strategy, seed) -> config, in training order


def plan(strategies: list[str], preset: str, seeds: int, overrides: list[str]) -> Plan:
    """Every run's resolved config, checked before anything is opened or trained (ConfigError otherwise)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    for name in strategies:
        strategy_class(name)  # an unknown name fails with the closest one
    if len(set(strategies)) != len(strategies) or len(strategies) < 1:
        raise ConfigError(f"give each strategy once: {strategies}")
    cfgs = {(n, s): build_config(n, preset, overrides_for(n, overrides) + [f"train.seed={s}"])
            for n in stage_order(strategies) for s in range(seeds)}
    if any(cfg.resume for cfg in cfgs.values()):
        raise ConfigError("resume= continues one run of experiments.run; a comparison picks up where it stopped "
                          "when you run the same command again (finished runs are reused): drop resume=")
    for (n, _), cfg in cfgs.items():
        up = STRATEGIES[n].requires
        if up and not get_value(cfg, up.key) and up.strategy not in strategies:
            raise ConfigError(f"{n} trains on top of a checkpoint of {up.strategy}: give {n}:{up.key}=<checkpoint dir>, "
                              f"or list {up.strategy} too so that each seed's {up.strategy} run is used")
    return Plan(list(strategies), preset, seeds, list(overrides), cfgs)


# --- one run ------------------------------------------------------------------------------

def _meta(checkpoint: str | Path) -> dict | None:
    """meta.json of `checkpoint`, or None when it is gone or damaged (the budget then shows '?')."""
    try:
        return load_meta(checkpoint)
    except CheckpointError:
        return None


def _dotted(d, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def budget(checkpoint: str | Path) -> list[dict]:
    """The optimizer steps behind `checkpoint`, stage by stage, its own first:
    [{"strategy", "steps", "checkpoint"}, ...], following each strategy's `requires` to the
    upstream checkpoint named in meta.json's config. `steps` is None where a checkpoint is gone."""
    chain: list[dict] = []
    name = None
    while checkpoint and len(chain) < 10:
        meta = _meta(checkpoint)
        name = meta.get("strategy") if meta else name
        chain.append({"strategy": name, "steps": meta.get("step") if meta else None, "checkpoint": str(checkpoint)})
        up = STRATEGIES[name].requires if meta and name in STRATEGIES else None
        if up is None:
            break
        checkpoint, name = _dotted(meta.get("config"), up.key), up.strategy
        if not checkpoint:
            chain.append({"strategy": up.strategy, "steps": None, "checkpoint": None})
    return chain


def run_one(cfg: ExperimentConfig, parent, reuse: bool, progress: bool) -> dict:
    """Train (or reuse) one run; its final evaluation, and its checkpoint evaluated with shuffled audio."""
    chash = config_hash(cfg)
    found = find_finished_run(parent.client, cfg.tracking.experiment, chash) if reuse else None
    if found is not None:
        print(f"reusing finished run {found.info.run_id} ({cfg.strategy_name}, seed {cfg.train.seed})")
        ckpt = found.data.tags["s2s.checkpoint"]
        _, core, model, _ = load_trained(ckpt)
        _, eval_items, _ = prepared_data(cfg, core, progress=False)
        collate = lambda items: make_batch(items, core)  # noqa: E731
        run_id, n_trainable = found.info.run_id, model.n_trainable()
        wall = found.data.metrics.get("time/wall_seconds", float("nan"))
        train_nll = found.data.metrics.get("train/nll", float("nan"))
        matched = {k: v for k, v in found.data.metrics.items() if k.startswith("eval/")}  # its final evaluation
        brackets = {k: v for k, v in found.data.metrics.items() if k.startswith("brackets/")}
    else:
        r = train(cfg, parent_run_id=parent.run_id, progress=progress)
        model, eval_items, collate, run_id = r["model"], r["eval_items"], r["collate"], r["run_id"]
        ckpt, n_trainable, wall = str(r["checkpoint"]), r["n_trainable"], r["wall_seconds"]
        train_nll = parent.client.get_metric_history(run_id, "train/nll")[-1].value
        matched = r["final_eval"]  # the trainer evaluated the final weights already
        brackets = r["brackets"]
    with autocast(model.core.device):  # the same numerics as the trainer's evaluation
        shuffled = evaluate(model, eval_items, collate, cfg.train.eval_batch_size, prefix="shuffled",
                            shuffle_audio_seed=cfg.train.seed)
    history = [(m.step, m.value) for m in parent.client.get_metric_history(run_id, "eval/loss")]
    stages = budget(ckpt)
    known = [s["steps"] for s in stages]
    return {"strategy": cfg.strategy_name, "seed": cfg.train.seed, "run_id": run_id, "checkpoint": ckpt,
            "reused": found is not None, "steps": known[0], "budget": stages,
            "total_steps": sum(known) if None not in known else None,
            "train_nll": train_nll, "eval_loss": matched["eval/loss"], "eval_acc": matched["eval/acc"],
            "eval_loss_k0": matched.get("eval/loss_k0"), "shuffled_loss": shuffled["shuffled/loss"],
            "shuffled_loss_k0": shuffled.get("shuffled/loss_k0"), "n_trainable": n_trainable,
            "wall_seconds": wall, "history": sorted(history), "brackets": brackets}


# --- scoring generated speech ---------------------------------------------------------------

@dataclass
class Scorer:
    """How `compare` scores the final checkpoints: the evaluation suite, handed in by the command.

    `fn(checkpoint, out_dir, toplines)` scores one checkpoint (writing its files under out_dir) and
    returns {"generated": {figure: value}, "toplines": {system: {figure: value}} (empty unless
    toplines), "run_id": the MLflow run it logged to, "step": the step it logged at, "tiny_asr": bool,
    "mlflow": {MLflow name: value}, the figures as the scorer logs them}.
    `columns`: (header, figure) per metric in the table, e.g. ("WER", "wer_pooled").
    `settings` is everything that decides the figures (utterances, generation, ASR, normalizer):
    runs scored by compare with equal settings reuse their figures (tag s2s.compare_scores.<key>).
    """

    fn: Callable[[str, Path, bool], dict]
    settings: dict
    description: str  # one sentence for the report: which utterances, generation and ASR
    columns: tuple[tuple[str, str], ...] = (("WER", "wer_pooled"), ("CER", "cer_pooled"))
    labels: dict[str, str] = field(default_factory=dict)  # topline system -> row label

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _same_utterances(cfg: ExperimentConfig) -> str:
    """What the toplines depend on: the eval data and the backbones (the codec), not the strategy."""
    return json.dumps({"data": dataclasses.asdict(cfg.data), "backbones": dataclasses.asdict(cfg.backbones)},
                      sort_keys=True, default=str)


def score_results(results: list[dict], cfgs: list[ExperimentConfig], scorer: Scorer, client, out: Path
                  ) -> list[dict]:
    """Score every run's checkpoint with the same settings; fills each result's "scores" and returns the
    topline rows [{"system", "label", "figures", "strategies"}], computed once per set of utterances
    (from the first run scored on them).

    A run whose figures compare logged before with the same settings (its tag s2s.compare_scores.<key>)
    keeps them; any other is scored again. The figures end up on the run itself: the scorer logs to the
    checkpoint's MLflow run, and if it logged elsewhere (the store moved), they are logged here under
    the scorer's names at the checkpoint's step.
    """
    tag = SCORE_TAG + scorer.key
    toplines: dict[str, dict] = {}  # utterance set -> {"figures": {system: figures}, "strategies": [...]}
    for r, cfg in zip(results, cfgs):
        group = _same_utterances(cfg)
        need_toplines = group not in toplines
        cached = client.get_run(r["run_id"]).data.tags.get(tag)
        got = json.loads(cached) if cached else None
        if got is not None and (not need_toplines or got.get("toplines")):
            print(f"reusing the scores of run {r['run_id']} ({r['strategy']}, seed {r['seed']}): same settings")
        else:
            got = scorer.fn(r["checkpoint"], out / "scores" / f"{r['strategy']}-seed{r['seed']}", need_toplines)
            mlflow_figures = got.get("mlflow") or {}
            got = {"generated": got["generated"], "toplines": got.get("toplines") or {},
                   "tiny_asr": bool(got.get("tiny_asr")), "logged_to": got.get("run_id"), "step": got.get("step")}
            if got["logged_to"] != r["run_id"]:
                log_metrics(client, r["run_id"], mlflow_figures, got["step"] or r["steps"] or 0)
            if len(json.dumps(got)) <= 8000:  # MLflow's limit on a tag value; longer: scored again next time
                client.set_tag(r["run_id"], tag, json.dumps(got))
        r["scores"], r["tiny_asr"] = got["generated"], got.get("tiny_asr", False)
        if need_toplines and got.get("toplines"):
            toplines[group] = {"figures": got["toplines"], "strategies": []}
        if group in toplines and r["strategy"] not in toplines[group]["strategies"]:
            toplines[group]["strategies"].append(r["strategy"])
    rows = []
    for t in toplines.values():
        for system, figures in t["figures"].items():
            label = scorer.labels.get(system, system)
            if len(toplines) > 1:  # strategies scored on different utterances: say whose these are
                label += f" [utterances of {', '.join(t['strategies'])}]"
            rows.append({"system": system, "label": label, "figures": figures, "strategies": t["strategies"]})
    return rows


# --- the whole comparison -------------------------------------------------------------------

def compare(p: Plan, out: Path, reuse: bool = True, progress: bool = True, scorer: Scorer | None = None) -> dict:
    """Train (or reuse) every run of the plan under one parent MLflow run, score them, write and log the report.

    Returns {"report", "results", "toplines", "out", "parent_run_id", "uri"}. Files in `out`:
    comparison.md, eval_loss.png, results.json (a record per run), toplines.json when scored.
    """
    first = next(iter(p.cfgs.values()))
    results, cfgs = [], []
    with Run(first.tracking, {"s2s.compare": " vs ".join(p.strategies), "s2s.preset": p.preset},
             run_name=f"compare {' vs '.join(p.strategies)} ({p.preset}, {p.seeds} seeds)") as parent:
        out.mkdir(parents=True, exist_ok=True)  # once the tracking store answered: no empty report folders
        parent.log_params({"strategies": ",".join(p.strategies), "seeds": p.seeds, "preset": p.preset,
                           "overrides": " ".join(p.overrides),
                           **({"score": json.dumps(scorer.settings, default=str)} if scorer else {})})
        for (n, s), cfg in p.cfgs.items():
            up = STRATEGIES[n].requires
            if up and not get_value(cfg, up.key):  # the same seed's run of the stage it builds on
                set_value(cfg, up.key, next(r["checkpoint"] for r in results
                                            if r["strategy"] == up.strategy and r["seed"] == s))
            results.append(run_one(cfg, parent, reuse=reuse, progress=progress))
            cfgs.append(cfg)
        toplines = score_results(results, cfgs, scorer, parent.client, out) if scorer else []
        report = table(results, p.strategies, p.seeds, toplines, scorer, p.preset)
        (out / "comparison.md").write_text(report)
        plot(results, p.strategies, out / "eval_loss.png")
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        files = ["comparison.md", "eval_loss.png", "results.json"]
        if scorer:
            (out / "toplines.json").write_text(json.dumps(toplines, indent=2, default=str))
            files.append("toplines.json")
        for f in files:
            parent.log_artifact(out / f)
        metrics = {}
        for name in p.strategies:
            rs = [r for r in results if r["strategy"] == name]
            metrics[f"{name}/eval_loss_mean"] = statistics.mean(r["eval_loss"] for r in rs)
            metrics[f"{name}/listening_gap_mean"] = statistics.mean(r["shuffled_loss"] - r["eval_loss"] for r in rs)
            for _, figure in (scorer.columns if scorer else ()):
                metrics[f"{name}/{figure}_mean"] = statistics.mean(r["scores"][figure] for r in rs)
        for t in toplines:
            metrics.update({f"topline/{t['system']}/{figure}": t["figures"][figure]
                            for _, figure in scorer.columns if figure in t["figures"]})
        parent.log_metrics(metrics, 0)
    return {"report": report, "results": results, "toplines": toplines, "out": out, "parent_run_id": parent.run_id,
            "uri": parent.uri}
