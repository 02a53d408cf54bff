"""The comparison's report: the markdown table (with the card's reported figures as data rows and
the notes that say how to read them) and the eval-loss plot. Fed by s2s/compare.py."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from s2s.brackets import FLOOR, TOPLINE, bracket, fraction_to_topline

if TYPE_CHECKING:
    from s2s.compare import Scorer

# The card's "final loss" figures: data, (row label in the card's own words, value).
REPORTED = (("the card's adapter-based model (reported)", 18.68),
            ("the card's interleaved, IST-LM-style model (reported, \"stagnated\")", 23.94))
REPORTED_NOTE = (
    "The card's figures (\"final loss\" 18.68 adapter-based, 23.94 interleaved) come without a stated "
    "normalization, so they cannot be set beside the rows above. As per-token mean cross-entropies they would "
    "exceed ln(156940) = 11.96 nats, the loss of a uniform guess over Orpheus' vocabulary: implausible for a "
    "trained model, but not impossible, since cross-entropy has no upper bound and label smoothing adds "
    "0.1·mean over the vocabulary of −log p, a term that grows without limit as a model gets confident. "
    "One unverified reading: per-micro-batch means summed over the 16 accumulation steps (18.68/16 = 1.17, "
    "23.94/16 = 1.50 nats per token), as transformers 4.46-4.50 logged for some models; for 18.68 it holds only "
    "if the logged loss excluded label smoothing, because a loss smoothed by 0.1 over the full vocabulary is at "
    "least 0.1·ln(156940) = 1.20 per token. The normalization is unknown. The rows above are nats per target "
    "token, defined in the README.")


def _mean_std(xs: list[float], fmt: str = "{:.4f}") -> str:
    if not xs:
        return "n/a"
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs) if len(xs) > 1 else 0.0)}"


def _to_topline(r: dict) -> float:
    """A run's eval loss as the fraction of the way from its no-text floor to its text topline."""
    b = r["brackets"]
    return fraction_to_topline(r["eval_loss"], b[f"brackets/{FLOOR}/loss"], b[f"brackets/{TOPLINE}/loss"])


def _steps_cell(rs: list[dict]) -> str:
    """A run's whole budget: its own steps, plus those of every stage it trained on top of."""
    cells = []
    for r in rs:
        stages = r["budget"]
        own = "?" if stages[0]["steps"] is None else str(stages[0]["steps"])
        if len(stages) == 1:
            cell = own
        else:
            parts = " + ".join(f"{'?' if s['steps'] is None else s['steps']} of {s['strategy']}" for s in stages[1:])
            total = "?" if r["total_steps"] is None else r["total_steps"]
            cell = f"{total} ({own} here + {parts})"
        if cell not in cells:
            cells.append(cell)
    return " / ".join(cells)


def table(results: list[dict], strategies: list[str], seeds: int, toplines: list[dict] | None = None,
          scorer: Scorer | None = None, preset: str = "") -> str:
    """The markdown report: a row per strategy (mean ± std over seeds), the toplines, the card's figures."""
    score_cols = scorer.columns if scorer else (("WER", ""),)
    head = ["strategy", "optimizer steps (total)", "train loss", "eval loss", "eval loss k0", "to text topline",
            "eval loss, shuffled audio", "listening gap", "gap on k0", "token acc", *(h for h, _ in score_cols), "trainable params",
            "wall time (s)"]
    width = len(head)
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * width]

    def row(cells: dict) -> str:
        return "| " + " | ".join(str(cells.get(h, "")) for h in head) + " |"

    for name in strategies:
        rs = [r for r in results if r["strategy"] == name]
        gap = [r["shuffled_loss"] - r["eval_loss"] for r in rs]
        gap_k0 = [r["shuffled_loss_k0"] - r["eval_loss_k0"] for r in rs if r["eval_loss_k0"] is not None]
        cells = {"strategy": name, "optimizer steps (total)": _steps_cell(rs),
                 "train loss": _mean_std([r["train_nll"] for r in rs]),
                 "eval loss": _mean_std([r["eval_loss"] for r in rs]),
                 "eval loss k0": _mean_std([r["eval_loss_k0"] for r in rs if r["eval_loss_k0"] is not None]),
                 "to text topline": _mean_std([_to_topline(r) for r in rs if r.get("brackets")], "{:.0%}"),
                 "eval loss, shuffled audio": _mean_std([r["shuffled_loss"] for r in rs]),
                 "listening gap": _mean_std(gap), "gap on k0": _mean_std(gap_k0),
                 "token acc": _mean_std([r["eval_acc"] for r in rs]), "trainable params": f"{rs[0]['n_trainable']:,}",
                 "wall time (s)": f"{statistics.mean(r['wall_seconds'] for r in rs):.0f}"}
        for header, figure in score_cols:
            cells[header] = (_mean_std([r["scores"][figure] for r in rs if "scores" in r]) if scorer
                             else "not scored")
        rows.append(row(cells))
    with_brackets = [r for r in results if r.get("brackets")]
    for name, label in ((FLOOR, "frozen TTS LM given no text (floor, untrained)"),
                        (TOPLINE, "frozen TTS LM given the transcript (topline, untrained)")):
        if with_brackets:
            figures = [bracket(r["brackets"], name) for r in with_brackets]
            rows.append(row({"strategy": label, "eval loss": _mean_std([f["eval/loss"] for f in figures]),
                             "eval loss k0": _mean_std([f["eval/loss_k0"] for f in figures]),
                             "token acc": _mean_std([f["eval/acc"] for f in figures])}))
    for t in toplines or []:
        rows.append(row({"strategy": t["label"], **{h: f"{t['figures'][f]:.4f}" for h, f in score_cols
                                                     if f in t["figures"]}}))
    for label, value in REPORTED:
        rows.append(row({"strategy": label, "train loss": f"{value} (\"final loss\", normalization unknown)"}))

    tiny = preset == "tiny"
    asr_tiny = any(r.get("tiny_asr") for r in results)
    warning = ""
    if tiny:
        what = "the Whisper encoder" + (" and the Whisper that transcribes" if asr_tiny else "")
        warning = ("**Tiny preset, the miniature (s2s/tiny.py): the frozen TTS LM and the codec are tiny models "
                   f"trained on synthetic word strings, {what} random. The losses compare methods on that toy "
                   "task, between the two frozen-LM brackets; they say nothing about the methods at full scale"
                   + (", and the WER of a random ASR nothing at all" if scorer else "") + ".**\n\n")
    own = sorted({r["steps"] for r in results}, key=str)
    steps_note = f"{own[0]} optimizer steps each" if len(own) == 1 else "the optimizer steps in the steps column"
    if any(len(r["budget"]) > 1 for r in results):
        steps_note += (" (a staged strategy trains them on top of an upstream run; the steps column gives the "
                       "whole budget)")
    if scorer:
        scored = (f"{', '.join(h for h, _ in score_cols)}: {scorer.description}; identical for every run, "
                  "mean ± std over seeds. The topline rows score the same utterances' reference audio and its "
                  "codec round trip with the same scorers, the floor row another speaker's utterance against each "
                  "reference: properties of the data, codec and scorers, not of a strategy, so they are computed "
                  "once. ")
    else:
        scored = "ASR-WER: not scored in this comparison (scoring was turned off). "
    return warning + "\n".join(rows) + (
        f"\n\nLosses: nats per target token (speech ids + end_of_speech), mean ± std over {seeds} seed(s), "
        f"{steps_note}, identical data split. Train loss: last step, without label smoothing. "
        "The two frozen TTS LM rows bracket the strategies: the frozen LM teacher-forced on the same targets after "
        "an empty text prompt (the floor) and after the transcript (the topline), untrained (s2s/brackets.py); \"to text "
        "topline\" = (floor - eval loss) / (floor - topline), 0% at the floor, 100% at the topline. "
        "Listening gap = eval loss with every sample's audio swapped for another's minus matched eval loss: "
        f"near zero means the strategy learned speech-token statistics, not the input. {scored.rstrip()}\n\n"
        f"{REPORTED_NOTE}\n")


def plot(results: list[dict], strategies: list[str], path: Path) -> None:
    # Here, not at the top: choosing the Agg backend on import would change it for a notebook that
    # merely imports s2s.compare.
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
    ax.set_xlabel("optimizer step (of the run itself)")
    ax.set_ylabel("eval loss (nats / target token)")
    ax.set_title("eval loss, every seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
