"""The package's shape: folders in the data's order, imports only downward, no cycle, small files.

Every import counts — module level, inside functions, and under ``if TYPE_CHECKING:`` — because
a cycle through any of them means neither side can be read, tested or changed alone. The layer
order is the one the package docstring (``onnxprune/__init__.py``) draws.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxprune"

# Lowest first; a module may import its own folder and the folders before it. The faces come
# last, each may import the ones before it (cli -> commands -> api).
LAYERS = ("common", "reconstruct", "fidelity", "graph", "structures", "layouts", "config",
          "latency", "calib", "solve", "recover", "allocate", "contract", "pipeline", "report",
          "api", "commands", "cli", "__main__", "__init__")
MAX_LINES = 600
MAX_TOP_MODULES = 4


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["onnxprune", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the onnxprune modules (or packages) it imports."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                candidates = [f"{base}.{alias.name}" for alias in node.names] or [base]
            else:
                continue
            for candidate in candidates:
                if candidate.startswith("onnxprune"):
                    target = resolve(candidate)
                    if target is not None and target != name:
                        targets.add(target)
        edges[name] = targets
    return edges


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "__init__")


def test_every_folder_and_face_has_a_layer():
    names = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert names <= set(LAYERS), sorted(names - set(LAYERS))


def test_no_import_cycle_between_files():
    edges = _imports(_modules())
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_imports_only_go_down_the_layers():
    upward = [f"{a} -> {b}" for a, targets in _imports(_modules()).items() for b in targets
              if _layer(b) > _layer(a)]
    assert upward == []


def test_no_module_is_longer_than_one_person_holds_in_mind():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_package_top_holds_only_its_faces():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= MAX_TOP_MODULES, top


def test_the_checks_themselves_can_fail(tmp_path):
    """The import walk sees lazy and TYPE_CHECKING imports (what the cycles above hide in)."""
    modules = {"onnxprune.graph.a": tmp_path / "a.py", "onnxprune.layouts.b": tmp_path / "b.py"}
    modules["onnxprune.graph.a"].write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from onnxprune.layouts.b import X\n")
    modules["onnxprune.layouts.b"].write_text(
        "def f():\n    from onnxprune.graph.a import Y\n")
    edges = _imports(modules)
    assert edges == {"onnxprune.graph.a": {"onnxprune.layouts.b"},
                     "onnxprune.layouts.b": {"onnxprune.graph.a"}}
    assert _layer("onnxprune.layouts.b") > _layer("onnxprune.graph.a")
