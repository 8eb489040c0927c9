"""The layout rules docs/ARCHITECTURE.md states, checked against the code.

Statically (``ast``), so every module is seen, including those no other test imports:
module and function size, the number of modules directly in ``indexer/``, package
docstrings, one module reading ``PAGELENS_*`` variables, library modules leaving
process-wide state alone, and no engine class named outside ``indexer/stores/``. One dynamic
check runs a whole index-and-search in a fresh interpreter and compares the process's state
before and after. Each checker is itself tested on a planted violation, so it can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("app", "indexer", "retriever", "pagelens", "bench")
LIBRARY = ("indexer", "retriever", "pagelens")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_INDEXER_MODULES = 10
CONFIG = ROOT / "indexer" / "config.py"


def _files(packages: tuple[str, ...] = CHECKED) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return path.name


# -- size ---------------------------------------------------------------------------------


def _long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions whose body (after the docstring) runs past ``limit`` lines. No escape."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        if not body:
            continue
        length = (node.end_lineno or 0) - body[0].lineno + 1
        if length > limit:
            found.append(f"{_rel(path)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_module_over_500_lines():
    big = [
        f"{_rel(p)} ({n} lines)"
        for p in _files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them):\n" + "\n".join(big)


def test_no_function_over_80_lines():
    long = [f for path in _files() for f in _long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


def test_the_length_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    (tmp_path / "m.py").write_text(f'def f():\n    """Long because: no escape."""\n{body}\n')
    assert len(_long_functions(tmp_path / "m.py")) == 1
    short = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f'def f():\n    """Short."""\n{short}\n')
    assert _long_functions(tmp_path / "m.py") == []


def test_indexer_keeps_at_most_10_modules_at_its_top():
    top = sorted(p.name for p in (ROOT / "indexer").glob("*.py"))
    assert len(top) <= MAX_INDEXER_MODULES, f"{len(top)} modules directly in indexer/: {top}"


def _package_docstring_problem(init: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    if len(doc) < 60:
        return f"{_rel(init)}: no docstring saying what the package holds"
    if "import" not in doc.lower():
        return f"{_rel(init)}: the docstring does not say what the package may import"
    return None


def test_every_package_says_what_it_holds_and_may_import():
    inits = [p for p in _files() if p.name == "__init__.py"]
    assert len(inits) >= 10
    problems = [m for p in inits if (m := _package_docstring_problem(p))]
    assert not problems, "\n".join(problems)


def test_the_docstring_check_can_fail(tmp_path):
    (tmp_path / "__init__.py").write_text('"""Stuff."""\n')
    assert _package_docstring_problem(tmp_path / "__init__.py")
    (tmp_path / "__init__.py").write_text(
        '"""The widgets: one module per widget kind.\n\nMay import indexer only."""\n'
    )
    assert _package_docstring_problem(tmp_path / "__init__.py") is None


# -- one module reads PAGELENS_* ------------------------------------------------------------


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "..."`` and ``NAME = variable("...", ...)``."""
    out: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        value = node.value
        if isinstance(value, ast.Call) and value.args:
            value = value.args[0]
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            for target in targets:
                if isinstance(target, ast.Name):
                    out[target.id] = value.value
    return out


CONFIG_CONSTANTS = _string_constants(ast.parse(CONFIG.read_text()))


def _is_environ(node: ast.AST) -> bool:
    text = ast.unparse(node)
    return text in {"os.environ", "environ", "os.environb"}


def _environment_reads(path: Path) -> list[str]:
    """Reads of a PAGELENS_* variable: ``os.environ.get/[]/in``, ``os.getenv``, and
    ``.get(NAME)`` on any mapping with a PAGELENS_* name (an environment passed around)."""
    tree = ast.parse(path.read_text(), str(path))
    local = _string_constants(tree)
    imported = {
        alias.asname or alias.name: CONFIG_CONSTANTS[alias.name]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "indexer.config"
        for alias in node.names
        if alias.name in CONFIG_CONSTANTS
    }

    def value(key: ast.AST | None) -> str:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
        if isinstance(key, ast.Name):
            return local.get(key.id) or imported.get(key.id, "")
        if isinstance(key, ast.Attribute) and ast.unparse(key.value) in {
            "config",
            "indexer.config",
        }:
            return CONFIG_CONSTANTS.get(key.attr, "")
        if isinstance(key, ast.JoinedStr) and key.values:
            return value(key.values[0])
        return ""

    readers = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "indexer.config"
        for alias in node.names
        if alias.name in {"get", "get_float", "get_int", "get_flag"}
    }
    found = []
    for node in ast.walk(tree):
        key: ast.AST | None = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if ast.unparse(func).rpartition(".")[0] in {"config", "indexer.config"}:
                continue  # the registry's own readers
            if isinstance(func, ast.Name) and func.id in readers:
                continue
            if isinstance(func, ast.Attribute) and func.attr == "get":
                key = node.args[0]  # os.environ.get, or a copy of the environment passed on
            elif isinstance(func, ast.Attribute) and func.attr in {"pop", "setdefault"}:
                key = node.args[0] if _is_environ(func.value) else None
            elif ast.unparse(func) in {"os.getenv", "getenv"}:
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            key = node.left
        if key is not None and value(key).startswith("PAGELENS_"):
            found.append(f"{_rel(path)}:{node.lineno} {ast.unparse(node)[:80]}")
    return found


def test_pagelens_variables_are_read_in_one_module():
    reads = [r for p in _files() if p != CONFIG for r in _environment_reads(p)]
    assert not reads, (
        "PAGELENS_* variables are read through indexer.config (declare them there):\n"
        + "\n".join(reads)
    )


def test_every_pagelens_variable_is_declared():
    """A PAGELENS_* name written anywhere in the code is one config.py declares."""
    declared = {v for v in CONFIG_CONSTANTS.values() if v.startswith("PAGELENS_")}
    named: set[str] = set()
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.strip()
                if text.startswith("PAGELENS_") and text.replace("_", "").isalnum():
                    named.add(text)
    named -= {"PAGELENS_"}
    assert named - declared == set(), f"undeclared: {sorted(named - declared)}"


def test_the_environment_check_can_fail(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text(
        textwrap.dedent(
            """
            import os
            from indexer.config import MODEL_ENV
            TOKEN = "PAGELENS_MILVUS_TOKEN"
            a = os.environ.get("PAGELENS_HOME")
            b = os.environ[TOKEN]
            c = os.getenv(MODEL_ENV)
            d = "PAGELENS_CACHE" in os.environ
            e = os.environ.get("HOME")
            from indexer import config
            f = config.get(MODEL_ENV)
            child = dict(os.environ)
            child.pop("PAGELENS_API_KEY", None)
            """
        )
    )
    assert len(_environment_reads(planted)) == 4


# -- library modules leave process-wide state alone -------------------------------------------

#: Calls that change the whole process, whoever makes them.
PROCESS_WIDE_CALLS = {
    "logging.basicConfig",
    "logging.disable",
    "logging.captureWarnings",
    "warnings.filterwarnings",
    "warnings.simplefilter",
    "os.putenv",
    "os.unsetenv",
    "os.chdir",
    "signal.signal",
    "socket.setdefaulttimeout",
    "sys.setrecursionlimit",
    "faulthandler.enable",
    "torch.set_num_threads",
    "torch.set_num_interop_threads",
    "torch.set_default_dtype",
    "torch.set_grad_enabled",
}
#: Attributes whose assignment changes the whole process.
PROCESS_WIDE_ATTRIBUTES = {"sys.stdout", "sys.stderr", "Image.MAX_IMAGE_PIXELS"}
#: Process-wide switches in library modules that only a process's owner runs: (module, call).
SWITCHES_FOR_PROGRAMS = {
    ("indexer/model/runtime/cpu_heap.py", "mallopt"): "glibc's allocator: turned on by the "
    "CLI root, the web app, Ray actors and the bench, which own their process",
    ("indexer/ray/tasks.py", "torch.set_num_threads"): "in a Ray actor, whose worker process "
    "runs nothing else: its CPU share is its thread count",
}


def _scoped(stack: list[ast.AST], subject: str) -> bool:
    """The change is undone before the call returns: it sits in a ``@contextmanager``
    function or a context manager class, a ``with warnings.catch_warnings()`` block, or a
    function whose ``finally`` sets ``subject`` back."""
    functions = [n for n in stack if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if functions:
        for node in ast.walk(functions[-1]):
            if isinstance(node, ast.Try) and node.finalbody:
                if subject in "\n".join(ast.unparse(s) for s in node.finalbody):
                    return True
    for node in stack:
        if isinstance(node, ast.ClassDef) and {"__enter__", "__exit__"} <= {
            f.name for f in node.body if isinstance(f, ast.FunctionDef)
        }:
            return True  # a context manager class: what __enter__ sets, __exit__ restores
        if isinstance(node, ast.FunctionDef) and any(
            "contextmanager" in ast.unparse(d) for d in node.decorator_list
        ):
            return True
        if isinstance(node, ast.With) and any(
            "catch_warnings" in ast.unparse(item.context_expr) for item in node.items
        ):
            return True
    return False


def _process_changes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []

    def visit(node: ast.AST, stack: list[ast.AST]) -> None:
        hit = subject = None
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in PROCESS_WIDE_CALLS or name.endswith((".setLevel", "mallopt")):
                hit, subject = name, name.rpartition(".")[0] or name
            elif isinstance(node.func, ast.Attribute) and _is_environ(node.func.value):
                if node.func.attr in {"setdefault", "update", "pop", "clear", "__setitem__"}:
                    hit, subject = ast.unparse(node.func), "environ"
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and _is_environ(target.value):
                    hit, subject = "os.environ[...] =", "environ"
                elif ast.unparse(target) in PROCESS_WIDE_ATTRIBUTES:
                    hit = subject = ast.unparse(target)
        if hit and not _scoped(stack, subject or hit):
            found.append(f"{_rel(path)}:{node.lineno} {hit}")
        for child in ast.iter_child_nodes(node):
            visit(child, [*stack, node])

    visit(tree, [])
    return found


def test_library_modules_change_no_process_wide_state():
    allowed = {(module, call) for module, call in SWITCHES_FOR_PROGRAMS}
    changes = [
        c
        for p in _files(LIBRARY)
        for c in _process_changes(p)
        if not any(
            (_rel(p), call) == pair and c.endswith(call) for pair in allowed for call in [pair[1]]
        )
    ]
    assert not changes, (
        "library code changes process-wide state (scope it in a context manager that "
        "restores it, or leave it to the program):\n" + "\n".join(changes)
    )
    for module, call in SWITCHES_FOR_PROGRAMS:
        assert call in (ROOT / module).read_text(), f"{module}: update SWITCHES_FOR_PROGRAMS"


def test_the_process_state_check_can_fail(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text(
        textwrap.dedent(
            """
            import contextlib, logging, os, sys, warnings
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            os.environ.setdefault("X", "1")
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
            warnings.filterwarnings("ignore")
            sys.stderr = open(os.devnull, "w")

            @contextlib.contextmanager
            def quiet():
                logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
                yield

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")

            def bomb_limit(limit):
                old = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = limit
                try:
                    return 1
                finally:
                    Image.MAX_IMAGE_PIXELS = old
            """
        )
    )
    assert len(_process_changes(planted)) == 5


_STATE_PROBE = r"""
import json, logging, os, signal, socket, sys, warnings

def state():
    import PIL.Image
    loggers = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    out = {
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
        "root_level": logging.root.level,
        "root_handlers": len(logging.root.handlers),
        "disabled": logging.root.manager.disable,
        "loggers": loggers,
        "warnings": [repr(f) for f in warnings.filters],
        "stdout": id(sys.stdout),
        "stderr": id(sys.stderr),
        "sigint": repr(signal.getsignal(signal.SIGINT)),
        "sigterm": repr(signal.getsignal(signal.SIGTERM)),
        "socket_timeout": socket.getdefaulttimeout(),
        "recursion": sys.getrecursionlimit(),
        "max_image_pixels": PIL.Image.MAX_IMAGE_PIXELS,
    }
    if "torch" in sys.modules:
        import torch
        out["torch"] = [torch.get_num_threads(), str(torch.get_default_dtype()),
                        torch.is_grad_enabled()]
    return out

# Third-party packages first: their own import-time habits are not ours to judge.
import numpy, PIL.Image, pymupdf, faiss, torch, transformers  # noqa
before = state()

import importlib, pkgutil
for package in ("indexer", "retriever", "pagelens"):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
imported = state()

import pymupdf as fitz
from pathlib import Path
from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever.export import to_markdown
from retriever.search import Retriever
work = Path(sys.argv[1])
doc = fitz.open(); page = doc.new_page(); page.insert_text((50, 72), "Basalt lava flows")
doc.save(work / "a.pdf")
store = open_collection(work / "col")
Indexer(store, FakeEmbedder()).add([work / "a.pdf"])
hits = []
for mode in ("visual", "text", "hybrid"):
    hits = Retriever(FakeEmbedder(), store).search("basalt", k=1, mode=mode)
to_markdown("basalt?", hits)
after = state()
keys = sorted(set(before) | set(after))
# A logger created after the first snapshot starts at NOTSET: only changed levels count.
def levels(s):
    return {k: v for k, v in s["loggers"].items() if v != logging.NOTSET}
print(json.dumps({
    "import": {k: [before.get(k), imported.get(k)] for k in keys
               if k != "loggers" and before.get(k) != imported.get(k)},
    "use": {k: [imported.get(k), after.get(k)] for k in keys
            if k != "loggers" and imported.get(k) != after.get(k)},
    "loggers": {k: v for k, v in levels(after).items() if levels(before).get(k) != v},
}))
"""


@pytest.mark.slow
def test_importing_and_using_the_library_leaves_the_process_as_it_was(tmp_path):
    """Every library module imported, then a whole index and search: the environment,
    logging, warning filters, streams, signals and torch's settings are as they were."""
    result = subprocess.run(
        [sys.executable, "-c", _STATE_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    changed = json.loads(result.stdout.strip().splitlines()[-1])
    assert changed == {"import": {}, "use": {}, "loggers": {}}, changed


# -- engines stay inside indexer/stores ------------------------------------------------------

ENGINE_MODULES = ("indexer.stores.local", "indexer.stores.milvus", "indexer.store")
ENGINE_CLASSES = {"LocalCollection", "MilvusCollection", "Collection"}


def _engine_references(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            modules = [base] + [f"{base}.{a.name}" for a in node.names]
            if any(a.name in ENGINE_CLASSES for a in node.names) and base.startswith("indexer"):
                found.append(f"{_rel(path)}:{node.lineno} imports an engine class")
        for module in modules:
            if any(module == m or module.startswith(m + ".") for m in ENGINE_MODULES):
                found.append(f"{_rel(path)}:{node.lineno} imports {module}")
        if isinstance(node, ast.Name | ast.Attribute):
            ident = node.id if isinstance(node, ast.Name) else node.attr
            if ident in ENGINE_CLASSES - {"Collection"}:
                found.append(f"{_rel(path)}:{node.lineno} names {ident}")
    return sorted(set(found))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _bench_may_use(ref: str) -> bool:
    """The bench measures engine parts (the FAISS index, Milvus's index parameters) on their
    own: it may import those modules, never an engine class or the compat shim."""
    return "indexer.stores." in ref and "Collection" not in ref and "collection" not in ref


def test_nothing_outside_the_stores_names_an_engine():
    inside = (ROOT / "indexer" / "stores", ROOT / "indexer" / "store.py")
    refs = [
        r
        for p in _files()
        if not any(p == i or i in p.parents for i in inside)
        for r in _engine_references(p, _module_name(p))
        if not (r.startswith("bench/") and _bench_may_use(r))
    ]
    assert not refs, (
        "engines are reached through indexer.stores (open_collection, the Store protocol "
        "and its capabilities) only:\n" + "\n".join(refs)
    )


def test_the_engine_check_can_fail(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text(
        "from indexer.stores.milvus import MilvusCollection\n"
        "from indexer.store import Collection\n"
        "import indexer.stores.local.catalog\n"
        "from indexer.stores import open_collection\n"
    )
    refs = _engine_references(planted, "app.m")
    assert len(refs) >= 3 and not any("open_collection" in r for r in refs)
