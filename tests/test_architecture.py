"""The package's shape (docs/architecture.md): imports run one way, downwards, and there is no circle.

Read from the source with ``ast`` (nothing is imported), so the check sees lazy imports inside functions
too: a function-level import is still a dependency of its module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prolora

ROOT = Path(prolora.__file__).parent

# Lower layers never import higher ones. Each module or package of the package has a layer; a module may
# import only modules of its own layer or lower ones (and, for the layer of a package, its own siblings).
LAYERS = {
    "equations": 0,
    "files": 0,
    "threads": 0,
    "tuner": 1,
    "baselines": 1,
    "format": 2,
    "base_models": 2,
    "params": 2,
    "method_presets": 2,
    "data": 2,
    "inference": 3,
    "train": 3,
    "eval": 4,
    "compare": 5,
    "extras": 0,
    "cli": 6,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The prolora modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub`` when a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] == "prolora" and t in known and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_top_level_name_has_a_layer():
    names = {
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert names == set(LAYERS), "add the new module to LAYERS and docs/architecture.md"


def test_no_import_circle():
    graph = _graph()
    # the package's own __init__ re-exports the public API; it is the top, never imported by a module below
    graph = {k: {d for d in v if d != "prolora"} for k, v in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(dep) :] + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_imports_run_downwards():
    upward = []
    for name, deps in _graph().items():
        low = _layer(name)
        for dep in deps:
            high = _layer(dep)
            if low is not None and high is not None and high > low:
                upward.append(f"{name} (layer {low}) imports {dep} (layer {high})")
    assert not upward, "\n".join(upward)


def test_nothing_imports_the_top_package_from_below():
    offenders = [name for name, deps in _graph().items() if "prolora" in deps and name.count(".") >= 1]
    assert not offenders, f"import the module you need, not the package: {offenders}"


def test_the_checker_sees_a_circle(tmp_path, monkeypatch):
    """The checker itself can fail: a fake two-module circle is reported."""
    pkg = tmp_path / "prolora"
    (pkg / "x").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "x" / "__init__.py").write_text("")
    (pkg / "x" / "a.py").write_text("from prolora.x import b\n")
    (pkg / "x" / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    graph = _graph()
    assert graph["prolora.x.a"] == {"prolora.x.b"} and graph["prolora.x.b"] == {"prolora.x.a"}
