"""The study's statistics on a hand-made results JSON (intervals worked out by hand), the report written
from the JSON alone, and the study script's plumbing (CLI adapter, design guard, log parsing)."""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import study  # noqa: E402
import study_report as report  # noqa: E402

T_975_DF4 = 2.7764451051977987        # Student t, 97.5 % quantile, 4 degrees of freedom (printed tables)
SEEDS = [0, 1, 2, 3, 4]
DISPARSE = "disparse_static[unanimous]"
# Per seed: Δm and mean normal angle error (degrees, lower is better) of three methods on shared scenes.
DELTA_M = {DISPARSE: [1.0, 2.0, 3.0, 4.0, 6.0], "snip": [0.5, 1.0, 1.0, 2.0, 2.5], "random": [3.0, 4.5, 5.0, 6.0, 8.5]}
ANGLE = {DISPARSE: [30.0, 31.0, 29.0, 30.0, 30.0], "snip": [30.5, 30.5, 30.0, 30.2, 29.8],
         "random": [30.0, 30.0, 30.0, 30.0, 30.0]}
# Disentangled scenes: DiSparse's Δm gain over SNIP is larger by 1, 1, 2, 2, 3 points.
EXTRA_GAIN = [1.0, 1.0, 2.0, 2.0, 3.0]


def _metrics(delta_m: float | None, angle: float) -> dict:
    metrics = {"seg": {"mIoU": 0.5, "Pixel Acc": 0.8}, "sn": {"Angle Mean": angle, "Angle 22.5": 40.0},
               "depth": {"abs_err": 0.7, "sigma_1.25": 55.0}, "sparsity": 0.0 if delta_m is None else 0.9}
    if delta_m is not None:
        metrics["delta_m"] = delta_m
    return metrics


def _results() -> dict:
    runs = []
    for kind in ("shared", "disentangled"):
        for i, seed in enumerate(SEEDS):
            runs.append({"kind": kind, "seed": seed, "variant": "baseline", "ratio": 0, "metrics": _metrics(None, 29.0),
                         "seconds": {"train": 10.0, "eval": 1.0}})
            for variant in DELTA_M:
                gain = EXTRA_GAIN[i] if kind == "disentangled" and variant == DISPARSE else 0.0
                runs.append({"kind": kind, "seed": seed, "variant": variant, "ratio": 90,
                             "metrics": _metrics(DELTA_M[variant][i] + gain, ANGLE[variant][i]),
                             "seconds": {"prune": 1.0, "train": 10.0, "eval": 1.0},
                             "train_curve": [[40, 1.5]], "pruning": {"a": {"kept": 3}}})
    layers = [{"name": "a", "index": 0, "kind": "conv", "all": 0.2, "pairs": {}},
              {"name": "b", "index": 1, "kind": "conv", "all": 0.4, "pairs": {}},
              {"name": "c", "index": 2, "kind": "shortcut", "all": 0.9, "pairs": {}}]
    iou = [{"kind": kind, "seed": seed, "ratio": 90, "layers": layers} for kind in ("shared", "disentangled")
           for seed in SEEDS]
    curves = [{"kind": kind, "seed": seed, "val": [[10, 2.0, {}], [30, 1.0, {}], [40, 0.9, {}]],
               "train": [[10, 2.5], [40, 1.1]]} for kind in ("shared", "disentangled") for seed in SEEDS]
    design = {"kinds": ["shared", "disentangled"], "seeds": SEEDS, "ratios": [90],
              "variants": [DISPARSE, "snip", "random"]}
    # the plateau check: shared seed 0's baseline trained twice as long (curves above end at step 40, loss 0.9)
    plateau = [{"kind": "shared", "seed": 0, "factor": 2, "steps": 80, "metrics": _metrics(None, 27.0),
                "val": [[40, 1.0, {}], [80, 0.81, {}]], "train": [[80, 0.8]]}]
    return {"design": design, "command": "python scripts/study.py", "runs": runs, "iou": iou, "curves": curves,
            "plateau": plateau}


def _hand_interval(diffs: list[float]) -> tuple[float, float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T_975_DF4 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _row(rows, kind, variant, reference, label):
    (row,) = [r for r in rows if (r["kind"], r["variant"], r["reference"], r["metric"]) == (kind, variant, reference,
                                                                                              label)]
    return row


def test_paired_t_intervals_match_hand_computation():
    rows = report.contrasts(_results())
    # DiSparse - SNIP, Δm: differences 0.5, 1, 2, 2, 3.5 -> mean 1.8, sd 1.1511, CI [0.3707, 3.2293]: better
    row = _row(rows, "shared", DISPARSE, "snip", "Δm%")
    assert row["differences"] == pytest.approx([0.5, 1.0, 2.0, 2.0, 3.5])
    mean, low, high = _hand_interval(row["differences"])
    assert (mean, low, high) == pytest.approx((1.8, 0.3707374, 3.2292626), abs=1e-6)
    interval = row["interval"]
    assert (interval.mean, interval.low, interval.high) == pytest.approx((mean, low, high), abs=1e-9)
    assert interval.significant and report._verdict(interval) == "**better**"
    # two-sided p from the closed-form t CDF for 4 degrees of freedom: F(t) = 1/2 + 3/4 x (1 - x^2/3), x = t/sqrt(4+t^2)
    t = mean / (math.sqrt(5.3 / 4) / math.sqrt(5))
    x = t / math.sqrt(4 + t * t)
    assert interval.p == pytest.approx(2 * (1 - (0.5 + 0.75 * x * (1 - x * x / 3))), rel=1e-9)
    # angle error is lower-better: signed differences 0.5, -0.5, 1, 0.2, -0.2 -> mean 0.2, CI includes 0
    row = _row(rows, "shared", DISPARSE, "snip", "SN mean°")
    assert row["differences"] == pytest.approx([0.5, -0.5, 1.0, 0.2, -0.2])
    assert (row["interval"].low, row["interval"].high) == pytest.approx((-0.5293125, 0.9293125), abs=1e-6)
    assert not row["interval"].significant
    # DiSparse - random, Δm: -2, -2.5, -2, -2, -2.5 -> significantly worse
    row = _row(rows, "shared", DISPARSE, "random", "Δm%")
    assert (row["interval"].mean, row["interval"].low, row["interval"].high) == pytest.approx(
        (-2.2, -2.5400437, -1.8599563), abs=1e-6)
    assert report._verdict(row["interval"]) == "**worse**"
    # against the dense baseline, Δm differences are the Δm values themselves (the baseline's Δm is 0)
    assert _row(rows, "shared", DISPARSE, "baseline", "Δm%")["differences"] == DELTA_M[DISPARSE]


def test_interaction_holm_and_iou():
    results = _results()
    seeds, diffs = report.interaction(results, DISPARSE, "snip", 90)
    assert seeds == SEEDS and diffs == pytest.approx(EXTRA_GAIN)
    assert report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(report.holm([math.nan, 0.02])[0]) and report.holm([math.nan, 0.02])[1] == pytest.approx(0.02)
    assert report.mean_iou(results["iou"][0]) == pytest.approx(0.3)          # conv layers only
    single = report.t_interval([4.0])
    assert single.n == 1 and not single.significant and math.isinf(single.high)
    with pytest.raises(ValueError):
        report.t_interval([])


def test_report_from_the_json_alone(tmp_path):
    source = tmp_path / "results.json"
    source.write_text(json.dumps(_results()))
    assert report.main([str(source), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "STUDY.md").read_text()
    assert "| shared | 90 | disparse_static[unanimous] | snip | 1.80 [0.37, 3.23] |" in text
    assert "- shared, 90 %: disparse_static[unanimous] is WORSE than random on Δm% by -2.20 [-2.54, -1.86]" in text
    assert "| 90 | disentangled | 0.300 [0.300, 0.300] | 3.60 [1.14, 6.06] |" in text   # IoU table: EXTRA_GAIN + 1.8
    assert "| 90 | disparse_static[unanimous] | snip | 1.80 [0.76, 2.84] | **better** |" in text   # interaction
    assert "| shared | 5 | weighted sum | 2.0000 | 1.0000 | 0.9000 | -10.0 % |" in text   # plateau: 30 vs 40
    # longer run: 0.9 -> 0.81 is -10 %; SN mean angle 29 -> 27 degrees is -2/29 = -6.9 %
    assert "| shared | 0 | val loss (weighted sum) | 40 | 0.9000 | 80 | 0.8100 | -10.0 % |" in text
    assert "| shared | 0 | SN mean° | 40 | 29.0000 | 80 | 27.0000 | -6.9 % |" in text
    for png in ("metrics_shared", "metrics_disentangled", "gain_over_snip", "iou_layers", "baseline_curves"):
        assert (tmp_path / "out" / f"{png}.png").stat().st_size > 5000
    stored = json.loads((tmp_path / "out" / "contrasts.json").read_text())
    assert any(r["significant"] and r["metric"] == "Δm%" and r["reference"] == "snip" for r in stored)
    assert report.main([str(tmp_path / "missing.json")]) == 2
    # the small per-seed copy beside the report rebuilds the same report (tables and intervals)
    kept = json.loads((tmp_path / "out" / "per_seed_results.json").read_text())
    assert "train_curve" not in json.dumps(kept) and len(kept["runs"]) == len(_results()["runs"])
    assert report.main([str(tmp_path / "out" / "per_seed_results.json"), "--out", str(tmp_path / "again"),
                        "--no-plots"]) == 0
    assert (tmp_path / "again" / "contrasts.json").read_text() == (tmp_path / "out" / "contrasts.json").read_text()


def test_run_cli_adapter(tmp_path, monkeypatch):
    calls = []
    with_argv = types.ModuleType("fake_with_argv")
    with_argv.main = lambda argv=None: calls.append(("argv", argv)) or (3 if "--fail" in argv else 0)
    without = types.ModuleType("fake_without")

    def main_reading_sys_argv():
        calls.append(("sys.argv", sys.argv[1:]))
        print("some output")
        raise SystemExit(0)

    without.main = main_reading_sys_argv
    monkeypatch.setitem(sys.modules, "fake_with_argv", with_argv)
    monkeypatch.setitem(sys.modules, "fake_without", without)
    study.run_cli("fake_with_argv", ["--x", "1"], tmp_path / "a.log")
    study.run_cli("fake_without", ["--y"], tmp_path / "b.log")
    assert calls == [("argv", ["--x", "1"]), ("sys.argv", ["--y"])]
    assert "some output" in (tmp_path / "b.log").read_text() and sys.argv[0] != "fake_without.py"
    with pytest.raises(study.StudyError, match=r"fake_with_argv failed \(exit 3\)"):
        study.run_cli("fake_with_argv", ["--fail"], tmp_path / "c.log")


def test_design_guard_names_and_logs(tmp_path):
    design = study.resolve_design(study.parse_args(["--quick"]))
    study.check_design(design, tmp_path)
    study.check_design(design, tmp_path)                                        # same design: resumes
    with pytest.raises(study.StudyError, match=r"steps=\{'shared': 12, 'disentangled': 12\} \(now \{'shared': 5"):
        study.check_design({**design, "steps": {"shared": 5, "disentangled": 12}}, tmp_path)
    assert study.steps_per_kind("300") == {"shared": 300, "disentangled": 300}
    assert study.resolve_design(study.parse_args(["--steps", "disentangled=40"]))["steps"] == \
        {"shared": 250, "disentangled": 40}
    with pytest.raises(SystemExit):
        study.parse_args(["--steps", "cartoon=3"])
    assert study.parse_variant("disparse_static[mean_score]") == ("disparse_static", "mean_score")
    assert study.parse_variant("snip") == ("snip", None)
    assert study.run_name("snip", 92.5) == "synthetic_snip_92.5" and study.run_name("baseline", None) == \
        "synthetic_baseline"
    # per kind: 5 seeds x (baseline + 3 ratios x (7 variants + IoU at init + IoU trained)) + the longer baseline
    assert study.count_units(study.FULL) == 2 * (5 * (1 + 3 * 9) + 1)
    assert study.count_units({**study.FULL, "variants": ["snip"]}) == 2 * (5 * (1 + 3 * 3) + 1)
    assert len(study.units(study.FULL, tmp_path)) == len(set(study.units(study.FULL, tmp_path))) == 282
    flags = study.design_flags(study.FULL, "disentangled", tmp_path)
    assert flags[flags.index("--config") + 1].endswith("configs/synthetic_disentangled.yaml")
    assert flags[flags.index("--data-root") + 1] == str(tmp_path / "data" / "disentangled")
    assert {"loss_weights=[1,5,0.1]", "train.weight_decay=0.0", "train.lr_schedule=cosine"} <= set(flags)
    log = tmp_path / "run.jsonl"
    log.write_text('{"kind": "event", "iteration": 0}\n{"kind": "train", "iteration": 5, "avg_loss": 2.5}\n'
                   '{"kind": "val", "iteration": 10, "loss": 1.5, "losses": {"seg": 1.0}}\n'
                   '{"kind": "train", "iteration": 15, "avg_loss": 9.0}\n'            # lost: killed before a save
                   '{"kind": "event", "iteration": 10, "event": "resume"}\n{"kind": "train", "iteration": 15, '
                   '"avg_loss": 2.0}\n')
    assert study.learning_curve(log) == {"val": [[10, 1.5, {"seg": 1.0}]], "train": [[5, 2.5], [15, 2.0]]}


def test_compare_results_finds_a_planted_difference():
    reference = _results()
    same = json.loads(json.dumps(reference))
    assert study.compare_results(same, reference, tolerance=1e-6) == []
    planted = json.loads(json.dumps(reference))
    (run,) = [r for r in planted["runs"] if (r["kind"], r["seed"], r["variant"]) == ("disentangled", 3, "snip")]
    run["metrics"]["sn"]["Angle Mean"] += 1e-4                     # 30.2 -> 30.2001: relative 3.3e-6
    planted["iou"][0]["layers"][1]["all"] = None                  # an IoU that became undefined
    problems = study.compare_results(planted, reference, tolerance=1e-6)
    assert len(problems) == 2
    assert "('run', 'disentangled', 3, 'snip', 90.0) sn.Angle Mean: 30.2001" in problems[0]
    assert "('iou', 'shared', 0, 'init', 90.0) 1.all: None vs reference 0.4" in problems[1]
    assert study.compare_results(planted, reference, tolerance=1e-5)[1:] == []   # 3.3e-6 within 1e-5
    subset = {**reference, "runs": reference["runs"][:3], "iou": []}               # a rerun of part of the grid
    assert study.compare_results(subset, reference, tolerance=0.0) == []
    extra = {**subset, "runs": subset["runs"] + [{**subset["runs"][0], "seed": 9}]}
    assert study.compare_results(extra, reference, tolerance=0.0) == [
        "('run', 'shared', 9, 'baseline', 0.0): not in the reference"]


def test_compare_results_skips_timings_and_fields_the_reference_lacks_but_not_lost_metrics():
    reference = _results()
    newer = json.loads(json.dumps(reference))         # a later version's metrics files: a cost block, timings
    for number, run in enumerate(newer["runs"]):
        run["metrics"]["cost"] = {"params": 1000 + number, "latency_ms": 7.5 + number}
    assert study.compare_results(newer, reference, tolerance=0.0) == []
    reference["runs"][0]["metrics"]["cost"] = {"params": 999, "latency_ms": 1.0}
    assert study.compare_results(newer, reference, tolerance=0.0) == [
        "('run', 'shared', 0, 'baseline', 0.0) cost.params: 1000 vs reference 999"]   # latency never compared
    del newer["runs"][1]["metrics"]["sn"]["Angle Mean"]
    problems = study.compare_results(newer, reference, tolerance=0.0)
    assert len(problems) == 2 and "sn.Angle Mean: None vs reference" in problems[1]


def test_cost_record_sums_the_invocations(tmp_path):
    first = study.record_cost(tmp_path, {"wall_seconds": 100.5, "cpu_seconds": 190.0, "runs": 10})
    assert (first["wall_seconds"], first["cpu_seconds"]) == (100.5, 190.0)
    second = study.record_cost(tmp_path, {"wall_seconds": 20.25, "cpu_seconds": 39.5, "runs": 2})   # a resume
    assert (second["wall_seconds"], second["cpu_seconds"]) == (120.75, 229.5)
    stored = json.loads((tmp_path / "cost.json").read_text())
    assert stored == second and [e["runs"] for e in stored["invocations"]] == [10, 2]
    assert study.cpu_seconds() > 0


def test_device_is_passed_to_every_cli_and_kept_out_of_cpu_designs(tmp_path, monkeypatch, capsys):
    cpu = study.resolve_design(study.parse_args([]))
    assert "device" not in cpu and cpu == {**study.FULL}          # the published CPU design, unchanged
    flags = study.design_flags(cpu, "shared", tmp_path)
    assert flags[flags.index("--device") + 1] == "cpu"
    gpu = study.resolve_design(study.parse_args(["--device", "cuda", "--steps", "2000"]))
    flags = study.design_flags(gpu, "shared", tmp_path)
    assert flags[flags.index("--device") + 1] == "cuda" and gpu["steps"] == {"shared": 2000, "disentangled": 2000}
    study.check_design(cpu, tmp_path)
    with pytest.raises(study.StudyError, match=r"device=None \(now 'cuda'\)"):      # no mixing in one folder
        study.check_design(gpu, tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert study.main(["--device", "cuda", "--quick", "--dest", str(tmp_path / "gpu")]) == 1
    assert not (tmp_path / "gpu").exists()                          # refused before anything was written
    assert capsys.readouterr().err.strip() == ("error: --device cuda: no CUDA device here (torch.cuda.is_available() "
                                               "is False); run on a machine with a GPU, or without --device for the CPU")
