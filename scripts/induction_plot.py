"""Draw the induction recipe's phase change from a run's metrics.csv: docs/induction-phase-change.png.

    minigpt train --config induction --logger csv --name induction   # the recipe (docs/induction.md)
    python scripts/induction_plot.py runs/induction/metrics.csv docs/induction-phase-change.png

Three panels against the optimizer step: val/induction_loss (with ln(V) and ln(94), guessing among the whole
vocabulary or among the printable characters); the best previous-token and induction score of each layer's heads;
and, where the run logged it, the rise of the induction loss when each layer's most important head is zeroed
(`attention/layer<L>.head<H>/induction_ablation`).
"""

import argparse
import csv
import math
import re
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

HEAD_METRIC = re.compile(r"^attention/layer(\d+)\.head(\d+)/(previous_token|induction|induction_ablation)$")
VOCAB = 257  # the bytes tokenizer's
PRINTABLE = 94  # the characters of the repeats source


def read_series(path: Path) -> tuple[list[tuple[int, float]], dict[tuple[str, int], list[tuple[int, float]]]]:
    """The induction loss (step, value) and, per (metric, layer), the best head's value at each logged step."""
    loss, best = [], defaultdict(dict)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            if row.get("val/induction_loss"):
                loss.append((step, float(row["val/induction_loss"])))
            for key, value in row.items():
                match = HEAD_METRIC.match(key)
                if match and value:
                    series = best[(match[3], int(match[1]))]
                    series[step] = max(series.get(step, -math.inf), float(value))
    return loss, {key: sorted(steps.items()) for key, steps in best.items()}


def draw(loss, heads, title: str) -> Figure:
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_scores, ax_ablation = fig.subplots(1, 3, sharex=True)
    ax_loss.plot(*zip(*loss, strict=True), color="black", marker=".", label="val/induction_loss")
    for value, label in ((math.log(VOCAB), f"ln {VOCAB}"), (math.log(PRINTABLE), f"ln {PRINTABLE}")):
        ax_loss.axhline(value, color="grey", linestyle=":", linewidth=1)
        ax_loss.text(0.01, value, label, transform=ax_loss.get_yaxis_transform(), fontsize=8, color="grey", va="bottom")
    ax_loss.set(title="loss on second halves (nats)", xlabel="step", ylim=(0, None))
    styles = {0: "tab:blue", 1: "tab:red"}
    for (metric, layer), series in sorted(heads.items()):
        if metric == "induction_ablation":
            ax_ablation.plot(*zip(*series, strict=True), color=styles.get(layer), marker=".", label=f"layer {layer}")
        else:
            line = "-" if metric == "previous_token" else "--"
            label = f"layer {layer} {metric.replace('_', '-')}"
            ax_scores.plot(*zip(*series, strict=True), line, color=styles.get(layer), marker=".", label=label)
    ax_scores.set(title="best head score per layer", xlabel="step", ylim=(0, 1))
    ax_scores.legend(fontsize=7)
    ax_ablation.set(title="loss rise, best head zeroed (nats)", xlabel="step")
    if any(metric == "induction_ablation" for metric, _ in heads):
        ax_ablation.legend(fontsize=7)
    else:
        ax_ablation.text(0.5, 0.5, "no ablation logged", ha="center", va="center", transform=ax_ablation.transAxes)
    fig.suptitle(title)
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("metrics", type=Path, help="the run's metrics.csv (--logger csv)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--title", default="minigpt train --config induction")
    args = parser.parse_args()
    loss, heads = read_series(args.metrics)
    if not loss:
        parser.error(f"{args.metrics} holds no val/induction_loss: give the metrics.csv of a run that validated")
    draw(loss, heads, args.title).savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
