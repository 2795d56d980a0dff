"""The `minigpt train` and `minigpt prepare` commands: Lightning's CLI without subcommands, one directory per run.

`train.py` is a thin wrapper around `main`. Everything a run writes goes under `runs/<name>/`: the resolved
`config.yaml`, `checkpoints/{last,best}.ckpt` and the logger's files. Settings are checked before anything is
prepared, downloaded or written, and a fresh run that fails before its first training step leaves no directory.
`prepare` reads the same configs and options and only builds the token cache the data settings name.
"""

import contextlib
import shutil
import sys
import time
from dataclasses import asdict
from importlib.resources import as_file, files
from pathlib import Path
from typing import Literal  # jsonargparse reads the argument types below

import torch
from jsonargparse import set_parsing_settings
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from minigpt.callbacks import AttentionMaps, HellaSwag, PrintProgress, SaveLastOnInterrupt
from minigpt.checkpoint import load_checkpoint, load_weights
from minigpt.checkpoint_io import AtomicCheckpointIO
from minigpt.console import ModelSummaryTable, StepProgressBar, quiet_lightning, report
from minigpt.data import DataConfig, TextDataModule
from minigpt.errors import OneLineParseErrors, UserError, print_error
from minigpt.generate import encode_prompt
from minigpt.init_from import copy_weights, settle_settings
from minigpt.logger import make_logger
from minigpt.memory import TRAINING_BYTES, WEIGHT_BYTES, check_model_fits
from minigpt.module import GPTModule, ModelOptions

DEFAULT_CONFIG = "default.yaml"


def default_precision() -> str:
    """bf16 mixed precision on GPUs that have it, plain float32 elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class OneLineErrorParser(OneLineParseErrors, LightningArgumentParser):
    pass


class LogResolvedConfig(SaveConfigCallback):
    """Writes config.yaml into the run directory (Lightning's behaviour) and sends the same config to the logger."""

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            import yaml

            resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            trainer.logger.log_hyperparams({"config": resolved})


class MiniGPTCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, prog: str | None = None, description: str | None = None):
        # The dataclasses' field docstrings are the options' help.
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
        super().__init__(
            GPTModule,
            TextDataModule,
            run=False,
            args=args,
            parser_class=OneLineErrorParser,
            parser_kwargs={"prog": prog, "description": description or "Train a GPT (minigpt train)."},
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

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Lightning's core groups, with `--model.*` from `ModelOptions` (the fields of GPTConfig, OptimizerConfig and
        CompileConfig, flat) and `--data.*` from `DataConfig`; `instantiate_classes` builds the modules from them."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{key}": value for key, value in self.trainer_defaults.items()})
        parser.add_class_arguments(ModelOptions, "model", sub_configs=True)
        parser.add_class_arguments(DataConfig, "data", sub_configs=True)

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = TextDataModule(self._get(self.config_init, "data"))
        options = self._get(self.config_init, "model")
        # The GPT is built in this machine's memory; training's whole need is checked on its device (check_settings).
        check_model_fits(options, torch.device("cpu"), WEIGHT_BYTES, "its weights")
        self.model = options.build(tokenizer=self.datamodule.tokenizer)
        if self.init_weights is not None:
            copy_weights(self.model.model, self.init_weights)
            self.init_weights = None  # one copy of a large model is enough
        self.trainer = self.instantiate_trainer()

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
            help="wandb (online when wandb finds credentials, else offline in the run directory), csv, or false.",
        )
        parser.add_argument("--sample_tokens", type=int, default=300, help="Tokens of text printed after training.")
        parser.add_argument("--sample_prompt", type=str, default="", help="Prompt of that sample.")
        # Configurable as attention_maps.* in YAML and on the command line; LightningCLI adds it to the callbacks.
        parser.add_lightning_class_args(AttentionMaps, "attention_maps")
        parser.add_lightning_class_args(HellaSwag, "eval")  # --eval.hellaswag_every N and where its examples are
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("model.block_size", "data.block_size", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        self.run_dir, self.ckpt_path = resolve_run(self.config.runs_dir, self.config.name, self.config.ckpt_path)
        self.init_weights = None
        # A resumed run's weights are its checkpoint's; its shape is in the run's config.yaml.
        if self.config.model.init_from is not None and self.ckpt_path is None:
            self.init_weights, tokenizer = load_weights(self.config.model.init_from)
            settle_settings(self.config, self.init_weights.config, tokenizer)

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
        if trainer_config.get("enable_model_summary") is not False:
            callbacks.append(ModelSummaryTable())
        callbacks.append(PrintProgress())  # one line per validation; on a terminal, above the progress bar
        if trainer_config.get("enable_progress_bar"):
            callbacks.append(StepProgressBar())
        logger = make_logger(self.config.logger, self.run_dir, resuming=self.ckpt_path is not None)
        try:
            trainer = super().instantiate_trainer(
                default_root_dir=str(self.run_dir), logger=logger, callbacks=callbacks, **kwargs
            )
        except (MisconfigurationException, ValueError, ImportError) as e:
            # Raised by the Trainer's checks of its own arguments (an accelerator or strategy this machine lacks, a
            # device count it does not have), from the trainer.* settings; nothing has run yet.
            raise UserError(f"trainer settings: {e}") from None
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a writer the config chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


class PrepareCLI(MiniGPTCLI):
    """The training command's configs and options; only the data module is built, to prepare its token cache."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--clean",
            type=bool,
            default=False,
            help="Once the cache is prepared, remove the other caches of its dataset and tokenizer folder (other "
            "settings' caches, half-built ones, older layouts), saying what went and the disk freed.",
        )

    def before_instantiate_classes(self) -> None:
        pass  # no run directory

    def instantiate_classes(self) -> None:
        self.datamodule = TextDataModule(**vars(self.config.data))


def resolve_run(runs_dir: str, name: str | None, ckpt_path: str | None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None for a fresh run)."""
    runs = Path(runs_dir)
    if runs.exists() and not runs.is_dir():
        raise UserError(f"runs_dir={runs_dir!r} is a file: name a folder for the run directories")
    if ckpt_path == "last":
        run_dir = runs / name if name else newest_run(runs)
        last = run_dir / "checkpoints" / "last.ckpt" if run_dir else None
        if last is None or not last.is_file():
            where = run_dir if run_dir else runs
            raise UserError(f"no last.ckpt under {where} to resume from: train first, or pass --ckpt_path PATH")
        return run_dir, last
    if ckpt_path is not None:
        ckpt = Path(ckpt_path)
        if not ckpt.is_file():
            raise UserError(f"checkpoint {ckpt} does not exist: pass --ckpt_path last or an existing .ckpt")
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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`minigpt train` (and `python train.py`): parse, check, train, report. A UserError is one line, exit code 2."""
    return run_command(argv, lambda args: train(args, prog))


def prepare(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`minigpt prepare`: build the token cache that the config's data settings name; no model, no training."""
    description = "Build the token cache of a config's data settings (minigpt prepare): data.* options, --clean."

    def command(args: list[str]) -> None:
        cli = PrepareCLI(args, prog, description)
        prepare_cache(cli.datamodule, cli.config.clean)

    return run_command(argv, command)


def prepare_cache(data: TextDataModule, clean: bool) -> None:
    data.prepare_data()
    if clean:  # only once this cache is whole: a preparation that fails leaves the others as they were
        data.cache.clean()
    data.check_windows()  # the config's block_size fits the data: say so now, not when training starts


def run_command(argv: list[str] | None, command) -> int:
    """Run command(args) on the arguments, with the default config unless one is given; the exit code."""
    quiet_lightning()
    # TF32 tensor cores for the float32 matmuls that remain (all of them under 32-true precision).
    torch.set_float32_matmul_precision("high")
    args = list(sys.argv[1:] if argv is None else argv)
    # `python train.py` alone trains the default config; a --config given replaces it. A fine-tuning run without a
    # --config starts from the defaults: the default config's small shape would contradict the weights'.
    given = [arg.partition("=")[0] for arg in args]
    if not {"-c", "--config", "--model.init_from"} & set(given):
        args = ["--config", DEFAULT_CONFIG, *args]
    try:
        with contextlib.ExitStack() as shipped_files:
            args = resolve_config_paths(args, shipped_files)
            check_config_files(args)
            command(args)
    except SystemExit as exit_:  # parse errors, --help and --print_config
        return exit_.code or 0
    except UserError as err:
        return print_error(err)
    return 0


def train(args: list[str], prog: str | None = None) -> None:
    cli = MiniGPTCLI(args, prog)
    check_settings(cli)
    fit(cli)
    if cli.trainer.is_global_zero:
        config = cli.config
        report(cli.run_dir, cli.trainer, cli.model, cli.datamodule.encoding, config.sample_tokens, config.sample_prompt)
    if isinstance(cli.trainer.logger, WandbLogger):
        import wandb

        wandb.finish()  # flush the run's files now, not at interpreter exit


def resolve_config_paths(args: list[str], shipped_files: contextlib.ExitStack) -> list[str]:
    """args with each --config or --data value that is no file here but names a shipped config replaced by that
    config's path: `--config shakespeare_char`, `--config configs/gpt2_124m.yaml` outside a checkout, `--data
    tinystories` for configs/data/tinystories.yaml. The shipped configs are package data (minigpt.configs)."""
    resolved = list(args)
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag not in ("-c", "--config", "--data"):
            continue
        if not eq:
            if i + 1 >= len(args):
                continue
            i, value = i + 1, args[i + 1]
        if Path(value).is_file() or value.lstrip().startswith(("{", "[")):  # a file here, or YAML text
            continue
        shipped = files("minigpt.configs")
        relative = value.removeprefix("configs/")
        if flag == "--data" and not relative.startswith("data/"):
            relative = f"data/{relative}"
        for candidate in (relative, f"{relative}.yaml"):
            if candidate.endswith(".yaml") and shipped.joinpath(candidate).is_file():
                path = str(shipped_files.enter_context(as_file(shipped.joinpath(candidate))))
                resolved[i] = f"{flag}={path}" if eq else path
                break
    return resolved


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
            raise UserError(f"config {path} is not valid YAML: {problem}{where}") from None


def check_resumable(ckpt_path: Path, module: GPTModule) -> None:
    """Refuse, in one line, a checkpoint that is unreadable or of another model shape than this run's."""
    saved, _ = load_checkpoint(ckpt_path)
    if saved.config != module.config:
        differ = ", ".join(
            f"{key}={value} (this run: {getattr(module.config, key)})"
            for key, value in asdict(saved.config).items()
            if getattr(module.config, key) != value
        )
        raise UserError(
            f"checkpoint {ckpt_path} is of another model shape: {differ}; resume with the run's config.yaml"
        )


def check_settings(cli: MiniGPTCLI) -> None:
    """Refuse settings that cannot train, before any data is prepared, W&B is started or a run directory is made.

    Each class checks its own fields when it is built (GPTConfig, GPTModule, TextDataModule, the Trainer); these are
    the settings that only fail later, or only together.
    """
    trainer = cli.trainer
    check_model_fits(cli.model.config, trainer.strategy.root_device, TRAINING_BYTES, "weights, gradients, AdamW state")
    if trainer.max_steps == 0 or (trainer.max_steps < 0 and cli.model.optimizer_config.decay_steps is None):
        raise UserError(
            f"trainer.max_steps={trainer.max_steps}: give the number of steps to train (or model.decay_steps, "
            "where the learning-rate schedule ends, to train without a limit)"
        )
    for name in ("log_every_n_steps", "accumulate_grad_batches"):
        if getattr(trainer, name) < 1:
            raise UserError(f"trainer.{name}={getattr(trainer, name)} must be >= 1")
    interval = trainer.val_check_interval  # Lightning refuses a fraction of an epoch itself (the stream is endless)
    if isinstance(interval, int) and interval < 1:
        raise UserError(f"trainer.val_check_interval={interval}: give a number of steps >= 1")
    cli.datamodule.check_shared_validation(trainer.world_size)
    if trainer.world_size > 1:  # DDP trains from a cache prepared ahead (TextDataModule.check_prepared says why)
        cli.datamodule.check_prepared()
    if cli.config.sample_tokens > 0:
        try:
            encode_prompt(cli.datamodule.encoding, cli.config.sample_prompt)
        except UserError as e:
            raise UserError(f"sample_prompt: {e}") from None


def fit(cli: MiniGPTCLI) -> None:
    """Train. A fresh run that fails before its first training step (a bad setting found only by then, Ctrl-C while
    the data is prepared) leaves no run directory behind; a resumed run's directory is always kept."""
    fresh = not cli.run_dir.exists()
    try:
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
    except BaseException:
        if fresh and cli.trainer.global_step == 0 and cli.trainer.is_global_zero:
            if isinstance(cli.trainer.logger, WandbLogger):
                import wandb

                wandb.finish(exit_code=1)  # W&B's files are closed before their folder goes
            shutil.rmtree(cli.run_dir, ignore_errors=True)
        raise
