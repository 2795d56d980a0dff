"""The `LightningDataModule`: settings checked up front, the token cache prepared once, loaders of windows."""

import os
import sys
from dataclasses import asdict, dataclass, fields

import lightning as L
import numpy as np
import tiktoken
import torch
from torch.utils.data import DataLoader

from minigpt.data.cache import SPLITS, TokenCache
from minigpt.data.sources import MIN_REPEAT, Source
from minigpt.data.windows import TokenStream, TokenWindows, cut_windows
from minigpt.errors import UserError
from minigpt.tokenizer import available, get_tokenizer


@dataclass(frozen=True)
class DataConfig(Source):
    """The `--data.*` settings: a text source (`Source`'s fields) and how its tokens become batches of windows.

    Each is checked when the config is made, before any download or cache is touched.
    """

    token_budget: int | None = None
    """Stop reading after the document that brings the token count to this many."""
    val_fraction: float = 0.1
    """The share of documents that validates; a single document (one text file) validates on the last val_fraction
    of its characters, as nanoGPT does."""
    tokenizer: str = "bytes"
    """`bytes` (257 byte-level tokens, offline), `gpt2`, or another tiktoken encoding name."""
    block_size: int = 256
    """Tokens per training window (the model's context length)."""
    batch_size: int = 32
    """Windows per batch."""
    seed: int = 1337
    """Seeds the training windows, together with the DDP rank and the batch number."""
    val_batches: int = 20
    """How many fixed batches form the validation set (shared out among DDP processes)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    num_proc: int | None = None
    """Processes that tokenize, a pool over batches of rows; None: every core. Any number writes the same shards."""
    data_dir: str = "data"
    """Root of the token caches, written to `<data_dir>/<dataset_name>/<tokenizer>/`."""
    dataset_name: str | None = None
    """The cache folder's name; None derives it from the source."""
    tokens_on_device: bool = False
    """Copy all the tokens to the training device once and cut the windows there: the loader then passes only where
    each window starts, so there is no host work or host-to-GPU copy per batch. The batches are the same as without
    it. For token sets that fit in GPU memory (4 bytes per token), such as Tiny Shakespeare's 1 MB."""

    def __post_init__(self):
        if self.source not in ("embedded", "repeats", "text", "hub"):
            raise UserError(f"unknown source {self.source!r}; use embedded, repeats, text or hub")
        if self.source in ("text", "hub") and not self.path:
            raise UserError(f"source {self.source!r} needs a path (a file, folder, glob, URL or hub dataset id)")
        if self.tokenizer not in available():
            raise UserError(f"unknown tokenizer {self.tokenizer!r}; available: {', '.join(available())}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction={self.val_fraction} must lie strictly between 0 and 1")
        if self.val_batches < 1:
            raise UserError(f"val_batches={self.val_batches} must be at least 1: the validation set needs a batch")
        least_repeat = ("repeat_documents", 1), ("repeat_max_length", MIN_REPEAT)
        for setting, least in (("batch_size", 1), ("num_workers", 0), ("seed", 0), *least_repeat):
            if getattr(self, setting) < least:
                raise UserError(f"data.{setting}={getattr(self, setting)} must be >= {least}")
        for setting in ("token_budget", "num_proc"):
            if getattr(self, setting) is not None and getattr(self, setting) < 1:
                raise UserError(f"data.{setting}={getattr(self, setting)} must be >= 1, or unset")
        if os.path.exists(self.data_dir) and not os.path.isdir(self.data_dir):
            raise UserError(f"data.data_dir={self.data_dir!r} is a file: name a folder for the token caches")

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size, which the model's embedding must match."""
        return get_tokenizer(self.tokenizer).n_vocab


SETTINGS = frozenset(field.name for field in fields(DataConfig))


class TextDataModule(L.LightningDataModule):
    """A text dataset as token memmaps and batches of (x, y) windows of `block_size` tokens."""

    def __init__(self, config: DataConfig | None = None, **settings):
        """config, or DataConfig's fields as keywords (TextDataModule(block_size=16)). Its settings read as the
        module's attributes (`data.batch_size`), as Lightning's own data modules have them."""
        super().__init__()
        self.config = config if config is not None else DataConfig(**settings)
        self.save_hyperparameters(asdict(self.config))  # for the logger; the config is what the module reads
        self._device_tokens: dict[str, torch.Tensor] = {}  # split -> its tokens on the device, with tokens_on_device
        # The tokenizer itself loads only when first needed. The cache's folder name, data.dataset_name or one
        # derived from the source.
        self.dataset_name = self.config.dataset_name or self.config.default_name()
        self.cache_dir = os.path.join(self.config.data_dir, self.dataset_name, self.config.tokenizer)
        c = self.config  # its source settings are `Source`'s, which the cache reads
        self.cache = TokenCache(c, c.tokenizer, c.val_fraction, c.token_budget, c.num_proc, self.cache_dir)

    def __getattr__(self, name: str):
        # Only for names the instance lacks: the settings, read from the one place they are kept.
        config = self.__dict__.get("config")
        if config is not None and name in SETTINGS:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tokenizer as a `tiktoken.Encoding`, e.g. to decode samples."""
        return get_tokenizer(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size, which the model's embedding must match."""
        return self.config.vocab_size

    def prepare_data(self) -> None:
        """Tokenize the source into the cache once; reuse the cache when its meta matches.

        Run by a Trainer, it also checks that each split holds a window: before training starts a logger or writes
        a run directory.
        """
        self.cache.build()
        if self.trainer is not None:
            self.check_windows()

    def check_prepared(self) -> None:
        """UserError unless the token cache is prepared and matches the settings: what a DDP run starts from.

        `minigpt train` under DDP calls this instead of letting `prepare_data` build a missing cache on one process
        per node (Lightning's `prepare_data_per_node`), deliberately: a large source tokenizes for longer than the
        other processes wait at the process group's barrier (30 minutes), holding their GPUs idle meanwhile, and nodes
        that share one file system would write the same shards at once. `minigpt prepare` builds it ahead.
        """
        problem = self.cache.problem(self.cache.fingerprint())
        if problem is not None:
            raise UserError(
                f"the token cache {self.cache_dir} is not ready ({problem}) and a run of several processes does not "
                "prepare it: run `minigpt prepare --config ...` with this run's config and data options first"
            )

    def setup(self, stage: str | None = None) -> None:
        """Read the prepared token shards read-only and check each holds at least one window."""
        meta = self.cache.read_meta()
        if meta is None:
            raise FileNotFoundError(f"no token cache in {self.cache_dir}; call prepare_data() first")
        self.dtype = meta["dtype"]
        self.shards = {split: self.cache.shards(split, meta) for split in SPLITS}
        self.data = {split: TokenStream(self.shards[split], self.dtype) for split in SPLITS}
        self.check_windows({split: len(data) for split, data in self.data.items()})

    def check_windows(self, tokens: dict[str, int] | None = None) -> None:
        """UserError unless each split holds one window of block_size + 1 tokens; counts: the prepared cache's."""
        tokens = tokens or self.cache.read_meta()["tokens"]
        for split in SPLITS:
            if tokens[split] < self.block_size + 1:
                raise UserError(
                    f"the {split} split of {self.dataset_name} holds {tokens[split]} tokens, fewer than one window "
                    f"of block_size + 1 = {self.block_size + 1}; use a smaller block_size or more text"
                )

    def _loader(self, windows: TokenWindows) -> DataLoader:
        # Batches come whole from the dataset (batch_size=None). Lightning copies pinned batches non-blocking.
        return DataLoader(
            windows,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """An endless stream of random windows, different per DDP rank, resuming where a checkpoint left off."""
        trainer = self.trainer
        # Lightning restores global_step before asking for this loader, so a resumed run sees the same batches.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank = trainer.global_rank if trainer else 0
        batches = range(start, sys.maxsize)
        return self._loader(self._windows("train", batches, self.seed, rank))

    def val_dataloader(self) -> DataLoader:
        """The same `val_batches` batches of evenly spaced windows, every epoch and every run; under DDP each rank
        validates every world-size-th of them (the validation loss is averaged over all of them)."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.check_shared_validation(world)
        return self._loader(self._windows("val", range(rank, self.val_batches, world)))

    def check_shared_validation(self, world: int) -> None:
        """UserError unless the val_batches can be shared out among world training processes, one at least each."""
        if self.val_batches < world:
            raise UserError(
                f"data.val_batches={self.val_batches} is fewer than the {world} training processes, which share them: "
                f"set data.val_batches to at least {world}"
            )

    def _windows(self, split: str, batches: range, seed: int | None = None, rank: int = 0) -> TokenWindows:
        return TokenWindows(
            self.shards[split],
            self.dtype,
            self.block_size,
            self.batch_size,
            batches,
            seed,
            rank,
            self.tokens_on_device,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With tokens_on_device, the batch arrives as window starts (B,) and leaves as (x, y) windows."""
        if not self.tokens_on_device:
            return batch
        return self.cut_windows("train" if self.trainer.training else "val", batch)

    def cut_windows(self, split: str, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, T) int64: the windows of `split` at `starts` (B,), cut from its tokens on starts' device."""
        tokens = self._device_tokens.get(split)
        if tokens is None or tokens.device != starts.device:
            # int32: every tokenizer's ids fit, at half the memory of int64.
            tokens = torch.from_numpy(self.data[split][:].astype(np.int32)).to(starts.device)
            self._device_tokens[split] = tokens
        return cut_windows(tokens, starts, self.block_size)

    def teardown(self, stage: str) -> None:
        self._device_tokens.clear()
