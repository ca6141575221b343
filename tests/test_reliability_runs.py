"""Issue 12, tool level: no silent corruption, no lost runs, one-line errors, checked before the work starts.

Tiny runs on the session's synthetic set (width 1/16, 32x32 crops); the tools are called in-process through
their `main(argv)` except where another process is the point (a concurrent run). docs/RELIABILITY.md maps
every failure mode to its test here or in tests/test_reliability_io.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import create_pruned_net
import eval_pruned_net
import iou_analysis
import launch_training
import static_similarity
from fileio import atomic_save, load_checkpoint, make_checkpoint
from tests.helpers import tiny_run_args

ROOT = Path(__file__).resolve().parents[1]
NAME = "synthetic_baseline"
PRUNE = ("--set", "pruning.batch_size=4", "--set", "pruning.num_batches=1")
TRAIN = ("--max-iters", "2", "--set", "train.val_every=100", "--set", "train.save_every=100")
ENFORCE_FAIL = "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0"


def one_line_error(capsys, call, *args) -> str:
    """Run a tool's main; it must exit 2 with exactly one `error:` line on stderr, which is returned."""
    with pytest.raises(SystemExit) as info:
        call(list(args))
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def no_work(monkeypatch):
    """Make any scoring, training-data or evaluation step fail the test: errors must come before them."""
    import methods.pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("the expensive work started before the check")

    for name in ("train_loader_rank0_first", "evaluate_split"):
        monkeypatch.setattr(methods.pipeline, name, forbidden)


def analysis_args(root: Path, dest: Path) -> list[str]:
    """`tiny_run_args` for the analysis tools, which have no --progress flag."""
    args = tiny_run_args(root, dest)
    at = args.index("--progress")
    return args[:at] + args[at + 2:]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write to: chmod 0500, or (as root, who writes anyway) /sys, which
    refuses root too; skips when neither works here."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (folder, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no unwritable folder available (running as root and /sys is writable)")


# ------------------------------------------------------------------ item 2: a finished run is never destroyed


def test_finished_run_is_refused_without_resume_or_overwrite(synthetic_root, tmp_path, capsys):
    dest = tmp_path / "run"
    launch_training.main(tiny_run_args(synthetic_root, dest, *TRAIN, "--no-final-eval"))
    final = load_checkpoint(dest / f"final_{NAME}.pth")
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.pth")}
    line = one_line_error(capsys, launch_training.main, *tiny_run_args(synthetic_root, dest, *TRAIN))
    assert line == (f"error: {dest} already holds a run of {NAME} (best_{NAME}.pth, last_{NAME}.pth, "
                    f"final_{NAME}.pth); pass --resume to continue it, --overwrite to replace it, or choose "
                    f"another --dest")
    assert {p.name: p.stat().st_mtime_ns for p in dest.glob("*.pth")} == mtimes      # untouched

    launch_training.main(tiny_run_args(synthetic_root, dest, *TRAIN, "--no-final-eval", "--overwrite",
                                       "--seed", "1"))
    err = capsys.readouterr().err
    assert f"--overwrite removed the previous run of {NAME}" in err
    again = load_checkpoint(dest / f"final_{NAME}.pth")
    assert not torch.equal(again["model"]["backbone.conv1.weight"], final["model"]["backbone.conv1.weight"])
    records = [json.loads(line) for line in (dest / "logs" / f"{NAME}.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records if r["kind"] == "event"] == ["start", "end"]   # the old log went too


def test_resume_without_a_run_is_refused_before_the_work(synthetic_root, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    dest = tmp_path / "empty"
    line = one_line_error(capsys, launch_training.main, *tiny_run_args(synthetic_root, dest, *TRAIN, "--resume"))
    assert line.startswith(f"error: cannot resume: {dest} holds no checkpoint of {NAME}")
    assert sorted(p.name for p in dest.iterdir()) == []                    # item 9: no logs/ or tb/ left


# ------------------------------------------------------------------ item 3: OS failures, before the work


def test_dest_that_is_a_file_is_refused_before_the_work(synthetic_root, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    for tool, extra in ((launch_training.main, TRAIN), (create_pruned_net.main, ("--method", "snip", *PRUNE))):
        line = one_line_error(capsys, tool, *tiny_run_args(synthetic_root, blocker, *extra))
        assert line == f"error: cannot write {blocker}: --dest is not a folder (it is a file)"
        line = one_line_error(capsys, tool, *tiny_run_args(synthetic_root, blocker / "sub", *extra))
        assert line == f"error: cannot write {blocker / 'sub'}: --dest is not a folder ({blocker} is a file)"
    (tmp_path / "run" / "logs").parent.mkdir()
    (tmp_path / "run" / "logs").write_text("a file where the log folder goes")
    line = one_line_error(capsys, launch_training.main, *tiny_run_args(synthetic_root, tmp_path / "run", *TRAIN))
    assert line == f"error: cannot write {tmp_path / 'run' / 'logs'}: output folder is not a folder (it is a file)"
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / f"metrics_{NAME}.json").mkdir()                     # a folder where a file goes
    atomic_save({}, tmp_path / "ev" / f"best_{NAME}.pth")
    line = one_line_error(capsys, eval_pruned_net.main, *tiny_run_args(synthetic_root, tmp_path / "ev"),
                          "--method", "baseline")
    assert line == (f"error: cannot write {tmp_path / 'ev' / f'metrics_{NAME}.json'}: a folder of that name is in "
                    f"the way (expected a file)")


def test_unwritable_dest_is_refused_before_the_work(synthetic_root, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    folder = unwritable_folder(tmp_path)
    dest = folder / "run" if folder == Path("/sys") else folder
    line = one_line_error(capsys, create_pruned_net.main, *tiny_run_args(synthetic_root, dest, "--method", "snip"))
    assert line.startswith(f"error: cannot write {dest}: --dest is not writable (")
    assert any(word in line for word in ("permission denied", "operation not permitted", "read-only"))


def test_full_disk_while_training_is_one_line_and_leaves_no_temporary(synthetic_root, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def fills_up(obj, handle, *args, **kwargs):
        if obj.get("iteration") == 2:                 # the end-of-run saves hit a full disk
            handle.write(b"PK partial")
            raise RuntimeError(ENFORCE_FAIL)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    dest = tmp_path / "full"
    line = one_line_error(capsys, launch_training.main,
                          *tiny_run_args(synthetic_root, dest, "--max-iters", "2", "--set", "train.save_every=1",
                                         "--set", "train.val_every=100"))
    assert line.startswith(f"error: cannot write {dest / f'best_{NAME}.pth'}: the write failed, most likely a "
                           f"full disk (")                      # iteration 2 validates first, then saves best_
    assert temporaries(dest) == [] and not (dest / f".{NAME}.lock").exists()
    assert load_checkpoint(dest / f"last_{NAME}.pth")["iteration"] == 1        # the last good state survives


# ------------------------------------------------------------------ item 4: concurrent runs cannot mix outputs


def test_second_run_into_a_locked_name_is_refused_and_writes_nothing(synthetic_root, tmp_path, capsys):
    from fileio import OutputLock

    dest = tmp_path / "locked"
    dest.mkdir()
    atomic_save(make_checkpoint({}, {"tasks": [], "num_classes": []}, "baseline"), dest / f"best_{NAME}.pth")
    before = sorted(p.name for p in dest.iterdir())
    with OutputLock(dest, "synthetic_snip_90"), OutputLock(dest, NAME):
        line = one_line_error(capsys, create_pruned_net.main,
                              *tiny_run_args(synthetic_root, dest, "--method", "snip", *PRUNE))
        assert f"another run is writing the synthetic_snip_90 outputs in {dest} (pid {os.getpid()}" in line
        for tool, extra in ((launch_training.main, TRAIN), (eval_pruned_net.main, ("--method", "baseline"))):
            line = one_line_error(capsys, tool, *tiny_run_args(synthetic_root, dest, *extra))
            assert f"another run is writing the {NAME} outputs" in line
    assert sorted(p.name for p in dest.iterdir()) == before


def test_two_concurrent_prune_runs_never_interleave_their_files(synthetic_root, tmp_path, capsys):
    """Run A (another process, seed 1) holds the name while it scores; run B (seed 2) starts meanwhile and
    is refused; every file of the name is then A's: checkpoint, report and compact export agree."""
    dest = tmp_path / "shared"
    args_a = tiny_run_args(synthetic_root, dest, "--method", "snip", "--seed", "1", "--export-compact",
                           "--set", "pruning.batch_size=4", "--num_batches", "30")
    run_a = subprocess.Popen([sys.executable, "create_pruned_net.py", *args_a], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    lock = dest / ".synthetic_snip_90.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and f'"pid": {run_a.pid}' in lock.read_text()):
        assert run_a.poll() is None, run_a.communicate()
        time.sleep(0.05)
    was_running = run_a.poll() is None
    with pytest.raises(SystemExit):
        create_pruned_net.main(tiny_run_args(synthetic_root, dest, "--method", "snip", "--seed", "2",
                                             "--export-compact", *PRUNE))
    err = capsys.readouterr().err
    out, err_a = run_a.communicate(timeout=300)
    assert run_a.returncode == 0, err_a
    assert was_running and f"another run is writing the synthetic_snip_90 outputs in {dest} (pid {run_a.pid}" in err
    ckpt = load_checkpoint(dest / "synthetic_snip_90.pth")
    report = json.loads((dest / "synthetic_snip_90_report.json").read_text())
    compact = torch.load(dest / "synthetic_snip_90.compact.pth", weights_only=True)
    assert ckpt["seed"] == report["pruning"]["seed"] == 1 and ckpt["num_batches"] == 30
    assert compact["meta"]["sparsity"] == ckpt["sparsity"] == report["pruning"]["sparsity"]
    assert sorted(p.name for p in dest.iterdir()) == ["synthetic_snip_90.compact.pth", "synthetic_snip_90.pth",
                                                       "synthetic_snip_90_report.csv", "synthetic_snip_90_report.json"]


# ------------------------------------------------------------------ item 9: interrupted saves leave nothing


def test_stale_temporaries_of_a_killed_save_are_removed_by_the_next_run(synthetic_root, tmp_path, capsys):
    dest = tmp_path / "stale"
    dest.mkdir()
    stale = dest / ".synthetic_snip_90.pth.k1ll3d00.tmp"           # what SIGKILL during a save leaves
    stale.write_bytes(b"half a checkpoint")
    foreign = dest / ".synthetic_random_90.pth.ab12cd34.tmp"        # another name's: maybe being written now
    foreign.write_bytes(b"in progress")
    create_pruned_net.main(tiny_run_args(synthetic_root, dest, "--method", "snip", *PRUNE))
    assert f"note: removed {stale}, a temporary file left by an interrupted save" in capsys.readouterr().err
    assert not stale.exists() and foreign.exists()


def test_failed_training_leaves_no_empty_log_folders(synthetic_root, tmp_path, capsys):
    dest = tmp_path / "failed"
    dest.mkdir()
    config = launch_training.build_parser().parse_args(tiny_run_args(synthetic_root, dest))
    from engine.config import config_from_args
    config = config_from_args(config)
    atomic_save(make_checkpoint({}, config, "snip"), dest / f"last_{NAME}.pth")     # not this run's method
    line = one_line_error(capsys, launch_training.main, *tiny_run_args(synthetic_root, dest, *TRAIN, "--resume"))
    assert "it lacks optimizer" in line or "written by method 'snip'" in line
    assert sorted(p.name for p in dest.iterdir()) == [f"last_{NAME}.pth"]            # no logs/, no tb/


def test_kill_9_mid_run_then_resume_ends_bit_identical(synthetic_root, tmp_path, capsys):
    """SIGKILL leaves the run's lock file (and maybe a temporary) behind; --resume takes both over and ends
    exactly where an uninterrupted run ends."""
    common = ("--max-iters", "12", "--set", "train.save_every=1", "--set", "train.val_every=100", "--no-final-eval")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "launch_training.py", *tiny_run_args(synthetic_root, killed, *common)],
                           cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / f"last_{NAME}.pth").is_file():
        assert run.poll() is None, run.communicate()
        time.sleep(0.02)
    run.kill()
    run.wait()
    launch_training.main(tiny_run_args(synthetic_root, whole, *common))
    stopped_at = load_checkpoint(killed / f"last_{NAME}.pth")["iteration"]
    assert 1 <= stopped_at < 12 and not (killed / f"final_{NAME}.pth").exists()
    assert (killed / f".{NAME}.lock").is_file()                               # left by the killed run
    capsys.readouterr()
    launch_training.main(tiny_run_args(synthetic_root, killed, *common, "--resume"))
    assert f"note: took over {killed / f'.{NAME}.lock'}" in capsys.readouterr().err
    a, b = load_checkpoint(whole / f"final_{NAME}.pth"), load_checkpoint(killed / f"final_{NAME}.pth")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in whole.iterdir())   # no leftovers


# ------------------------------------------------------------------ item 10: --resume says what it ignores


def test_resume_warns_about_ignored_settings_and_refuses_too_few_iterations(synthetic_root, tmp_path, capsys):
    dest = tmp_path / "resumed"
    common = ("--set", "train.val_every=100", "--set", "train.save_every=100", "--no-final-eval")
    launch_training.main(tiny_run_args(synthetic_root, dest, "--max-iters", "4", "--stop-after", "3", *common))
    line = one_line_error(capsys, launch_training.main,
                          *tiny_run_args(synthetic_root, dest, "--max-iters", "2", "--resume", *common))
    assert line == (f"error: cannot resume {dest / f'last_{NAME}.pth'} with 2 iterations: it has done 3 already "
                    f"(--max-iters / the iterations setting must be at least 3)")
    with pytest.warns(RuntimeWarning) as caught:
        launch_training.main(tiny_run_args(synthetic_root, dest, "--max-iters", "4", "--resume", "--seed", "5",
                                           "--set", "train.lr=0.5", "--set", "data.batch_size=2", *common))
    texts = [str(w.message) for w in caught]
    ignored = next(t for t in texts if " ignores " in t)
    assert "train.lr 0.5 (the run's 0.001 is kept)" in ignored and "--seed 5 (the run's seed 0 is kept)" in ignored
    applied = next(t for t in texts if "with changed settings" in t)
    assert "data.batch_size 4 -> 2" in applied and "train.lr" not in applied
    final = load_checkpoint(dest / f"final_{NAME}.pth")
    assert final["iteration"] == 4


# ------------------------------------------------------------------ item 7: metrics files say what made them


def _trained_best(synthetic_root, dest: Path) -> Path:
    launch_training.main(tiny_run_args(synthetic_root, dest, *TRAIN, "--no-final-eval"))
    return dest / f"best_{NAME}.pth"


def test_metrics_record_their_provenance_and_kinds_do_not_overwrite(synthetic_root, tmp_path, capsys):
    dest = tmp_path / "metrics"
    best = _trained_best(synthetic_root, dest)
    base = tiny_run_args(synthetic_root, dest, "--method", "baseline")
    eval_pruned_net.main(base)
    eval_pruned_net.main(base + ["--split", "train"])
    eval_pruned_net.main(base + ["--compat", "adashare"])
    test = json.loads((dest / f"metrics_{NAME}.json").read_text())
    train = json.loads((dest / f"metrics_{NAME}_train.json").read_text())
    adashare = json.loads((dest / f"metrics_{NAME}_adashare.json").read_text())
    assert (test["split"], test["metrics_compat"], test["checkpoint"]) == ("test", "standard", str(best))
    assert (train["split"], train["metrics_compat"]) == ("train", "standard")
    assert (adashare["split"], adashare["metrics_compat"]) == ("test", "adashare")
    assert train["seg"] != test["seg"]                                  # three evaluations, three files

    line = one_line_error(capsys, eval_pruned_net.main, *base, "--split", "train", "--compat", "adashare",
                          "--baseline-metrics", str(dest / f"metrics_{NAME}.json"))
    assert line == (f"error: baseline metrics file {dest / f'metrics_{NAME}.json'} was measured on split 'test' "
                    f"with standard metrics, this evaluation is split 'train' with adashare metrics: delta_m needs "
                    f"the same kind")
    (dest / f"metrics_{NAME}_train.json").replace(dest / f"metrics_{NAME}.json")      # renamed by hand
    line = one_line_error(capsys, eval_pruned_net.main, *base)
    assert "holds metrics of split 'train' (standard metrics); refusing to replace them" in line


def test_nan_metrics_are_null_with_a_warning(synthetic_root, tmp_path, monkeypatch):
    import methods.pipeline

    dest = tmp_path / "nan"
    _trained_best(synthetic_root, dest)
    real = methods.pipeline.evaluate_split

    def with_undefined(*args, **kwargs):
        metrics = real(*args, **kwargs)
        metrics["seg"]["mIoU"] = math.nan                                 # e.g. no class ever present
        return metrics

    monkeypatch.setattr(methods.pipeline, "evaluate_split", with_undefined)
    with pytest.warns(RuntimeWarning, match=r"undefined metric\(s\) seg\.mIoU \(NaN\) written as null"):
        eval_pruned_net.main(tiny_run_args(synthetic_root, dest, "--method", "baseline"))
    text = (dest / f"metrics_{NAME}.json").read_text()
    assert "NaN" not in text and json.loads(text)["seg"]["mIoU"] is None


# ------------------------------------------------------------------ item 8: every checkpoint kind, everywhere


def test_iou_from_original_format_and_eval_of_the_compact_export(synthetic_root, tmp_path, capsys):
    from fileio.original import export_original_state_dict

    dest = tmp_path / "kinds"
    create_pruned_net.main(tiny_run_args(synthetic_root, dest, "--method", "snip", "--export-compact", *PRUNE))
    ckpt = load_checkpoint(dest / "synthetic_snip_90.pth")
    original = dest / "original.pth"
    torch.save(export_original_state_dict(ckpt["model"], ckpt["tasks"], ckpt["masks"]), original)
    iou = ("--num_batches", "1", "--batch_size", "2", "--no-plot", "--no-progress", "--keep-ratio", "0.5")
    records = [iou_analysis.run(iou_analysis.build_parser().parse_args(
        [*analysis_args(synthetic_root, dest / "ours"), "--from", str(dest / "synthetic_snip_90.pth"), *iou]))]
    with pytest.warns(RuntimeWarning, match="predicts normals in the encoded space"):   # the original's convention
        records.append(iou_analysis.run(iou_analysis.build_parser().parse_args(
            [*analysis_args(synthetic_root, dest / "orig"), "--from", str(original), *iou])))
    for key in ("layers", "checkpoint_sparsity", "pool_keep_ratios"):
        assert records[0][key] == records[1][key], key             # the same net read from either kind

    base = tiny_run_args(synthetic_root, dest)
    eval_pruned_net.main(base + ["--checkpoint", str(dest / "synthetic_snip_90.pth")])
    eval_pruned_net.main(base + ["--checkpoint", str(dest / "synthetic_snip_90.compact.pth")])
    assert "compact-export checkpoint" in capsys.readouterr().out
    pth = json.loads((dest / "metrics_synthetic_snip_90.json").read_text())
    packed = json.loads((dest / "metrics_synthetic_snip_90.compact.json").read_text())
    def measured(metrics: dict) -> dict:        # all but the file's path and the timings
        cost = {k: v for k, v in metrics["cost"].items() if not k.startswith("latency")}
        return {**{k: v for k, v in metrics.items() if k != "checkpoint"}, "cost": cost}
    assert measured(packed) == measured(pth) and measured(pth)["cost"]["params"] > 0

    other = tiny_run_args(synthetic_root, dest, "--set", "tasks=[seg,sn]", "--set", "num_classes=[8,3]",
                          "--set", "loss_weights=[1,1]")
    line = one_line_error(capsys, eval_pruned_net.main, *other, "--checkpoint",
                          str(dest / "synthetic_snip_90.compact.pth"))
    assert line.startswith(f"error: compact export {dest / 'synthetic_snip_90.compact.pth'} is for tasks")


# ------------------------------------------------------------------ items 11, 12: provenance of pruning, counts


def test_pruned_net_records_world_size_and_scored_batches(synthetic_root, tmp_path):
    dest = tmp_path / "counts"
    create_pruned_net.main(tiny_run_args(synthetic_root, dest, "--method", "snip", "--num_batches", "3", *PRUNE))
    create_pruned_net.main(tiny_run_args(synthetic_root, dest, "--method", "magnitude", *PRUNE))
    snip, magnitude = load_checkpoint(dest / "synthetic_snip_90.pth"), load_checkpoint(dest / "synthetic_magnitude_90.pth")
    assert (snip["world_size"], snip["scored_batches"]) == (1, 3)
    assert (magnitude["world_size"], magnitude["scored_batches"]) == (1, 0)      # data-free: no batch scored


@pytest.mark.parametrize("tool", ["create_pruned_net", "iou_analysis", "static_similarity"])
def test_batch_size_zero_is_refused_everywhere(synthetic_root, tmp_path, capsys, monkeypatch, tool):
    no_work(monkeypatch)
    args = analysis_args(synthetic_root, tmp_path)
    extra = {"create_pruned_net": ["--method", "snip"], "iou_analysis": [],
             "static_similarity": ["--num_seeds", "1", "--dump_dir", str(tmp_path), "--table_json",
                                   str(tmp_path / "table.json")]}[tool]
    if tool == "static_similarity":
        at = args.index("--dest")
        args = args[:at] + args[at + 2:]
    main = {"create_pruned_net": create_pruned_net.main, "iou_analysis": iou_analysis.main,
            "static_similarity": static_similarity.main}[tool]
    assert one_line_error(capsys, main, *args, *extra, "--batch-size", "0") == \
        "error: --batch_size must be positive, got 0"


# ------------------------------------------------------------------ which writes are fsynced (fileio.atomic)


def fsynced_targets(monkeypatch) -> list[str]:
    """Spy on `os.fsync`: the list fills with the name of the file each fsync was for (the target a temporary
    `.{name}.XXXXXXXX.tmp` stands for)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name the file an fsync was for")
    names: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        names.append(name[1:].rsplit(".", 2)[0] if name.endswith(".tmp") else name)
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", spy)
    return names


def test_pruned_nets_are_not_fsynced_but_training_state_is(synthetic_root, tmp_path, monkeypatch):
    synced = fsynced_targets(monkeypatch)
    dest = tmp_path / "durability"
    create_pruned_net.main(tiny_run_args(synthetic_root, dest, "--method", "snip", "--export-compact", *PRUNE))
    written = {path.name for path in dest.glob("synthetic_snip_90*")}
    assert {"synthetic_snip_90.pth", "synthetic_snip_90.compact.pth", "synthetic_snip_90_report.json"} <= written
    # the nets, which the same command regenerates exactly, are renamed into place without an fsync;
    # the small report files keep theirs
    assert "synthetic_snip_90.pth" not in synced and "synthetic_snip_90.compact.pth" not in synced, synced
    assert {"synthetic_snip_90_report.json", "synthetic_snip_90_report.csv"} <= set(synced), synced
    assert load_checkpoint(dest / "synthetic_snip_90.pth")["masks"]          # complete and readable

    synced.clear()
    launch_training.main(tiny_run_args(synthetic_root, dest, "--method", "snip", *TRAIN))
    assert any(name.endswith(".pth") for name in synced), synced            # what a resume starts from


EXIT_SCRIPT = """
import atexit, sys, threading, time
sys.path.insert(0, {root!r})
from engine.cli import exit_process
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
if {non_daemon}:
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
sys.stdout.write("#" * 100000)          # still in the buffer
exit_process(3)
"""


@pytest.mark.parametrize("non_daemon", [False, True])
def test_exit_process_runs_atexit_flushes_and_keeps_the_status(non_daemon):
    """The fast exit (no interpreter teardown; the finish it saves is in docs/BENCHMARKS.md (f)) still runs
    the atexit handlers, delivers buffered output, keeps the status and waits for a non-daemon thread."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT.format(root=str(ROOT), non_daemon=non_daemon)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.count("#") == 100000 and "atexit ran" in proc.stdout
    assert time.perf_counter() - start < 30                           # the sleeping daemon thread is not waited for
    assert ("thread finished" in proc.stdout) == non_daemon
