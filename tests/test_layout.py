"""The package layout stays true: imports run only downwards and no modules import each other in a circle.

Layers, bottom to top (a package may import its own modules and any package in a lower layer, never a peer):
    clips  <-  features, llm  <-  pseudo, teacher  <-  student  <-  report  <-  demo  <-  cli, bench
Every import counts, including those inside functions (a lazy import is still a dependency). The imports are
read with ast, so nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: dict[str, int] = {
    "clips": 0,
    "features": 1,
    "llm": 1,
    "pseudo": 2,
    "teacher": 2,
    "student": 3,
    "report": 4,
    "demo": 5,
    "cli": 6,
    "bench": 6,
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of the layered packages (and cli.py) under `root`, by dotted name."""
    modules = {}
    for top in LAYERS:
        if (root / f"{top}.py").is_file():
            modules[top] = root / f"{top}.py"
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            modules[module_name(root, path)] = path
    return modules


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that the file at `path` (module `name`) imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # the longest project module that the dotted name starts with
            parts = target.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    found.add(candidate)
                    break
    found.discard(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a imports b' for every import of a peer or of a package in a higher layer."""
    problems = []
    for name, targets in sorted(graph.items()):
        top = name.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != top and LAYERS[other] >= LAYERS[top]:
                relation = "a peer of" if LAYERS[other] == LAYERS[top] else "above"
                problems.append(f"{name} imports {target} ({other} is {relation} {top})")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of every import circle (strongly connected components of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_every_package_is_in_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}; add them to LAYERS"
    assert {"clips", "features", "llm", "pseudo", "teacher", "student", "report", "demo"} <= packages


def test_imports_run_only_downwards():
    graph = import_graph(ROOT)
    assert len(graph) > 40, "the walk found too few modules to mean anything"
    assert "features.stage" in graph["teacher.label"]  # the walk sees real edges
    problems = upward_imports(graph)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_module_imports_in_a_circle():
    cycles = import_cycles(import_graph(ROOT))
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def toy_tree(tmp_path: Path) -> Path:
    write_tree(tmp_path, {
        "clips/__init__.py": "",
        "clips/io.py": "import os\n",
        "features/__init__.py": "from features.base import X\n",
        "features/base.py": "from clips.io import y\nfrom clips import io\n",
        "llm/__init__.py": "",
        "teacher/__init__.py": "",
        "teacher/a.py": "from . import b\n",
        "teacher/b.py": "def f():\n    from teacher.a import g\n",
        "student/__init__.py": "",
        "student/train.py": "import features\nfrom teacher.a import z\n",
    })
    return tmp_path


def test_checker_reads_relative_lazy_and_package_imports(toy_tree):
    graph = import_graph(toy_tree)
    assert graph["features.base"] == {"clips.io"}
    assert graph["features"] == {"features.base"}
    assert graph["teacher.a"] == {"teacher.b"}
    assert graph["teacher.b"] == {"teacher.a"}
    assert graph["student.train"] == {"features", "teacher.a"}
    assert upward_imports(graph) == []
    assert import_cycles(graph) == [["teacher.a", "teacher.b"]]


def test_checker_fails_on_upward_and_peer_imports(toy_tree):
    write_tree(toy_tree, {
        "clips/io.py": "def load():\n    from student.train import fit\n",
        "llm/x.py": "import features.base\n",
    })
    assert upward_imports(import_graph(toy_tree)) == [
        "clips.io imports student.train (student is above clips)",
        "llm.x imports features.base (features is a peer of llm)",
    ]
