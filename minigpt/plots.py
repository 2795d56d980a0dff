"""Attention heatmaps and per-head summaries, shared by the training callback and `minigpt attention`.

One figure per layer: a grid of its heads' (T, T) attention weights, query tokens down the side, key tokens along
the bottom, on one colour scale. Figures are drawn on matplotlib's Agg canvas (no display, no pyplot state), so
they can be made inside a training run or on a headless server.
"""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tiktoken
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from minigpt.files import atomic_write

MAX_DRAWN_TOKENS = 64  # beyond this the axis labels no longer fit: longer probes are drawn cut to their start
DPI = 100
INCH_PER_TOKEN = 0.11  # one heatmap cell: room for a 7 pt label
LABEL_CHARS = 10  # longer token labels are shortened with an ellipsis
# Characters that would vanish as tick labels, drawn as visible stand-ins; `$` would start matplotlib's mathtext.
VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "→", "\r": "␍", "$": r"\$"})


def check_attention(weights: torch.Tensor) -> None:
    """ValueError unless weights (nh, T, T) are attention weights: finite, >= 0, every row summing to 1."""
    if weights.ndim != 3 or weights.size(1) != weights.size(2):
        raise ValueError(f"attention weights must be (n_head, T, T), got shape {tuple(weights.shape)}")
    w = weights.detach().float()
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("attention weights hold negative, NaN or infinite values: pass softmax outputs")
    # Each weight is rounded once from float32 in the attention's dtype, so a row's sum is off by about eps.
    tolerance = max(1e-4, 4 * torch.finfo(weights.dtype).eps)
    worst = (w.sum(dim=-1) - 1).abs().max().item()
    if worst > tolerance:
        raise ValueError(
            f"attention rows must sum to 1 (softmax over the keys), but one is off by {worst:.3g}: "
            "pass the weights after the softmax, indexed (head, query, key)"
        )


def head_summaries(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per head of weights (nh, T, T), T >= 2: mean entropy (nats), share on the previous token, on the first.

    Means over the queries 1..T-1: query 0 can only attend to itself, which says nothing about the head.
    """
    check_attention(weights)
    if weights.size(-1) < 2:
        raise ValueError("attention summaries need a probe of at least 2 tokens")
    w = weights.detach().float()[:, 1:]  # (nh, T-1, T): row i is query i+1
    return {
        "entropy": -(w * w.clamp_min(1e-12).log()).sum(dim=-1).mean(dim=-1),  # (nh,)
        "prev_token": w.diagonal(dim1=-2, dim2=-1).mean(dim=-1),  # w[:, i, i]: query i+1 on key i; (nh,)
        "first_token": w[:, :, 0].mean(dim=-1),  # (nh,)
    }


def layer_head_summaries(weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """`head_summaries` of every layer's weights (nh, T, T), stacked: name -> (n_layer, n_head)."""
    per_layer = [head_summaries(w) for w in weights]
    return {name: torch.stack([summary[name] for summary in per_layer]) for name in per_layer[0]}


def token_labels(enc: tiktoken.Encoding, ids: list[int]) -> list[str]:
    """One readable label per token: its own bytes decoded, spaces and newlines made visible."""
    labels = []
    for token in ids:
        # Token by token, so a character split over byte tokens shows as its bytes (\xe2 ...), not as U+FFFD.
        text = enc.decode_single_token_bytes(token).decode("utf-8", errors="backslashreplace")
        text = text.translate(VISIBLE)
        labels.append(text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…")
    return labels


def grid_shape(n_head: int) -> tuple[int, int]:
    """(rows, columns) of a layer's figure: as square as the heads allow."""
    cols = math.ceil(math.sqrt(n_head))
    return math.ceil(n_head / cols), cols


# Figure layout in inches, computed rather than solved (matplotlib's layout engines measure every label, slowly).
AXIS_TITLE, INCH_PER_CHAR = 0.35, 0.07  # room for "query" / "key"; width of a 7 pt label character
MARGIN_TOP = 0.6  # the note
GAP_X, GAP_Y = 0.2, 0.35  # between panels; a head's title sits in GAP_Y
COLORBAR = (0.25, 0.15, 0.75)  # gap before it, its width, room for its labels


def panel_inches(n_tokens: int) -> float:
    return max(2.0, INCH_PER_TOKEN * min(n_tokens, MAX_DRAWN_TOKENS))


def label_margin(label_chars: int) -> float:
    """Room left of and below the panels for token labels of up to label_chars characters and the axis title."""
    return AXIS_TITLE + INCH_PER_CHAR * label_chars


def figure_pixels(n_head: int, n_tokens: int, label_chars: int) -> tuple[int, int]:
    """(width, height) of a layer's PNG: n_tokens drawn, labels of up to label_chars characters."""
    rows, cols = grid_shape(n_head)
    panel, margin = panel_inches(n_tokens), label_margin(label_chars)
    width = margin + cols * panel + (cols - 1) * GAP_X + sum(COLORBAR)
    height = margin + rows * panel + (rows - 1) * GAP_Y + MARGIN_TOP
    return round(width * DPI), round(height * DPI)


def draw_layer(weights: torch.Tensor, labels: list[str], layer: int, note: str = "") -> Figure:
    """A figure of one layer's heads: weights (nh, T, T), labels the T tokens' text, note the figure's title.

    Only the first MAX_DRAWN_TOKENS tokens are drawn (said in the title). Attention is causal, so those rows
    only see those keys: the cut block is the whole attention of the probe's start.
    """
    check_attention(weights)
    n_head, T, _ = weights.shape
    if len(labels) != T:
        raise ValueError(f"{len(labels)} token labels for attention over {T} tokens")
    shown = min(T, MAX_DRAWN_TOKENS)
    if shown < T:
        note = ", ".join(filter(None, [note, f"first {shown} of {T} tokens drawn"]))
    w = weights.detach().float().cpu().numpy()[:, :shown, :shown]  # (nh, shown, shown)
    future = np.triu(np.ones((shown, shown), dtype=bool), k=1)  # keys a query may not see, drawn blank

    label_chars = max(len(label) for label in labels[:shown])
    # Half a pixel over: matplotlib truncates the size to whole pixels, so float error cannot cost one.
    width, height = ((pixels + 0.5) / DPI for pixels in figure_pixels(n_head, shown, label_chars))
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg: renders without a display
    rows, cols = grid_shape(n_head)
    panel, margin = panel_inches(shown), label_margin(label_chars)
    # One scale for every head, 0 to 1; the square root lifts the small weights of long rows into view.
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    for head in range(n_head):
        row, col = divmod(head, cols)
        left = margin + col * (panel + GAP_X)
        bottom = margin + (rows - 1 - row) * (panel + GAP_Y)
        ax = fig.add_axes((left / width, bottom / height, panel / width, panel / height))
        image = ax.imshow(np.ma.masked_array(w[head], future), cmap="viridis", norm=norm, interpolation="nearest")
        ax.set_title(f"layer {layer} head {head}", fontsize=10, pad=3)
        ax.set_xticks([])
        ax.set_yticks([])
        # Every head has the same tokens: label the left column and the lowest panel of each column only.
        if col == 0:
            label_tokens(ax, labels[:shown], "y")
            fig.text(0.05 / width, (bottom + panel / 2) / height, "query", rotation=90, va="center", fontsize=8)
        if head + cols >= n_head:
            label_tokens(ax, labels[:shown], "x")
            fig.text((left + panel / 2) / width, 0.05 / height, "key (attended to)", ha="center", fontsize=8)
    bar_left = width - COLORBAR[2] - COLORBAR[1]
    bar = fig.add_axes((bar_left / width, margin / height, COLORBAR[1] / width, panel / height))
    fig.colorbar(image, cax=bar, label="attention weight")
    if note:
        fig.suptitle(note, fontsize=9, y=1 - 0.15 / height)
    return fig


def label_tokens(ax: Axes, labels: list[str], axis: str) -> None:
    """Write the token labels along the x (below, rotated) or y (left) side of a heatmap.

    Plain texts rather than matplotlib ticks: a tick is five artists, and drawing them is most of a figure's time.
    """
    for i, label in enumerate(labels):
        # The token's column (row) in data coordinates, the other axis in axes coordinates: just off the panel.
        if axis == "x":
            ax.text(i, -0.005, label, transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="top", size=7)
        else:
            ax.text(-0.005, i, label, transform=ax.get_yaxis_transform(), ha="right", va="center", size=7)


def save_layer_maps(
    attentions: list[torch.Tensor], labels: list[str], path_of: Callable[[int], Path], note: str = ""
) -> list[Path]:
    """Draw each layer's weights (nh, T, T) and save it as the PNG path_of(layer); the paths written.

    Each file is written under a temporary name and renamed, so an interrupted run leaves no half PNG.
    """
    paths = []
    for layer, weights in enumerate(attentions):
        path = Path(path_of(layer))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = draw_layer(weights, labels, layer, note)
        with atomic_write(path) as f:
            fig.savefig(f, format="png")
        paths.append(path)
    return paths


def crop_to_block(ids: list[int], block_size: int) -> tuple[list[int], str]:
    """`ids` cut to their first block_size (a model has no positions beyond it), and a note when they were cut."""
    if len(ids) <= block_size:
        return ids, ""
    return ids[:block_size], f"cropped from {len(ids)} to block_size={block_size} tokens"
