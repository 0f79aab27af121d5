"""The folder graph: imports point down (commands → stages → infrastructure → contracts).

Parses every module of `runtime/`, `queue/` and `workers/` (function-level imports
included: a lazy import is still an arrow) and checks the arrows that used to run back
up. Entry points named by dotted string (the stage graph's `func`) are not imports:
the queue runs the stages without importing them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("runtime", "queue", "workers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["tinygpt", *parts])


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved to absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """module -> the tinygpt modules it imports."""
    return {
        module_name(path): {m for m in imports_of(path) if m.startswith("tinygpt.")}
        for folder in FOLDERS
        for path in sorted((REPO / folder).rglob("*.py"))
    }


def arrows(graph, source: str, target: str) -> list[str]:
    """`module -> import` pairs from modules under `source` into `target`."""
    under = lambda name, prefix: name == prefix or name.startswith(prefix + ".")  # noqa: E731
    return sorted(f"{m} -> {i}" for m, deps in graph.items() if under(m, source) for i in deps if under(i, target))


def test_the_parser_sees_imports(graph):
    """The checks below are only worth something if the parser finds the arrows that do exist."""
    assert "tinygpt.queue.errors" in graph["tinygpt.workers.jobs"]
    assert "tinygpt.runtime.contracts" in graph["tinygpt.queue.store"]
    assert arrows(graph, "tinygpt.workers", "tinygpt.queue")


def test_the_queue_never_imports_the_stages(graph):
    assert arrows(graph, "tinygpt.queue", "tinygpt.workers") == []


def test_no_cycle_between_queue_and_workers(graph):
    up = arrows(graph, "tinygpt.queue", "tinygpt.workers")
    down = arrows(graph, "tinygpt.workers", "tinygpt.queue")
    assert not (up and down), f"queue <-> workers cycle: {up}"


def test_the_registry_never_imports_the_http_layer(graph):
    """Publishing and swapping read the adapter format from `runtime/models`, not from serving."""
    assert arrows(graph, "tinygpt.runtime.registry", "tinygpt.runtime.serving") == []
