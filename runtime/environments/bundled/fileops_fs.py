"""A sandboxed, in-memory filesystem and the file-operation tools an agent calls on it.

Nothing here touches the real disk: a `FakeFS` is a dict of path -> text plus a set of
directories, so a task's world is cheap to build, copy and compare. `TOOLS` are the
OpenAI function definitions the agent offers the model; `execute` runs one call and
returns the JSON-able result the agent sends back as the tool message. Results say
``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``, the shape the runtime's
recorder and the label stage read as the tool outcome.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required, "additionalProperties": False},
        },
    }


_PATH = {"type": "string", "description": "absolute path"}

# Short descriptions on purpose: every token of the tool list is in every prompt, and a
# 135M model prefills and trains on it each turn. The order matters to a model this
# small: it leans toward the first tool, and with list_dir first it listed folders for
# almost any request; the tools that change things come first.
TOOLS: list[dict[str, Any]] = [
    _fn("search", "Find the files whose text contains a word.", {"query": {"type": "string"}}, ["query"]),
    _fn("delete_file", "Delete a file.", {"path": _PATH}, ["path"]),
    _fn("move_file", "Move or rename a file.", {"source": _PATH, "destination": _PATH}, ["source", "destination"]),
    _fn("write_file", "Create or overwrite a text file.", {"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
    _fn("read_file", "Read a text file.", {"path": _PATH}, ["path"]),
    _fn("list_dir", "List the files and folders in a folder.", {"path": _PATH}, ["path"]),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOLS]


class ToolError(Exception):
    """A call the filesystem refuses (missing file, bad argument); becomes an error result."""


def normalize(path: Any) -> str:
    """An absolute, normalized path; relative paths are taken from the root.

    `..` can never leave the sandbox: the root is the only top there is.
    """
    if not isinstance(path, str) or not path.strip():
        raise ToolError(f"expected a path, got {path!r}")
    norm = posixpath.normpath("/" + path.strip().lstrip("/"))
    return "/" if norm in ("/", "//") else norm


class FakeFS:
    """Files (path -> text) and directories; a file's parents always exist."""

    def __init__(self, files: dict[str, str] | None = None, dirs: list[str] | tuple[str, ...] = ()):
        self.files: dict[str, str] = {}
        self.dirs: set[str] = {"/"}
        for d in dirs:
            self._mkdirs(normalize(d))
        for path, text in (files or {}).items():
            self._put(normalize(path), text)

    def copy(self) -> FakeFS:
        clone = FakeFS()
        clone.files = dict(self.files)
        clone.dirs = set(self.dirs)
        return clone

    def snapshot(self) -> dict[str, str]:
        """The files, sorted by path (what a checker compares)."""
        return dict(sorted(self.files.items()))

    # ------------------------------------------------------------ operations

    def list_dir(self, path: str) -> list[str]:
        path = normalize(path)
        if path in self.files:
            raise ToolError(f"{path} is a file, not a folder")
        if path not in self.dirs:
            raise ToolError(f"no such folder: {path}")
        children = {p for p in (*self.files, *self.dirs) if p != path and posixpath.dirname(p) == path}
        return sorted(posixpath.basename(p) + ("/" if p in self.dirs else "") for p in children)

    def read_file(self, path: str) -> str:
        path = normalize(path)
        if path not in self.files:
            raise ToolError(f"no such file: {path}")
        return self.files[path]

    def write_file(self, path: str, content: Any) -> bool:
        """Write `content`; True when the file already existed (overwritten)."""
        path = normalize(path)
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if path in self.dirs:
            raise ToolError(f"{path} is a folder")
        existed = path in self.files
        self._put(path, content)
        return existed

    def move_file(self, source: str, destination: str) -> str:
        """Move a file; into `destination` when that is a folder (like `mv`). Returns the new path."""
        source, destination = normalize(source), normalize(destination)
        if source not in self.files:
            raise ToolError(f"no such file: {source}")
        if destination in self.dirs:
            destination = posixpath.join(destination, posixpath.basename(source))
        if destination in self.files and destination != source:
            raise ToolError(f"{destination} already exists")
        text = self.files.pop(source)
        self._put(destination, text)
        return destination

    def delete_file(self, path: str) -> None:
        path = normalize(path)
        if path in self.dirs:
            raise ToolError(f"{path} is a folder; only files can be deleted")
        if path not in self.files:
            raise ToolError(f"no such file: {path}")
        del self.files[path]

    def search(self, query: Any) -> list[str]:
        if not isinstance(query, str) or not query.strip():
            raise ToolError("query must be a non-empty string")
        q = query.strip().lower()
        return sorted(p for p, text in self.files.items() if q in text.lower())

    # ------------------------------------------------------------ internals

    def _mkdirs(self, path: str) -> None:
        while path not in self.dirs:
            self.dirs.add(path)
            path = posixpath.dirname(path)

    def _put(self, path: str, text: str) -> None:
        if path == "/":
            raise ToolError("/ is a folder")
        self._mkdirs(posixpath.dirname(path))
        self.files[path] = text


def execute(fs: FakeFS, name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    """Run one tool call on `fs`; never raises for bad calls, returns an error result instead."""
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    except ValueError as e:
        return {"ok": False, "error": f"arguments are not JSON: {e}"}
    if not isinstance(args, dict):
        return {"ok": False, "error": "arguments must be a JSON object"}
    try:
        if name == "list_dir":
            return {"ok": True, "entries": fs.list_dir(args.get("path"))}
        if name == "read_file":
            return {"ok": True, "content": fs.read_file(args.get("path"))}
        if name == "write_file":
            existed = fs.write_file(args.get("path"), args.get("content"))
            return {"ok": True, "written": normalize(args.get("path")), "overwritten": existed}
        if name == "move_file":
            return {"ok": True, "moved_to": fs.move_file(args.get("source"), args.get("destination"))}
        if name == "delete_file":
            fs.delete_file(args.get("path"))
            return {"ok": True, "deleted": normalize(args.get("path"))}
        if name == "search":
            return {"ok": True, "matches": fs.search(args.get("query"))}
    except ToolError as e:
        return {"ok": False, "error": str(e)}
    return {"ok": False, "error": f"unknown tool {name!r}; use one of {', '.join(TOOL_NAMES)}"}
