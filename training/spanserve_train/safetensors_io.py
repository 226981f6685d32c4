"""Reads and writes safetensors files without the safetensors package.

Layout: 8-byte little-endian header length N, N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the raw
little-endian data, offsets relative to its start. The header is padded with spaces to a multiple
of 8 so that every tensor of a memory-mapped file is aligned.
"""
from __future__ import annotations

import json
import struct
import sys
from typing import Dict, Optional

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}

assert sys.byteorder == "little", "tensors are written as they lie in memory"


def tensor_bytes(t: torch.Tensor) -> bytes:
    if t.dtype not in NAMES:
        raise ValueError(f"dtype {t.dtype} is not supported (float32, float16, bfloat16 only)")
    t = t.detach().cpu().contiguous()
    # numpy has no bfloat16: go through a same-width integer view.
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().tobytes()


def save_file(tensors: Dict[str, torch.Tensor], path: str,
              metadata: Optional[Dict[str, str]] = None) -> None:
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        blob = tensor_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_header(path: str):
    """(header dict, byte offset of the data region, file size)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: truncated: less than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        f.seek(0, 2)
        size = f.tell()
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} is larger than the {size - 8} bytes after it")
        f.seek(8)
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    return header, 8 + n, size


def load_file(path: str) -> Dict[str, torch.Tensor]:
    header, data_start, _ = read_header(path)
    with open(path, "rb") as f:
        f.seek(data_start)
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(entry.get("dtype")) if isinstance(entry, dict) else None
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r}: dtype {entry!r} is not F32, F16 or BF16")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (_ints(shape) and _ints(offsets) and len(offsets) == 2):
            raise ValueError(f"{path}: tensor {name!r}: header entry needs a shape and two "
                             f"data_offsets, got {entry!r}")
        begin, end = offsets
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * _itemsize(dtype)
        if not 0 <= begin <= end <= len(data) or end - begin != nbytes:
            raise ValueError(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] do not hold "
                             f"{shape} of {entry['dtype']} in a data region of {len(data)} bytes")
        # A copy per tensor: its own aligned, writable memory.
        flat = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype) if numel else \
            torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(shape)
    return out


def _ints(value) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
