"""Cost of HellaSwag during training (`eval.hellaswag_every`) as a share of training time.

Timed side by side and interleaved on one model of a config: a training step (forward, backward, gradient
clipping, AdamW over the config's micro-batches: what train.py runs per optimizer step, without Lightning's loop)
and the scoring of a chunk of HellaSwag examples as the HellaSwag callback scores them (`minigpt.hellaswag.score`,
eval mode, no gradients, the config's `eval.batch_size` examples per forward). A run of the config then costs

    share = evaluations x (examples / chunk) x chunk time / (max_steps x step)

with evaluations = validations / hellaswag_every and examples = hellaswag_limit or the 10,042 of the validation
split. The examples are a stand-in with no network: texts from the Python Language Reference cut to HellaSwag's
shape (contexts of 10 to 60 words, endings of 5 to 30), unless --data names a HellaSwag jsonl file. bf16 autocast on
a GPU, float32 on a CPU, as training runs.

    python benchmarks/bench_hellaswag.py --device cuda                # configs/gpt2_124m.yaml
    python benchmarks/bench_hellaswag.py --device cuda --data hellaswag_val.jsonl
    python benchmarks/bench_hellaswag.py --quick                      # tiny shapes: a smoke test
"""

import argparse
import inspect
import random
from pathlib import Path

import torch
import yaml
from common import REPO, VOCAB_SIZES, header, print_table, time_interleaved

from minigpt.callbacks import HellaSwag
from minigpt.data import embedded_corpus
from minigpt.hellaswag import Example, read_examples, render, score
from minigpt.module import ModelOptions
from minigpt.tokenizer import get_tokenizer

QUICK = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64}
VALIDATION_EXAMPLES = 10_042


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gpt2_124m.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", help="a HellaSwag jsonl file (default: stand-in examples)")
    parser.add_argument("--chunk", type=int, help="examples scored per timed call (default: 256 on GPU, 16 on CPU)")
    parser.add_argument("--micro-batch", type=int, help="sequences per micro-batch (default: the config's on GPU, 2)")
    parser.add_argument("--accum", type=int, help="micro-batches per step (default: the config's on GPU, 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, one call of each per round")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny model, bytes, 8 examples, 2 rounds, one thread")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.rounds = args.threads or 1, 2
    return args


def callback_settings(cfg: dict) -> dict:
    """The HellaSwag callback's settings in a run of this config: its own defaults, then the config's `eval:`."""
    params = inspect.signature(HellaSwag.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"} | (cfg.get("eval") or {})


def stand_in_examples(n: int, seed: int = 0) -> list[Example]:
    """n HellaSwag-shaped examples from the Python Language Reference's words (what they say is not timed)."""
    rng = random.Random(seed)
    words = " ".join(embedded_corpus()).split()

    def text(lo: int, hi: int) -> str:
        start = rng.randrange(len(words) - hi)
        return " ".join(words[start : start + rng.randint(lo, hi)])

    return [Example(text(10, 60), tuple(text(5, 30) for _ in range(4)), rng.randrange(4)) for _ in range(n)]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    cfg = yaml.safe_load(args.config.read_text())
    tokenizer = "bytes" if args.quick else cfg.get("data", {}).get("tokenizer", "bytes")
    hparams = {**cfg["model"], "vocab_size": VOCAB_SIZES[tokenizer], "compile": False}
    hparams |= QUICK if args.quick else {}
    micro_batch = args.micro_batch or (cfg["data"].get("batch_size", 32) if gpu and not args.quick else 2)
    accum = args.accum or (cfg["trainer"].get("accumulate_grad_batches", 1) if gpu and not args.quick else 1)
    evaluation = callback_settings(cfg)
    chunk = args.chunk or (8 if args.quick else 256 if gpu else 16)
    examples = read_examples(args.data, chunk) if args.data else stand_in_examples(chunk)

    torch.manual_seed(0)
    module = ModelOptions(**hparams).build(tokenizer).to(device)
    model, T = module.model, hparams["block_size"]
    enc = get_tokenizer(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hparams.get("learning_rate", 1e-3), fused=gpu)
    batches = torch.randint(0, hparams["vocab_size"], (accum, micro_batch, T + 1), device=device)  # (accum, B, T+1)

    def autocast():
        return torch.autocast(device.type, torch.bfloat16, enabled=gpu)

    def train_step() -> None:
        model.train()
        for window in batches:  # accum micro-batches of (B, T + 1)
            with autocast():
                _, loss = model(window[:, :-1], window[:, 1:])
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["trainer"].get("gradient_clip_val", 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def scoring() -> None:
        model.eval()
        score(model, enc, examples, batch_size=evaluation["batch_size"], forward_context=autocast)

    rows_tokens = [len(tokens) for example in examples for tokens, _ in render(enc, example, T)]
    print(header(device, "bf16-mixed" if gpu else "float32"))
    print(
        f"{args.config.name}: {hparams['n_layer']} layers x {hparams['n_embd']}, step {accum} x {micro_batch} x {T}; "
        f"{chunk} {'examples of ' + args.data if args.data else 'stand-in examples'}, "
        f"{sum(rows_tokens) / len(rows_tokens):.0f} tokens per ending row, {evaluation['batch_size']} per forward"
    )
    timings = time_interleaved({"training step": train_step, "scoring": scoring}, device, args.rounds, warmup=1)

    trainer = cfg["trainer"]
    validations = trainer["max_steps"] * trainer.get("accumulate_grad_batches", 1) // trainer["val_check_interval"]
    every = evaluation["hellaswag_every"] or 1  # a config with HellaSwag off: priced as if at every validation
    evaluations = validations // every
    per_example = timings["scoring"].median / chunk
    n = evaluation.get("hellaswag_limit") or VALIDATION_EXAMPLES
    training = trainer["max_steps"] * timings["training step"].median
    evaluating = evaluations * n * per_example
    print_table(
        ["", "median", "per run", "seconds per run", "of training"],
        [
            ["training step", str(timings["training step"]), trainer["max_steps"], f"{training:.0f}", ""],
            [f"{chunk} examples", str(timings["scoring"]), f"{evaluations} x {n}", f"{evaluating:.0f}",
             f"{evaluating / training:.2%}"],
        ],
    )  # fmt: skip
    one = n * per_example
    print(
        f"summary: HellaSwag costs {evaluating / training:.2%} of training time over a {trainer['max_steps']}-step "
        f"run of {args.config.name} ({evaluations} evaluations of {n} examples, {one:.1f} s each = "
        f"{one / timings['training step'].median:.1f} training steps)"
    )


if __name__ == "__main__":
    main()
