"""Cost of all attention-map work as a share of training time, at the callback's default frequency.

Timed side by side and interleaved on one model of a config: a training step (forward, backward, gradient clipping,
AdamW: what train.py runs per step, without Lightning's loop, so a little faster), one drawing of the AttentionMaps
callback (the probe's forward pass, one PNG per layer, the per-head summaries, head scores and head ablation to a
CSV logger: everything `draw` does), the parts of a drawing on their own (to show where its time goes), and the
induction loss the callback computes at every validation. A run of the config with the callback's defaults then
costs

    share = (draws x drawing + validations x induction loss) / (max_steps x step)

with draws those of every_n_validations and the one at the end of training. The text probe is the first 64 tokens
of the Python Language Reference (what it says does not change the cost).

    python benchmarks/bench_attention_maps.py                     # configs/default.yaml, as train.py runs it
    python benchmarks/bench_attention_maps.py --config configs/shakespeare_char.yaml --device cuda
    python benchmarks/bench_attention_maps.py --threads 1         # on a busy CPU: no stalls at thread barriers
    python benchmarks/bench_attention_maps.py --quick             # tiny shapes: a smoke test
"""

import argparse
import inspect
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from common import REPO, VOCAB_SIZES, header, print_table, synchronize, time_interleaved
from lightning.pytorch.loggers import CSVLogger

from minigpt.callbacks import AttentionMaps
from minigpt.data import embedded_corpus
from minigpt.explorer import token_texts, write_explorer
from minigpt.inspect import probe_attention
from minigpt.module import ModelOptions
from minigpt.plots import MAX_DRAWN_TOKENS, save_layer_maps, token_labels
from minigpt.tokenizer import get_tokenizer

QUICK = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="sequences per micro-batch (default: the config's)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, one call of each thing per round")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny model and batch, 2 rounds, one CPU thread")
    args = parser.parse_args()
    if args.quick:
        args.threads = args.threads or 1  # a busy machine stalls two threads at every barrier, not one
    return args


def callback_defaults() -> dict:
    """AttentionMaps' own defaults, read from its signature, so this measures what a run gets."""
    params = inspect.signature(AttentionMaps.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def run_counts(trainer_cfg: dict, every_n_validations: int, at_train_end: bool) -> tuple[int, int, int]:
    """(optimizer steps, validations, drawings) of a run with these trainer settings."""
    max_steps = trainer_cfg["max_steps"]
    accum = trainer_cfg.get("accumulate_grad_batches", 1)
    interval = trainer_cfg.get("val_check_interval", 250)  # counts micro-batches, as Lightning's does
    validations = max_steps * accum // interval
    drawn = validations // every_n_validations if every_n_validations else 0
    # The drawing at the end is skipped when the last validation run, at the last step, has just drawn.
    last_step_drawn = drawn > 0 and validations % every_n_validations == 0 and (max_steps * accum) % interval == 0
    return max_steps, validations, drawn + (at_train_end and not last_step_drawn)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = yaml.safe_load(args.config.read_text())
    tokenizer = cfg.get("data", {}).get("tokenizer", "bytes")
    hparams = {**cfg["model"], "vocab_size": VOCAB_SIZES[tokenizer]}
    hparams |= QUICK if args.quick else {}
    batch_size = 2 if args.quick else args.batch_size or cfg["data"].get("batch_size", 32)
    accum = cfg["trainer"].get("accumulate_grad_batches", 1)
    torch.manual_seed(0)
    module = ModelOptions(**hparams).build(tokenizer).to(device)
    model, T = module.model, hparams["block_size"]

    lr = hparams.get("learning_rate", 1e-3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=device.type == "cuda")
    batches = torch.randint(0, hparams["vocab_size"], (accum, batch_size, T + 1), device=device)  # (accum, B, T+1)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    def train_step() -> None:
        for window in batches:  # accum micro-batches of (B, T + 1)
            with autocast:
                _, loss = model(window[:, :-1], window[:, 1:])
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["trainer"].get("gradient_clip_val", 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    defaults = callback_defaults()
    callback = AttentionMaps(**defaults)
    enc = get_tokenizer(tokenizer)
    callback.ids = enc.encode_ordinary(embedded_corpus()[0])[: min(MAX_DRAWN_TOKENS, T)]
    callback.labels = token_labels(enc, callback.ids)
    callback.tokens = token_texts(enc, callback.ids)
    callback.probes = callback.induction_probes(None, model.config, enc.eot_token)  # score probes, induction sequences
    run_dir = Path(tempfile.mkdtemp(prefix="bench-attention-maps-"))
    # A stand-in for the trainer: what the callback reads of it.
    trainer = SimpleNamespace(global_step=0, default_root_dir=str(run_dir), loggers=[CSVLogger(run_dir, name="")])

    def drawing() -> None:
        trainer.global_step += 1  # a new step per call, as each validation run has
        callback.draw(trainer, module)
        synchronize(device)

    # The parts of a drawing, each timed on its own: one line per part.
    parts = {
        "probe and PNGs": lambda: save_layer_maps(
            probe_attention(model, callback.ids), callback.labels, lambda layer: run_dir / f"part-{layer}.png"
        ),
        "head scores": lambda: callback.probes.head_scores(model),
        "head ablation": lambda: callback.probes.head_ablation(model),
        "explorer page": lambda: write_explorer(
            run_dir / "part.html", probe_attention(model, callback.ids), callback.tokens, {}, {}
        ),
    }

    model.train()
    print(header(device, "bf16-mixed" if device.type == "cuda" else "float32"))
    print(f"{args.config.name}: {hparams['n_layer']} layers x {hparams['n_head']} heads, batch {batch_size}x{T}")
    rounds = 2 if args.quick else args.rounds
    timings = time_interleaved(
        {
            "training step": train_step,
            "drawing": drawing,
            **parts,
            "induction loss": lambda: callback.probes.induction_loss(model),
        },
        device,
        repeats=rounds,
        warmup=1,
    )
    steps, validations, draws = run_counts(cfg["trainer"], defaults["every_n_validations"], defaults["at_train_end"])
    calls = {"training step": steps, "drawing": draws, **dict.fromkeys(parts, draws), "induction loss": validations}
    seconds = {name: calls[name] * timing.median for name, timing in timings.items()}
    training = seconds["training step"]
    rows = []
    for name, timing in timings.items():
        label = f"  of which {name}" if name in parts else name  # inside the drawing's time, not added to it
        share = "" if name == "training step" else f"{seconds[name] / training:.2%}"
        rows.append([label, str(timing), calls[name], f"{seconds[name]:.2f}", share])
    print_table(["", "median", "per run", "seconds per run", "of training"], rows)
    share = (seconds["drawing"] + seconds["induction loss"]) / training
    print(
        f"summary: attention maps cost {share:.2%} of training time over a {steps}-step run of {args.config.name} "
        f"({draws} drawings: every_n_validations={defaults['every_n_validations']}, "
        f"at_train_end={defaults['at_train_end']}; induction loss at {validations} validations; "
        f"one drawing = {timings['drawing'].median / timings['training step'].median:.1f} training steps)"
    )


if __name__ == "__main__":
    main()
