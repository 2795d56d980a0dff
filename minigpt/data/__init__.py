"""Text sources -> token cache in data/<dataset>/<tokenizer>/ -> batches of (x, y) windows.

`sources` reads text (the embedded Python Language Reference, local text files and URLs, hub datasets); `split`
decides which documents validate; `encode` tokenizes over every core; `cache` writes the tokens once into shards
beside a fingerprinted `meta.json`, one folder per source and settings; `windows` cuts batches of windows out of
them; `module` is the `LightningDataModule` that ties them together.
"""

from minigpt.data.cache import TokenCache
from minigpt.data.module import DataConfig, TextDataModule
from minigpt.data.sources import Source, embedded_corpus
from minigpt.data.windows import TokenStream, TokenWindows, cut_windows

__all__ = [
    "DataConfig",
    "Source",
    "TextDataModule",
    "TokenCache",
    "TokenStream",
    "TokenWindows",
    "cut_windows",
    "embedded_corpus",
]
