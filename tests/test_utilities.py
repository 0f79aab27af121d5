"""One of each utility: the file lock, the file hash and the tool-call schema check."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from tinygpt.runtime.contracts.trajectory import ToolCall
from tinygpt.runtime.filelock import FileLock
from tinygpt.runtime.hashing import sha256_file
from tinygpt.runtime.serving.recorder import _valid
from tinygpt.runtime.tool_schema import call_problem, tools_by_name


def test_a_file_lock_excludes_another_holder_until_released(tmp_path):
    path = tmp_path / "sub" / "x.lock"
    first, second = FileLock(path), FileLock(path, mode=0o600)
    with first:
        assert first.held and path.exists()
        assert second.acquire(timeout=0) is False and not second.held
        assert second.acquire(timeout=0.05) is False
    assert second.acquire(timeout=0) is True
    second.release()


def test_a_file_lock_is_exclusive_across_processes_and_dropped_when_the_holder_dies(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"from tinygpt.runtime.filelock import FileLock; import sys; "
                               f"l = FileLock({str(path)!r}); l.acquire(); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert FileLock(path).acquire(timeout=0) is False
    finally:
        holder.kill()
        holder.wait()
    lock = FileLock(path)
    assert lock.acquire(timeout=0) is True
    lock.release()


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # over one 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_the_recorder_and_the_label_stage_share_one_schema_check():
    by_name = tools_by_name(TOOLS)
    good = ToolCall(id="1", name="get_weather", arguments='{"city": "Oslo"}')
    missing = ToolCall(id="2", name="get_weather", arguments="{}")
    assert call_problem(good, by_name) is None and _valid(good, TOOLS) is True
    assert "'city' is a required property" in call_problem(missing, by_name) and _valid(missing, TOOLS) is False
    # An unknown tool is invalid for the label stage, unknown (None) for the recorder.
    other = ToolCall(id="3", name="get_time", arguments="{}")
    assert "unknown tool" in call_problem(other, by_name) and _valid(other, TOOLS) is None
    bad_schema = [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]
    call = ToolCall(id="4", name="f", arguments="{}")
    assert "schema is invalid" in call_problem(call, tools_by_name(bad_schema)) and _valid(call, bad_schema) is None
