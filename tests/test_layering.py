"""The import graph: packages layered app -> retriever -> indexer, and no module cycles.

Checked statically (``ast``), so the test sees every module, including those no other test
happens to import, and a cycle that only works by import order (as app.cli <-> app.commands
once did) fails here before it fails for a user.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pagelens", "app", "retriever", "indexer")  # each may import only those after it


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test or node)


def _imports(path: Path, name: str, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(imported at module level, imported anywhere) project modules of one file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top: set[str] = set()
    anywhere: set[str] = set()

    def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
        if isinstance(node, ast.Import):
            found = {a.name for a in node.names}
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found = {f"{base}.{a.name}" for a in node.names} | {base}
        hits = set()
        for target in found:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                hits.add(target)
        return hits

    def walk(node: ast.AST, at_top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found = targets(child)
                anywhere.update(found)
                if at_top:
                    top.update(found)
            elif _type_checking(child):
                continue  # annotations only: never executed
            else:
                nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                walk(child, at_top and not nested)

    walk(tree, True)
    return top, anywhere


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_packages_only_import_downwards(graph):
    wrong = []
    for name, (_, anywhere) in graph.items():
        rank = PACKAGES.index(name.split(".")[0])
        for target in anywhere:
            if PACKAGES.index(target.split(".")[0]) < rank:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles_between_modules(graph):
    # A package's __init__ re-exports its submodules: edges from it into its own
    # submodules are not cycles in the sense that matters.
    edges = {
        name: {t for t in top if not t.startswith(name + ".")} for name, (top, _) in graph.items()
    }
    cycles = _cycles(edges)
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_cycle(tmp_path):
    """The checker itself can fail: a cycle through a function-level import is not one,
    a module-level one is, even through ``from package import module``."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("from .c import x\n")
    (tmp_path / "pkg" / "c.py").write_text("def f():\n    import pkg.a\n")
    modules = {
        name: tmp_path / "pkg" / f"{name.rpartition('.')[2]}.py"
        for name in ("pkg.a", "pkg.b", "pkg.c")
    }
    edges = {n: _imports(p, n, modules)[0] for n, p in modules.items()}
    assert edges == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert _cycles(edges) == []
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    edges["pkg.c"] = _imports(modules["pkg.c"], "pkg.c", modules)[0]
    assert _cycles(edges) == ["pkg.a -> pkg.b -> pkg.c -> pkg.a"]


# Function and module length: tests/test_layout.py (every package, no escape).
