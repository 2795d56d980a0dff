"""The attention explorer: a model's attention on a probe as one self-contained, interactive HTML page.

The page shows every layer x head as a small heatmap labelled with its scores, enlarges the heads clicked, reads
out query, key and weight under the pointer, lights up the tokens a query attends to (or the queries that attend
to a key), and ranks or filters heads by any score. Everything is inline: the script (`explorer.js`), the style
(`explorer.css`) and the data, so the page works offline, opened from a file, and in W&B's HTML panel (a
sandboxed iframe that allows scripts). Nothing is fetched when it is opened.

Weights are stored as one byte each on a square-root scale (the colour scale of the heatmaps, where small weights
need the resolution) and only for the causal lower triangle: 12 layers x 12 heads at 64 tokens is about 0.4 MB.
"""

import base64
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import tiktoken
import torch

from minigpt.files import atomic_write
from minigpt.plots import MAX_DRAWN_TOKENS, check_attention

ASSETS = Path(__file__).resolve().parent
SUBSCRIPT = str.maketrans("0123456789-", "₀₁₂₃₄₅₆₇₈₉₋")
# What each known score means, and whether its low values are the notable ones (then heads rank lowest first).
# Any other score name works too: it is shown without a note and ranked highest first.
SCORE_NOTES: dict[str, tuple[str, bool]] = {
    "entropy": ("mean entropy of the head's attention, in nats: low means focused", True),
    "prev_token": ("share of attention on the previous token", False),
    "first_token": ("share of attention on the first token", False),
    "previous_token": ("share of attention on the previous token (on a repeated random probe)", False),
    "duplicate_token": ("share of attention on earlier copies of the query's token", False),
    "induction": ("share of attention on the token after an earlier copy of the query's token", False),
    "induction_ablation": ("rise of the induction loss, in nats, when the head's output is zeroed", False),
}


def token_texts(enc: tiktoken.Encoding, ids: list[int]) -> list[dict]:
    """Per token: `text`, the characters its bytes belong to; `label`, the same with a character it holds only
    part of marked by the bytes it holds (`é₁⁄₂`: byte 1 of 2); `part`, that said in words; and `lead`, how many
    of its first characters began in an earlier token (the token view shows those faint, so text reads once).

    A character split over several tokens (a byte-level model reads `é` as two bytes; GPT-2's BPE may cut an
    emoji) is thus shown whole rather than as a replacement character. Bytes that are not UTF-8 show as `\\xNN`.
    """
    pieces = [enc.decode_single_token_bytes(token) for token in ids]
    chars = _utf8_chars(b"".join(pieces))  # (start, end, text), in order
    tokens, start, c = [], 0, 0
    for piece in pieces:
        end = start + len(piece)
        while chars[c][1] <= start:  # skip characters that ended before this token
            c += 1
        text, label, parts, lead = "", "", [], 0
        for first, last, char in chars[c:]:
            if first >= end:
                break
            text += char
            label += char
            if first < start or last > end:  # the character continues in a neighbouring token
                lo, hi = max(first, start) - first + 1, min(last, end) - first
                held = f"byte {lo}" if lo == hi else f"bytes {lo}-{hi}"
                parts.append(f"{held} of {last - first} of {char} (U+{ord(char):04X})")
                label += (
                    (f"{lo}" if lo == hi else f"{lo}-{hi}").translate(SUBSCRIPT)
                    + "⁄"
                    + f"{last - first}".translate(SUBSCRIPT)
                )
            lead += first < start
        tokens.append({"text": text, "label": label, "part": "; ".join(parts), "lead": lead})
        start = end
    return tokens


def _utf8_chars(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, character) for each character of data; a byte that starts no valid character is `\\xNN`."""
    chars, i = [], 0
    while i < len(data):
        lead = data[i]
        width = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
        try:
            char = data[i : i + width].decode("utf-8")
        except UnicodeDecodeError:
            width, char = 1, f"\\x{lead:02x}"
        chars.append((i, i + width, char))
        i += width
    return chars


def explorer_html(
    weights: list[torch.Tensor],
    tokens: list[dict[str, str]],
    scores: Mapping[str, torch.Tensor],
    header: Mapping[str, object],
) -> str:
    """The page for per-layer attention weights (nh, T, T) of one probe.

    tokens: `token_texts` of the probe; scores: name -> (n_layer, n_head) per-head values, any names; header:
    what the page is about, shown in order at its top (e.g. model, step, source; empty values left out). Only the first
    MAX_DRAWN_TOKENS tokens are shown (the header says so); attention is causal, so they are the whole attention
    of the probe's start.
    """
    if not weights:
        raise ValueError("no attention weights: pass one (n_head, T, T) tensor per layer")
    for w in weights:
        check_attention(w)
    n_head, T, _ = weights[0].shape
    if any(w.shape != weights[0].shape for w in weights):
        raise ValueError(f"layers' attention shapes differ: {[tuple(w.shape) for w in weights]}")
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} tokens for attention over {T} tokens")
    stacked = torch.stack([w.detach().float().cpu() for w in weights])  # (n_layer, nh, T, T)
    if (stacked.triu(diagonal=1) > 1e-4).any():
        raise ValueError("attention weights are not causal (a query attends to a later key): pass a causal model's")
    shown = min(T, MAX_DRAWN_TOKENS)
    header = {key: str(value) for key, value in header.items() if value not in (None, "")}
    header["tokens"] = str(T) if shown == T else f"the first {shown} of {T}"
    data = {
        "header": list(header.items()),
        "n_layer": len(weights),
        "n_head": n_head,
        "T": shown,
        "tokens": tokens[:shown],
        "scores": [_score(name, values, len(weights), n_head) for name, values in scores.items()],
        "weights": _quantized_lower_triangle(stacked[:, :, :shown, :shown]),
        "colormap": _colormap(),
    }
    # `<` escaped: a token such as "</script>" must not end the data's script element.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    title = " · ".join(["attention explorer", *(str(v) for k, v in header.items() if k in ("step", "source"))])
    parts = {
        "title": _escape(title),
        "style": (ASSETS / "explorer.css").read_text(encoding="utf-8"),
        "data": payload,
        "script": (ASSETS / "explorer.js").read_text(encoding="utf-8"),
    }
    # One pass over the template: text put in (a token reading "{{script}}") is never substituted again.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m[1]], (ASSETS / "explorer.html").read_text(encoding="utf-8"))


def write_explorer(
    path: str | Path,
    weights: list[torch.Tensor],
    tokens: list[dict[str, str]],
    scores: Mapping[str, torch.Tensor],
    header: Mapping[str, object],
) -> Path:
    """`explorer_html` written to path (through a temporary file and a rename); the path."""
    path = Path(path)
    html = explorer_html(weights, tokens, scores, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(html)
    return path


def head_labels(scores: Mapping[str, torch.Tensor], summaries: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the page labels each head with: what it does (the head scores, name -> (n_layer, nh)) and how it reads
    the text shown (`layer_head_summaries`' entropy and first-token share; its previous-token share is the
    previous_token score's twin, left out)."""
    return {**scores, "entropy": summaries["entropy"], "first_token": summaries["first_token"]}


def describe_model(config) -> str:
    """A GPTConfig in a few words: `4 layers x 4 heads, 128 wide, block 128, vocab 257`."""
    return (
        f"{config.n_layer} layers × {config.n_head} heads, {config.n_embd} wide, "
        f"block {config.block_size}, vocab {config.vocab_size}"
    )


def _score(name: str, values: torch.Tensor, n_layer: int, n_head: int) -> dict:
    if tuple(values.shape) != (n_layer, n_head):
        raise ValueError(
            f"score {name!r} has shape {tuple(values.shape)}; expected (n_layer, n_head)=({n_layer}, {n_head})"
        )
    note, low_first = SCORE_NOTES.get(name, ("", False))
    rows = [[round(v, 4) if math.isfinite(v) else None for v in row] for row in values.detach().float().tolist()]
    return {"name": name, "note": note, "low_first": low_first, "values": rows}


def _quantized_lower_triangle(weights: torch.Tensor) -> str:
    """weights (n_layer, nh, T, T) -> base64 of round(255 * sqrt(w)) as bytes, for each head the rows of its
    lower triangle (query i: keys 0..i) one after another."""
    T = weights.size(-1)
    rows, cols = torch.tril_indices(T, T)  # row-major over the lower triangle
    q = (weights.clamp(0, 1).sqrt() * 255).round().to(torch.uint8)[..., rows, cols]  # (n_layer, nh, T(T+1)/2)
    return base64.b64encode(q.numpy().tobytes()).decode("ascii")


def _colormap() -> str:
    """viridis, the heatmap PNGs' colour map, as 256 RGB triples in base64: entry q colours quantized weight q."""
    rgb = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]  # (256, 3) in [0, 1]
    return base64.b64encode((rgb * 255).round().astype(np.uint8).tobytes()).decode("ascii")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
