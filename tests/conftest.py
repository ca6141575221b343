"""Shared test fixtures (keep generic; append new fixtures below)."""
from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread for the test process and every subprocess it starts: on 2-core CI machines,
# OpenMP threads of concurrent processes spin against each other and slow small steps 5-10x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NYUV2_SAMPLES = PROJECT_ROOT.parent / "shared" / "data" / "nyuv2_samples"


@pytest.fixture(scope="session")
def nyuv2_samples() -> Path:
    """The four real NYUv2 frames (../shared/data/nyuv2_samples); skips when the folder is absent."""
    if not (NYUV2_SAMPLES / "nyu_v2_3task.json").is_file():
        pytest.skip(f"real NYUv2 samples not found at {NYUV2_SAMPLES}")
    return NYUV2_SAMPLES


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small generated synthetic dataset (NYUv2 layout): 8 train + 4 test images of 48x64, 8 classes, seed 0."""
    from dataloaders.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "root", n_train=8, n_test=4, size=(48, 64),
                              seed=0, num_classes=8)


@pytest.fixture(scope="session")
def synthetic_overrides(synthetic_root) -> list[str]:
    """`--set` items that make a config match the `synthetic_root` set (size, counts, eval shape)."""
    from dataloaders.synthetic import read_meta

    meta = read_meta(synthetic_root)
    h, w = meta["size"]
    return [f"data.image_shape=[{h},{w}]", f"synthetic.n_train={meta['n_train']}",
            f"synthetic.n_test={meta['n_test']}", f"synthetic.size=[{h},{w}]"]
