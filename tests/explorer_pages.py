"""Attention of known shape for explorer pages, and reading a page's data back (shared by the explorer tests)."""

import base64
import json
import re

import torch

from minigpt.explorer import explorer_html, token_texts
from minigpt.plots import layer_head_summaries
from minigpt.tokenizer import get_tokenizer

BYTES = get_tokenizer("bytes")
PROBE = "def f(x):\n\tif x:\n        return x  # café — ok\n    return 0\n" * 2  # 2-byte é, 3-byte —


def patterned_attention(n_layer: int, n_head: int, T: int) -> list[torch.Tensor]:
    """Per layer (nh, T, T): head k of layer l mixes a one-hot on key i - (l + k) % 5 (clamped to 0) with an even
    spread over keys 0..i, its share of the one-hot growing with k; every head differs from every other."""
    i = torch.arange(T)
    spread = torch.ones(T, T).tril() / (i + 1)[:, None]  # (T, T)
    layers = []
    for layer in range(n_layer):
        heads = []
        for head in range(n_head):
            one_hot = torch.zeros(T, T)
            one_hot[i, (i - (layer + head) % 5).clamp_min(0)] = 1
            share = (head + 1) / (n_head + 1)
            heads.append(share * one_hot + (1 - share) * spread)
        layers.append(torch.stack(heads))  # (nh, T, T)
    return layers


def page_for(n_layer: int, n_head: int, T: int = 64, header: dict | None = None) -> tuple[str, list[torch.Tensor]]:
    """(page, weights): patterned attention over the first T byte tokens of PROBE, scored by `head_summaries`."""
    ids = BYTES.encode_ordinary(PROBE)[:T]
    weights = patterned_attention(n_layer, n_head, T)
    page = explorer_html(weights, token_texts(BYTES, ids), layer_head_summaries(weights), header or {"step": 7})
    return page, weights


def page_data(page: str) -> dict:
    """The JSON the page carries."""
    (payload,) = re.findall(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S)
    return json.loads(payload)


def stored_bytes(page: str) -> torch.Tensor:
    """The page's weights as stored: (n_layer * n_head, T(T+1)/2) bytes, each head's lower triangle row by row."""
    data = page_data(page)
    raw = torch.frombuffer(bytearray(base64.b64decode(data["weights"])), dtype=torch.uint8)
    return raw.view(data["n_layer"] * data["n_head"], -1)


def expected_bytes(weights: list[torch.Tensor]) -> torch.Tensor:
    """What the page should store for weights: round(255 sqrt(w)) of each head's lower triangle, row by row."""
    T = weights[0].size(-1)
    rows, cols = torch.tril_indices(T, T)
    stacked = torch.cat(weights)  # (n_layer * nh, T, T)
    return (stacked.sqrt() * 255).round().to(torch.uint8)[:, rows, cols]
