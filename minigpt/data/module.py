"""The `LightningDataModule`: settings checked up front, the token cache prepared once, loaders of windows."""

import os
import sys
from typing import Literal

import lightning as L
import numpy as np
import tiktoken
import torch
from torch.utils.data import DataLoader

from minigpt.data.cache import SPLITS, TokenCache
from minigpt.data.sources import Source
from minigpt.data.windows import TokenStream, TokenWindows, cut_windows
from minigpt.errors import UserError
from minigpt.tokenizer import available, get_tokenizer


class TextDataModule(L.LightningDataModule):
    """A text dataset as token memmaps and batches of (x, y) windows of `block_size` tokens.

    Args:
        source: Where the text comes from: `embedded` (the Python Language Reference that ships with CPython,
            works offline), `text` (local .txt files or a URL, each file one document) or `hub` (a HuggingFace
            hub dataset, or a local folder laid out like one).
        path: For `text`, a .txt file, a folder of them, a glob or a URL; for `hub`, the dataset id or folder.
        name: The hub dataset's configuration (subset), e.g. `sample-10BT`.
        split: The hub split to read; validation documents are taken out of it.
        text_column: The hub column that holds the text.
        streaming: Read the hub dataset as a stream (with `token_budget`, for sets too big to download).
        token_budget: Stop reading after the document that brings the token count to this many.
        val_fraction: The share of documents that validates; a single document (one text file) validates on
            the last `val_fraction` of its characters, as nanoGPT does.
        tokenizer: `bytes` (257 byte-level tokens, offline), `gpt2`, or another tiktoken encoding name.
        block_size: Tokens per training window (the model's context length).
        batch_size: Windows per batch.
        seed: Seeds the training windows, together with the DDP rank and the batch number.
        val_batches: How many fixed batches form the validation set (shared out among DDP processes).
        num_workers: DataLoader worker processes.
        num_proc: Processes that tokenize, a pool over batches of rows; None: every core. Any number writes the
            same shards.
        data_dir: Root of the token caches, written to `<data_dir>/<dataset_name>/<tokenizer>/`.
        dataset_name: The cache folder's name; None derives it from the source.
        tokens_on_device: Copy all the tokens to the training device once and cut the windows there: the loader
            then passes only where each window starts, so there is no host work or host-to-GPU copy per batch.
            The batches are the same as without it. For token sets that fit in GPU memory (4 bytes per token),
            such as Tiny Shakespeare's 1 MB.
    """

    def __init__(
        self,
        source: Literal["embedded", "text", "hub"] = "embedded",
        path: str | None = None,
        name: str | None = None,
        split: str = "train",
        text_column: str = "text",
        streaming: bool = False,
        token_budget: int | None = None,
        val_fraction: float = 0.1,
        tokenizer: str = "bytes",
        block_size: int = 256,
        batch_size: int = 32,
        seed: int = 1337,
        val_batches: int = 20,
        num_workers: int = 0,
        num_proc: int | None = None,
        data_dir: str = "data",
        dataset_name: str | None = None,
        tokens_on_device: bool = False,
    ):
        super().__init__()
        # Fail on arguments now, before any download; the tokenizer itself loads only when first needed.
        if source not in ("embedded", "text", "hub"):
            raise UserError(f"unknown source {source!r}; use embedded, text or hub")
        if source != "embedded" and not path:
            raise UserError(f"source {source!r} needs a path (a file, folder, glob, URL or hub dataset id)")
        if tokenizer not in available():
            raise UserError(f"unknown tokenizer {tokenizer!r}; available: {', '.join(available())}")
        if not 0 < val_fraction < 1:
            raise UserError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
        if val_batches < 1:
            raise UserError(f"val_batches={val_batches} must be at least 1: the validation set needs a batch")
        least_values = (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, 0))
        for setting, value, least in least_values:
            if value < least:
                raise UserError(f"data.{setting}={value} must be >= {least}")
        for setting, value in (("token_budget", token_budget), ("num_proc", num_proc)):
            if value is not None and value < 1:
                raise UserError(f"data.{setting}={value} must be >= 1, or unset")
        if os.path.exists(data_dir) and not os.path.isdir(data_dir):
            raise UserError(f"data.data_dir={data_dir!r} is a file: name a folder for the token caches")
        self.save_hyperparameters()
        self.source, self.path, self.name, self.split = source, path, name, split
        self.text_column, self.streaming, self.token_budget = text_column, streaming, token_budget
        self.val_fraction, self.tokenizer, self.block_size = val_fraction, tokenizer, block_size
        self.batch_size, self.seed, self.val_batches = batch_size, seed, val_batches
        self.num_workers, self.num_proc, self.data_dir = num_workers, num_proc, data_dir
        self.tokens_on_device = tokens_on_device
        self._device_tokens: dict[str, torch.Tensor] = {}  # split -> its tokens on the device, with tokens_on_device
        self.source_spec = Source(source, path, name, split, text_column, streaming)
        self.dataset_name = dataset_name or self.source_spec.default_name()
        self.cache_dir = os.path.join(data_dir, self.dataset_name, tokenizer)
        self.cache = TokenCache(self.source_spec, tokenizer, val_fraction, token_budget, num_proc, self.cache_dir)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tokenizer as a `tiktoken.Encoding`, e.g. to decode samples."""
        return get_tokenizer(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size, which the model's embedding must match."""
        return self.encoding.n_vocab

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
        if self.val_batches < world:
            raise UserError(
                f"val_batches={self.val_batches} is fewer than the {world} training processes, which share them: "
                f"set data.val_batches to at least {world}"
            )
        return self._loader(self._windows("val", range(rank, self.val_batches, world)))

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
