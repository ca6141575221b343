"""The public Python API (prune_utils.api, prune_utils.task_spec; docs/API.md) on models of a user's own:
output and batch layouts, scores checked against hand-derived gradients, exact sparsity with weights no task
uses, controllers that keep pruned weights and their optimizer state at zero, mask files, one-line errors,
and the documented quickstart itself."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import prune_utils
from fileio import CheckpointError, atomic_save
from prune_utils import (TaskSpec, TaskStructure, apply_masks, build_masks, dynamic_sparsity, load_masks,
                         mask_sparsity, save_masks, sparsity_report, static_sparsity, task_scores)

ROOT = Path(__file__).resolve().parents[1]


class Linear2(nn.Module):
    """y_t = v_t · (W x): a shared 2x3 trunk and a 1x2 head per task, no biases. Output layout selectable."""

    def __init__(self, layout: str = "dict") -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 2, bias=False)
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 1, bias=False), "b": nn.Linear(2, 1, bias=False)})
        self.layout = layout

    def task(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](self.trunk(x)).squeeze(1)

    def forward(self, x: torch.Tensor):
        out = {t: self.task(x, t) for t in ("a", "b")}
        return out if self.layout == "dict" else (out["a"], out["b"])


def linear2(layout: str = "dict") -> Linear2:
    torch.manual_seed(0)
    return Linear2(layout)


def mse_spec(**options) -> TaskSpec:
    return TaskSpec(["a", "b"], {"a": nn.MSELoss(), "b": nn.MSELoss()}, **options)


def toy_batch(seed: int = 0, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), {"a": torch.randn(n, generator=g), "b": torch.randn(n, generator=g)}


# ----------------------------------------------------------------------------------------------------------
# TaskSpec: layouts and errors


def test_outputs_and_batches_in_every_layout_reach_the_same_losses():
    x, y = toy_batch()
    with torch.no_grad():
        expected = {t: float(nn.functional.mse_loss(linear2().task(x, t), y[t])) for t in "ab"}
    layouts = [
        (mse_spec(), linear2("dict"), (x, y)),                                       # dict out, (x, {t: y})
        (mse_spec(), linear2("tuple"), (x, (y["a"], y["b"]))),                       # tuple out, (x, (ya, yb))
        (mse_spec(), linear2("tuple"), (x, y["a"], y["b"])),                         # (x, ya, yb)
        (mse_spec(), linear2("dict"), {"img": x, **y}),                              # dict batch
        (mse_spec(inputs="features"), linear2("dict"), {"features": x, **y}),        # another input key
        (mse_spec(outputs={t: (lambda m, inp, t=t: m.task(inp, t)) for t in "ab"},  # one call per task
                  inputs=lambda batch: batch["x"], targets=lambda batch, task: batch["y"][task]),
         linear2("none"), {"x": x, "y": y}),
    ]
    for spec, model, batch in layouts:
        losses = spec.task_losses(model, batch)
        assert {t: v.item() for t, v in losses.items()} == pytest.approx(expected, rel=1e-6)
        assert spec.total_loss(spec.predict(model, batch), batch).item() == pytest.approx(sum(expected.values()))
    weighted = mse_spec(weights={"b": 0.25})
    assert weighted.total_loss(weighted.predict(linear2(), (x, y)), (x, y)).item() == pytest.approx(
        expected["a"] + 0.25 * expected["b"])


def test_task_spec_errors_are_one_line():
    x, y = toy_batch()
    model = linear2()
    with pytest.raises(ValueError, match="task 'b' has no loss"):
        TaskSpec(["a", "b"], {"a": nn.MSELoss()})
    with pytest.raises(ValueError, match=r"a loss is given for \['c'\], which are not among the tasks"):
        TaskSpec(["a"], {"a": nn.MSELoss(), "c": nn.MSELoss()})
    with pytest.raises(ValueError, match="listed twice"):
        TaskSpec(["a", "a"], {"a": nn.MSELoss()})
    with pytest.raises(TypeError, match="sequence of task names"):
        TaskSpec("ab", {"a": nn.MSELoss()})  # type: ignore[arg-type]
    wrong = TaskSpec(["a", "c"], {"a": nn.MSELoss(), "c": nn.MSELoss()})
    with pytest.raises(ValueError, match=r"model's outputs \['a', 'b'\] do not match the tasks \['a', 'c'\]: "
                                         r"no output for \['c'\]"):
        wrong.predict(model, (x, y))
    three = TaskSpec(list("abc"), {t: nn.MSELoss() for t in "abc"})
    with pytest.raises(ValueError, match="returned 2 outputs for 3 tasks"):
        three.predict(linear2("tuple"), (x, y))
    with pytest.raises(ValueError, match="one tensor for 2 tasks"):
        mse_spec().outputs_of(torch.zeros(2))
    with pytest.raises(ValueError, match=r"loss of task 'a' returned \(5,\), expected a scalar"):
        TaskSpec(["a", "b"], {"a": nn.MSELoss(reduction="none"), "b": nn.MSELoss()}).task_losses(model, (x, y))
    with pytest.raises(ValueError, match="batch has no input 'img'.*TaskSpec\\(inputs="):
        mse_spec().task_losses(model, {"x": x, **y})
    with pytest.raises(ValueError, match="no target for task 'b' in the batch \\(keys: img, a\\)"):
        mse_spec().task_losses(model, {"img": x, "a": y["a"]})
    with pytest.raises(ValueError, match="no target for task 'b' in the batch's targets"):
        mse_spec().task_losses(model, (x, {"a": y["a"]}))
    with pytest.raises(ValueError, match="bare tensor"):
        mse_spec().task_losses(model, x)


# ----------------------------------------------------------------------------------------------------------
# scores against hand-derived gradients


def test_scores_match_hand_derived_gradients():
    """grad_weight2 = |∂L_t/∂w| ⊙ w² on the net itself; for L_t = mean_i (v_t W x_i - y_i)² the gradients are
    ∂L/∂v_t = 2/n Σ_i r_i (W x_i)ᵀ and ∂L/∂W = 2/n Σ_i r_i v_tᵀ x_iᵀ with r_i = v_t W x_i - y_i."""
    model = linear2("tuple")
    batches = [toy_batch(seed) for seed in (1, 2)]
    data = [(x, (y["a"], y["b"])) for x, y in batches]
    structure = TaskStructure.from_modules(model, shared="trunk", heads={"a": "heads.a", "b": "heads.b"})
    scores = task_scores(model, mse_spec(), data, "grad_weight2", structure=structure, mode="eval")
    W = model.trunk.weight.detach()
    for task in "ab":
        v = model.heads[task].weight.detach()
        sum_abs_w, sum_abs_v = torch.zeros_like(W), torch.zeros_like(v)
        for x, y in batches:
            r = (x @ W.T @ v.T).squeeze(1) - y[task]
            sum_abs_v += (2 / len(x) * (r[:, None] * (x @ W.T)).sum(0, keepdim=True)).abs()
            sum_abs_w += (2 / len(x) * (v.T * (r[:, None] * x).sum(0, keepdim=True))).abs()
        assert list(scores[task]) == ["trunk.weight", f"heads.{task}.weight"]
        torch.testing.assert_close(scores[task]["trunk.weight"], sum_abs_w * W.square(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(scores[task][f"heads.{task}.weight"], sum_abs_v * v.square(), rtol=1e-5, atol=1e-7)
    # the same net behind a per-task callable and dict batches gives the same scores
    callable_spec = mse_spec(outputs={t: (lambda m, inp, t=t: m.task(inp, t)) for t in "ab"})
    dict_data = [{"img": x, **y} for x, y in batches]
    again = task_scores(model, callable_spec, dict_data, "grad_weight2", structure=structure, mode="eval")
    assert all(torch.equal(again[t][n], scores[t][n]) for t in scores for n in scores[t])
    with pytest.raises(ValueError, match="needs data"):
        task_scores(model, mse_spec(), None, "snip", structure=structure)


# ----------------------------------------------------------------------------------------------------------
# masks, unowned weights, report


class WithSpare(nn.Module):
    """A shared trunk, two heads, and a `spare` layer no loss reaches (an auxiliary module left unused)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU())
        self.spare = nn.Linear(40, 5)
        self.a, self.b = nn.Linear(40, 1), nn.Linear(40, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {"a": self.a(h).squeeze(1), "b": self.b(h).squeeze(1)}


def spare_setup():
    torch.manual_seed(0)
    model = WithSpare()
    data = [(torch.randn(16, 10), {"a": torch.randn(16), "b": torch.randn(16)}) for _ in range(3)]
    with pytest.warns(UserWarning, match="'spare.weight'"):
        structure = TaskStructure.from_gradient_flow(model, mse_spec(), data[0])
    return model, data, structure


@pytest.mark.parametrize("arbiter", ["unanimous", "majority", "intersection", "mean_score"])
def test_masks_hit_the_sparsity_over_all_weights_and_keep_unowned_ones_dense(arbiter):
    model, data, structure = spare_setup()
    scores = task_scores(model, mse_spec(), data, "snip", structure=structure, generator=0)
    masks = build_masks(model, scores, 0.8, arbiter=arbiter, structure=structure)
    # 400 + 1600 + 200 (spare) + 40 + 40 = 2280 prunable weights; 456 kept = 20 %, 200 of them in `spare`
    assert sum(m.numel() for m in masks.values()) == 2280 and list(masks) == list(dict(model.named_parameters()))[::2]
    assert bool(masks["spare.weight"].all())
    assert abs(sum(int(m.sum()) for m in masks.values()) - 456) <= 1                 # tol 5e-4 * 2280 = 1.14
    apply_masks(model, masks)
    report = sparsity_report(model, masks, structure)
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["spare.weight"]["owner"] == "unowned" and rows["spare.weight"]["sparsity"] == 0.0
    assert rows["trunk.0.weight"]["owner"] == "backbone" and rows["a.weight"]["owner"] == "a"
    assert report["summary"]["overall"]["kept"] == sum(int(m.sum()) for m in masks.values())
    assert report["summary"]["unowned"]["total"] == 200
    assert "unowned" in prune_utils.format_report(report)
    pruned = [(n, w) for n, w in model.named_parameters() if n in masks]
    assert all(bool((w[~masks[n]] == 0).all()) for n, w in pruned)


def test_registered_saliency_and_custom_arbiter_through_the_api(monkeypatch):
    """Any registered saliency and any arbiter: a custom data-free score (|w| of the trunk doubled for task a)
    and a plain-function arbiter (task a alone decides the shared weights) still land on the sparsity."""
    from prune_utils.arbiters import ARBITERS
    from prune_utils.saliency import SALIENCY, WeightSaliency

    monkeypatch.setitem(SALIENCY, "abs_plus_one", WeightSaliency("abs_plus_one", lambda w, g: w.abs() + 1.0))
    calls = []

    def first_task_decides(per_task, scores=None):
        calls.append(sorted(per_task))
        return dict(next(iter(per_task.values())))

    monkeypatch.setitem(ARBITERS, "first", ARBITERS["unanimous"])       # restored after the test
    prune_utils.register_arbiter("first", first_task_decides, overwrite=True)
    model, data, structure = spare_setup()
    scores = task_scores(model, mse_spec(), None, "abs_plus_one", structure=structure)
    torch.testing.assert_close(scores["a"]["trunk.0.weight"], model.trunk[0].weight.detach().abs() + 1.0)
    masks = build_masks(model, scores, 0.6, arbiter="first", structure=structure)
    assert abs(sum(int(m.sum()) for m in masks.values()) - 0.4 * 2280) <= 1 and calls[0] == ["a", "b"]
    per_task = prune_utils.mask_builder.task_masks(
        {t: scores[t] for t in scores}, 0.5, structure)                  # the rule really is "task a decides"
    combined = prune_utils.mask_builder.combine(per_task, "first", structure=structure)
    assert torch.equal(combined["trunk.2.weight"], per_task["a"]["trunk.2.weight"])


def test_sparsity_outside_the_open_unit_interval_and_mismatches_are_refused():
    model, data, structure = spare_setup()
    scores = task_scores(model, mse_spec(), data, "magnitude", structure=structure)
    for bad in (0, 0.0, 1, 1.0, 1.5, -0.1, 90):
        with pytest.raises(ValueError, match=r"sparsity must lie in \(0, 1\)"):
            build_masks(model, scores, bad, structure=structure)
        with pytest.raises(ValueError, match=r"sparsity must lie in \(0, 1\)"):
            dynamic_sparsity(model, None, mse_spec(), sparsity=bad, end=10, structure=structure)
    with pytest.raises(TypeError, match="must be a number"):
        build_masks(model, scores, "0.9", structure=structure)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be reached: 200 of the 2280 prunable weights are used by no task"):
        build_masks(model, scores, 0.95, structure=structure)
    with pytest.raises(ValueError, match="does not match WithSpare"):
        build_masks(model, scores, 0.5, structure=TaskStructure.from_model(_ModelWithHeads()))
    with pytest.raises(ValueError, match=r"scores are for tasks \['a'\]"):
        build_masks(model, {"a": scores["a"]}, 0.5, structure=structure)
    with pytest.raises(ValueError, match="the TaskSpec for"):
        task_scores(model, TaskSpec(["a"], {"a": nn.MSELoss()}), data, "snip", structure=structure)
    with pytest.raises(ValueError, match="no `backbone` module"):
        task_scores(model, mse_spec(), data, "snip")
    with pytest.raises(ValueError, match="mask set does not match the model: missing"):
        apply_masks(model, {"a.weight": torch.ones(1, 40, dtype=torch.bool)})


class _ModelWithHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})


# ----------------------------------------------------------------------------------------------------------
# controllers in a user's loop


def pruned_state_is_zero(model, optimizer, masks) -> bool:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        weight = params[name]
        if bool((weight[~mask] != 0).any()):
            return False
        for value in optimizer.state.get(weight, {}).values():
            if torch.is_tensor(value) and value.shape == weight.shape and bool((value[~mask] != 0).any()):
                return False
    return True


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
], ids=["adam", "adamw-amsgrad", "sgd-nesterov"])
def test_static_sparsity_keeps_pruned_weights_and_optimizer_state_at_zero(make_optimizer):
    model, data, structure = spare_setup()
    spec = mse_spec()
    optimizer = make_optimizer(model.parameters())
    for batch in data:                                    # dense steps first: the optimizer has state
        optimizer.zero_grad()
        spec.total_loss(spec.predict(model, batch), batch).backward()
        optimizer.step()
    scores = task_scores(model, spec, data, "snip", structure=structure, generator=0)
    masks = build_masks(model, scores, 0.5, structure=structure)
    sparse = static_sparsity(model, optimizer, masks, reapply_every=4)
    assert pruned_state_is_zero(model, optimizer, masks)  # cleared when attached
    kept_moved = False
    for step in range(12):
        batch = data[step % len(data)]
        before = model.trunk[2].weight.detach().clone()
        sparse.before_step(step, batch)
        optimizer.zero_grad()
        spec.total_loss(spec.predict(model, batch), batch).backward()
        optimizer.step()
        sparse.after_step()
        assert pruned_state_is_zero(model, optimizer, masks), step
        kept_moved |= bool((model.trunk[2].weight[masks["trunk.2.weight"]] != before[masks["trunk.2.weight"]]).any())
    assert kept_moved                                    # the kept weights do train
    with torch.no_grad():                                # something else writes into a pruned position
        model.trunk[0].weight[~masks["trunk.0.weight"]] = 1.0
    for _ in range(4):
        sparse.after_step()
    assert pruned_state_is_zero(model, optimizer, masks)  # re-zeroed within reapply_every steps
    assert sparse.sparsity() == pytest.approx(mask_sparsity(masks))


def tuple_mlp() -> nn.Module:
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bottom = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.towers = nn.ModuleList(nn.Linear(32, 1) for _ in range(2))

        def forward(self, x):
            h = self.bottom(x)
            return tuple(t(h).squeeze(1) for t in self.towers)

    return Net()


def tuple_data(steps: int):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 8, generator=g), (torch.randn(16, generator=g), torch.randn(16, generator=g)))
            for _ in range(steps)]


def dynamic_run(mode, steps, data, resume_at=None, tmp_path=None):
    model = tuple_mlp()
    structure = TaskStructure.from_modules(model, shared="bottom", heads={"a": "towers.0", "b": "towers.1"})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparse = dynamic_sparsity(model, optimizer, mse_spec(), sparsity=0.75, structure=structure, mode=mode,
                              interval=2, end=6, drop_fraction=0.5, generator=7)
    counts = {n: int(m.sum()) for n, m in sparse.masks.items()}
    spec = mse_spec()
    for step in range(steps):
        if step == resume_at:                          # save, rebuild everything, load: as a restarted job
            path = tmp_path / "state.pth"
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "sparsity": sparse.state_dict()}, path)
            state = torch.load(path, weights_only=True)
            model = tuple_mlp()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sparse = dynamic_sparsity(model, optimizer, mse_spec(), sparsity=0.75, structure=structure, mode=mode,
                                      interval=2, end=6, drop_fraction=0.5, generator=99, state=state["sparsity"])
        batch = data[step]
        record = sparse.before_step(step, batch)
        assert (record is not None) == (step % 2 == 0 and step <= 6)
        optimizer.zero_grad()
        spec.total_loss(spec.predict(model, batch), batch).backward()
        optimizer.step()
        sparse.after_step()
        assert {n: int(m.sum()) for n, m in sparse.masks.items()} == counts
        assert pruned_state_is_zero(model, optimizer, sparse.masks)
    return model, sparse


@pytest.mark.parametrize("mode", ["disparse", "rigl"])
def test_dynamic_sparsity_in_a_user_loop_keeps_counts_and_resumes_exactly(mode, tmp_path):
    data = tuple_data(9)
    model, sparse = dynamic_run(mode, 9, data)
    assert abs(sparse.sparsity() - 0.75) <= 5e-4 and sparse.controller.frozen
    start = dynamic_sparsity(tuple_mlp(), None, mse_spec(), sparsity=0.75, end=6, generator=7,
                             structure=TaskStructure.from_modules(tuple_mlp(), shared="bottom",
                                                                  heads={"a": "towers.0", "b": "towers.1"})).masks
    assert any(not torch.equal(start[n], sparse.masks[n]) for n in start)     # the masks did move
    resumed_model, resumed = dynamic_run(mode, 9, data, resume_at=3, tmp_path=tmp_path)
    assert all(torch.equal(resumed.masks[n], sparse.masks[n]) for n in sparse.masks)
    a, b = model.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dynamic_sparsity_argument_errors():
    model = tuple_mlp()
    structure = TaskStructure.from_modules(model, shared="bottom", heads={"a": "towers.0", "b": "towers.1"})
    with pytest.raises(ValueError, match="exactly one of `masks` and `sparsity`"):
        dynamic_sparsity(model, None, mse_spec(), end=5, structure=structure)
    sparse = dynamic_sparsity(model, None, mse_spec(), sparsity=0.5, end=5, structure=structure)
    with pytest.raises(ValueError, match="needs the training batch"):
        sparse.before_step(0)
    with pytest.raises(ValueError, match="mean_score.*no vote threshold"):
        dynamic_sparsity(model, None, mse_spec(), sparsity=0.5, end=5, structure=structure, arbiter="mean_score")


# ----------------------------------------------------------------------------------------------------------
# mask files


def test_mask_files_round_trip_and_refuse_mismatches(tmp_path):
    model, data, structure = spare_setup()
    masks = build_masks(model, task_scores(model, mse_spec(), data, "magnitude", structure=structure), 0.5,
                        structure=structure)
    path = save_masks(tmp_path / "masks.pth", masks, structure)
    raw = torch.load(path, weights_only=True)                      # a plain dict
    assert raw["format"] == "disparse-masks" and raw["tasks"] == ["a", "b"] and raw["unowned"] == ["spare.weight"]
    assert raw["owners"]["trunk.0.weight"] == ["a", "b"] and raw["sparsity"] == pytest.approx(mask_sparsity(masks))
    loaded = load_masks(path, model, structure)
    assert list(loaded) == list(masks) and all(torch.equal(loaded[n], masks[n]) for n in masks)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: mask set does not match the model"):
        load_masks(path, tuple_mlp())
    other = TaskStructure.from_modules(model, shared="trunk", heads={"a": ["a", "spare"], "b": "b"})
    with pytest.raises(ValueError, match="made for another task structure"):
        load_masks(path, model, other)
    plain = save_masks(tmp_path / "plain.pth", masks)              # without a structure: masks only
    assert torch.load(plain, weights_only=True)["owners"] is None and len(load_masks(plain, model)) == 5
    atomic_save({"format": "disparse-checkpoint", "model": {}}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="not a disparse-masks file.*read_weights"):
        load_masks(tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_masks(tmp_path / "missing.pth")


# ----------------------------------------------------------------------------------------------------------
# the documented quickstart, run as written


def quickstart_code() -> str:
    text = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/API.md has no python block under '## Quickstart'"
    return match.group(1)


def test_the_quickstart_of_docs_api_runs_as_written(tmp_path, monkeypatch, capsys):
    code = quickstart_code()
    assert 15 <= len(code.strip().splitlines()) <= 35
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__quickstart__"}
    exec(compile(code, "docs/API.md#quickstart", "exec"), namespace)
    assert (tmp_path / "masks.pth").is_file()
    masks, model = namespace["masks"], namespace["model"]
    assert abs(mask_sparsity(masks) - 0.9) <= 5e-4
    params = dict(model.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in masks.items())
    assert "overall" in capsys.readouterr().out


def test_the_public_api_is_re_exported():
    for name in ("TaskSpec", "TaskStructure", "task_scores", "build_masks", "apply_masks", "sparsity_report",
                 "format_report", "static_sparsity", "dynamic_sparsity", "SparseTraining", "save_masks", "load_masks",
                 "register_saliency", "register_arbiter"):
        assert name in prune_utils.__all__ and getattr(prune_utils, name) is not None
    assert os.path.isfile(ROOT / "docs" / "API.md")
    assert copy.copy(prune_utils.SALIENCY).keys() >= {"snip", "grad_weight2", "magnitude", "random"}
