"""Compare strategies honestly: same data split, same step budget, same seeds, loss defined exactly.

    python -m experiments.compare adapter_stage1 istlm_interleaved --seeds 2
    python -m experiments.compare adapter_stage1 gatefusion_stage2 --seeds 3 train.max_steps=500
    python -m experiments.compare adapter_stage1 istlm_interleaved istlm_interleaved:strategy.lora_rank=8

Overrides apply to every strategy; `NAME:key=value` applies to one. Each (strategy, seed) run is a
child of one parent MLflow run; a finished run with the identical resolved config is reused.
gatefusion_stage2 without `init_from` starts from the same seed's adapter_stage1 run (listed too).
Writes a markdown table, a PNG of eval-loss curves and a JSON of the figures; logs them to the parent.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from experiments.config import PRESETS, build_config
from experiments.run import config_hash, load_trained, prepared_data, train
from s2s.config import ConfigError, user_errors

REPORTED = [("adapter_stage1 (reported by the card)", 18.68), ("istlm_interleaved (reported by the card)", 23.94)]
REPORTED_NOTE = ("The card's numbers exceed ln(156940) = 11.96 nats, the loss of a uniform guess over Orpheus' "
                 "vocabulary, so they cannot be per-token mean cross-entropies (one unverified reading: per-micro-"
                 "batch means summed over 16 accumulation steps, 18.68/16 = 1.17). The rows above them are nats per "
                 "target token, defined in the README.")


def _overrides_for(name: str, overrides: list[str]) -> list[str]:
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


def _finished_run(client, experiment: str, chash: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`s2s.config_hash` = '{chash}' and "
                              f"attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    for r in runs:
        ckpt = r.data.tags.get("s2s.checkpoint")
        if ckpt and Path(ckpt, "model.safetensors").is_file():
            return r
    return None


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def run_one(cfg, parent, reuse: bool, progress: bool) -> dict:
    """Train (or reuse) one run; its final evaluation, and its checkpoint evaluated with shuffled audio."""
    from s2s.backbones import autocast
    from s2s.metrics import evaluate
    from s2s.prepare import make_batch

    chash = config_hash(cfg)
    found = _finished_run(parent.client, cfg.tracking.experiment, chash) if reuse else None
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
    else:
        r = train(cfg, parent_run_id=parent.run_id, progress=progress)
        model, eval_items, collate, run_id = r["model"], r["eval_items"], r["collate"], r["run_id"]
        ckpt, n_trainable, wall = str(r["checkpoint"]), r["n_trainable"], r["wall_seconds"]
        train_nll = parent.client.get_metric_history(run_id, "train/nll")[-1].value
        matched = r["final_eval"]  # the trainer evaluated the final weights already
    with autocast(model.core.device):  # the same numerics as the trainer's evaluation
        shuffled = evaluate(model, eval_items, collate, cfg.train.eval_batch_size, prefix="shuffled",
                            shuffle_audio_seed=cfg.train.seed)
    history = [(m.step, m.value) for m in parent.client.get_metric_history(run_id, "eval/loss")]
    return {"strategy": cfg.strategy_name, "seed": cfg.train.seed, "run_id": run_id, "checkpoint": ckpt,
            "train_nll": train_nll, "eval_loss": matched["eval/loss"], "eval_acc": matched["eval/acc"],
            "eval_loss_k0": matched.get("eval/loss_k0"), "shuffled_loss": shuffled["shuffled/loss"],
            "shuffled_loss_k0": shuffled.get("shuffled/loss_k0"), "n_trainable": n_trainable,
            "wall_seconds": wall, "history": sorted(history)}


def table(results: list[dict], strategies: list[str], steps: int, seeds: int) -> str:
    rows = ["| strategy | train loss | eval loss | eval loss, shuffled audio | listening gap | gap on k0 | "
            "token acc | trainable params | wall time (s) | ASR-WER |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in strategies:
        rs = [r for r in results if r["strategy"] == name]
        gap = [r["shuffled_loss"] - r["eval_loss"] for r in rs]
        gap_k0 = [r["shuffled_loss_k0"] - r["eval_loss_k0"] for r in rs if r["eval_loss_k0"] is not None]
        rows.append(f"| {name} | {_mean_std([r['train_nll'] for r in rs])} | {_mean_std([r['eval_loss'] for r in rs])} "
                    f"| {_mean_std([r['shuffled_loss'] for r in rs])} | {_mean_std(gap)} | {_mean_std(gap_k0)} "
                    f"| {_mean_std([r['eval_acc'] for r in rs])} | {rs[0]['n_trainable']:,} "
                    f"| {statistics.mean(r['wall_seconds'] for r in rs):.0f} | n/a |")
    for label, value in REPORTED:
        rows.append(f"| {label} | {value} (\"final loss\", normalization unstated) | | | | | | | | |")
    return "\n".join(rows) + (
        f"\n\nLosses: nats per target token (speech ids + end_of_speech), mean ± std over {seeds} seed(s), "
        f"{steps} optimizer steps each, identical data split. Train loss: last step, without label smoothing. "
        "Listening gap = eval loss with every sample's audio swapped for another's minus matched eval loss: "
        "near zero means the strategy learned speech-token statistics, not the input. ASR-WER: n/a until the "
        f"evaluation suite scores checkpoints (`python -m evaluation.score`).\n\n{REPORTED_NOTE}\n")


def plot(results: list[dict], strategies: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(strategies):
        for j, r in enumerate(r for r in results if r["strategy"] == name):
            steps, losses = zip(*r["history"]) if r["history"] else ((), ())
            ax.plot(steps, losses, color=colours[i % len(colours)], alpha=0.8, marker=".",
                    label=name if j == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval loss (nats / target token)")
    ax.set_title("eval loss, every seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from s2s.strategies import STRATEGIES

    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="+", help="strategy names, then key=value or NAME:key=value overrides")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--out", default=None, help="report folder (default reports/compare-<time>)")
    parser.add_argument("--no-reuse", action="store_true", help="retrain even if an identical finished run exists")
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_intermixed_args(argv)
    strategies = [x for x in a.args if "=" not in x]
    overrides = [x for x in a.args if "=" in x]
    try:
        if a.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {a.seeds}")
        for name in strategies:
            if name not in STRATEGIES:
                build_config(name, a.preset)  # raises with the closest name
        if len(set(strategies)) != len(strategies) or len(strategies) < 1:
            raise ConfigError(f"give each strategy once: {strategies}")
        order = sorted(strategies, key=lambda n: n == "gatefusion_stage2")  # stage 1 first
        cfgs = {(n, s): build_config(n, a.preset, _overrides_for(n, overrides) + [f"train.seed={s}"])
                for n in order for s in range(a.seeds)}
        if any(cfg.resume for cfg in cfgs.values()):
            raise ConfigError("resume= continues one run of experiments.run; a comparison picks up where it stopped "
                              "when you run the same command again (finished runs are reused): drop resume=")
        for (n, s), cfg in cfgs.items():
            if n == "gatefusion_stage2" and not cfg.strategy.init_from and "adapter_stage1" not in strategies:
                raise ConfigError("gatefusion_stage2 needs strategy.init_from=<stage-1 checkpoint>, or list "
                                  "adapter_stage1 too so each seed's stage-1 run is used")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    first = next(iter(cfgs.values()))
    out = Path(a.out or f"reports/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        _compare(a, strategies, overrides, cfgs, first, out)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C/SIGTERM: the run in progress saved a checkpoint and ended KILLED
        print(f"\ninterrupted ({e or 'Ctrl-C'}); run the same command again: finished runs are reused",
              file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return 0


def _compare(a, strategies, overrides, cfgs, first, out):
    from s2s.tracking import Run, ui_command
    results = []
    with Run(first.tracking, {"s2s.compare": " vs ".join(strategies), "s2s.preset": a.preset}) as parent:
        out.mkdir(parents=True, exist_ok=True)  # once the tracking store answered: no empty report folders
        parent.log_params({"strategies": ",".join(strategies), "seeds": a.seeds, "preset": a.preset,
                           "overrides": " ".join(overrides)})
        for (n, s), cfg in cfgs.items():
            if n == "gatefusion_stage2" and not cfg.strategy.init_from:
                cfg.strategy.init_from = next(r["checkpoint"] for r in results
                                              if r["strategy"] == "adapter_stage1" and r["seed"] == s)
            results.append(run_one(cfg, parent, reuse=not a.no_reuse, progress=not a.no_progress))
        steps = first.train.max_steps or "epoch-based"
        report = table(results, strategies, steps, a.seeds)
        (out / "comparison.md").write_text(report)
        plot(results, strategies, out / "eval_loss.png")
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        for f in ("comparison.md", "eval_loss.png", "results.json"):
            parent.log_artifact(out / f)
        for name in strategies:
            rs = [r for r in results if r["strategy"] == name]
            parent.log_metrics({f"{name}/eval_loss_mean": statistics.mean(r["eval_loss"] for r in rs),
                                f"{name}/listening_gap_mean": statistics.mean(r["shuffled_loss"] - r["eval_loss"]
                                                                              for r in rs)}, 0)
    print("\n" + report)
    print(f"report: {out}/comparison.md, plot: {out}/eval_loss.png")
    print(f"MLflow parent run: {parent.run_id}\nopen the UI: {ui_command(parent.uri)}")
    return parent


if __name__ == "__main__":
    sys.exit(main())
