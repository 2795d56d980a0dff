"""Dense peak FLOP/s of the GPUs we name, the denominator of MFU (`train/mfu` and the benchmarks).

Vendor datasheets print tensor-core figures "with sparsity" (2:4 structured), twice the dense rate; a dense GPT's
matmuls get the dense one, so that is what this table holds, per precision. We keep our own table rather than
Lightning's `get_available_flops`: that one does not know the name "NVIDIA H200", holds the sparse figure for the
H100 NVL, and the RTX 4090's FP32 figure for bf16. `MATMUL_DTYPE` says which column a training precision uses.
"""

import re

import torch

# TFLOP/s, dense. bf16 is also fp16 (both with fp32 accumulation); tf32 is what float32 matmuls run at under
# torch.set_float32_matmul_precision("high"), which the training command sets; fp32 at "highest".
DENSE_TFLOPS = {
    #             bf16    tf32   fp32
    "A100":     (312.0, 156.0, 19.5),   # SXM and PCIe alike (A100 datasheet)
    "H100 SXM": (989.4, 494.7, 66.9),   # H100 datasheet: 1,979 / 989 TFLOP/s with sparsity
    "H100 PCIe": (756.0, 378.0, 51.2),  # 1,513 / 756 with sparsity
    "H100 NVL": (835.5, 417.5, 60.0),   # 1,671 / 835 with sparsity
    "H200": (989.4, 494.7, 67.0),       # H200 SXM (and GH200): 1,979 / 989 with sparsity
    "H200 NVL": (835.5, 417.5, 60.0),   # 1,671 / 835 with sparsity
    "L4": (121.0, 60.0, 30.3),          # 242 / 120 with sparsity
    "RTX 4090": (165.2, 82.6, 82.6),    # Ada whitepaper: bf16 with fp32 accumulate, 330.4 with sparsity
}  # fmt: skip
COLUMNS = {"bf16": 0, "tf32": 1, "fp32": 2}


def gpu_model(device_name: str) -> str | None:
    """The table's key for a name as `torch.cuda.get_device_name` gives it, e.g. "NVIDIA H100 80GB HBM3"."""
    name = device_name.lower()
    if "h200" in name:
        return "H200 NVL" if "nvl" in name else "H200"
    if "h100" in name:
        if "nvl" in name:
            return "H100 NVL"
        return "H100 PCIe" if "pcie" in name or "hbm2e" in name else "H100 SXM"
    if "a100" in name:
        return "A100"
    if re.search(r"\bl4\b", name):  # not the L40
        return "L4"
    if re.search(r"\brtx 4090\b", name):
        return "RTX 4090"
    return None


def matmul_dtype(precision: str, float32_matmul_precision: str) -> str:
    """The table's column for a Lightning precision ("bf16-mixed", "16-mixed", "32-true", ...)."""
    if precision.startswith(("bf16", "16")):
        return "bf16"
    return "fp32" if float32_matmul_precision == "highest" else "tf32"


def peak_flops(device_name: str, precision: str, float32_matmul_precision: str | None = None) -> float | None:
    """Dense peak FLOP/s of one GPU named device_name at a training precision; None for a GPU not in the table."""
    model = gpu_model(device_name)
    if model is None:
        return None
    if float32_matmul_precision is None:
        float32_matmul_precision = torch.get_float32_matmul_precision()
    return DENSE_TFLOPS[model][COLUMNS[matmul_dtype(precision, float32_matmul_precision)]] * 1e12
