"""The end of a search: the best trial and Optuna's plots, logged to the study's parent MLflow run."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.exceptions import ExperimentalWarning

from s2s.search.study import FINISHED, counts
from s2s.stores import redact

if TYPE_CHECKING:
    from s2s.search.objective import Search


def _save_plot(plot, study, path: Path, **kw) -> str | None:
    # Local on purpose: the Agg backend is chosen only when a plot is drawn, before pyplot is
    # imported; importing this module does not switch the backend of a process that draws on screen.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            ax = plot(study, **kw)
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return None
    except Exception as e:  # e.g. no variance in the objective: say so, do not fail the search
        plt.close("all")
        return f"{type(e).__name__}: {e}"


def summarize(s: Search, study, parent, out_dir: Path) -> dict:
    """Log the best trial and the plots to the parent run; return what the command prints."""
    # Local for the same reason as in _save_plot: optuna.visualization.matplotlib imports pyplot.
    from optuna.visualization import matplotlib as ovm

    c = counts(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    sign = 1 if s.goal.direction == "minimize" else -1
    best = min(complete, key=lambda t: sign * t.value) if complete else None
    summary = {"study": s.study_name, "storage": redact(s.storage_url), "requested_trials": s.n_trials,
               "complete": c.get("COMPLETE", 0), "pruned": c.get("PRUNED", 0), "failed": c.get("FAIL", 0),
               "running": c.get("RUNNING", 0), "waiting": c.get("WAITING", 0), "notes": []}
    if best is not None:
        summary["best"] = {"trial": best.number, "metric": s.goal.metric, "value": best.value, "params": best.params,
                           "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
                           "checkpoint": best.user_attrs.get("checkpoint")}
    (out_dir / "best.json").write_text(json.dumps(summary, indent=2, default=str))
    files = ["best.json"]
    plots = [("optimization_history.png", ovm.plot_optimization_history, {}),
             ("intermediate_values.png", ovm.plot_intermediate_values, {})]
    if len(complete) >= 2:
        plots.append(("param_importances.png", ovm.plot_param_importances, {}))
    else:
        summary["notes"].append(f"parameter importances need at least 2 complete trials (have {len(complete)})")
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]
    for name, plot, kw in plots:
        if not finished:
            summary["notes"].append("no plots: no finished trial yet")
            break
        err = _save_plot(plot, study, out_dir / name, **kw)
        if err:
            summary["notes"].append(f"{name} not drawn: {err}")
        else:
            files.append(name)
    for f in files:
        parent.log_artifact(out_dir / f)
    tags = {"s2s.trials_requested": s.n_trials, "s2s.trials_complete": summary["complete"],
            "s2s.trials_pruned": summary["pruned"], "s2s.trials_failed": summary["failed"], "s2s.pruner": s.pruner,
            "s2s.objective": f"{s.goal.direction} {s.goal.metric}"}
    if best is not None:
        tags.update({"s2s.best_trial": best.number, "s2s.best_run_id": best.user_attrs.get("mlflow_run_id", ""),
                     **{f"best.{k}": v for k, v in best.params.items()}})
        parent.log_metrics({f"best/{s.goal.metric}": best.value}, summary["complete"] + summary["pruned"])
    parent.set_tags(tags)
    summary["artifacts"] = files
    return summary
