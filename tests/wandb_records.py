"""Read back what W&B wrote offline: the records of a run's `.wandb` file.

wandb 0.31 no longer ships a Python reader for it. The file is a 7-byte header (`:W&B`, magic, version) and then
LevelDB-log framing: 32 KiB blocks of chunks, each `crc32 (4) | length (2, little-endian) | type (1) | payload`,
type 1 a whole record, 2/3/4 its first/middle/last part; each record a `wandb_internal_pb2.Record` protobuf.
"""

import json
import struct
import time
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


def _finished_run_file(offline_run: Path) -> Path | None:
    """The run's `.wandb` file once it holds the final "exit" record (W&B's service may create it late)."""
    for path in offline_run.glob("*.wandb"):
        if path.stat().st_size > CHUNK_HEADER and any(r.WhichOneof("record_type") == "exit" for r in records(path)):
            return path
    return None


def config_and_history(offline_run: Path, timeout: float = 10.0) -> tuple[dict, list[dict]]:
    """The config (key -> value) and history rows of an offline run directory, as the W&B UI would show them.

    wandb.finish() may return a moment before W&B's service has flushed the `.wandb` file: wait for its final
    "exit" record first.
    """
    deadline = time.monotonic() + timeout
    while not (finished := _finished_run_file(Path(offline_run))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert finished, f"W&B wrote no finished run file into {offline_run} within {timeout} s"
    path = finished
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
