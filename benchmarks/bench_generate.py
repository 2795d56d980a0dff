"""Generation speed with and without the KV cache, side by side: tokens/s and their ratio.

Random weights and a random prompt (speed does not depend on them); every step samples from the full
distribution, and no stop token ends a sample early. Two shapes: the small default model and GPT-2 small (124M).

    python benchmarks/bench_generate.py                                # CPU, both models, 512 new tokens
    python benchmarks/bench_generate.py --models gpt2 --new-tokens 64  # the 124M without cache is slow on CPU
    python benchmarks/bench_generate.py --device cuda --dtype bfloat16 --models gpt2 --batch-size 16 --compile

Past block_size the window slides and every step re-prefills block_size tokens, with or without the cache: the
output says how many of the new tokens that was.
"""

import argparse
import time

import torch

from minigpt.generate import stream
from minigpt.model import GPT, GPTConfig

MODELS = {
    "small": GPTConfig(vocab_size=257, block_size=512, n_layer=4, n_head=4, n_embd=256),
    "gpt2": GPTConfig(),  # GPT-2 small, 124M
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--compile", action="store_true", help="model.compile() (in place) before timing")
    parser.add_argument("--compile-mode", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument(
        "--bandwidth-gbs", type=float, help="memory bandwidth in GB/s, to print the batch-1 bound (H100 SXM: 3350)"
    )
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokens_per_second(model: GPT, idx: torch.Tensor, new_tokens: int, use_cache: bool) -> float:
    """Generated tokens (all samples) per second, prefill included, after a short untimed warm-up."""
    # A few steps meet every shape a compiled model sees below block_size: the prefill, the one-token step, and
    # (without the cache) a second length, after which torch.compile makes the length dynamic.
    for steps in (min(new_tokens, 4), new_tokens):
        synchronize(idx.device)
        t0 = time.perf_counter()
        for _ in stream(model, idx, steps, seed=0, use_cache=use_cache):
            pass
        synchronize(idx.device)
        seconds = time.perf_counter() - t0
    return idx.size(0) * new_tokens / seconds


def main() -> None:
    args = parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    print(
        f"{args.new_tokens} new tokens after a {args.prompt_tokens}-token prompt, batch {args.batch_size}, "
        f"{device} {args.dtype}{', compiled' if args.compile else ''}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    for name in args.models:
        config = MODELS[name]
        torch.manual_seed(0)
        model = GPT(config).to(device=device, dtype=dtype).eval()
        if args.compile:
            model.compile(mode=args.compile_mode)
        idx = torch.randint(0, config.vocab_size, (args.batch_size, args.prompt_tokens), device=device)
        slid = max(0, args.prompt_tokens + args.new_tokens - config.block_size)
        params = model.num_params(non_embedding=False)
        cached = tokens_per_second(model, idx, args.new_tokens, use_cache=True)
        recomputed = tokens_per_second(model, idx, args.new_tokens, use_cache=False)
        print(
            f"{name:>5} ({params / 1e6:.1f}M, block {config.block_size}):  cache {cached:9.1f} tokens/s  "
            f"no cache {recomputed:9.1f} tokens/s  ratio {cached / recomputed:.1f}x"
        )
        if slid:
            print(f"      the last {slid} new tokens were past block_size: each re-prefilled the window")
        if args.bandwidth_gbs:
            # Every step reads all weights once, whatever the batch: the bound when the KV cache reads are small.
            weight_bytes = params * torch.finfo(dtype).bits // 8
            bound = args.bandwidth_gbs * 1e9 / weight_bytes * args.batch_size
            print(
                f"      weights {weight_bytes / 1e6:.0f} MB read per step: at {args.bandwidth_gbs:.0f} GB/s at most "
                f"{bound:.0f} tokens/s; the cache reaches {cached / bound:.0%} of it"
            )


if __name__ == "__main__":
    main()
