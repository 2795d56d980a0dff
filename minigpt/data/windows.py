"""Batches of (x, y) windows cut from token files, the same for a given (seed, rank, batch) however they are loaded.

`TokenWindows` is the loaders' dataset; with `starts_only` it yields only where windows start, and `cut_windows`
cuts them out of a copy of the tokens on the training device.
"""

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


class TokenWindows(IterableDataset):
    """Batches (x, y) of windows cut from a token file; batch `b` is a pure function of (seed, rank, b).

    x = window[:-1] and y = window[1:], both int64 (batch_size, block_size). With a seed the window starts are
    random; with `seed=None` they are evenly spaced through the file (a fixed validation set). Worker w of n
    takes batches[w::n]; DataLoader reads its workers round-robin, so the order is the same with any n.
    With `starts_only` a batch is just where its windows start, (batch_size,) int64, for `cut_windows` to cut
    them out of a copy of the tokens that lives on the GPU.
    """

    def __init__(
        self,
        path: str,
        dtype: str,
        block_size: int,
        batch_size: int,
        batches: range,
        seed: int | None = None,
        rank: int = 0,
        starts_only: bool = False,
    ):
        self.path, self.dtype, self.block_size, self.batch_size = path, dtype, block_size, batch_size
        self.batches, self.seed, self.rank, self.starts_only = batches, seed, rank, starts_only

    def offsets(self, b: int, n_tokens: int) -> np.ndarray:
        """Where the windows of batch `b` start, in a file of `n_tokens`."""
        last = n_tokens - self.block_size - 1  # the last start that leaves room for block_size + 1 tokens
        if self.seed is None:
            # Window numbers of this batch, out of the whole set's (a rank's share is every world-size-th batch).
            k = b * self.batch_size + np.arange(self.batch_size)
            return k * last // max(self.batches.stop * self.batch_size - 1, 1)
        return np.random.default_rng([self.seed, self.rank, b]).integers(0, last + 1, self.batch_size)

    def __iter__(self):
        worker = get_worker_info()
        batches = self.batches if worker is None else self.batches[worker.id :: worker.num_workers]
        for b in batches:
            # Mapped anew per batch (cheap), as nanoGPT does, so pages already read do not pile up.
            data = np.memmap(self.path, dtype=self.dtype, mode="r")
            starts = self.offsets(b, len(data))
            if self.starts_only:
                yield torch.from_numpy(starts)  # (B,)
                continue
            windows = np.stack([data[s : s + self.block_size + 1] for s in starts])  # (B, T + 1)
            windows = torch.from_numpy(windows.astype(np.int64))
            yield windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # x, y: (B, T) each


def cut_windows(tokens: torch.Tensor, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (B, T) int64: the windows at `starts` (B,) of `tokens` (N,), on their device; T = block_size."""
    index = starts[:, None] + torch.arange(block_size + 1, device=starts.device)  # (B, T + 1)
    windows = tokens[index].long()  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]  # x, y: (B, T) each
