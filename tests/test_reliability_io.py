"""Issue 12, file and input level: atomic writes under OS failures, file modes, locks, label files, crafted
checkpoints, --set parsing, the saliency cache, config validation (docs/RELIABILITY.md lists each case)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dataloaders import CityScapes, DataError, NYUv2, Taskonomy
from engine.config import ConfigError, load_config
from fileio import CheckpointError, atomic_save, atomic_write, atomic_write_bytes, make_checkpoint, read_weights
from models import MultiTaskNet

ROOT = Path(__file__).resolve().parents[1]
ENFORCE_FAIL = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                "file write failed")


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ item 3: OS write failures are one line


def test_full_disk_in_torch_save_is_a_one_line_write_error_and_leaves_no_temporary(tmp_path, monkeypatch):
    from fileio import WriteError

    target = tmp_path / "last_net.pth"
    target.write_bytes(b"the previous checkpoint")

    def full_disk(obj, handle, *args, **kwargs):      # what torch's zip writer raises when the disk fills
        handle.write(b"PK\x03\x04 half a zip")
        raise RuntimeError(ENFORCE_FAIL)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteError) as info:
        atomic_save({"model": {}}, target)
    message = str(info.value)
    assert isinstance(info.value, OSError) and "\n" not in message
    assert message.startswith(f"cannot write {target}: the write failed, most likely a full disk")
    assert target.read_bytes() == b"the previous checkpoint"           # the old file is untouched
    assert _entries(tmp_path) == ["last_net.pth"]                       # no temporary file


def test_enospc_and_unwritable_folder_name_the_path(tmp_path):
    from fileio import WriteError

    def enospc(handle):
        handle.write(b"some")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=r"cannot write .*out\.bin: no space left on device \(the disk is full\); "
                                         r"[\d.]+ MiB free"):
        atomic_write(tmp_path / "out.bin", enospc)
    assert _entries(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match="a part of the path is a file, not a folder"):
        atomic_write_bytes(blocker / "sub" / "out.bin", b"data")


def test_raw_writes_to_a_full_device_are_one_line_errors(tmp_path):
    """/dev/full really fails every write with ENOSPC: the run log (the one file not written atomically)."""
    from engine.logging_utils import RunLogger
    from fileio import WriteError

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "net.jsonl").symlink_to("/dev/full")
    logger = RunLogger(tmp_path, "net", tensorboard=False)
    with pytest.raises(WriteError, match=r"cannot write .*logs/net\.jsonl: no space left on device"):
        logger.log("train", 1, loss=1.0)
    logger.close()


# ------------------------------------------------------------------ item 5: file modes follow the umask


@pytest.fixture()
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def test_new_files_follow_the_umask(tmp_path, umask):
    for mask, mode in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
        umask(mask)
        path = atomic_save({"x": torch.zeros(2)}, tmp_path / f"ckpt_{mask:o}.pth")
        assert path.stat().st_mode & 0o777 == mode, (oct(mask), oct(path.stat().st_mode))


def test_replaced_files_follow_the_umask_too(tmp_path, umask):
    """Decision (docs/RELIABILITY.md): a replaced file gets the mode a new file would get, not its old one."""
    umask(0o022)
    path = tmp_path / "last_net.pth"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_save({"x": torch.zeros(2)}, path)
    assert path.stat().st_mode & 0o777 == 0o644
    umask(0o077)
    path.chmod(0o644)
    atomic_write_bytes(path, b"new")
    assert path.stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------ item 4: one lock per output name


HOLD_LOCK = """
import sys, time
from fileio import OutputLock
lock = OutputLock(sys.argv[1], sys.argv[2]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_refuses_a_second_holder_and_is_taken_over_after_a_kill(tmp_path):
    from fileio import OutputLock, OutputLocked

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path), "net"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked) as info:
            OutputLock(tmp_path, "net").acquire()
        message = str(info.value)
        assert "\n" not in message and f"pid {holder.pid}" in message and "use another --dest" in message
        with OutputLock(tmp_path, "other"):          # another name in the same folder is free
            pass
    finally:
        holder.send_signal(signal.SIGKILL)           # no chance to release: the lock file stays
        holder.wait()
    assert (tmp_path / ".net.lock").is_file()
    with OutputLock(tmp_path, "net") as lock:        # the kernel dropped the dead holder's lock
        assert lock.stale["pid"] == holder.pid and "took over" in lock.stale_note()
    assert not (tmp_path / ".net.lock").exists()    # released: removed


def test_lock_in_one_process_is_exclusive_too(tmp_path):
    from fileio import OutputLock, OutputLocked

    with OutputLock(tmp_path, "net"):
        with pytest.raises(OutputLocked):
            OutputLock(tmp_path, "net").acquire()
    with OutputLock(tmp_path, "net"):                # free again after release
        pass


# ------------------------------------------------------------------ item 1: label files read unchanged


@pytest.fixture()
def nyu_copy(synthetic_root, tmp_path):
    import shutil
    copy = tmp_path / "root"
    shutil.copytree(synthetic_root, copy)
    return copy


def test_16bit_seg_png_is_read_with_its_values(nyu_copy):
    seg_path = nyu_copy / "seg" / "test_00000.png"
    labels8 = cv2.imread(str(seg_path), cv2.IMREAD_UNCHANGED)
    assert labels8.dtype == np.uint8 and 0 < labels8[labels8 != 255].max() < 8
    expected = NYUv2(nyu_copy, "test", num_classes=8)[0]["seg"]
    cv2.imwrite(str(seg_path), labels8.astype(np.uint16))       # the same labels in a 16-bit PNG
    assert cv2.imread(str(seg_path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert torch.equal(NYUv2(nyu_copy, "test", num_classes=8)[0]["seg"], expected)
    wide = labels8.astype(np.uint16)
    wide[0, 0] = 300                                              # a value only 16 bits can hold
    cv2.imwrite(str(seg_path), wide)
    with pytest.raises(DataError, match=r"label 300 is outside 0\.\.7 and is not the ignore value 255"):
        NYUv2(nyu_copy, "test", num_classes=8)[0]


def test_label_files_of_the_wrong_kind_are_refused(nyu_copy):
    normal_path = nyu_copy / "normal_mask" / "test_00001.png"
    cv2.imwrite(str(normal_path), np.full((48, 64), 128, np.uint8))            # grey, not RGB
    with pytest.raises(DataError, match=r"test_00001\.png: expected a 8-bit 3-channel PNG, got a 8-bit 1-channel"):
        NYUv2(nyu_copy, "test", num_classes=8)[1]
    edge_path = nyu_copy / "edge" / "test_00002.png"
    cv2.imwrite(str(edge_path), np.full((48, 64), 40000, np.uint16))
    with pytest.raises(DataError, match=r"expected a 8-bit grayscale PNG, got a 16-bit 1-channel image"):
        NYUv2(nyu_copy, "test", num_classes=8)[2]


def _write_taskonomy(root: Path, depth: np.ndarray, seg_max: int) -> None:
    maps = {"rgb": np.zeros((16, 16, 3), np.uint8), "segment_semantic": np.full((16, 16), seg_max, np.uint8),
            "normal": np.full((16, 16, 3), 128, np.uint8), "depth_zbuffer": depth,
            "keypoints2d": np.zeros((16, 16), np.uint16), "edge_texture": np.zeros((16, 16), np.uint16)}
    entry = []
    for domain, array in maps.items():
        (root / "b" / domain).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / "b" / domain / "p.png"), array)
        entry.append(f"b/{domain}/p.png")
    (root / "taskonomy.json").write_text(json.dumps({"test": [entry]}))
    np.save(root / "semseg_prior_factor.npy", np.ones(17))


def test_taskonomy_depth_bit_depth_and_seg_range_are_checked(tmp_path):
    _write_taskonomy(tmp_path, np.full((16, 16), 1000, np.uint16), seg_max=17)
    assert Taskonomy(tmp_path, "test", image_size=(16, 16))[0]["seg"].max() == 16
    _write_taskonomy(tmp_path, np.full((16, 16), 100, np.uint8), seg_max=17)     # an 8-bit z-buffer
    with pytest.raises(DataError, match=r"depth_zbuffer/p\.png: expected a 16-bit grayscale PNG, got a 8-bit"):
        Taskonomy(tmp_path, "test", image_size=(16, 16))[0]
    _write_taskonomy(tmp_path, np.full((16, 16), 1000, np.uint16), seg_max=18)
    with pytest.raises(DataError, match=r"raw label 18 is outside 0\.\.17"):
        Taskonomy(tmp_path, "test", image_size=(16, 16))[0]


def test_cityscapes_labels_outside_the_set_are_refused(tmp_path):
    names = ["img.npy", "depth.npy", "l2.npy", "l7.npy", "l19.npy"]
    np.save(tmp_path / names[0], np.zeros((8, 8, 3), np.float32))
    np.save(tmp_path / names[1], np.ones((8, 8), np.float32))
    np.save(tmp_path / names[2], np.zeros((8, 8), np.int64))
    np.save(tmp_path / names[3], np.zeros((8, 8), np.int64))
    labels = np.full((8, 8), 3, np.int64)
    labels[0, 0] = 255                                            # 255 as "ignore": not this format's -1
    np.save(tmp_path / names[4], labels)
    (tmp_path / "cityscape.json").write_text(json.dumps({"test": [names]}))
    with pytest.raises(DataError, match=r"l19\.npy: label 255 is outside 0\.\.18 of the 19-class set"):
        CityScapes(tmp_path, "test")[0]


# ------------------------------------------------------------------ item 6: crafted files and --set values


def _checkpoint(tmp_path: Path, **changes) -> Path:
    torch.manual_seed(0)
    net = MultiTaskNet({"seg": 4, "sn": 3}, width_mult=0.0625)
    ckpt = make_checkpoint(net.state_dict(), {"tasks": ["seg", "sn"], "num_classes": [4, 3]}, "baseline")
    for key, value in changes.items():
        if key == "model_entry":
            ckpt["model"] = {**ckpt["model"], "backbone.conv1.weight": value}
        else:
            ckpt[key] = value
    path = tmp_path / f"crafted_{len(list(tmp_path.iterdir()))}.pth"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("changes,message", [
    ({"model_entry": "not a tensor"}, r"entry model\['backbone\.conv1\.weight'\] must be a tensor, got str"),
    ({"model_entry": [1, 2]}, r"must be a tensor, got list"),
    ({"version": "x"}, r"'version' must be an integer, got 'x'"),
    ({"version": [1]}, r"'version' must be an integer, got \[1\]"),
    ({"version": 7}, r"has format version 7, this code reads up to 2"),
    ({"version": 1, "masks": {"backbone.conv1.weight": torch.ones(3)}},
     r"mask 'backbone\.conv1\.weight' must be a bool tensor"),
    ({"masks": {"backbone.conv1.weight": torch.ones(3, dtype=torch.bool)}},      # a version-2 file packs its masks
     r"mask 'backbone\.conv1\.weight' is malformed \(a packed mask is a dict with 'shape' and 'bits'\)"),
])
def test_crafted_checkpoint_entries_are_one_line_errors_naming_the_file(tmp_path, changes, message):
    path = _checkpoint(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message) as info:
        read_weights(path, ["seg", "sn"])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


class Gadget:
    def __reduce__(self):
        return (os.getcwd, ())


def test_disallowed_pickle_is_not_a_safe_checkpoint_and_never_suggests_an_unsafe_load(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "disparse-checkpoint", "model": {}, "payload": Gadget()}, path)
    with pytest.raises(CheckpointError) as info:
        read_weights(path, ["seg", "sn"])
    message = str(info.value)
    assert message == (f"{path} is not a safe checkpoint (contains Python objects: posix.getcwd); only files of "
                       f"tensors, numbers, strings, lists and dicts are read")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or truncated") as info:
        read_weights(junk, ["seg", "sn"])
    assert "weights_only" not in str(info.value) and "truncated" not in message


@pytest.mark.parametrize("item,fragment", [
    ("train.lr=[1,", "--set train.lr: the value '[1,' is not valid YAML"),
    ("train.lr=!!python/object/apply:os.system [echo]", "--set train.lr: the value '!!python/object/apply:os.system"),
])
def test_malformed_set_value_is_a_one_line_error_naming_the_key(item, fragment, capsys):
    from engine import config

    with pytest.raises(ConfigError) as info:
        load_config("synthetic", overrides=[item])
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert config.main(["--dataset", "synthetic", "--set", item]) == 2          # python -m engine.config
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {info.value}"]


def test_truncated_similarity_cache_is_recomputed(tmp_path):
    from prune_utils import similarity as S

    config = load_config("synthetic", overrides=["model.width_mult=0.0625"])
    calls = []

    def scorer(config, **key):
        calls.append(key["seed"])
        return {"seg": {"w": torch.arange(4.0)}, "sn": {"w": torch.ones(4)}}

    key = dict(seed=0, num_batches=1, method="snip", batch_size=2)
    first, computed = S.cached_scores(config, cache_dir=tmp_path, scorer=scorer, **key)
    assert computed and calls == [0]
    path = S.cache_path(tmp_path, S.cache_key(config, **key))
    path.write_bytes(path.read_bytes()[:40])                    # a zip cut short: BadZipFile
    again, computed = S.cached_scores(config, cache_dir=tmp_path, scorer=scorer, **key)
    assert computed and calls == [0, 0] and torch.equal(again["seg"]["w"], first["seg"]["w"])
    assert S.cached_scores(config, cache_dir=tmp_path, scorer=scorer, **key)[1] is False   # rewritten whole


# ------------------------------------------------------------------ items 11, 12: config keys


@pytest.mark.parametrize("item,fragment", [
    ("pruning.paper_keep_ratios={disparse_static: {90: abc}}",
     "config key 'pruning.paper_keep_ratios.disparse_static.90' must be a keep ratio in (0, 1], got 'abc'"),
    ("pruning.paper_keep_ratios={disparse_static: {ninety: 0.1}}",
     "config key 'pruning.paper_keep_ratios.disparse_static.ninety': the sparsity must be a number in percent"),
    ("pruning.paper_keep_ratios={disparse_static: [0.1]}",
     "config key 'pruning.paper_keep_ratios.disparse_static' must map sparsities in percent to keep ratios"),
    ("dist.timeout_s=0", "config key 'dist.timeout_s' must be a positive number of seconds or null, got 0"),
    ("model.dropout=1.0", "config key 'model.dropout' must be in [0, 1), got 1.0"),
    ("train.warmup_iters=-1", "config key 'train.warmup_iters' must be >= 0, got -1"),
    ("train.lr_schedule=linear", "config key 'train.lr_schedule' must be one of step, cosine, got 'linear'"),
])
def test_bad_config_values_name_the_key(item, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("synthetic", overrides=[item])
    assert fragment in str(info.value)


def test_dist_timeout_reaches_the_process_group(monkeypatch):
    import torch.distributed as dist

    from engine import distributed

    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.append(kw["timeout"].total_seconds()))
    config = load_config("synthetic", overrides=["dist.timeout_s=42"])
    assert distributed.timeout_setting(config) == 42.0
    distributed.setup_distributed("cpu", distributed.timeout_setting(config))
    distributed.setup_distributed("cpu", distributed.timeout_setting(load_config("synthetic")))
    assert seen == [42.0, 300.0]                   # null: a few minutes on gloo, not torch's 30
