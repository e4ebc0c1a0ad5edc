"""The layering of ``src/contrastlab`` (README, "Architecture"): no import cycles between
modules, and imports only point down the layers.

Every module is parsed with ``ast`` (imports inside functions included, nothing is imported).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import contrastlab

ROOT = Path(contrastlab.__file__).resolve().parent
PACKAGE = "contrastlab"

# The layer of each part (first name below contrastlab), lowest first. A module may import any
# module of its own part and of the parts in lower layers, except those in NOT_BELOW; parts of
# the same layer know nothing of each other.
LAYERS = {
    "core": 0,  # config dataclasses and validation, registries, distributed primitives, optimisers
    "data": 1,  # datasets, the dataset protocol, view pipelines and their test-time perturbations
    "models": 1,  # backbones
    "losses": 1,  # loss functions of tensors
    "eval": 2,  # probes and diagnostics on features (may use data's view pipelines)
    "export": 2,  # an exported backbone's metadata and loading it back (models' backbones, data's eval input)
    "report": 3,  # plots of a run's metrics and features
    "components": 4,  # building blocks of methods: EMA teacher, queue, shuffle-BN, heads, meta step
    "methods": 5,  # one module per registered method
    "recipes": 6,  # YAML recipe -> Config, with every registered method's config class
    "engine": 7,  # setup, trainer, checkpoints, metrics, evaluation runner, process groups, DDP
    "api": 8,  # the Python API: train / evaluate from Python, methods around one's own backbone
    "bench": 9,  # benchmark suites: cells run as training processes, FLOPs and MFU, the report
    "cli": 10,  # entry points (``contrastlab.__main__`` belongs to cli)
    "contrastlab": 11,  # the package itself: its version, and the public API imported on first use
}
# Lower parts a part still may not import: eval and report are libraries on features that know
# no model, loss or method.
NOT_BELOW = {
    "eval": {"models", "losses"},
    "report": {"data", "models", "losses"},
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (source ``path``) imports anywhere in its body.

    ``from a import b`` counts as an import of ``a.b`` when that is a module, else of ``a``;
    ``import a.b.c`` as one of its longest prefix that is a module.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def part(module: str) -> str:
    """The part of contrastlab that ``module`` belongs to: its first name below the package."""
    name = module.split(".")[1] if "." in module else module
    return "cli" if name == "__main__" else name


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (a strongly connected one)."""
    start, members = component[0], set(component)
    previous = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & members):
            if succ == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if succ not in previous:
                previous[succ] = node
                queue.append(succ)
    raise AssertionError(f"{component} is not strongly connected")


def test_every_part_has_a_layer():
    unplaced = sorted({part(name) for name in module_files()} - set(LAYERS))
    assert not unplaced, f"parts of contrastlab without a layer in LAYERS (and the README): {unplaced}"


def test_no_import_cycles():
    graph = import_graph()
    cycles = [
        f"{' -> '.join(shortest_cycle(graph, group))} (one of the cycles among these {len(group)} "
        f"modules: {', '.join(group)})"
        for group in strongly_connected(graph)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_point_down_the_layers():
    violations = []
    for importer, imported in sorted(import_graph().items()):
        source = part(importer)
        for target in sorted(imported):
            dest = part(target)
            if dest == source or dest not in LAYERS or source not in LAYERS:
                continue  # unplaced parts fail test_every_part_has_a_layer
            if LAYERS[dest] >= LAYERS[source] or dest in NOT_BELOW.get(source, ()):
                violations.append(
                    f"{importer} ({source}, layer {LAYERS[source]}) imports "
                    f"{target} ({dest}, layer {LAYERS[dest]})"
                )
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_cycle_finder_names_a_shortest_cycle():
    graph = {"a": {"b"}, "b": {"c", "a2"}, "a2": {"a"}, "c": {"a", "d"}, "d": set()}
    assert strongly_connected(graph) == [["a", "a2", "b", "c"]]
    assert shortest_cycle(graph, ["a", "a2", "b", "c"]) == ["a", "b", "a2", "a"]


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "contrastlab.engine.trainer" in graph["contrastlab.cli"]  # imported inside a function


def dataset_modules() -> set[str]:
    """Modules that register a dataset loader (``@DATASETS.register(...)``)."""
    found = set()
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            decorators = getattr(node, "decorator_list", [])
            if any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "register"
                and isinstance(d.func.value, ast.Name) and d.func.value.id == "DATASETS"
                for d in decorators
            ):
                found.add(name)
    return found


def test_dataset_modules_are_private_to_data():
    """Generic code reaches a dataset through ``DATASETS`` and the hooks its module registers
    (e.g. a view pipeline's test-time perturbation), never by importing its internals."""
    loaders = dataset_modules()
    assert "contrastlab.data.spirograph" in loaders
    violations = [
        f"{importer} imports the dataset module {target}"
        for importer, imported in sorted(import_graph().items())
        if part(importer) != "data"
        for target in sorted(imported & loaders)
    ]
    assert not violations, "dataset internals imported outside data/:\n" + "\n".join(violations)
