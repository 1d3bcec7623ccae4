"""The package's imports follow ARCHITECTURE.md: allowed parts only, no cycles."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "csuite_async_obs"
NAME = "csuite_async_obs"


def _table() -> dict[str, tuple[list[str], set[str]]]:
    """part -> (module prefixes, parts it may import), read from ARCHITECTURE.md."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    parts: dict[str, tuple[list[str], set[str]]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("part", "") or set(cells[0]) <= {"-"}:
            continue
        modules = re.findall(r"`([^`]+)`", cells[1])
        allowed = set() if cells[2] == "(nothing)" else {p.strip() for p in cells[2].split(",")}
        parts[cells[0]] = (modules, allowed)
    return parts


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def _part_of(module: str, parts: dict[str, tuple[list[str], set[str]]]) -> str:
    best, length = "", -1
    for part, (prefixes, _) in parts.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = part, len(prefix)
    if not best:
        raise AssertionError(f"module {module} belongs to no part of ARCHITECTURE.md")
    return best


def _imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported package module, line, under TYPE_CHECKING) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    checking.add(id(inner))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
                names = (
                    [target]
                    if node.module
                    else [f"{target}.{a.name}".strip(".") for a in node.names]
                )
                if node.module:
                    # "from .x import y" may name a submodule y.
                    names += [f"{target}.{a.name}" for a in node.names]
            elif node.module and (node.module == NAME or node.module.startswith(NAME + ".")):
                target = node.module[len(NAME) + 1 :]
                names = [
                    target or "__init__",
                    *(f"{target}.{a.name}".strip(".") for a in node.names),
                ]
        elif isinstance(node, ast.Import):
            names = [a.name[len(NAME) + 1 :] for a in node.names if a.name.startswith(NAME + ".")]
        for name in names:
            yield name, node.lineno, id(node) in checking


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _edges() -> list[tuple[str, str, int, bool]]:
    modules = _modules()
    edges = []
    for module, path in modules.items():
        for target, line, type_only in _imports(path):
            if target in modules and target != module:
                edges.append((module, target, line, type_only))
    return edges


def test_every_import_is_allowed_by_architecture_md() -> None:
    parts = _table()
    assert {"catalog", "config", "compat", "metrics", "http", "queue_depth"} <= set(parts)
    broken = []
    for module, target, line, _ in _edges():
        source, dest = _part_of(module, parts), _part_of(target, parts)
        if source != dest and dest not in parts[source][1]:
            broken.append(f"{module}:{line} imports {target} ({source} may not import {dest})")
    assert broken == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for module, target, _, type_only in _edges():
        if not type_only:
            graph.setdefault(module, set()).add(target)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def _imports_anything(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            return True
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            return True
    return False


def test_subpackage_inits_import_nothing() -> None:
    inits = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    assert len(inits) >= 8
    assert [str(p.relative_to(ROOT)) for p in inits if _imports_anything(p)] == []


def test_the_rule_test_catches_a_forbidden_import(tmp_path: Path) -> None:
    # The checker itself: an import from metrics into the instrumentation is refused.
    parts = _table()
    assert _part_of("metrics.task_metrics", parts) == "metrics"
    assert "instrumentation" not in parts["metrics"][1]
    assert _part_of("metrics.catalog", parts) == "catalog"
    fake = PACKAGE / "metrics" / "_probe_forbidden.py"
    fake.write_text("from ..instrumentation.hooks import TaskHooks\n")
    try:
        with pytest.raises(AssertionError, match="metrics may not import instrumentation"):
            test_every_import_is_allowed_by_architecture_md()
    finally:
        fake.unlink()


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("csuite_async_obs.queue_depth.standalone", ("celery.worker.request", "billiard.pool")),
        ("csuite_async_obs.metrics.task_metrics", ("celery",)),
        ("csuite_async_obs.http.server", ("celery", "kombu")),
        ("csuite_async_obs.config.options", ("celery", "kombu", "prometheus_client")),
    ],
)
def test_a_part_loads_only_what_it_needs(module: str, absent: tuple[str, ...]) -> None:
    code = f"import sys, {module}\nprint(sorted(m for m in sys.modules if m in {absent!r}))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
