"""Draw docs/loss-curves.png, the training and validation loss of a run, from the run's metrics.csv.

    python train.py --name default --logger csv          # the default config, a few minutes on 2 CPU cores
    python scripts/loss_curves.py                        # reads runs/default/metrics.csv

Needs a run logged with `--logger csv` (W&B draws its own curves).
"""

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CURVES = {"train/loss": "train", "val/loss": "validation", "val/induction_loss": "induction loss (validation)"}


def read_curves(metrics: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each curve in CURVES, from Lightning's CSV (one row per logging step, empty where unlogged)."""
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVES}
    with metrics.open(newline="") as file:
        for row in csv.DictReader(file):
            for name, points in curves.items():
                if row.get(name):
                    points.append((int(row["step"]) + 1, float(row[name])))  # step: optimizer steps done - 1
    return curves


def draw(curves: dict[str, list[tuple[int, float]]], title: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if name != "train/loss" else None, label=CURVES[name])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/default", help="the run directory holding metrics.csv")
    parser.add_argument("--out", default=str(ROOT / "docs" / "loss-curves.png"))
    parser.add_argument("--title", default="python train.py (configs/default.yaml)")
    args = parser.parse_args(argv)
    metrics = Path(args.run) / "metrics.csv"
    if not metrics.is_file():
        print(f"error: no {metrics}: train with --logger csv (--name to choose the run's folder)", file=sys.stderr)
        return 2
    curves = read_curves(metrics)
    if not curves["train/loss"]:
        print(f"error: {metrics} holds no train/loss: is it a minigpt run's metrics.csv?", file=sys.stderr)
        return 2
    draw(curves, args.title, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
