"""The training command line: Lightning's CLI without subcommands, one directory per run.

`train.py` is a thin wrapper around `main`. Everything a run writes goes under `runs/<name>/`: the resolved
`config.yaml`, `checkpoints/{last,best}.ckpt` and the logger's files.
"""

import logging
import netrc
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Literal  # jsonargparse reads the argument types below

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from minigpt.callbacks import AttentionMaps, PrintProgress, SaveLastOnInterrupt
from minigpt.checkpoint import load_checkpoint
from minigpt.checkpoint_io import AtomicCheckpointIO
from minigpt.data import TextDataModule
from minigpt.generate import encode_prompt, generate
from minigpt.module import GPTModule

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def default_precision() -> str:
    """bf16 mixed precision on GPUs that have it, plain float32 elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class OneLineErrorParser(LightningArgumentParser):
    """Parse errors (unknown key, wrong type, missing or malformed config file) as one line and exit code 2."""

    def error(self, message: str, ex: Exception | None = None):
        one_line = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        sys.stderr.write(f"error: {one_line} (see --help)\n")
        sys.exit(2)


class LogResolvedConfig(SaveConfigCallback):
    """Writes config.yaml into the run directory (Lightning's behaviour) and sends the same config to the logger."""

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            import yaml

            resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            trainer.logger.log_hyperparams({"config": resolved})


class MiniGPTCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None):
        super().__init__(
            GPTModule,
            TextDataModule,
            run=False,
            args=args,
            parser_class=OneLineErrorParser,
            save_config_callback=LogResolvedConfig,
            save_config_kwargs={"overwrite": True},  # a resumed run rewrites its config.yaml
            seed_everything_default=1337,
            auto_configure_optimizers=False,  # GPTModule.configure_optimizers builds AdamW + schedule
            trainer_defaults={
                "precision": default_precision(),
                "max_steps": 2000,
                "val_check_interval": 250,
                "check_val_every_n_epoch": None,  # the training stream is endless: validate by steps
                "log_every_n_steps": 25,
                "gradient_clip_val": 1.0,
                "enable_progress_bar": sys.stderr.isatty(),
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=str | None, default=None, help="Run name: its directory is runs_dir/name.")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Where run directories are created.")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume: 'last' (the named run's, else the newest run's last.ckpt) or a checkpoint path.",
        )
        parser.add_argument(
            "--logger",
            type=Literal["wandb", "csv"] | bool,
            default="wandb",
            help="wandb (online when logged in, else offline in the run directory), csv, or false for none.",
        )
        parser.add_argument("--sample_tokens", type=int, default=300, help="Tokens of text printed after training.")
        parser.add_argument("--sample_prompt", type=str, default="", help="Prompt of that sample.")
        # Configurable as attention_maps.* in YAML and on the command line; LightningCLI adds it to the callbacks.
        parser.add_lightning_class_args(AttentionMaps, "attention_maps")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.tokenizer", "model.tokenizer", apply_on="parse")
        parser.link_arguments("model.block_size", "data.block_size", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        self.run_dir, self.ckpt_path = resolve_run(self.config.runs_dir, self.config.name, self.config.ckpt_path)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        if self.ckpt_path is not None:  # before the Trainer reports its devices: a refused checkpoint is one line
            check_resumable(self.ckpt_path, self.model)
        self._get(self.config_init, "attention_maps").check_block_size(self.model.config.block_size)
        trainer_config = self._get(self.config_init, "trainer")
        callbacks = list(trainer_config.get("callbacks") or [])
        callbacks += [
            ModelCheckpoint(
                dirpath=self.run_dir / "checkpoints",
                filename="best",
                monitor="val/loss",
                mode="min",
                save_top_k=1,
                save_last=True,
                auto_insert_metric_name=False,
            ),
            SaveLastOnInterrupt(self.run_dir / "checkpoints" / "last.ckpt"),
        ]
        if trainer_config.get("enable_progress_bar"):
            callbacks.append(RichProgressBar())
        else:
            callbacks.append(PrintProgress())
        trainer = super().instantiate_trainer(
            default_root_dir=str(self.run_dir),
            logger=make_logger(self.config.logger, self.run_dir),
            callbacks=callbacks,
            **kwargs,
        )
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a writer the config chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def resolve_run(runs_dir: str, name: str | None, ckpt_path: str | None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None for a fresh run)."""
    runs = Path(runs_dir)
    if ckpt_path == "last":
        run_dir = runs / name if name else newest_run(runs)
        last = run_dir / "checkpoints" / "last.ckpt" if run_dir else None
        if last is None or not last.is_file():
            where = run_dir if run_dir else runs
            raise FileNotFoundError(f"no last.ckpt under {where} to resume from: train first, or pass --ckpt_path PATH")
        return run_dir, last
    if ckpt_path is not None:
        ckpt = Path(ckpt_path)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} does not exist: pass --ckpt_path last or an existing .ckpt")
        # A checkpoint inside runs/<name>/checkpoints/ continues in that run's directory.
        if name is None and ckpt.parent.name == "checkpoints":
            return ckpt.parent.parent, ckpt
        return runs / (name or fresh_name(runs)), ckpt
    return runs / (name or fresh_name(runs)), None


def newest_run(runs: Path) -> Path | None:
    """The run directory whose last.ckpt was written most recently."""
    lasts = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return lasts[-1].parent.parent if lasts else None


def fresh_name(runs: Path) -> str:
    name = stem = time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while (runs / name).exists():
        name, suffix = f"{stem}-{suffix}", suffix + 1
    return name


def wandb_logged_in() -> bool:
    """True when W&B has credentials (API key in the environment or ~/.netrc) and is not forced offline."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_logger(kind: str | bool, run_dir: Path) -> Logger | bool:
    if kind is False:
        return False
    if kind is True or kind == "wandb":
        online = wandb_logged_in()
        if not online:
            print(
                f"W&B: not logged in, logging offline to {run_dir / 'wandb'}; upload later with "
                f"`wandb sync {run_dir / 'wandb'}/offline-run-*`"
            )
        import wandb

        # An absolute directory: W&B's service process resolves paths against its own working directory. Quiet:
        # no closing table of every metric (the run's own report follows); the run's address still shows.
        return WandbLogger(
            save_dir=str(run_dir.resolve()), project="minigpt", name=run_dir.name, offline=not online,
            settings=wandb.Settings(quiet=True),
        )  # fmt: skip
    return CSVLogger(save_dir=str(run_dir), name="", version="")


def quiet_lightning() -> None:
    """Drop Lightning's advertising and warnings about its own internals from the run's output."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith(("💡 Tip", "Seed set to"))
    )
    # seed_everything logs through its own logger ("[rank: R] Seed set to N" under DDP).
    logging.getLogger("lightning.fabric.utilities.seed").addFilter(lambda record: "Seed set to" not in str(record.msg))
    # main() always hands LightningCLI the argument list (it adds the default --config).
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main(argv: list[str] | None = None) -> int:
    quiet_lightning()
    # TF32 tensor cores for the float32 matmuls that remain (all of them under 32-true precision).
    torch.set_float32_matmul_precision("high")
    args = list(sys.argv[1:] if argv is None else argv)
    # `python train.py` alone trains the default config; a --config given replaces it.
    if not any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in args):
        args = ["--config", str(DEFAULT_CONFIG), *args]
    try:
        check_config_files(args)
        cli = MiniGPTCLI(args)  # parse errors and --print_config exit through SystemExit
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
    except SystemExit as exit_:
        return exit_.code or 0
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cli.trainer.is_global_zero:
        report(cli)
    if isinstance(cli.trainer.logger, WandbLogger):
        import wandb

        wandb.finish()  # flush the run's files now, not at interpreter exit
    return 0


def check_config_files(args: list[str]) -> None:
    """Refuse, in one line that names it, a --config file that is not YAML (jsonargparse names no file)."""
    import yaml

    paths = [value for flag, value in zip(args, args[1:], strict=False) if flag in ("-c", "--config")]
    paths += [arg.removeprefix("--config=") for arg in args if arg.startswith("--config=")]
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # the parser reports a missing or unreadable file itself
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ValueError(f"config {path} is not valid YAML: {problem}{where}") from None


def check_resumable(ckpt_path: Path, module: GPTModule) -> None:
    """Refuse, in one line, a checkpoint that is unreadable or of another model shape than this run's."""
    saved, _ = load_checkpoint(ckpt_path)
    if saved.config != module.config:
        differ = ", ".join(
            f"{key}={value} (this run: {getattr(module.config, key)})"
            for key, value in asdict(saved.config).items()
            if getattr(module.config, key) != value
        )
        raise ValueError(
            f"checkpoint {ckpt_path} is of another model shape: {differ}; resume with the run's config.yaml"
        )


def report(cli: MiniGPTCLI) -> None:
    """Where the run's files are, and a sample from the model just trained."""
    ckpt_dir = cli.run_dir / "checkpoints"
    print(f"\nrun directory: {cli.run_dir}")
    print(f"  config:      {cli.run_dir / 'config.yaml'}")
    for path in sorted(ckpt_dir.glob("*.ckpt")):
        print(f"  checkpoint:  {path}")
    if isinstance(cli.trainer.logger, WandbLogger):
        print(f"  W&B run:     {cli.run_dir / 'wandb'}")
    elif isinstance(cli.trainer.logger, CSVLogger):
        print(f"  metrics:     {Path(cli.trainer.logger.log_dir) / 'metrics.csv'}")
    if cli.config.sample_tokens <= 0:
        return
    enc = cli.datamodule.encoding
    model = cli.model.model.eval()
    prompt = torch.tensor([encode_prompt(enc, cli.config.sample_prompt)], device=cli.model.device)  # (1, T)
    tokens = generate(model, prompt, cli.config.sample_tokens, temperature=0.8, top_k=200, seed=0)
    print(f"\nsample ({cli.config.sample_tokens} tokens, temperature 0.8):")
    print(enc.decode(tokens[0, prompt.size(1) :].tolist()))
