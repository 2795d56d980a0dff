"""Read back what W&B wrote offline: the records of a run's `.wandb` file.

wandb 0.31 no longer ships a Python reader for it. The file is a 7-byte header (`:W&B`, magic, version) and then
LevelDB-log framing: 32 KiB blocks of chunks, each `crc32 (4) | length (2, little-endian) | type (1) | payload`,
type 1 a whole record, 2/3/4 its first/middle/last part; each record a `wandb_internal_pb2.Record` protobuf.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, LAST = 1, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, parts = CHUNK_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if left_in_block < CHUNK_HEADER or (length == 0 and kind == 0):  # block padding
            pos += left_in_block
            continue
        parts += data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def config_and_history(path: Path) -> tuple[dict, list[dict]]:
    """The run's config (key -> value) and its history rows, as the W&B UI would show them."""
    config, history = {}, []
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config |= {
                item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.config.update
            }
        elif kind == "history":
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return config, history
