"""How a net's surface-normal (`sn`) output is to be read: the one place that knows the two spaces.

"decoded": the head predicts x, y, z (our default). "encoded": it predicts a direction in the 8-bit
B, G, R space of the NYUv2-layout PNGs, as the original trained it (docs/METRICS.md, docs/ORIGINAL.md §3).
A checkpoint records its space in its config (`loss.normals_space`); an original-format state dict of a
dataset whose normals the original read as encoded PNGs predicts encoded normals. The space cannot be
converted by weight surgery (an encoded direction meets the sphere of encoded unit normals twice), so it
travels with the weights and evaluation reads the output in it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

# Datasets whose normals the original read as encoded 8-bit PNG vectors (so its loss space is reachable).
ENCODED_NORMALS_DATASETS = ("nyuv2", "synthetic")


def normals_space_of(config: Mapping[str, Any]) -> str:
    """The config's `loss.normals_space` ("decoded" when the key is absent, e.g. an older config)."""
    return str((config.get("loss") or {}).get("normals_space", "decoded"))


def original_normals_space(dataset: str | None, tasks: Sequence[str]) -> str:
    """How an original-format net's sn output is to be read for `dataset` ("encoded" or "decoded")."""
    return "encoded" if dataset in ENCODED_NORMALS_DATASETS and "sn" in tasks else "decoded"
