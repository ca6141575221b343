"""Task ownership three ways (prune_utils.structure / ownership): from the module structure, given explicitly,
inferred from gradient flow; weights no task reaches; partial sharing; structure mismatches."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from examples.unet_static import TASKS as UNET_TASKS, UNet, make_spec as unet_spec
from prune_utils import TaskSpec, TaskStructure
from prune_utils.ownership import reached_by
from prune_utils.masks import prunable_parameters

from tests.helpers import make_batch, tiny_net


def pred_only_spec(tasks) -> TaskSpec:
    """Losses that read the prediction only: ownership does not depend on the targets."""
    return TaskSpec(tasks, {t: (lambda pred, target: pred.square().mean()) for t in tasks},
                    targets=lambda batch, task: None)


def test_gradient_flow_equals_the_structure_of_multitasknet():
    model = tiny_net()
    batch = make_batch(0, b=2, size=32)
    structural = TaskStructure.from_model(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.backbone.parameters():           # a frozen backbone is still used by every task
        p.requires_grad_(False)
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no unowned weight: no warning
        inferred = TaskStructure.from_gradient_flow(model, pred_only_spec(["seg", "sn"]), batch)
    assert inferred.owners == structural.owners and list(inferred.owners) == list(structural.owners)
    assert inferred.shared == structural.shared and inferred.tasks == structural.tasks
    assert inferred.unowned == () and inferred.fully_shared()
    assert len(structural.shared) == 36 and all(len(structural.own(t)) == 12 for t in ("seg", "sn"))
    # the probe leaves the model as it was: weights, BN statistics, requires_grad flags, global RNG
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


class Quirky(nn.Module):
    """Task a reads `dead` (a ReLU that is off everywhere: zero gradient, yet connected); task b reads `zeroed`
    times 0 (zero gradient, connected); `unused` is never called; `no_grad` is used without a graph."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 4)
        self.dead = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.no_grad = nn.Linear(4, 1)
        self.zeroed = nn.Linear(4, 1)
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)
        with torch.no_grad():
            self.dead.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.trunk(x))
        with torch.no_grad():
            aux = self.no_grad(h)
        return {"a": self.a(h + torch.relu(self.dead(h))) + aux, "b": self.b(h) + 0.0 * self.zeroed(h)}


def test_connected_weights_with_zero_gradient_are_owned_unreached_ones_reported():
    torch.manual_seed(0)
    model, x = Quirky(), torch.randn(8, 4)
    out = model(x)
    grads = torch.autograd.grad(out["a"].sum() + out["b"].sum(), [model.dead.weight, model.zeroed.weight])
    assert all(float(g.abs().max()) == 0.0 for g in grads)          # the gradients really are exactly zero
    spec = pred_only_spec(["a", "b"])
    with pytest.warns(UserWarning, match=r"2 prunable weight\(s\) are used by no task: 'unused.weight', "
                                         r"'no_grad.weight'.*stay dense"):
        s = TaskStructure.from_gradient_flow(model, spec, (x, None))
    assert s.owners == {"trunk.weight": {"a", "b"}, "dead.weight": {"a"}, "zeroed.weight": {"b"},
                        "a.weight": {"a"}, "b.weight": {"b"}}
    assert s.unowned == ("unused.weight", "no_grad.weight")
    assert s.part("unused.weight") == "unowned" and s.part("trunk.weight") == "backbone"
    assert s.pool("a") == ("trunk.weight", "dead.weight", "a.weight")
    with pytest.raises(ValueError, match="used by no task"):
        TaskStructure.from_gradient_flow(model, spec, (x, None), unowned="error")
    with pytest.raises(ValueError, match="'warn' or 'error'"):
        TaskStructure.from_gradient_flow(model, spec, (x, None), unowned="ignore")  # type: ignore[arg-type]


def test_a_loss_without_graph_is_refused():
    model = Quirky()
    with torch.no_grad():
        loss = model(torch.randn(2, 4))["a"].sum()
    with pytest.raises(ValueError, match="task 'a' has no autograd graph"):
        reached_by(loss, prunable_parameters(model), "a")


class ThreeTasks(nn.Module):
    """A trunk for all, `mid` for tasks a and b only, one head each; returns a tuple in task order."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.mid = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.trunk(x)
        m = self.mid(h)
        return self.heads[0](m), self.heads[1](m), self.heads[2](h)


def test_partial_sharing_explicit_and_inferred_agree():
    model = ThreeTasks()
    explicit = TaskStructure.from_modules(model, shared=model.trunk,
                                          heads={"a": ["mid", "heads.0"], "b": [model.mid, "heads.1"], "c": "heads.2"})
    inferred = TaskStructure.from_gradient_flow(model, pred_only_spec(["a", "b", "c"]), (torch.randn(3, 6), None))
    assert explicit == inferred
    assert explicit.owners["mid.0.weight"] == {"a", "b"} and not explicit.fully_shared()
    assert explicit.groups() == [(("a", "b", "c"), ("trunk.0.weight",)), (("a", "b"), ("mid.0.weight",))]
    assert explicit.pool("c") == ("trunk.0.weight", "heads.2.weight")
    assert explicit.part("mid.0.weight") == "backbone" and explicit.part("heads.1.weight") == "b"


def test_explicit_ownership_errors_and_unowned():
    model = ThreeTasks()
    with pytest.raises(ValueError, match=r"heads\['c'\]: prefix 'head.2' covers no prunable weight"):
        TaskStructure.from_modules(model, shared="trunk", heads={"a": "heads.0", "c": "head.2"})
    with pytest.raises(ValueError, match="empty prefix"):
        TaskStructure.from_modules(model, shared="", heads={"a": "heads.0"})
    with pytest.raises(ValueError, match="covers no prunable weight"):
        TaskStructure.from_modules(model, shared=nn.Linear(2, 2), heads={"a": "heads.0"})
    with pytest.raises(TypeError, match="submodule or a parameter-name prefix"):
        TaskStructure.from_modules(model, shared=3, heads={"a": "heads.0"})  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="'mid.0.weight', 'heads.2.weight'"):
        s = TaskStructure.from_modules(model, shared="trunk", heads={"a": "heads.0", "b": "heads.1"})
    assert s.unowned == ("mid.0.weight", "heads.2.weight") and s.params == ("trunk.0.weight", "heads.0.weight",
                                                                             "heads.1.weight")


def test_one_task_with_an_explicit_shared_trunk():
    model = ThreeTasks()
    s = TaskStructure.from_modules(model, shared=["trunk", "mid"], heads={"a": "heads"})
    assert s.shared == ("trunk.0.weight", "mid.0.weight") and s.own("a") == ("heads.0.weight", "heads.1.weight",
                                                                             "heads.2.weight")


def test_three_ways_agree_on_a_unet_with_other_attribute_names():
    model = UNet()
    structural = TaskStructure.from_model(model, backbone="encoder", heads="decoders")
    explicit = TaskStructure.from_modules(model, shared="encoder",
                                          heads={t: model.decoders[t] for t in UNET_TASKS})
    scenes = {"img": torch.randn(2, 3, 16, 24), "seg": torch.zeros(2, 16, 24, dtype=torch.long),
              "depth": torch.ones(2, 1, 16, 24), "normal": torch.ones(2, 3, 16, 24)}
    inferred = TaskStructure.from_gradient_flow(model, unet_spec(), scenes)
    assert structural.owners == explicit.owners == inferred.owners
    assert structural.shared == explicit.shared == inferred.shared and len(structural.shared) == 6
    with pytest.raises(ValueError, match="no `backbone` module and `heads` mapping.*from_modules"):
        TaskStructure.from_model(model)


def test_structure_mismatch_is_one_line():
    s = TaskStructure.from_model(tiny_net())
    with pytest.raises(ValueError, match=r"does not match ThreeTasks: 5 prunable weight\(s\) not in it"):
        s.check_model(ThreeTasks())
    with pytest.raises(ValueError, match="listed as unowned and as owned"):
        TaskStructure({"w": {"a"}}, ["a"], unowned=["w"])
    with pytest.raises(ValueError, match="no task uses 'w'.*unowned="):
        TaskStructure({"w": set()}, ["a"])
