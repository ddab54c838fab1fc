"""Imports point down only: each part of the package imports from the parts below it (the layer
table), never from experiments or viz above it, and the graph has no cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "spectra_interp"

# The parts of the package from the bottom up; a part may import its own modules and the
# parts of lower layers. Experiments (sweep, budget) sit on the runner; viz reads finished
# folders; the command line, doctor and deploy are the top.
LAYERS: list[set[str]] = [
    {"errors"},
    {"records", "settings", "hub", "metrics", "atomic"},
    {"stats", "distributed"},
    {"config"},
    {"corpus", "models"},
    {"results", "extract"},
    {"runner"},
    {"sweep", "budget"},
    {"viz"},
    {"doctor"},
    {"cli"},
    {"deploy", "__init__", "__main__"},
]


def part(module: str) -> str:
    """`spectra_interp.stats.verdict` -> `stats`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"{PACKAGE}.{name} is in no layer of tests/test_imports.py")


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names = names[:-1] if len(names) > 1 else names
    return ".".join(names)


def import_edges(root: Path) -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of the package by the package,
    function-level imports included."""
    edges = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        here = module_name(path, root)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                names = [alias.name for alias in node.names]
                targets = [f"{prefix}.{n}" for n in names] if prefix == PACKAGE else [prefix]
            else:
                continue
            edges += [(here, t) for t in targets if t.split(".")[0] == PACKAGE and t != PACKAGE]
    return edges


def part_cycles(root: Path) -> list[list[str]]:
    """Cycles among the parts (strongly connected components of more than one part)."""
    graph: dict[str, set[str]] = {}
    for here, there in import_edges(root):
        if part(here) != part(there):
            graph.setdefault(part(here), set()).add(part(there))
    nodes = sorted(set(graph) | {b for targets in graph.values() for b in targets})
    reach = {n: _reachable(graph, n) for n in nodes}
    cycles = {tuple(sorted(m for m in nodes if n in reach[m] and m in reach[n])) for n in nodes}
    return [list(c) for c in sorted(cycles) if len(c) > 1]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def upward_edges(root: Path) -> list[tuple[str, str]]:
    """The imports that point up the layer table (or across within a layer, between parts)."""
    bad = []
    for here, there in import_edges(root):
        a, b = part(here), part(there)
        if a != b and layer_of(b) >= layer_of(a):
            bad.append((here, there))
    return sorted(set(bad))


def test_imports_point_down_only():
    assert upward_edges(ROOT) == []


def test_no_part_imports_itself_through_another():
    assert part_cycles(ROOT) == []


def test_the_checker_sees_an_upward_import(tmp_path):
    package = tmp_path / PACKAGE
    (package / "stats").mkdir(parents=True)
    (package / "viz").mkdir()
    (package / "stats" / "bad.py").write_text("from spectra_interp.viz import report\n")
    (package / "viz" / "ok.py").write_text("from ..stats import bad\n")
    assert upward_edges(tmp_path) == [("spectra_interp.stats.bad", "spectra_interp.viz")]
    assert part_cycles(tmp_path) == [["stats", "viz"]]


if __name__ == "__main__":
    # `python tests/test_imports.py [ROOT]`: the upward edges of a checkout, one per line.
    checkout = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    found = upward_edges(checkout)
    print("\n".join(f"{a} -> {b}" for a, b in found) or "no upward edges")
    print(f"{len(found)} upward edges; cycles among parts: {part_cycles(checkout)}")
