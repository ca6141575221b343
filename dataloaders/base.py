"""Shared machinery of the dense-prediction datasets: index reading, file checks and reading, the
sample pipeline (load maps -> size check -> train augmentation -> tensors), per-sample randomness.

Conventions (docs/CONVENTIONS.md): `img` float32 3xHxW, BGR, Caffe-mean subtracted, no /255; `seg`
int64 1xHxW with the dataset's `ignore_index`; `normal` float32 3xHxW decoded to [-1, 1] (channel 0 =
x), invalid = all-zero vector; `depth` float32 1xHxW, invalid = 0; `keypoint` / `edge` float32 1xHxW in
[-1, 1], invalid = 255; `name` = the image path as listed in the index (unique within a dataset).
"""
from __future__ import annotations

import json
import operator
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .transforms import MapSpec, augment
from .errors import DataError

# Caffe ImageNet mean, BGR order (docs/ORIGINAL.md §2.1)
IMG_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)
DEPTH_MIN_VALID = 3e-5
DENSE_INVALID = 255.0
SEG_IGNORE = 255


def dense_specs(seg_ignore: int = SEG_IGNORE) -> dict[str, MapSpec]:
    """How each map of a dataset is resized and padded (docs/CONVENTIONS.md invalid values)."""
    return {
        "img": MapSpec("image", 0.0, np.float32),
        "seg": MapSpec("label", seg_ignore, np.int64),
        "normal": MapSpec("label", 0.0, np.float32, normal=True),
        "depth": MapSpec("label", 0.0, np.float32),
        "keypoint": MapSpec("label", DENSE_INVALID, np.float32),
        "edge": MapSpec("label", DENSE_INVALID, np.float32),
    }

cv2.setNumThreads(1)   # DataLoader workers parallelise across samples; OpenCV threads would oversubscribe


# --------------------------------------------------------------------------- file reading

def _missing(path: Path) -> DataError:
    return DataError(f"file listed in the dataset index is missing: {path}")


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """OpenCV read (colour = BGR uint8) with one-line errors naming the file."""
    if not path.is_file():
        raise _missing(path)
    try:
        array = cv2.imread(str(path), flags)
    except cv2.error as exc:  # pragma: no cover - OpenCV mostly returns None instead
        raise DataError(f"cannot read image {path}: {str(exc).strip().splitlines()[-1]}") from None
    if array is None or array.size == 0:
        raise DataError(f"cannot read image {path}: not a readable image file")
    return array


_BIT_DEPTH = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit"}


def read_label_png(path: Path, depths: Sequence[type] = (np.uint8, np.uint16), channels: int = 1) -> np.ndarray:
    """A label or target PNG read unchanged (no conversion to 8 bits, no colour conversion), checked to be
    of one of the integer `depths` with `channels` channels: a one-line DataError naming the file and what
    was expected otherwise. A single-channel map stored as three equal channels is accepted.

    OpenCV's IMREAD_GRAYSCALE / IMREAD_COLOR would scale a 16-bit file down to 8 bits (every small label
    becoming 0) and turn a grey file into colour, silently."""
    array = read_image(path, cv2.IMREAD_UNCHANGED)
    expected = " or ".join(_BIT_DEPTH.get(np.dtype(d), str(np.dtype(d))) for d in depths)
    shape = "grayscale" if channels == 1 else f"{channels}-channel"
    if channels == 1 and array.ndim == 3 and array.shape[2] == 3 and \
            (array[:, :, 0] == array[:, :, 1]).all() and (array[:, :, 0] == array[:, :, 2]).all():
        array = array[:, :, 0]
    found_channels = 1 if array.ndim == 2 else array.shape[2]
    if array.dtype not in [np.dtype(d) for d in depths] or found_channels != channels:
        found = f"{_BIT_DEPTH.get(array.dtype, str(array.dtype))} {found_channels}-channel"
        raise DataError(f"{path}: expected a {expected} {shape} PNG, got a {found} image")
    return array


def read_npy(path: Path) -> np.ndarray:
    """`np.load` of a plain array (no pickles), C-contiguous, with one-line errors naming the file."""
    if not path.is_file():
        raise _missing(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise DataError(f"cannot read array {path}: not a .npy file")
            handle.seek(0)
            array = np.load(handle, allow_pickle=False)
    except DataError:
        raise
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/UnpicklingError variants
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read array {path}: {reason}") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"cannot read array {path}: expected one .npy array")
    return np.ascontiguousarray(array)


def decode_normal_png(bgr: np.ndarray) -> np.ndarray:
    """NYU-style normal PNG (as read by OpenCV, BGR uint8) -> float32 HxWx3 x,y,z in [-1, 1].

    The file stores v = (n + 1) * 255 / 2 in R, G, B = x, y, z; (255, 255, 255) marks invalid pixels,
    which become the all-zero vector. Decoded vectors are not re-normalised (real ones have norm ~0.99).
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError("normal map must have 3 channels")
    invalid = (bgr == 255).all(axis=2)
    normal = bgr[:, :, ::-1].astype(np.float32) * (2.0 / 255.0) - 1.0
    normal[invalid] = 0.0
    return normal


def decode_unit_png(gray: np.ndarray) -> np.ndarray:
    """8-bit map v in 0..255 -> float32 2v/255 - 1 in [-1, 1] (the synthetic keypoint/edge files)."""
    return gray.astype(np.float32) * (2.0 / 255.0) - 1.0


def clean_depth(depth: np.ndarray) -> np.ndarray:
    """float32 HxW depth with every invalid value (non-finite or <= 3e-5) stored as exactly 0."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    depth = np.array(depth, dtype=np.float32, copy=True)
    depth[~np.isfinite(depth) | (depth <= DEPTH_MIN_VALID)] = 0.0
    return depth


# --------------------------------------------------------------------------- datasets

class DenseDataset(Dataset):
    """Base class: a split of a JSON-indexed dataset whose items are dicts of CHW tensors plus `name`.

    Subclasses set `name`, `index_file`, `ignore_index`, `columns` (names of the index entry's columns),
    `min_columns`, `specs` (one `MapSpec` per map key) and implement `load_maps(index)`.

    Keys: `dataset[i]` gives sample i; `dataset[(i, seed)]` gives sample i with its train augmentation
    drawn from `numpy.random.default_rng(seed)` (the loaders' samplers pass such keys, which makes a
    batch independent of the number of workers). A plain index in train mode uses the dataset's own
    generator: seeded from `seed` if given, else from `torch.initial_seed()` (so `seed_everything` and,
    inside a DataLoader worker, the worker's seed decide it); it is re-created in a new process.
    """

    name = "dense"
    index_file = ""
    ignore_index = 255
    columns: tuple[str, ...] = ()
    min_columns = 1
    specs: dict[str, MapSpec] = {}
    large_split = 50_000   # above this many entries only the first entry's files are checked up front

    def __init__(self, root: str | os.PathLike, split: str, crop_h: int | None = None,
                 crop_w: int | None = None, *, mirror_normals: bool = True, seed: int | None = None,
                 check_files: bool | None = None) -> None:
        if root is None:
            raise DataError(f"no data root given for {self.name}: pass --data-root or set DISPARSE_DATA")
        self.root = Path(root).expanduser()
        self.split = str(split)
        if (crop_h is None) != (crop_w is None):
            raise DataError(f"give both crop_h and crop_w (train mode) or neither (test mode), got {crop_h}, {crop_w}")
        if crop_h is not None and (int(crop_h) <= 0 or int(crop_w) <= 0):
            raise DataError(f"crop size must be positive, got {crop_h}x{crop_w}")
        self.crop: tuple[int, int] | None = None if crop_h is None else (int(crop_h), int(crop_w))
        self.train = self.crop is not None
        self.mirror_normals = bool(mirror_normals)
        self.class_weights: torch.Tensor | None = None
        self._seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_pid: int | None = None
        self._maps_cache: dict[int, dict[str, np.ndarray]] | None = None
        self.index_path = self.root / self.index_file
        self.entries: list[tuple[str, ...]] = self._read_index()
        self._prepare()
        if check_files is None:
            check_files = len(self.entries) <= self.large_split
        self.check_files(self.entries if check_files else self.entries[:1])

    # ----- index
    def _read_index(self) -> list[tuple[str, ...]]:
        if not self.root.is_dir():
            raise DataError(f"data root {self.root} does not exist or is not a folder (expected {self.index_file} "
                            f"in it; pass --data-root or set DISPARSE_DATA)")
        if not self.index_path.is_file():
            raise DataError(f"index file {self.index_path} not found ({self.name} expects its JSON index there)")
        try:
            with open(self.index_path, encoding="utf-8") as handle:
                index = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read index file {self.index_path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(index, dict):
            raise DataError(f"index file {self.index_path} must map split names to lists of entries")
        splits = [key for key, value in index.items() if isinstance(value, list)]
        if self.split not in splits:
            raise DataError(f"unknown split {self.split!r} in {self.index_path} (available: {', '.join(splits) or 'none'})")
        entries = []
        for i, entry in enumerate(index[self.split]):
            if (not isinstance(entry, (list, tuple)) or len(entry) < self.min_columns
                    or not all(isinstance(p, str) for p in entry)):
                raise DataError(f"{self.index_path}: entry {i} of split {self.split!r} must list at least "
                                f"{self.min_columns} relative paths ({', '.join(self.columns[:self.min_columns])}), got {entry!r}")
            entries.append(tuple(entry))
        if not entries:
            raise DataError(f"split {self.split!r} in {self.index_path} is empty")
        return entries

    def _prepare(self) -> None:
        """Hook for subclasses: runs after the index is read, before the file check."""

    def path(self, relative: str) -> Path:
        """Absolute path of an index entry's relative path (Taskonomy rewrites it)."""
        return self.root / relative

    def check_files(self, entries: Sequence[Sequence[str]]) -> None:
        """One-line DataError naming the first listed file that does not exist (and how many are missing)."""
        missing = [self.path(p) for entry in entries for p in entry[:len(self.columns)] if not self.path(p).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"file listed in {self.index_path.name} (split {self.split!r}) is missing: {missing[0]}{more}")

    @property
    def tasks(self) -> tuple[str, ...]:
        raise NotImplementedError

    # ----- samples
    def __len__(self) -> int:
        return len(self.entries)

    def sample_name(self, index: int) -> str:
        return self.entries[index][0]

    def load_maps(self, index: int) -> dict[str, np.ndarray]:
        """Raw HxW / HxWxC maps of sample `index` in their decoded form: `img` float32 BGR 0..255, labels
        with invalid pixels at their invalid value. Implemented per dataset."""
        raise NotImplementedError

    def enable_cache(self) -> None:
        """Keep every sample's decoded maps in memory after its first read (config `data.cache`): for
        small data sets read many times over, such as the synthetic scenes, where decoding the files
        costs as much as a training step. Samples are unchanged; each process holds its own cache."""
        if self._maps_cache is None:
            self._maps_cache = {}

    def _maps(self, index: int) -> dict[str, np.ndarray]:
        """`load_maps(index)`, from the cache when enabled (copies, so no caller can alter the cache)."""
        if self._maps_cache is None:
            return self.load_maps(index)
        if index not in self._maps_cache:
            self._maps_cache[index] = self.load_maps(index)
        return {key: array.copy() for key, array in self._maps_cache[index].items()}

    def reseed(self, seed: int) -> None:
        """Seed the generator used for plain-index train samples (a worker_init_fn calls this)."""
        self._rng = np.random.default_rng(seed)
        self._rng_pid = os.getpid()

    def _own_rng(self) -> np.random.Generator:
        if self._rng is None or self._rng_pid != os.getpid():
            worker = get_worker_info()
            if worker is not None:       # distinct and deterministic per worker (loader generator)
                material = [self._seed or 0, torch.initial_seed() % 2**63, worker.id]
            else:
                material = self._seed if self._seed is not None else torch.initial_seed() % 2**63
            self._rng = np.random.default_rng(material)
            self._rng_pid = os.getpid()
        return self._rng

    def __getitem__(self, key: Any) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, aug_seed = key
        else:
            index, aug_seed = key, None
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        maps = self._maps(index)
        self._check_sizes(maps, index)
        if self.crop is not None:
            rng = np.random.default_rng(aug_seed) if aug_seed is not None else self._own_rng()
            maps = augment(maps, self.specs, self.crop, rng, mirror_normals=self.mirror_normals)
        item = self.to_tensors(maps)
        item["name"] = self.sample_name(index)
        return item

    def _check_sizes(self, maps: dict[str, np.ndarray], index: int) -> None:
        h, w = maps["img"].shape[:2]
        for key, array in maps.items():
            if array.shape[:2] != (h, w):
                raise DataError(f"sample {self.sample_name(index)!r}: {key} is {array.shape[0]}x{array.shape[1]} "
                                f"but img is {h}x{w}")

    def to_tensors(self, maps: dict[str, np.ndarray]) -> dict[str, Any]:
        item: dict[str, Any] = {}
        for key, array in maps.items():
            spec = self.specs[key]
            if key == "img":
                array = array.astype(np.float32, copy=False) - IMG_MEAN_BGR
            array = np.asarray(array, dtype=spec.dtype)
            if array.ndim == 2:
                array = array[None]
            else:
                array = array.transpose(2, 0, 1)
            item[key] = torch.from_numpy(np.ascontiguousarray(array))
        return item

    def __repr__(self) -> str:
        mode = f"train, crop {self.crop[0]}x{self.crop[1]}" if self.crop else "test"
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {len(self)} samples, {mode})"
