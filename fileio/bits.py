"""Bool tensors as bits: 8 flags per byte, row-major, the first flag in the high bit (numpy's `packbits`).

The one bit packing of the I/O layer: the masks inside our checkpoints (`fileio.checkpoint`, a mask as
`{"shape": [...], "bits": uint8 tensor}`) and the position streams of the compact export (`fileio.compact`).
Malformed input raises `ValueError`; the readers turn it into their one-line `CheckpointError`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch


def pack_bits(flags: torch.Tensor) -> np.ndarray:
    """Bool tensor -> uint8 array of its row-major bits, ⌈n / 8⌉ bytes (the last one padded with zeros)."""
    return np.packbits(flags.detach().reshape(-1).cpu().numpy().astype(np.bool_, copy=False))


def unpack_bits(packed: np.ndarray, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `count` bits as a 1-D bool tensor."""
    if packed.size * 8 < count:
        raise ValueError(f"a bit stream holds {packed.size * 8} bits, {count} expected")
    return torch.from_numpy(np.unpackbits(packed, count=count).view(np.bool_))


def pack_mask(mask: torch.Tensor) -> dict[str, Any]:
    """A mask as plain checkpoint data: its shape and its bits as a uint8 tensor (1 bit per weight)."""
    return {"shape": list(mask.shape), "bits": torch.from_numpy(pack_bits(mask))}


def unpack_mask(entry: Mapping[str, Any]) -> torch.Tensor:
    """The bool mask `pack_mask` stored (`ValueError` for anything else)."""
    if not isinstance(entry, Mapping) or not torch.is_tensor(entry.get("bits")) or "shape" not in entry:
        raise ValueError("a packed mask is a dict with 'shape' and 'bits'")
    shape, bits = [int(s) for s in entry["shape"]], entry["bits"]
    count = math.prod(shape)
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (count + 7) // 8:
        raise ValueError(f"a packed mask of shape {shape} needs {(count + 7) // 8} uint8 bytes, got "
                         f"{bits.dtype} of shape {list(bits.shape)}")
    return unpack_bits(bits.numpy(), count).view(shape)
