"""Generation against HF transformers' `GPT2LMHeadModel.generate` (its KV cache), on the same weights, side by side.

Both decode greedily from the same random prompt with the same weights: a GPT-2-layout model initialised at random
by `transformers` (no download) and converted to ours by `minigpt.checkpoint.gpt_from_hf`, its weights perturbed
first so that no two logits are near a tie. No stop token ends a sample early. Every round runs each variant once,
in rotating order, after an untimed warm-up run each; the table gives medians over the rounds of the time to the
first token (the prefill), the decode rate after it, and the overall tokens/s. "vs HF" is the median over the
rounds of the ratio of overall tokens/s to HF's in the same round, so a load change hits both sides of a ratio;
"vs HF, CPU time" is the same ratio of the process's CPU time, which other jobs on a shared CPU disturb less than
the wall clock (with one thread; with more, threads that wait for each other spin). "tokens" compares every
variant's tokens with HF's. "peak" is the most tensor memory alive at once during one more run, beyond what
existed before it (the weights, the prompt); our KV cache's size is printed below each case.

    python benchmarks/bench_generate.py                                  # CPU: the four cases (tens of minutes)
    python benchmarks/bench_generate.py --cases gpt2-b1 --rounds 9 --threads 1
    python benchmarks/bench_generate.py --quick                          # a tiny model, seconds (CI)
    python benchmarks/bench_generate.py --linear-rows 1 8 64             # the few-row products (minigpt/cpu_layout.py)
    python benchmarks/bench_generate.py --device cuda --dtype bfloat16 --compile --bandwidth-gbs 4800

Cases: `gpt2-b1` and `gpt2-b8` (GPT-2 small's shape, 124M, a 16-token prompt and 128 new tokens at batch 1 and
8), `default` (the model of configs/default.yaml, 16 + 112 new tokens: its block_size is 128), `long` (GPT-2
small, a 900-token prompt and 100 new tokens in its 1024-token block), `gpt2-b16` (for GPUs). Without the `hf`
extra (transformers) the HF row is skipped, with the reason printed, and the weights are our own random init.
With --compile a `minigpt compiled` row joins: `torch.compile(model.decode)`, as `sample.py --compile` does. On the
CPU our model is transformed as sample.py transforms it for the case's batch size (`for_cpu_decoding`, weights
input-major for the sizes in `INPUT_MAJOR_ROWS`, minigpt/cpu_layout.py); --both-layouts adds a row with nn.Linear's
layout.
"""

import argparse
import copy
import statistics
import time
import weakref
from dataclasses import dataclass

import torch
import yaml
from common import REPO, VOCAB_SIZES, Timing, header, interleaved, print_table, synchronize, time_interleaved
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from minigpt.checkpoint import gpt_from_hf
from minigpt.cpu_layout import INPUT_MAJOR_ROWS, for_cpu_decoding
from minigpt.generate import stream
from minigpt.model import GPT, GPTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GPT2_SMALL = GPTConfig()  # 124M, block 1024


def default_config() -> GPTConfig:
    """The model `python train.py` trains: configs/default.yaml's shape, the bytes tokenizer's vocabulary."""
    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    shape = {key: cfg["model"][key] for key in ("block_size", "n_layer", "n_head", "n_embd")}
    return GPTConfig(**shape, vocab_size=VOCAB_SIZES[cfg["data"]["tokenizer"]])


@dataclass(frozen=True)
class Case:
    config: GPTConfig
    batch: int
    prompt: int
    new: int
    target: float | None = None  # our tokens/s over HF's, to reach on the CPU
    recompute_row: bool = False  # also time generation without the cache (cheap for small models only)


CASES = {
    "gpt2-b1": Case(GPT2_SMALL, 1, 16, 128, target=1.25),
    "gpt2-b8": Case(GPT2_SMALL, 8, 16, 128, target=1.25),
    "default": Case(default_config(), 1, 16, 112, target=2.0, recompute_row=True),
    "long": Case(GPT2_SMALL, 1, 900, 100),
    "gpt2-b16": Case(GPT2_SMALL, 16, 16, 128),
}
QUICK = Case(GPTConfig(vocab_size=257, block_size=64, n_layer=2, n_head=2, n_embd=64), 2, 8, 24, recompute_row=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, help="default: gpt2-b1 gpt2-b8 default long")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, each variant once per round")
    parser.add_argument("--threads", type=int, help="torch threads, for every row alike (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--compile", action="store_true", help="add a row for torch.compile(model.decode)")
    parser.add_argument("--compile-mode", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument(
        "--bandwidth-gbs", type=float, help="memory bandwidth in GB/s, to print the batch-1 bound (H100 SXM: 3350)"
    )
    parser.add_argument(
        "--linear-rows",
        nargs="+",
        type=int,
        metavar="M",
        help="instead: time GPT-2 small's linears at M rows each, three ways (see minigpt/cpu_layout.py)",
    )
    parser.add_argument(
        "--both-layouts", action="store_true", help="CPU: add a row with nn.Linear's weight layout (cpu_layout.py)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny model, 3 rounds, one thread (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.threads = 3, 1
    args.cases = args.cases or (["gpt2-b1", "gpt2-b16", "default", "long"] if args.device != "cpu" else list(CASES)[:4])
    return args


class PeakTensorMemory(TorchDispatchMode):
    """The most bytes of tensor storage alive at once among the storages that ops make inside the `with` block.

    Storages that existed before (the weights, the prompt) are not counted, nor are views and in-place results,
    which reuse an input's storage. Every op goes through Python, so it runs apart from the timed rounds.
    """

    def __init__(self):
        super().__init__()
        self.counted = WeakIdKeyDictionary()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if id(storage) in inputs or storage in self.counted:
                continue
            self.counted[storage] = True
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, storage.nbytes())
        return out

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes


@dataclass
class Run:
    first_token_s: float  # the prefill, and sampling the first token
    total_s: float
    cpu_s: float  # CPU time of the process (every thread) over the run
    tokens: torch.Tensor  # (B, new)


def run_minigpt(model: GPT, idx: torch.Tensor, new: int, use_cache: bool = True, decode=None) -> Run:
    synchronize(idx.device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    steps = []
    for step in stream(model, idx, new, temperature=0, use_cache=use_cache, decode=decode):
        if not steps:
            synchronize(idx.device)
            first = time.perf_counter() - t0
        steps.append(step)
    synchronize(idx.device)
    return Run(first, time.perf_counter() - t0, time.process_time() - cpu0, torch.stack(steps, dim=1))


class FirstTokenClock:
    """A `generate` streamer that notes when the first new tokens arrive (its first `put` is the prompt)."""

    def __init__(self, t0: float):
        self.t0, self.puts, self.first = t0, 0, None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter() - self.t0  # value is on the host already: the device has caught up

    def end(self) -> None:
        pass


def run_hf(hf_model, idx: torch.Tensor, new: int) -> Run:
    synchronize(idx.device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    clock = FirstTokenClock(t0)
    out = hf_model.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=new, do_sample=False, streamer=clock
    )  # (B, T + new)
    synchronize(idx.device)
    return Run(clock.first, time.perf_counter() - t0, time.process_time() - cpu0, out[:, idx.size(1) :])


def hf_model_of(config: GPTConfig, device: torch.device, dtype: torch.dtype):
    """A random GPT2LMHeadModel of this shape, every weight perturbed; None (and why) without transformers."""
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed (pip install -e '.[hf]')"
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # GPT-2's init leaves biases at 0 and LayerNorms at 1: spread the logits out
        for param in hf_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return hf_model.to(device=device, dtype=dtype), None


def first_difference(tokens: torch.Tensor, reference: torch.Tensor) -> str:
    differs = (tokens != reference).any(dim=0).nonzero()
    return "identical" if differs.numel() == 0 else f"differ from step {differs[0].item()}"


def bench_case(name: str, case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Print one case's table; return each variant's tokens/s over HF's (empty without HF)."""
    dtype = DTYPES[args.dtype]
    hf_model, hf_missing = hf_model_of(case.config, device, dtype)
    if hf_model is not None:
        model = gpt_from_hf(hf_model.float()).to(device=device, dtype=dtype)
        hf_model.to(dtype)
    else:
        torch.manual_seed(0)
        model = GPT(case.config).to(device=device, dtype=dtype).eval()
    prompt_generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, case.config.vocab_size, (case.batch, case.prompt), generator=prompt_generator).to(device)

    variants = {}
    if device.type == "cpu":  # sample.py's transform (minigpt/cpu_layout.py)
        input_major = case.batch in INPUT_MAJOR_ROWS
        if args.both_layouts and input_major:
            row_major = for_cpu_decoding(copy.deepcopy(model), input_major=False)
            variants["minigpt row-major"] = lambda: run_minigpt(row_major, idx, case.new)
        for_cpu_decoding(model, input_major=input_major)
    variants["minigpt"] = lambda: run_minigpt(model, idx, case.new)
    if args.compile:
        # A fresh dynamo first, as in a sample.py process: after an earlier case's compile at another batch size or
        # prompt length, automatic dynamic shapes would recompile this case with symbolic sizes (a graph and a
        # compile time a fresh run never gets). That case's compiled decoding is not run again.
        torch._dynamo.reset()
        decode = torch.compile(model.decode, mode=args.compile_mode)  # as sample.py --compile does
        variants["minigpt compiled"] = lambda: run_minigpt(model, idx, case.new, decode=decode)
    if case.recompute_row:
        variants["minigpt no cache"] = lambda: run_minigpt(model, idx, case.new, use_cache=False)
    if hf_model is not None:
        variants["HF generate"] = lambda: run_hf(hf_model, idx, case.new)

    print(
        f"\n{name}: {case.config.n_layer} layers x {case.config.n_embd} wide, vocab {case.config.vocab_size}, "
        f"block {case.config.block_size}; batch {case.batch}, {case.prompt}-token prompt, {case.new} new tokens"
    )
    if hf_missing:
        print(f"HF generate: skipped, {hf_missing}")
    # One untimed run each first (allocator, first-call work, compilation); each run times itself.
    runs: dict[str, list[Run]] = interleaved(variants, device, args.rounds, warmup=1)
    peaks = {}
    for v in variants:
        if v != "minigpt compiled":  # the tracker sees what Python dispatches, not what a compiled graph allocates
            with PeakTensorMemory() as tracker:
                variants[v]()
            peaks[v] = tracker.peak

    reference_name = "HF generate" if hf_model is not None else "minigpt"
    reference = runs[reference_name][0].tokens
    n_tokens = case.batch * case.new
    rows, ratios, cpu_ratios, decodes, sames = [], {}, {}, {}, {}
    for v, vruns in runs.items():
        prefill = Timing([run.first_token_s for run in vruns])
        # Decode: the tokens after the first, over the time after it.
        decode = decodes[v] = statistics.median(
            case.batch * (case.new - 1) / (run.total_s - run.first_token_s) for run in vruns
        )
        overall = Timing([run.total_s for run in vruns])
        if hf_model is not None:
            pairs = list(zip(runs["HF generate"], vruns, strict=True))
            ratios[v] = statistics.median(hf.total_s / run.total_s for hf, run in pairs)
            cpu_ratios[v] = statistics.median(hf.cpu_s / run.cpu_s for hf, run in pairs)
        same = sames[v] = "-" if v == reference_name else first_difference(vruns[0].tokens, reference)
        rows.append([
            v, f"{prefill.median * 1e3:.1f} ±{prefill.spread:.0%}", f"{decode:.1f}",
            f"{n_tokens / overall.median:.1f} ±{overall.spread:.0%}", f"{ratios[v]:.2f}x" if v in ratios else "-",
            f"{cpu_ratios[v]:.2f}x" if v in cpu_ratios else "-", same, f"{peaks[v] / 2**20:.1f}" if v in peaks else "-",
        ])  # fmt: skip
    headers = ["variant", "prefill ms", "decode tok/s", "tok/s", "vs HF", "vs HF, CPU time", "tokens", "peak MiB"]
    print_table(headers, rows)

    cache, per_position = kv_cache_bytes_of(model, idx, case.new), bytes_per_position(model, case.batch)
    print(
        f"KV cache: {cache / 2**20:.2f} MiB for {cache // per_position} positions ({case.prompt} + {case.new} - 1: the "
        f"last new token is never fed; block_size would take {per_position * case.config.block_size / 2**20:.2f} MiB)"
    )
    if case.target is not None and "minigpt" in ratios:
        identical = sames["minigpt"] == "identical"
        met = "met" if ratios["minigpt"] >= case.target and identical else "not met"
        print(
            f"target: minigpt >= {case.target}x HF's tokens/s, the same tokens: {ratios['minigpt']:.2f}x "
            f"(CPU time {cpu_ratios['minigpt']:.2f}x), tokens {'identical' if identical else 'differ'}: {met}"
        )
    if args.bandwidth_gbs and case.batch == 1:
        weight_bytes = model.num_params(non_embedding=False) * torch.finfo(dtype).bits // 8
        bound = args.bandwidth_gbs * 1e9 / weight_bytes
        rate = decodes["minigpt"]  # tokens/s of the one sequence
        print(
            f"bound: weights {weight_bytes / 1e6:.0f} MB read per step, at {args.bandwidth_gbs:.0f} GB/s at most "
            f"{bound:.0f} tokens/s; minigpt decodes at {rate / bound:.0%} of it"
        )
    return ratios


def bytes_per_position(model: GPT, batch: int) -> int:
    """KV cache bytes per position: a key and a value per layer, head and channel of every sequence."""
    param = model.lm_head.weight
    return 2 * model.config.n_layer * batch * model.config.n_embd * param.element_size()


def kv_cache_bytes_of(model: GPT, idx: torch.Tensor, new: int) -> int:
    """Bytes of the KV cache that generation sets up, read from the model while a stream runs."""
    steps = stream(model, idx, new, temperature=0)
    next(steps)
    nbytes = sum(buf.nbytes for block in model.transformer.h for buf in block.attn.kv_cache.buffers())
    steps.close()
    return nbytes


def bench_linear_rows(rows: list[int], rounds: int, device: torch.device, dtype: torch.dtype) -> None:
    """The matrix products of one decoding step of GPT-2 small at M rows (12 blocks' four linears, the LM head),
    three ways: x Wᵀ as nn.Linear computes it, (W xᵀ)ᵀ, which `minigpt.cpu_layout.CPULinear` uses for a few rows, and
    x Wᵀ with W stored (in, out) row-major, as `for_cpu_decoding(..., input_major=True)` leaves it. Ratios: over x Wᵀ's
    time."""
    config = GPT2_SMALL
    shapes = [
        (3 * config.n_embd, config.n_embd), (config.n_embd, config.n_embd),  # attention: c_attn, c_proj
        (4 * config.n_embd, config.n_embd), (config.n_embd, 4 * config.n_embd),  # MLP: c_fc, c_proj
    ]  # fmt: skip
    # Every block its own weights, as in the model: 340 MB in float32 per layout, so they come from memory.
    layers = [
        [
            (torch.randn(shape, device=device, dtype=dtype), torch.randn(shape[0], device=device, dtype=dtype))
            for shape in shapes
        ]
        for _ in range(config.n_layer)
    ]
    head = torch.randn(config.vocab_size, config.n_embd, device=device, dtype=dtype)
    input_major_layers = [[(w.t().contiguous().t(), b) for w, b in layer] for layer in layers]
    input_major_head = head.t().contiguous().t()
    table = []
    for m in rows:
        xs = [torch.randn(m, shape[1], device=device, dtype=dtype) for shape in shapes]
        x_head = torch.randn(m, config.n_embd, device=device, dtype=dtype)

        def input_first(layers=layers, head=head, xs=xs, x_head=x_head):
            for layer in layers:
                for x, (w, b) in zip(xs, layer, strict=True):
                    torch.nn.functional.linear(x, w, b)
            torch.nn.functional.linear(x_head, head)

        def weight_first(xs=xs, x_head=x_head):
            for layer in layers:
                for x, (w, b) in zip(xs, layer, strict=True):
                    torch.addmm(b[:, None], w, x.t()).t()
            torch.mm(head, x_head.t()).t()

        def input_major(xs=xs, x_head=x_head):
            input_first(input_major_layers, input_major_head, xs, x_head)

        variants = {"x Wᵀ": input_first, "(W xᵀ)ᵀ": weight_first, "x Wᵀ, W (in, out)": input_major}
        timings = time_interleaved(variants, device, rounds, warmup=1)
        base = timings["x Wᵀ"].median
        table.append([m, *(f"{t} {base / t.median:.2f}x" for t in timings.values())])
    print_table(["rows", *variants], table)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(header(device, args.dtype))
    if args.linear_rows:
        return bench_linear_rows(args.linear_rows, args.rounds, device, DTYPES[args.dtype])
    print(f"greedy; {args.rounds} rounds; {torch.get_num_threads()} torch threads for every row")
    cases = {"quick": QUICK} if args.quick else {name: CASES[name] for name in args.cases}
    summary = []
    for name, case in cases.items():
        ratios = bench_case(name, case, args, device)
        if "minigpt" in ratios:
            summary.append(f"{name} {ratios['minigpt']:.2f}x")
    print(f"summary: minigpt tokens/s vs HF generate: {', '.join(summary) or 'HF row skipped'}")


if __name__ == "__main__":
    main()
