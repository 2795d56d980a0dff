"""HellaSwag scored in completion style, as build-nanogpt's `hellaswag.py` (and llm.c's) scores it.

Each example is a context and four endings. The model reads the tokens of the context followed by those of
`" " + ending`, once per ending; an ending's loss is the model's cross-entropy on its own tokens. `acc` counts the
examples whose right ending has the lowest summed loss, `acc_norm` those whose right ending has the lowest mean loss
per token. This is ours to write (lm-evaluation-harness scores its own way, see docs/evaluation.md): it runs in the
training loop, on our GPT, and pins the field's published completion-style numbers (GPT-2 124M: acc 0.2859,
acc_norm 0.2955 on the 10,042 validation examples).

Pure torch and the model; the examples come from a HellaSwag jsonl file or the hub's `Rowan/hellaswag`.
"""

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
import torch.nn.functional as F

from minigpt import net
from minigpt.errors import UserError

HUB_PATH = "Rowan/hellaswag"
HUB_SPLIT = "validation"
ENDINGS = 4  # every HellaSwag example has four


@dataclass(frozen=True)
class Example:
    ctx: str
    endings: tuple[str, ...]  # ENDINGS of them
    label: int  # the index of the right ending


@dataclass(frozen=True)
class Counts:
    """Examples scored, and how many of them each way picked the right ending. Counts add (DDP ranks, batches)."""

    correct: int = 0
    correct_norm: int = 0
    n: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.correct + other.correct, self.correct_norm + other.correct_norm, self.n + other.n)

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.n if self.n else 0.0


def parse_example(record: object, where: str) -> Example:
    """An Example from one HellaSwag record (`ctx`, `endings`, `label`; other fields are ignored). The hub's labels
    are strings ("0" to "3"), the jsonl files' numbers: both are read. `where` names the record in errors."""
    fields = "each line must be a JSON object with ctx (text), endings (4 texts) and label (0 to 3), as HellaSwag's"
    if not isinstance(record, dict) or not {"ctx", "endings", "label"} <= record.keys():
        raise UserError(f"{where} is not a HellaSwag example: {fields}")
    ctx, endings, label = record["ctx"], record["endings"], record["label"]
    if not isinstance(ctx, str) or not ctx.strip():
        raise UserError(f"{where}: ctx is not a text that is not blank: {fields}")
    if not isinstance(endings, list) or len(endings) != ENDINGS or not all(isinstance(e, str) for e in endings):
        raise UserError(f"{where}: endings is not a list of {ENDINGS} texts: {fields}")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int):
        raise UserError(f"{where}: label {label!r} is not a number: give the index of the right ending, 0 to 3")
    if not 0 <= label < ENDINGS:
        raise UserError(f"{where}: label {label} is out of range: the {ENDINGS} endings are numbered 0 to 3")
    return Example(ctx, tuple(endings), label)


def read_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """The first `limit` (default: all) examples of a HellaSwag jsonl file, one JSON object per line."""
    examples: list[Example] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if limit is not None and len(examples) >= limit:
                    break
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where} is not JSON ({e.msg}): the file must be HellaSwag jsonl") from None
                examples.append(parse_example(record, where))
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): pass a HellaSwag jsonl file"
        ) from None
    except OSError as e:
        raise UserError(f"HellaSwag file {path} cannot be read ({e.strerror}): pass a HellaSwag jsonl file") from None
    if not examples:
        raise UserError(f"{path} holds no HellaSwag example: pass a HellaSwag jsonl file")
    return examples


def hub_examples(limit: int | None = None) -> list[Example]:
    """The first `limit` (default: all 10,042) examples of the hub's HellaSwag validation split, through `datasets`
    (downloaded once, then read from its cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(HUB_PATH, split=HUB_SPLIT)
    except net.network_errors() as e:  # datasets' ConnectionError, HF_HUB_OFFLINE's refusal included
        raise UserError(
            f"cannot download HellaSwag ({HUB_PATH}) from the hub ({net.describe(e)}): with no network, pass a "
            "HellaSwag jsonl file with --data (hellaswag_val.jsonl from github.com/rowanz/hellaswag)"
        ) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [parse_example(record, f"{HUB_PATH} {HUB_SPLIT} row {i}") for i, record in enumerate(ds)]


def load_examples(data: str | Path | None, limit: int | None = None) -> list[Example]:
    """Examples from the jsonl file `data`, or with None from the hub."""
    return hub_examples(limit) if data is None else read_examples(data, limit)


def render(enc: tiktoken.Encoding, example: Example, block_size: int) -> list[tuple[list[int], int]]:
    """For each ending: (the tokens the model reads, how many of the last of them are the ending's, scored).

    The tokens are the context's, then `" " + ending`'s (the space GPT-2's tokenizer puts before a word), cut to
    their last block_size. The first token is never predicted, so a row of one ending's tokens alone scores all but
    its first.
    """
    ctx = enc.encode_ordinary(example.ctx)  # the text as text: a "<|endoftext|>" in it is not the special token
    rows = []
    for ending in example.endings:
        tokens = (ctx + (ending_tokens := enc.encode_ordinary(" " + ending)))[-block_size:]
        rows.append((tokens, min(len(ending_tokens), len(tokens) - 1)))
    return rows


def ending_losses(model: torch.nn.Module, rows: Sequence[tuple[list[int], int]], device: torch.device):
    """(summed loss, mean loss) of each row's scored tokens, both (R,) float32: one forward over the rows, padded
    on the right (the model is causal: padding after a row's tokens changes none of their predictions)."""
    T = max(len(tokens) for tokens, _ in rows)
    idx = torch.zeros(len(rows), T, dtype=torch.long)  # (R, T)
    scored = torch.zeros(len(rows), T - 1, dtype=torch.bool)  # (R, T-1): position t predicts token t + 1
    for r, (tokens, n) in enumerate(rows):
        idx[r, : len(tokens)] = torch.tensor(tokens)
        scored[r, len(tokens) - 1 - n : len(tokens) - 1] = True
    idx, scored = idx.to(device), scored.to(device)
    logits, _ = model(idx)  # (R, T, vocab)
    losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), idx[:, 1:].flatten(), reduction="none").view(
        len(rows), T - 1
    )  # (R, T-1)
    total = (losses * scored).sum(dim=1)  # (R,)
    return total, total / scored.sum(dim=1)


@torch.no_grad()
def score_batches(
    model: torch.nn.Module,
    enc: tiktoken.Encoding,
    examples: Sequence[Example],
    batch_size: int = 8,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Iterator[Counts]:
    """The Counts of each batch of `batch_size` examples (their 4 x batch_size endings in one forward), in order.

    forward_context wraps each forward: `torch.autocast(...)` for bf16, Lightning's precision context in training.
    The model is read as it is (its mode, device and dtype): the caller puts it in eval mode.
    """
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: give a number of examples per forward >= 1")
    device = next(model.parameters()).device
    block_size = model.config.block_size
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        rows = [row for example in batch for row in render(enc, example, block_size)]
        with forward_context():
            total, mean = ending_losses(model, rows, device)
        labels = torch.tensor([example.label for example in batch], device=device)  # (E,)
        picked = total.view(len(batch), ENDINGS).argmin(dim=1)  # (E,)
        picked_norm = mean.view(len(batch), ENDINGS).argmin(dim=1)  # (E,)
        yield Counts(int((picked == labels).sum()), int((picked_norm == labels).sum()), len(batch))


def score(model: torch.nn.Module, enc: tiktoken.Encoding, examples: Sequence[Example], **options) -> Counts:
    """The Counts over all examples (`score_batches`' options)."""
    return sum(score_batches(model, enc, examples, **options), Counts())
