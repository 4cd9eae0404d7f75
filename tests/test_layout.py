"""The house layout (DESIGN.md): one package per capability, imports pointing down the floors.

Every ``import`` in ``src/onnxfit`` counts — module level, inside functions and under
``TYPE_CHECKING`` — because a function-level import is still a dependency (and how cycles hid
before). The checker is a plain function so that a planted violation can prove it fails.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "onnxfit"

#: The only modules allowed at the top level: the base floor and the package's entry points.
TOP_LEVEL = {"__init__", "__main__", "errors", "io", "atomic", "targets", "_lazy"}

#: Base-floor modules that grew into packages (``io``: loading, validation, external data).
BASE_PACKAGES = {"io"}

#: Floors, lowest first. A module may import from a lower floor, or from its own package.
FLOORS: dict[str, int] = {
    "base": 0,
    "analysis": 1,
    "data": 1,
    "zoo": 1,
    "runtime": 2,
    "passes": 3,
    "verify": 4,
    "pruning": 5,
    "optimizer": 6,
    "apps": 6,
    "profiling": 7,
    "report": 8,
    "cli": 9,
}
#: Entry points that may import anything (the lazy public API and ``python -m onnxfit``).
EXEMPT = {"onnxfit", "onnxfit.__main__"}

#: Modules allowed to ``import onnx`` (protobuf): this list may only shrink. Everything else works
#: on ``onnx_ir`` and reaches protobuf through ``onnxfit.io``.
ONNX_ALLOWED = {
    "onnxfit.analysis.shape_engines",
    "onnxfit.analysis.shapes",
    "onnxfit.data.feeds",
    "onnxfit.io",
    "onnxfit.io.external",
    "onnxfit.io.nodes",
    "onnxfit.io.tensors",
    "onnxfit.io.validate",
    "onnxfit.passes._fp16_plan",
    "onnxfit.passes.activations",
    "onnxfit.passes.int8",
    "onnxfit.pruning.compensate",
    "onnxfit.runtime.binding",
    "onnxfit.runtime.session",
    "onnxfit.verify.sensitivity",
}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_imports(root: Path) -> dict[str, set[str]]:
    """Module -> the onnxfit modules it imports (every import statement, wherever it stands)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    deps.add(sub if sub in modules or alias.name == "__version__" else base)
        graph[name] = {d for d in deps if d == "onnxfit" or d.startswith(("onnxfit.", "onnx"))}
    return graph


def _package(module: str) -> str:
    """The floor key of ``onnxfit.<pkg>...``; every top-level module is ``base``."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in TOP_LEVEL | BASE_PACKAGES | {"__version__"}:
        return "base"
    return parts[1] if len(parts) > 1 else ""


def floor_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports that point up a floor, or sideways into another package of the same floor."""
    bad = []
    for mod, deps in sorted(graph.items()):
        if mod in EXEMPT:
            continue
        src_pkg = _package(mod)
        for dep in sorted(deps):
            if not dep.startswith("onnxfit"):
                continue
            dst_pkg = _package(dep)
            if dst_pkg not in FLOORS or src_pkg not in FLOORS:
                bad.append(f"{mod} -> {dep}: not a module of a known floor")
                continue
            if src_pkg == dst_pkg:
                continue
            if FLOORS[dst_pkg] >= FLOORS[src_pkg]:
                bad.append(f"{mod} -> {dep}: {dst_pkg} is not below {src_pkg}")
    return bad


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def onnx_importers(graph: Mapping[str, Iterable[str]]) -> set[str]:
    return {
        m for m, deps in graph.items() if any(d == "onnx" or d.startswith("onnx.") for d in deps)
    }


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return collect_imports(SRC)


def test_top_level_holds_only_the_base() -> None:
    loose = {p.stem for p in SRC.glob("*.py")} - TOP_LEVEL
    assert not loose, f"loose top-level modules (give them a package): {sorted(loose)}"
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert packages <= (set(FLOORS) - {"base"}) | BASE_PACKAGES, (
        f"packages without a floor: {sorted(packages - set(FLOORS))}"
    )


def test_imports_point_down_the_floors(graph: dict[str, set[str]]) -> None:
    assert floor_violations(graph) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_onnx_imports_only_in_the_allow_list(graph: dict[str, set[str]]) -> None:
    extra = onnx_importers(graph) - ONNX_ALLOWED
    assert not extra, f"`import onnx` outside the allow-list (use onnx_ir / onnxfit.io): {extra}"


def test_modules_stay_small() -> None:
    big = {p.name: n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not big, f"modules over ~400 lines (split along the concept): {big}"


# -------------------------------------------------------------- the checker itself can fail


def test_checker_catches_a_planted_upward_import(tmp_path: Path) -> None:
    root = tmp_path / "onnxfit"
    for pkg in ("data", "cli"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "cli" / "main.py").write_text("def f():\n    return 1\n")
    # an upward import hidden inside a function
    (root / "data" / "x.py").write_text("def g():\n    from onnxfit.cli import main\n")
    bad = floor_violations(collect_imports(root))
    assert bad == ["onnxfit.data.x -> onnxfit.cli.main: cli is not below data"]


def test_checker_catches_a_planted_cycle_and_onnx_import(tmp_path: Path) -> None:
    root = tmp_path / "onnxfit"
    (root / "passes").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "passes" / "__init__.py").write_text("")
    (root / "passes" / "a.py").write_text("from onnxfit.passes import b\n")
    (root / "passes" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from onnxfit.passes.a import X\n"
        "import onnx\n"
    )
    g = collect_imports(root)
    assert cycles(g) == [["onnxfit.passes.a", "onnxfit.passes.b"]]
    assert onnx_importers(g) == {"onnxfit.passes.b"}
