"""The folder graph: imports point down (commands → stages → infrastructure → contracts).

Parses every module of `runtime/`, `queue/` and `workers/` (function-level imports
included: a lazy import is still an arrow), checks that the graph of folders has no
cycle and that no layer imports one above it. Entry points named by dotted string (the
stage graph's `func`) are not imports: the queue runs the stages without importing them.
Also: one home per utility (a file's sha256, the file lock) and no `ImportError` guard
around what is always installed.
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


def folder_of(module: str) -> str:
    """The node a module belongs to: its package folder; a module directly in `runtime/`
    (stack.py, hashing.py, paths.py, ...) is a node of its own: stack.py assembles
    everything, hashing.py is a leaf, and lumping them together would hide the layering."""
    parts = module.split(".")
    path = REPO.joinpath(*parts[1:])
    if path.is_dir() or (parts[:2] == ["tinygpt", "runtime"] and len(parts) == 3):
        return module
    return ".".join(parts[:-1])


def folder_graph(graph) -> dict[str, dict[str, list[str]]]:
    """folder -> folder it imports -> the module arrows behind that edge."""
    modules = set(graph)
    out: dict[str, dict[str, list[str]]] = {}
    for module, deps in graph.items():
        for dep in deps:
            # `from pkg import name` adds pkg.name: keep the longest prefix that is a module.
            parts = dep.split(".")
            while ".".join(parts) not in modules and len(parts) > 2:
                parts.pop()
            a, b = folder_of(module), folder_of(".".join(parts))
            if a != b:
                out.setdefault(a, {}).setdefault(b, []).append(f"{module} -> {dep}")
    return out


def find_cycle(edges: dict[str, dict]) -> list[str]:
    """One cycle of the graph as a path [a, b, ..., a], or [] when it has none."""
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_find_cycle_finds_one():
    """The cycle check below is worth something only if it can fail."""
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {"c": []}}) == []


def test_the_folder_graph_has_no_cycle(graph):
    edges = folder_graph(graph)
    assert "tinygpt.workers.evalgate" in edges and "tinygpt.runtime.stack" in edges  # the nodes are folders
    cycle = find_cycle(edges)
    assert cycle == [], "folder cycle " + " -> ".join(cycle) + ": " + "; ".join(
        edges[a][b][0] for a, b in zip(cycle, cycle[1:]))


# Each layer with what it must never import: the arrows point down, from commands to
# stages to infrastructure to the model format to contracts.
ABOVE = {
    "tinygpt.runtime.contracts": ["tinygpt.runtime.models", "tinygpt.runtime.serving", "tinygpt.runtime.registry",
                                  "tinygpt.runtime.grammar", "tinygpt.runtime.environments", "tinygpt.queue",
                                  "tinygpt.workers", "tinygpt.runtime.stack", "tinygpt.runtime.commands", "tinygpt.runtime.demo"],
    "tinygpt.runtime.models": ["tinygpt.runtime.serving", "tinygpt.runtime.registry", "tinygpt.runtime.environments",
                               "tinygpt.queue", "tinygpt.workers", "tinygpt.runtime.stack", "tinygpt.runtime.commands",
                               "tinygpt.runtime.demo"],
    "tinygpt.runtime.grammar": ["tinygpt.runtime.serving", "tinygpt.runtime.registry", "tinygpt.queue", "tinygpt.workers",
                                "tinygpt.runtime.stack", "tinygpt.runtime.commands"],
    "tinygpt.runtime.serving": ["tinygpt.runtime.registry", "tinygpt.runtime.environments", "tinygpt.workers",
                                "tinygpt.runtime.stack", "tinygpt.runtime.commands", "tinygpt.runtime.demo"],
    "tinygpt.runtime.registry": ["tinygpt.runtime.serving", "tinygpt.queue", "tinygpt.workers", "tinygpt.runtime.stack",
                                 "tinygpt.runtime.commands", "tinygpt.runtime.demo"],
    "tinygpt.queue": ["tinygpt.workers", "tinygpt.runtime.serving", "tinygpt.runtime.stack", "tinygpt.runtime.commands",
                      "tinygpt.runtime.demo"],
    "tinygpt.runtime.environments": ["tinygpt.workers", "tinygpt.runtime.commands", "tinygpt.runtime.demo"],
    "tinygpt.runtime.stack": ["tinygpt.workers", "tinygpt.runtime.commands", "tinygpt.runtime.demo"],
    "tinygpt.workers": ["tinygpt.runtime.commands", "tinygpt.runtime.demo"],
}


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_imports_point_down(graph, layer):
    up = [a for target in ABOVE[layer] for a in arrows(graph, layer, target)]
    assert up == []


def _functions(folder: str):
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(REPO).as_posix(), node


# Hashing a stream as it goes by is not hashing a file: the registry's download checks
# bytes while they arrive, the dataset writer hashes the lines it writes.
STREAM_HASHERS = {("runtime/registry/fetch.py", "_download"), ("workers/dataset.py", "__init__")}


def test_one_sha256_of_a_file():
    """`runtime/hashing.sha256_file` is the only function that opens a file to sha256 it."""
    found = {
        (path, fn.name)
        for folder in FOLDERS
        for path, fn in _functions(folder)
        if "hashlib.sha256" in (src := ast.unparse(fn)) and ("open(" in src or ".read_bytes()" in src)
    }
    assert found - STREAM_HASHERS == {("runtime/hashing.py", "sha256_file")}


def test_one_file_lock():
    """Only `runtime/filelock.py` calls flock; every other lock is a `FileLock`."""
    users = sorted(
        path.relative_to(REPO).as_posix()
        for folder in FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if "fcntl" in {m.split(".")[0] for m in imports_of(path)}
    )
    assert users == ["runtime/filelock.py"]


# Where an ImportError is a real outcome, and why: a module the user names, or an
# optional part of a dependency. Anything declared in pyproject or shipped here imports.
IMPORT_GUARDS = {
    "runtime/grammar/constraint.py": "llguidance's MLX (Metal) kernel, absent from its CPU builds",
    "queue/embedded.py": "ctypes' prctl, on platforms without it",
    "workers/training/distill_seq.py": "the user's teacher_accept module",
    "workers/evalgate/scorers.py": "the user's custom scorer module",
}


def test_import_guards_only_where_an_import_can_fail():
    guarded = set()
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ExceptHandler) and node.type is not None:
                    names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                    if names & {"ImportError", "ModuleNotFoundError"}:
                        guarded.add(path.relative_to(REPO).as_posix())
    assert guarded == set(IMPORT_GUARDS)
