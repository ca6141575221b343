"""The layering of docs/ARCHITECTURE.md, checked statically: every import (function-local ones and those
under `if TYPE_CHECKING` included) is read from the source with `ast`, nothing is executed.

    fileio, models, dataloaders        import no project package
    prune_utils                        fileio, models
    engine                             fileio, models, dataloaders          (not prune_utils: a controller protocol)
    methods                            everything below
    the tools (top-level scripts)      everything below, no other tool
    examples                           prune_utils (the public API), fileio, dataloaders (the synthetic scenes):
                                       a user's own model and loop, not ours (no models, engine, methods)

plus: leaf modules import nothing from the project (`prune_utils.topk`), the public Python API (`prune_utils`
and everything it imports, transitively) depends on no model, data set or trainer of the project (contract 13),
and there is no import cycle between modules.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fileio", "models", "dataloaders", "prune_utils", "engine", "methods", "examples")
TOOLS = ("launch_training", "create_pruned_net", "eval_pruned_net", "iou_analysis", "static_similarity", "export_onnx")
ALLOWED = {
    "fileio": set(),
    "models": set(),
    "dataloaders": set(),
    "prune_utils": {"fileio", "models"},
    "engine": {"fileio", "models", "dataloaders"},
    "methods": {"fileio", "models", "dataloaders", "prune_utils", "engine"},
    "examples": {"prune_utils", "fileio", "dataloaders"},
    **{tool: set(PACKAGES) - {"examples"} for tool in TOOLS},
}
LEAF_MODULES = ("prune_utils.topk",)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages and the tools."""
    files = {tool: ROOT / f"{tool}.py" for tool in TOOLS}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:          # `import a.b.c` of a non-module attribute path
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}                   # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_checker_sees_every_kind_of_import_and_cycles(tmp_path):
    graph = import_graph()
    assert "engine.controller" in graph["engine.trainer"]             # relative `from .controller import`
    assert "fileio.checkpoint" in graph["fileio.load"]
    assert "methods.registry" in graph["launch_training"]             # module level in a tool
    assert "methods.pipeline" in graph["launch_training"]             # function-local in a tool
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from prune_utils import masks\n    import engine.trainer\n")
    assert imports_of("x.mod", source, {"prune_utils", "prune_utils.masks", "engine", "engine.trainer"}) == {
        "prune_utils.masks", "engine.trainer"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_what_is_below_them(layer):
    graph = import_graph()
    wrong = sorted((module, target) for module, targets in graph.items() if top(module) == layer
                   for target in targets if top(target) != layer and top(target) not in ALLOWED[layer])
    assert not wrong, f"{layer} may import {sorted(ALLOWED[layer]) or 'nothing from the project'}, but: {wrong}"


def test_leaf_modules_import_nothing_from_the_project():
    graph = import_graph()
    for module in LEAF_MODULES:
        assert graph[module] == set(), (module, graph[module])


def test_the_public_api_depends_on_no_model_data_or_trainer():
    graph = import_graph()
    seen, stack = set(), ["prune_utils", "prune_utils.api"]
    while stack:
        module = stack.pop()
        if module not in seen:
            seen.add(module)
            stack.extend(graph.get(module, ()))
    assert {"prune_utils.api", "prune_utils.structure", "prune_utils.sparse_training"} <= seen
    assert not sorted(m for m in seen if top(m) in {"models", "dataloaders", "engine", "methods"}), sorted(seen)


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, find_cycle(import_graph())
