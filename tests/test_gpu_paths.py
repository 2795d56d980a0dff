"""What a CUDA run chooses (fused AdamW, bf16-mixed, clipping, compile, the device of the sample, the peak FLOP/s of
MFU, no host sync in a step), forced and run on this CPU: a GPU is rarely at hand, and a crash found there costs it."""

import csv
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from minigpt import console
from minigpt.model import GPT, GPTConfig
from minigpt.module import GPTModule, ModelOptions, flops_per_token
from minigpt.peak_flops import DENSE_TFLOPS, gpu_model, peak_flops
from tests.test_train import REPO, TINY, free_port, load, train

GPU_RUN = ["--model.fused", "true", "--trainer.precision", "bf16-mixed", "--trainer.gradient_clip_val", "1.0"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def record_at_step(monkeypatch, record) -> None:
    """Calls record(optimizer) with the gradients each AdamW step applies: Lightning hands the step a closure that
    runs the backward pass and then the clipping, so they are read after it."""
    step = torch.optim.AdamW.step

    def recording_step(self, closure=None):
        if closure is None:  # fp16's loss scaler steps after running the closure itself
            record(self)
            return step(self)
        with torch.enable_grad():
            loss = closure()
        record(self)
        return step(self, lambda: loss)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)


def gradients(optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


@pytest.fixture
def step_grad_norms(monkeypatch):
    """The norm of the gradients each AdamW step applies."""
    norms: list[float] = []
    record_at_step(monkeypatch, lambda opt: norms.append(float(torch.stack([g.norm() for g in gradients(opt)]).norm())))
    return norms


# --- 1. clipping with the optimizer a GPU run picks -------------------------------------------------------
def test_lightnings_own_clipping_refuses_the_fused_optimizer_we_pick():
    """Why GPTModule clips by itself: Lightning's bf16-mixed plugin raises for fused AdamW at the first step."""
    import lightning as L

    class Fused(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), fused=True)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        trainer.fit(Fused(), loader)


def test_fused_adamw_under_bf16_mixed_trains_with_clipping(in_tmp, step_grad_norms):
    assert train("--name", "r", "--logger", "csv", *GPU_RUN[:4], "--trainer.gradient_clip_val", "0.05") == 0
    run = in_tmp / "runs" / "r"
    ckpt = load(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    assert all(group["fused"] for group in ckpt["optimizer_states"][0]["param_groups"])
    assert len(step_grad_norms) == 6 and max(step_grad_norms) <= 0.05 * 1.001  # every step clipped to 0.05
    logged = [float(row["train/grad_norm"]) for row in metrics(run) if row.get("train/grad_norm")]
    assert logged and min(logged) > 0.05  # the norms before clipping: clipping did something


def test_clipping_by_value_with_the_fused_optimizer(in_tmp, monkeypatch):
    largest: list[float] = []
    record_at_step(monkeypatch, lambda opt: largest.append(max(float(g.abs().max()) for g in gradients(opt))))
    args = [*GPU_RUN[:4], "--trainer.gradient_clip_val", "1e-4", "--trainer.gradient_clip_algorithm", "value"]
    assert train(*args) == 0
    assert len(largest) == 6 and max(largest) == pytest.approx(1e-4)


# fp16 with a loss scaler, which Lightning's `--trainer.precision 16-mixed` replaces by bf16 on a CPU: its plugin named.
FP16_WITH_SCALER = [
    "--trainer.precision", "null", "--trainer.plugins",
    '{"class_path": "lightning.pytorch.plugins.precision.MixedPrecision", '
    '"init_args": {"precision": "16-mixed", "device": "cpu"}}',
]  # fmt: skip


def test_fp16_loss_scale_is_taken_off_before_the_fused_optimizer_is_clipped(in_tmp, step_grad_norms, monkeypatch):
    """16-mixed: the fused step would unscale the gradients itself, after clipping; the norm clipped (and logged) is
    that of the true gradients, as a float32 run has them, not of gradients times the loss scale (65536)."""
    scales = []
    unscale = torch.amp.GradScaler.unscale_
    monkeypatch.setattr(
        torch.amp.GradScaler, "unscale_", lambda self, opt: scales.append(self.get_scale()) or unscale(self, opt)
    )
    first_norm = {}
    for precision, args in (("32", ["--trainer.precision", "32-true"]), ("16", FP16_WITH_SCALER)):
        run = ["--name", precision, "--logger", "csv", "--model.fused", "true", "--trainer.gradient_clip_val", "0.05"]
        assert train(*run, *args) == 0
        first_norm[precision] = float(metrics(in_tmp / "runs" / precision)[0]["train/grad_norm"])
    assert scales == [65536.0] * 6  # the fp16 run scaled its loss, and each step took the scale off
    assert first_norm["16"] == pytest.approx(first_norm["32"], rel=0.05)
    assert len(step_grad_norms) == 12 and max(step_grad_norms) <= 0.05 * 1.001


@pytest.mark.parametrize("fused", ["auto", "false"])
def test_fused_auto_is_off_on_the_cpu_and_false_is_off(in_tmp, fused):
    assert train("--name", "r", "--model.fused", fused) == 0
    ckpt = load(in_tmp / "runs" / "r" / "checkpoints" / "last.ckpt")
    assert not any(group["fused"] for group in ckpt["optimizer_states"][0]["param_groups"])


def torchrun(cwd: Path, nproc: int, *args: str):
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
        "127.0.0.1", "--master-port", str(free_port()), str(REPO / "train.py"), *args,
    ]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_clipping_with_the_fused_optimizer_on_two_ddp_processes(tmp_path, monkeypatch):
    """DDP on two CPU processes (gloo): each rank clips the averaged gradients by the whole model's norm."""
    from minigpt.cli import prepare

    monkeypatch.chdir(tmp_path)
    assert prepare([*TINY[:8], "--data.batch_size", "4"]) == 0
    args = [*TINY, *GPU_RUN[:4], "--trainer.gradient_clip_val", "0.05", "--trainer.accelerator", "cpu",
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--name", "two", "--logger", "csv",
            "--sample_tokens", "0"]  # fmt: skip
    done = torchrun(tmp_path, 2, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "two"
    logged = [float(row["train/grad_norm"]) for row in metrics(run) if row.get("train/grad_norm")]
    assert logged and min(logged) > 0.05
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_under_fsdp_the_root_module_clips_by_the_norm_of_all_shards():
    """Lightning's FSDP strategy and torch's FSDP1 both refuse a CPU, so the choice is checked with a stand-in
    root: the norm comes from FSDP's own clip_grad_norm_ (every shard's gradients), not torch's per-rank one."""
    from unittest import mock

    from torch.distributed.fsdp import FullyShardedDataParallel

    module = ModelOptions(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8).build()
    for p in module.parameters():
        p.grad = torch.full_like(p, 10.0)
    root = mock.Mock(spec=FullyShardedDataParallel)
    root.clip_grad_norm_.return_value = torch.tensor(123.0)
    trainer = mock.Mock(precision_plugin=object(), strategy=mock.Mock(model=root))
    with mock.patch.object(GPTModule, "trainer", trainer):
        module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    root.clip_grad_norm_.assert_called_once_with(1.0)
    assert module._grad_norm == 123.0
    assert all((p.grad == 10.0).all() for p in module.parameters())  # left to the root: not clipped per rank


# --- 2. the sample after training runs where training ran ---------------------------------------------------
def test_the_sample_after_training_runs_on_the_training_device(in_tmp, monkeypatch):
    """Lightning moves the module to the CPU when fit returns; the sample goes back to the strategy's device, under
    the training precision. The device here is `meta`, standing for a GPU: what the sampling code is handed is
    what is checked."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    seen = {}

    def recording_generate(model, idx, max_new_tokens, **sampling):
        seen.update(model=next(model.parameters()).device, idx=idx.device, autocast=torch.is_autocast_enabled("cpu"))
        return torch.zeros(1, idx.size(1) + max_new_tokens, dtype=torch.long)  # (1, T + n): text for the report

    real_report = console.report

    def report_on_meta(run_dir, trainer, module, *args):
        assert next(module.parameters()).device.type == "cpu"  # where Lightning's teardown left it
        monkeypatch.setattr(SingleDeviceStrategy, "root_device", property(lambda self: torch.device("meta")))
        return real_report(run_dir, trainer, module, *args)

    monkeypatch.setattr(console, "generate", recording_generate)
    monkeypatch.setattr("minigpt.cli.report", report_on_meta)
    assert train("--trainer.precision", "bf16-mixed") == 0
    assert seen["model"] == seen["idx"] == torch.device("meta")
    assert seen["autocast"]  # the bf16 autocast that training ran under


# --- 3. no host sync in a training step -----------------------------------------------------------------------
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__format__")


def test_training_steps_make_no_host_sync_outside_the_logging_interval(in_tmp, monkeypatch):
    """Reading a tensor's value on the host waits for the GPU. Over 60 steps logged every 20, record the batches in
    which the training loop (not validation, not checkpointing) does so outside torch.optim (whose scalar
    bookkeeping lives on the host for a non-capturable optimizer): only the three logging steps may."""
    batch = [0]  # the training batch being run
    training_step = GPTModule.training_step

    def counting_training_step(self, *args):
        batch[0] += 1
        return training_step(self, *args)

    syncs: dict[int, list[str]] = {}

    def counting(name):
        method = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            stack = traceback.extract_stack()[:-1]
            files = [frame.filename for frame in stack]
            in_batch = any(f.endswith("training_epoch_loop.py") for f in files)
            if in_batch and not any("torch/optim/" in f or "evaluation_loop" in f for f in files):
                where = next(frame for frame in reversed(stack) if "torch/_tensor" not in frame.filename)
                syncs.setdefault(batch[0], []).append(f"{name} at {where.filename}:{where.lineno}")
            return method(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(GPTModule, "training_step", counting_training_step)
    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    args = [
        "--name", "s", "--logger", "csv", "--trainer.max_steps", "60", "--trainer.log_every_n_steps", "20",
        "--trainer.val_check_interval", "60", "--trainer.enable_progress_bar", "true", "--sample_tokens", "0",
        *GPU_RUN,
    ]  # fmt: skip
    assert train(*args) == 0
    assert batch[0] == 60
    assert sorted(syncs) == [20, 40, 60], syncs  # the logging steps, and no other
    # At a logging step: the loss health check, the progress bar, and the logger reading each logged value.
    assert all(len(calls) <= 10 for calls in syncs.values()), syncs
    assert [row["step"] for row in metrics(in_tmp / "runs" / "s") if row.get("train/loss")] == ["19", "39", "59"]


# --- 4. the peak FLOP/s of MFU --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, model, bf16_tflops",
    [
        ("NVIDIA A100-SXM4-80GB", "A100", 312),
        ("NVIDIA A100 80GB PCIe", "A100", 312),
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5),
        ("NVIDIA H200", "H200", 989.4),
        ("NVIDIA GH200 480GB", "H200", 989.4),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5),
        ("NVIDIA L4", "L4", 121),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2),
    ],
)
def test_peak_flops_are_the_vendors_dense_bf16_figures(name, model, bf16_tflops):
    assert gpu_model(name) == model
    assert peak_flops(name, "bf16-mixed") == pytest.approx(bf16_tflops * 1e12)
    assert peak_flops(name, "16-mixed") == pytest.approx(bf16_tflops * 1e12)
    # float32 matmuls: TF32 at the training command's "high" matmul precision, plain fp32 at "highest".
    assert peak_flops(name, "32-true", "high") == pytest.approx(DENSE_TFLOPS[model][1] * 1e12)
    assert peak_flops(name, "32-true", "highest") <= peak_flops(name, "32-true", "high")


def test_unknown_gpus_and_the_cpu_have_no_peak():
    assert gpu_model("NVIDIA L40S") is None and gpu_model("Tesla T4") is None
    assert peak_flops("NVIDIA L40S", "bf16-mixed") is None


def test_mfu_is_logged_on_an_h200(in_tmp, monkeypatch):
    """The module's lookup, with the device named as an H200 reports itself: train/mfu is logged against 989.4."""
    monkeypatch.setattr("minigpt.module.device_name", lambda device: "NVIDIA H200")
    assert train("--name", "r", "--logger", "csv", "--trainer.precision", "bf16-mixed") == 0
    run = in_tmp / "runs" / "r"
    config = GPTConfig(**load(run / "checkpoints" / "last.ckpt")["minigpt"]["model_config"])
    per_token = flops_per_token(config, config.block_size)
    rows = [row for row in metrics(run) if row.get("train/mfu")]
    assert rows
    for row in rows:
        expected = float(row["train/tokens_per_sec"]) * per_token / 989.4e12
        assert float(row["train/mfu"]) == pytest.approx(expected, rel=1e-5)


# --- 7. AOTAutograd, the compile path a GPU runs, on this CPU ---------------------------------------------------
def test_compiled_training_runs_through_aot_autograd_in_one_graph_per_mode(in_tmp, monkeypatch):
    """`model.compile: true` as a GPU run has it (fused AdamW, bf16-mixed, clipping, reduce-overhead), compiled
    with AOTAutograd (inductor's front half) instead of inductor: the training graph and the evaluation graph, each
    whole (reduce-overhead's CUDA graphs need no graph break) and compiled once (no recompile as steps go by)."""
    counter = CompileCounterWithBackend("aot_eager")
    modes = []
    compile_ = torch.nn.Module.compile

    def compile_through_counter(self, *, mode=None):
        modes.append(mode)
        return compile_(self, backend=counter, fullgraph=True, dynamic=False)

    monkeypatch.setattr(GPT, "compile", compile_through_counter)
    torch._dynamo.reset()
    args = ["--name", "c", "--model.compile", "true", "--model.compile_mode", "reduce-overhead", *GPU_RUN]
    assert train(*args, "--data.tokens_on_device", "true") == 0
    assert modes == ["reduce-overhead"]
    assert counter.frame_count == 2  # training (with gradients) and validation (without)
    assert load(in_tmp / "runs" / "c" / "checkpoints" / "last.ckpt")["global_step"] == 6
