"""Sizes checked before anything is allocated: what a model of a given shape needs, against what the device has.

A size that cannot fit ends in one line that names it, not in an allocator's error midway (or in swap). The needs
counted are lower bounds (no activations, no fragmentation): a setting refused here can never have run.
"""

import os

import torch

from minigpt.errors import UserError
from minigpt.model import GPTConfig

GIB = 2**30
WEIGHT_BYTES = 4  # fp32, as the model is built
# Training keeps fp32 weights whatever the precision: the weights, their gradients and AdamW's two moments.
TRAINING_BYTES = 4 * WEIGHT_BYTES


def parameter_count(config: GPTConfig) -> int:
    """The parameters of GPT(config), counted from its shape (the tied LM head once, the padding rows included)."""
    C, bias = config.n_embd, int(config.bias)
    per_block = 4 * C * C + C + bias * 5 * C  # q|k|v and out, LayerNorm, their biases
    if config.mlp:
        per_block += 8 * C * C + C + bias * 6 * C  # MLP in and out, its LayerNorm, their biases
    embeddings = (config.padded_vocab_size + config.block_size) * C
    return embeddings + config.n_layer * per_block + C + bias * C  # + the final LayerNorm


def device_memory(device: torch.device) -> int:
    """Bytes of memory of device: a GPU's own, else the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(need: int, device: torch.device, what: str, fix: str) -> None:
    """UserError when need bytes exceed device's memory: "<what> needs N GiB, more than the device's M GiB: <fix>"."""
    have = device_memory(device)
    if need > have:
        where = "this machine's memory" if device.type == "cpu" else f"the memory of {device}"
        raise UserError(f"{what} needs {need / GIB:,.1f} GiB, more than {where} ({have / GIB:,.1f} GiB): {fix}")


def check_model_fits(config: GPTConfig, device: torch.device, bytes_per_parameter: int, what: str) -> None:
    """A model of shape config, at bytes_per_parameter on device (what: what those bytes hold)."""
    n = parameter_count(config)
    need = n * bytes_per_parameter
    fix = "choose a smaller model.n_layer, model.n_embd or vocabulary"
    check_fits(need, device, f"a model of {n / 1e6:,.0f}M parameters ({what})", fix)


def check_generation_fits(config: GPTConfig, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
    """Generating batch sequences of up to length tokens on device: the key/value cache of every layer."""
    per_token = 2 * config.n_layer * config.n_embd * dtype.itemsize  # keys and values, every layer
    need = batch * min(length, config.block_size) * per_token
    fix = "generate fewer samples at once (--num-samples, or fewer prompts of one length with --each-line)"
    check_fits(need, device, f"the key/value cache of {batch:,} sequences of {length:,} tokens", fix)
