"""Batches of (x, y) windows cut from token shards, the same for a given (seed, rank, batch) however they are loaded.

`TokenStream` reads a split's shards as one sequence of tokens; `TokenWindows` is the loaders' dataset; with
`starts_only` it yields only where windows start, and `cut_windows` cuts them out of a copy of the tokens on the
training device.
"""

import os

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


class TokenStream:
    """Token files (shards) read as one sequence: `len(stream)` tokens, and `stream[a:b]` an array of them.

    A window may span two shards. Each shard is mapped read-only when first read, and only then.
    """

    def __init__(self, paths: list[str], dtype: str):
        self.paths, self.dtype = paths, dtype
        sizes = [os.path.getsize(path) // np.dtype(dtype).itemsize for path in paths]
        self.ends = np.cumsum(sizes)  # (shards,) where each shard ends in the stream
        self.maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def shard(self, k: int) -> np.memmap:
        if k not in self.maps:
            self.maps[k] = np.memmap(self.paths[k], dtype=self.dtype, mode="r")
        return self.maps[k]

    def __getitem__(self, where: slice) -> np.ndarray:
        start, stop, step = where.indices(len(self))
        assert step == 1, "a TokenStream is read in contiguous slices"
        first = int(np.searchsorted(self.ends, start, side="right"))  # the shard that holds `start`
        pieces = []
        for k in range(first, len(self.paths)):
            if start >= stop:
                break
            begin = int(self.ends[k - 1]) if k else 0
            if begin == self.ends[k]:
                continue  # an empty shard, which cannot be mapped
            pieces.append(self.shard(k)[start - begin : min(stop, int(self.ends[k])) - begin])
            start = int(self.ends[k])
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.empty(0, self.dtype)


class TokenWindows(IterableDataset):
    """Batches (x, y) of windows cut from token shards read as one stream; batch `b` depends on (seed, rank, b) only.

    x = window[:-1] and y = window[1:], both int64 (batch_size, block_size). With a seed the window starts are
    random; with `seed=None` they are evenly spaced through the stream (a fixed validation set). Worker w of n
    takes batches[w::n]; DataLoader reads its workers round-robin, so the order is the same with any n.
    With `starts_only` a batch is just where its windows start, (batch_size,) int64, for `cut_windows` to cut
    them out of a copy of the tokens that lives on the GPU.
    """

    def __init__(
        self,
        paths: list[str],
        dtype: str,
        block_size: int,
        batch_size: int,
        batches: range,
        seed: int | None = None,
        rank: int = 0,
        starts_only: bool = False,
    ):
        self.paths, self.dtype, self.block_size, self.batch_size = paths, dtype, block_size, batch_size
        self.batches, self.seed, self.rank, self.starts_only = batches, seed, rank, starts_only

    def offsets(self, b: int, n_tokens: int) -> np.ndarray:
        """Where the windows of batch `b` start, in a stream of `n_tokens`."""
        last = n_tokens - self.block_size - 1  # the last start that leaves room for block_size + 1 tokens
        if self.seed is None:
            # Window numbers of this batch, out of the whole set's (a rank's share is every world-size-th batch).
            k = b * self.batch_size + np.arange(self.batch_size)
            return k * last // max(self.batches.stop * self.batch_size - 1, 1)
        return np.random.default_rng([self.seed, self.rank, b]).integers(0, last + 1, self.batch_size)

    def __iter__(self):
        worker = get_worker_info()
        batches = self.batches if worker is None else self.batches[worker.id :: worker.num_workers]
        data = TokenStream(self.paths, self.dtype)
        for b in batches:
            # Mapped anew per batch (cheap), as nanoGPT does, so pages already read do not pile up.
            data.maps.clear()
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
