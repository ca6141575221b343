"""Compact export of a pruned network: kept values + bit-packed masks + the dense rest.

A separate file kind from the training checkpoint (docs/ARCHITECTURE.md contract 4), for shipping a
pruned net: about a tenth of a dense checkpoint at 90 % sparsity (docs/BENCHMARKS.md (d) has the sizes).

File layout: `torch.save` of a plain dict that loads with `torch.load(..., weights_only=True)`. Few
tensors (the zip records of `torch.save` cost ~300 bytes each, which matters for small nets)::

    {"format": "disparse-compact", "version": 1,
     "meta": {...},                 # plain types: tasks, num_classes, config, method, sparsity, ...
     "values_dtype": "float32",     # or "float16" / "bfloat16" (lossy)
     "order": [every state-dict key, in order],
     "dense": {key: {"dtype": "float32", "shape": [...], "offset": i}},   # biases, BN, buffers, unmasked
     "dense_data": {"float32": flat tensor, "int64": flat tensor, ...},   # those tensors back to back
     "sparse": {key: {"shape": [...], "dtype": "float32", "count": kept, "zero_sign": 0 | 1,
                      "streams": {name: [offset, length], ...}}},          # byte ranges of "blob"
     "blob": uint8 tensor}

    streams of a masked tensor:
      "top"   the most significant byte of each kept value (sign + exponent), deflated
      "low"   the other bytes of each kept value (little-endian), raw
      "bits"  the row-major keep mask, np.packbits (bit order big), deflated; `zero_sign` is the sign
              bit of the pruned zeros. Or, when pruned zeros of both signs occur, "zero_bits" +
              "rest_bits" (`_encode_positions`).

"deflated" = zlib with the Huffman-only strategy: no match search, so it is fast, and it
still removes most of the redundancy of these streams (a 10 %-dense mask, the few exponents of a weight
tensor); the low mantissa bytes are incompressible and stay raw.

Exactness: with `values_dtype=float32` (the default, for float32 weights) `load_compact` returns a state
dict bitwise equal to the one saved. Kept values are stored bit for bit; pruned positions must hold zeros
(a non-zero pruned value is refused, since it could not come back; `drop_pruned_values=True` zeroes it
instead) and the sign of each pruned zero is kept as well. Masking by multiplication (`w * mask`, as
`apply_masks` and the sparse trainer do) leaves -0.0 behind negative weights; mixed-sign zeros cost about
0.55 more bits per weight before deflation at 90 % sparsity. `masked_fill(~mask, 0)` gives +0.0 only.
`values_dtype=float16` / `bfloat16` round the kept values; the load casts them back to the original dtype.
"""
from __future__ import annotations

import os
import sys
import zlib
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import torch

from .atomic import atomic_save
from .bits import pack_bits, unpack_bits
from .checkpoint import CheckpointError, check_version, read_file, to_plain

FORMAT = "disparse-compact"
VERSION = 1
VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"compact file names an unknown dtype {name!r}")
    return dtype


# -- byte streams ----------------------------------------------------------------------------------------------


def deflate(data: np.ndarray) -> np.ndarray:
    """uint8 array -> uint8 array of its zlib stream (Huffman-only strategy: fast, no match search)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    raw = packer.compress(np.ascontiguousarray(data, dtype=np.uint8).tobytes()) + packer.flush()
    return np.frombuffer(raw, dtype=np.uint8)


def inflate(stream: np.ndarray) -> np.ndarray:
    try:
        return np.frombuffer(zlib.decompress(stream.tobytes()), dtype=np.uint8)
    except zlib.error as exc:
        raise CheckpointError(f"compact file holds a corrupt stream ({exc})") from None


def _byte_columns(values: torch.Tensor) -> np.ndarray:
    """[n, itemsize] uint8, little-endian byte order (column -1 = sign and exponent)."""
    size = values.element_size()
    columns = values.contiguous().view(torch.uint8).numpy().reshape(-1, size)
    return columns[:, ::-1] if sys.byteorder == "big" else columns


def _from_byte_columns(columns: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if sys.byteorder == "big":
        columns = columns[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(columns).reshape(-1)).view(dtype)


def _encode_values(values: torch.Tensor) -> tuple[dict, dict[str, np.ndarray]]:
    """Kept values as a deflated top-byte stream (sign + exponent) and the raw lower bytes."""
    columns = _byte_columns(values)
    return {"count": int(values.numel())}, {"top": deflate(columns[:, -1]), "low": np.ascontiguousarray(columns[:, :-1])}


def _decode_values(count: int, streams: Mapping[str, np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    top = inflate(streams["top"])
    low = streams["low"]
    size = torch.empty((), dtype=dtype).element_size()
    if top.size != count or low.size != count * (size - 1):
        raise CheckpointError("compact file: value streams do not match their count")
    return _from_byte_columns(np.concatenate([low.reshape(count, size - 1), top.reshape(count, 1)], axis=1), dtype)


def _encode_positions(keep: torch.Tensor, negative: torch.Tensor) -> tuple[dict, dict[str, np.ndarray]]:
    """Which positions are kept, and the sign of each pruned zero, in few bits.

    `keep` and `negative` (pruned positions holding -0.0) are flat bool tensors of the same size.
    All pruned zeros share one sign (the usual case): `bits` = the keep mask, 1 bit per weight.
    Mixed signs: `zero_bits` marks the pruned zeros of the majority sign (1 bit per weight), then
    `rest_bits` tells, for the other positions only, kept (1) from a zero of the minority sign (0).
    At 90 % sparsity that is at most 1 + 0.55 bits per weight, against 1 + 0.9 for a mask plus a sign
    per pruned weight. Every stream is deflated.
    """
    n_pruned = keep.numel() - int(keep.count_nonzero())
    n_negative = int(negative.count_nonzero())
    zero_sign = 1 if 2 * n_negative > n_pruned else 0
    if n_negative in (0, n_pruned):
        return {"zero_sign": zero_sign}, {"bits": deflate(pack_bits(keep))}
    majority = negative if zero_sign else ~(keep | negative)
    return {"zero_sign": zero_sign}, {"zero_bits": deflate(pack_bits(majority)),
                                      "rest_bits": deflate(pack_bits(keep[~majority]))}


def _decode_positions(zero_sign: int, streams: Mapping[str, np.ndarray], numel: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep mask, mask of the positions holding -0.0) from `_encode_positions`' output."""
    if "bits" in streams:
        keep = unpack_bits(inflate(streams["bits"]), numel)
        return keep, (~keep if zero_sign else torch.zeros(numel, dtype=torch.bool))
    majority = unpack_bits(inflate(streams["zero_bits"]), numel)
    keep = torch.zeros(numel, dtype=torch.bool)
    rest = ~majority
    keep[rest] = unpack_bits(inflate(streams["rest_bits"]), rest.numel() - int(majority.count_nonzero()))
    minority = ~majority & ~keep
    return keep, (majority if zero_sign else minority)


# -- public API ------------------------------------------------------------------------------------------------


def compact_state(model_state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                  meta: Mapping[str, Any] | None = None, values_dtype: torch.dtype = torch.float32,
                  drop_pruned_values: bool = False) -> dict:
    """The dict `save_compact` writes (see the module docstring)."""
    if values_dtype not in VALUE_DTYPES:
        raise ValueError(f"values_dtype must be one of {', '.join(map(_dtype_name, VALUE_DTYPES))}, got {values_dtype}")
    unknown = [k for k in masks if k not in model_state]
    if unknown:
        raise ValueError(f"masks for {unknown[:3]} have no entry in the state dict")
    dense_index: dict[str, dict] = {}
    dense_parts: dict[str, list[torch.Tensor]] = {}
    dense_sizes: dict[str, int] = {}
    sparse: dict[str, dict] = {}
    blob: list[np.ndarray] = []
    blob_size = 0
    for key, value in model_state.items():
        value = value.detach().cpu()
        if key not in masks:
            name = _dtype_name(value.dtype)
            dense_index[key] = {"dtype": name, "shape": list(value.shape), "offset": dense_sizes.get(name, 0)}
            dense_parts.setdefault(name, []).append(value.reshape(-1))
            dense_sizes[name] = dense_sizes.get(name, 0) + value.numel()
            continue
        mask = masks[key].detach().cpu().to(torch.bool)
        if tuple(mask.shape) != tuple(value.shape):
            raise ValueError(f"mask {key!r} has shape {tuple(mask.shape)}, the tensor has {tuple(value.shape)}")
        if not value.is_floating_point():
            raise ValueError(f"{key!r} is not a floating tensor ({value.dtype}); only float weights are masked")
        flat, keep = value.reshape(-1), mask.reshape(-1)
        if bool(((flat != 0) & ~keep).any()):
            if not drop_pruned_values:
                raise ValueError(f"{key!r} holds non-zero values at pruned positions; zero them first "
                                 f"(or pass drop_pruned_values=True)")
            negative = torch.zeros_like(keep)               # dropped values come back as +0.0
        else:
            negative = torch.signbit(flat) & ~keep          # pruned positions holding -0.0
        entry: dict[str, Any] = {"shape": list(value.shape), "dtype": _dtype_name(value.dtype)}
        fields, streams = _encode_values(flat[keep].to(values_dtype))
        entry.update(fields)
        fields, more = _encode_positions(keep, negative)
        entry.update(fields)
        streams.update(more)
        entry["streams"] = {}
        for stream, data in streams.items():
            data = data.reshape(-1)
            entry["streams"][stream] = [blob_size, int(data.size)]
            blob.append(data)
            blob_size += int(data.size)
        sparse[key] = entry
    dense_data = {name: torch.cat(parts) if parts else torch.empty(0) for name, parts in dense_parts.items()}
    blob_tensor = torch.from_numpy(np.concatenate(blob)) if blob else torch.empty(0, dtype=torch.uint8)
    return {"format": FORMAT, "version": VERSION, "meta": to_plain(dict(meta or {})),
            "values_dtype": _dtype_name(values_dtype), "order": list(model_state),
            "dense": dense_index, "dense_data": dense_data, "sparse": sparse, "blob": blob_tensor}


def save_compact(path: str | os.PathLike, model_state: Mapping[str, torch.Tensor],
                 masks: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None,
                 values_dtype: torch.dtype = torch.float32, drop_pruned_values: bool = False,
                 durable: bool = True) -> None:
    """Write the compact file atomically (temporary file, fsync unless `durable=False`, rename; see
    `fileio.atomic`). `meta` must be plain types (tasks, num_classes, config, method, sparsity, ...)."""
    atomic_save(compact_state(model_state, masks, meta, values_dtype, drop_pruned_values), path, durable)


def expand_state(data: Mapping[str, Any], source: Any = "compact file") -> tuple[OrderedDict, dict, dict]:
    """(state dict, mask set, meta) from the dict `compact_state` made."""
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a {FORMAT} file")
    check_version(data, source, "compact format", VERSION)
    try:
        dense, dense_data, sparse, order = data["dense"], data["dense_data"], data["sparse"], data["order"]
        blob = data["blob"].numpy()
        stored = _dtype(data["values_dtype"])
        state: OrderedDict[str, torch.Tensor] = OrderedDict()
        masks: dict[str, torch.Tensor] = {}
        for key in order:
            if key in dense:
                item = dense[key]
                shape = [int(s) for s in item["shape"]]
                numel = int(np.prod(shape)) if shape else 1
                flat = dense_data[item["dtype"]]
                offset = int(item["offset"])
                if offset + numel > flat.numel():
                    raise CheckpointError(f"{source}: dense tensor {key!r} lies outside the stored data")
                state[key] = flat[offset:offset + numel].view(shape).clone()
                continue
            entry = sparse[key]
            shape = [int(s) for s in entry["shape"]]
            dtype = _dtype(entry["dtype"])
            numel = int(np.prod(shape)) if shape else 1
            streams = {}
            for stream, (offset, length) in entry["streams"].items():
                if int(offset) + int(length) > blob.size:
                    raise CheckpointError(f"{source}: stream {stream!r} of {key!r} lies outside the stored data")
                streams[stream] = blob[int(offset):int(offset) + int(length)]
            keep, negative = _decode_positions(int(entry["zero_sign"]), streams, numel)
            values = _decode_values(int(entry["count"]), streams, stored)
            kept = int(keep.count_nonzero())
            if values.numel() != kept:
                raise CheckpointError(f"{source}: {key!r} has {values.numel()} values for {kept} kept weights")
            flat = torch.zeros(numel, dtype=dtype)
            flat[negative] = -0.0
            flat[keep] = values.to(dtype)
            state[key] = flat.view(shape)
            masks[key] = keep.view(shape)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{source} is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    return state, masks, dict(data.get("meta", {}))


def load_compact(path: str | os.PathLike) -> tuple[OrderedDict, dict, dict]:
    """(state dict, mask set, meta) of a compact file (`torch.load(weights_only=True)`, one-line errors)."""
    return expand_state(read_file(path), source=path)
