"""How a user's multitask model meets its data: tasks, one loss per task, inputs, targets and outputs.

The pruning machinery needs three things from any multitask model: run it on a batch and get one
prediction per task, each task's (unweighted) loss, and the weighted total for task-agnostic growth.
`TaskSpec` provides them for the common layouts, so the public API (`prune_utils.api`) works with a
model and a data loader as they are:

| the model returns | `TaskSpec(...)` |
|---|---|
| a dict task -> tensor | the default (extra keys, e.g. auxiliary outputs, are ignored) |
| a tuple / list, one tensor per task | the default: mapped to `tasks` in order |
| one tensor (one task) | the default |
| anything else, or one forward per task | `outputs={task: fn(model, inputs) -> tensor}` |

| a batch is | inputs | target of task t |
|---|---|---|
| `(x, targets)` | `x` | `targets[t]` (a dict), `targets[i]` (a tuple, i = position of t), `targets` (one task) |
| `(x, y_1, ..., y_T)` | `x` | `y_i` |
| a dict | `batch["img"]` (`inputs="key"` for another) | `batch[t]` |
| anything else | `inputs=fn(batch)` | `targets=fn(batch, task)` |

A tuple of inputs is passed as positional arguments (`model(*inputs)`). A loss is
`loss(prediction, target) -> scalar tensor`, e.g. `nn.CrossEntropyLoss()`. Mismatches fail with one
line naming the task: a task without a loss, a model whose outputs miss a task, a non-scalar loss.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

TaskLoss = Callable[[torch.Tensor, Any], torch.Tensor]          # loss(prediction, target) -> scalar
TaskForward = Callable[[nn.Module, Any], torch.Tensor]          # fn(model, inputs) -> that task's prediction
InputsSpec = Union[str, int, Callable[[Any], Any], None]
TargetsSpec = Callable[[Any, str], Any]
DEFAULT_INPUT_KEY = "img"


class TaskSpec:
    """The tasks of a multitask model, their losses, and how batches and outputs map to them.

    `tasks`: task names in order (the order of tuple outputs and tuple targets). `losses`: task ->
    `loss(prediction, target)`, one for every task. `weights`: task -> weight of its loss in
    `total_loss` (default 1). `outputs`: task -> `fn(model, inputs)` when the model's output is not a
    dict / tuple / tensor of task predictions. `inputs`: a dict key, a tuple index or `fn(batch)`;
    `targets`: `fn(batch, task)`. See the module docstring for the defaults.
    """

    def __init__(self, tasks: Sequence[str], losses: Mapping[str, TaskLoss], *,
                 weights: Mapping[str, float] | None = None, outputs: Mapping[str, TaskForward] | None = None,
                 inputs: InputsSpec = None, targets: TargetsSpec | None = None) -> None:
        if isinstance(tasks, str):
            raise TypeError(f"tasks must be a sequence of task names, got the string {tasks!r}")
        self.tasks: tuple[str, ...] = tuple(tasks)
        if not self.tasks:
            raise ValueError("a TaskSpec needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"a task is listed twice: {list(self.tasks)}")
        _check_keys("loss", losses, self.tasks)
        for task, fn in losses.items():
            if not callable(fn):
                raise TypeError(f"the loss of task {task!r} is not callable: {fn!r}")
        self.losses = dict(losses)
        self.weights = {t: 1.0 for t in self.tasks}
        if weights is not None:
            unknown = [t for t in weights if t not in self.tasks]
            if unknown:
                raise ValueError(f"loss weights name task(s) {unknown} that are not among the tasks {list(self.tasks)}")
            self.weights.update({t: float(w) for t, w in weights.items()})
        if outputs is not None:
            _check_keys("output function", outputs, self.tasks)
        self.outputs = dict(outputs) if outputs is not None else None
        if inputs is not None and not isinstance(inputs, (str, int)) and not callable(inputs):
            raise TypeError(f"inputs must be a dict key, a tuple index or a function of the batch, got {inputs!r}")
        self.inputs = inputs
        self.targets = targets

    # ------------------------------------------------------------------ batches
    def inputs_of(self, batch: Any) -> Any:
        """What the model is called with."""
        if callable(self.inputs):
            return self.inputs(batch)
        if isinstance(batch, Mapping):
            key = DEFAULT_INPUT_KEY if self.inputs is None else self.inputs
            if key not in batch:
                raise ValueError(f"the batch has no input {key!r} (keys: {', '.join(map(str, batch))}); "
                                 f"pass TaskSpec(inputs=KEY or a function of the batch)")
            return batch[key]
        if isinstance(batch, (list, tuple)) and batch:
            index = 0 if self.inputs is None else self.inputs
            if not isinstance(index, int) or not -len(batch) <= index < len(batch):
                raise ValueError(f"cannot take input {index!r} from a batch of {len(batch)} items")
            return batch[index]
        if self.inputs is None and torch.is_tensor(batch):
            raise ValueError("the batch is a bare tensor, so it holds no targets: yield (inputs, targets) "
                             "or pass TaskSpec(inputs=..., targets=...)")
        raise ValueError(f"cannot find the inputs in a batch of type {type(batch).__name__}: "
                         f"pass TaskSpec(inputs=a function of the batch)")

    def target_of(self, batch: Any, task: str) -> Any:
        """The target `task`'s loss compares its prediction with."""
        if self.targets is not None:
            return self.targets(batch, task)
        if isinstance(batch, Mapping):
            return _entry(batch, task, "the batch")
        if isinstance(batch, (list, tuple)):
            if len(batch) == 1 + len(self.tasks) and len(self.tasks) > 1:
                return batch[1 + self.tasks.index(task)]
            if len(batch) == 2:
                return self._pick(batch[1], task)
        raise ValueError(f"cannot find the target of task {task!r} in a batch of type {type(batch).__name__}: "
                         f"yield (inputs, targets) or pass TaskSpec(targets=fn(batch, task))")

    def _pick(self, targets: Any, task: str) -> Any:
        if isinstance(targets, Mapping):
            return _entry(targets, task, "the batch's targets")
        if isinstance(targets, (list, tuple)):
            if len(targets) != len(self.tasks):
                raise ValueError(f"the batch holds {len(targets)} targets for {len(self.tasks)} tasks "
                                 f"{list(self.tasks)}")
            return targets[self.tasks.index(task)]
        if len(self.tasks) == 1:
            return targets
        raise ValueError(f"one target of type {type(targets).__name__} for {len(self.tasks)} tasks: yield a dict "
                         f"task -> target or a tuple in task order")

    # ------------------------------------------------------------------ model outputs and losses
    def predict(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Task -> prediction for one batch (already on the model's device)."""
        inputs = self.inputs_of(batch)
        if self.outputs is not None:
            return {task: self.outputs[task](model, inputs) for task in self.tasks}
        raw = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
        return self.outputs_of(raw)

    def outputs_of(self, raw: Any) -> dict[str, torch.Tensor]:
        """Map a model's raw output (dict, tuple/list in task order, or one tensor) to task -> prediction."""
        if isinstance(raw, Mapping):
            missing = [t for t in self.tasks if t not in raw]
            if missing:
                raise ValueError(f"the model's outputs {list(map(str, raw))} do not match the tasks "
                                 f"{list(self.tasks)}: no output for {missing}")
            return {t: raw[t] for t in self.tasks}
        if isinstance(raw, (list, tuple)):
            if len(raw) != len(self.tasks):
                raise ValueError(f"the model returned {len(raw)} outputs for {len(self.tasks)} tasks "
                                 f"{list(self.tasks)} (a tuple is mapped to the tasks in order)")
            return dict(zip(self.tasks, raw))
        if torch.is_tensor(raw):
            if len(self.tasks) != 1:
                raise ValueError(f"the model returned one tensor for {len(self.tasks)} tasks {list(self.tasks)}: "
                                 f"return a dict or a tuple, or pass TaskSpec(outputs={{task: fn(model, inputs)}})")
            return {self.tasks[0]: raw}
        raise ValueError(f"the model returned a {type(raw).__name__}, not a dict, tuple or tensor of task outputs: "
                         f"pass TaskSpec(outputs={{task: fn(model, inputs)}})")

    def loss(self, task: str, prediction: torch.Tensor, batch: Any) -> torch.Tensor:
        """The unweighted loss of one task (a scalar tensor)."""
        if task not in self.losses:
            raise ValueError(f"task {task!r} has no loss (tasks: {', '.join(self.tasks)})")
        value = self.losses[task](prediction, self.target_of(batch, task))
        if not torch.is_tensor(value) or value.numel() != 1:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"the loss of task {task!r} returned {shape}, expected a scalar tensor")
        return value.reshape(())

    def task_loss(self, task: str, preds: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """`loss(task, preds[task], batch)`: the `loss_fn(task, preds, batch)` form saliency takes."""
        return self.loss(task, preds[task], batch)

    def task_losses(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Task -> unweighted loss of `model` on `batch` (one forward)."""
        preds = self.predict(model, batch)
        return {task: self.loss(task, preds[task], batch) for task in self.tasks}

    def total_loss(self, preds: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """Σ_t weight_t · loss_t: the multitask training loss."""
        return torch.stack([self.weights[t] * self.loss(t, preds[t], batch) for t in self.tasks]).sum()

    def __repr__(self) -> str:
        return f"TaskSpec(tasks={list(self.tasks)})"


def _entry(mapping: Mapping[str, Any], task: str, where: str) -> Any:
    if task not in mapping:
        raise ValueError(f"no target for task {task!r} in {where} (keys: {', '.join(map(str, mapping))}); "
                         f"pass TaskSpec(targets=fn(batch, task))")
    return mapping[task]


def _check_keys(what: str, mapping: Mapping[str, Any], tasks: Sequence[str]) -> None:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"give one {what} per task as a dict task -> {what}, got {type(mapping).__name__}")
    missing = [t for t in tasks if t not in mapping]
    if missing:
        raise ValueError(f"task {missing[0]!r} has no {what} (given for: {', '.join(map(str, mapping)) or 'none'})")
    unknown = [t for t in mapping if t not in tasks]
    if unknown:
        raise ValueError(f"a {what} is given for {unknown}, which are not among the tasks {list(tasks)}")
