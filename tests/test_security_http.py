"""Attacks on the runtime's HTTP server, each against a real `tinygpt serve` process.

The issue's reproductions: a web page in the owner's browser POSTing `text/plain` with a
foreign Host / Origin got a 200 and a recorded trajectory (training data, under `up`);
any API client could load an adapter from any local path (the admin key fell back to the
API key); bodies or schemas nested ~300 deep answered 500 with a traceback in the log.
Each is refused now, with a clear 4xx, and nothing is recorded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.serving_support import raw, running, write_lora_adapter
from tinygpt.runtime.contracts.io import read_any
from tinygpt.runtime.contracts.trajectory import Trajectory

SCRIPT = """
import argparse, sys
from tinygpt.runtime.commands import serve
parser = argparse.ArgumentParser()
serve.configure(parser)
sys.exit(serve.run(parser.parse_args(sys.argv[1:])))
"""
EVIL = "a web page wrote this"
APP = "http://app.example:3000"


class Served:
    def __init__(self, proc: subprocess.Popen, port: int, traj: Path, allowed: Path, log: Path):
        self.proc, self.port, self.traj, self.allowed, self.log = proc, port, traj, allowed, log

    def request(self, method: str, path: str, body: bytes | dict | None = None, **headers: str) -> tuple[int, dict, bytes]:
        """One raw HTTP request; headers given as Python names (Content_Type=...)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", "Connection: close"]
        hdrs = {"Host": f"127.0.0.1:{self.port}", **{k.replace("_", "-"): v for k, v in headers.items()}}
        if data is not None:
            hdrs["Content-Length"] = str(len(data))
        lines += [f"{k}: {v}" for k, v in hdrs.items() if v is not None]
        import socket

        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (data or b""))
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        got = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        return int(status_line.split()[1]), got, payload


def chat(content: str = "hi") -> dict:
    return {"model": "base", "messages": [{"role": "user", "content": content}], "max_tokens": 2}


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure-serve")
    traj, allowed, log = tmp / "traj", tmp / "allowed", tmp / "server.log"
    allowed.mkdir()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, "--model", str(tiny_model_dir), "--port", "0", "--trajectories-dir", str(traj),
             "--log-level", "INFO", "--max-tokens", "4", "--no-queue", "--admin-key", "adm", "--allow-origin", APP,
             "--adapter-dir", str(allowed)],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )
    try:
        line = proc.stdout.readline()
        assert line.startswith("tinygpt serve: http://127.0.0.1:"), line + log.read_text()
        yield Served(proc, int(line.split("http://127.0.0.1:")[1].split("/")[0]), traj, allowed, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 0


def recorded(traj: Path) -> dict[str, int]:
    """Trajectory id -> steps, over every open and sealed file (each decoded strictly)."""
    out = {}
    for path in sorted(traj.rglob("*.msgpack")):
        t = read_any(path, Trajectory)
        out[t.id] = len(t.steps)
    return out


def wait_recorded(traj: Path, tid: str) -> None:
    """Until the recorder thread has written trajectory `tid` (it writes in request order)."""
    while tid not in recorded(traj):
        time.sleep(0.02)


def test_a_web_page_cannot_post_to_the_runtime(served):
    before = recorded(served.traj)
    # The request: a form-style text/plain POST from a foreign page.
    body = json.dumps(chat(EVIL)).encode()
    status, _, payload = served.request("POST", "/v1/chat/completions", body, Content_Type="text/plain",
                                        Host="evil.example", Origin="http://evil.example")
    assert status == 403, payload
    # Each defence on its own: a rebinding page (our address, its domain) ...
    status, _, payload = served.request("POST", "/v1/chat/completions", body, Content_Type="application/json",
                                        Host=f"evil.example:{served.port}")
    assert status == 403 and json.loads(payload)["error"]["code"] == "host_not_allowed"
    # ... a foreign origin at the right Host ...
    status, _, payload = served.request("POST", "/v1/chat/completions", body, Content_Type="application/json",
                                        Origin="http://evil.example")
    assert status == 403 and json.loads(payload)["error"]["code"] == "origin_not_allowed"
    assert served.request("POST", "/v1/chat/completions", body, Content_Type="application/json", Origin="null")[0] == 403
    # ... and a body that is not declared JSON (what a page can send without a preflight).
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        status, _, payload = served.request("POST", "/v1/chat/completions", body, Content_Type=ctype)
        assert status == 415 and json.loads(payload)["error"]["code"] == "unsupported_media_type"
    # The preflight a browser sends first is refused for foreign origins.
    status, headers, _ = served.request("OPTIONS", "/v1/chat/completions", Origin="http://evil.example",
                                        Access_Control_Request_Method="POST")
    assert status == 403 and "access-control-allow-origin" not in headers
    # Nothing reached the recorder: a valid request written after the attacks is the only new step.
    status, headers, _ = served.request("POST", "/v1/chat/completions", chat(), Content_Type="application/json")
    assert status == 200
    wait_recorded(served.traj, headers["x-tinygpt-trajectory"])
    after = recorded(served.traj)
    assert {k: v for k, v in after.items() if before.get(k) != v} == {headers["x-tinygpt-trajectory"]: 1}


def test_a_listed_origin_gets_proper_cors(served):
    status, headers, _ = served.request("OPTIONS", "/v1/chat/completions", Origin=APP, Access_Control_Request_Method="POST",
                                        Access_Control_Request_Headers="content-type, authorization")
    assert status == 204 and headers["access-control-allow-origin"] == APP
    assert "POST" in headers["access-control-allow-methods"] and headers["access-control-allow-headers"] == "content-type, authorization"
    status, headers, payload = served.request("POST", "/v1/chat/completions", chat(), Content_Type="application/json",
                                              Origin=APP, Host="localhost")
    assert status == 200, payload
    assert headers["access-control-allow-origin"] == APP and headers["vary"] == "Origin"
    assert "X-TinyGPT-Trajectory" in headers["access-control-expose-headers"]
    # Non-browser clients (no Origin) are unaffected: the official client, IP-literal and localhost hosts.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key="none", max_retries=0)
    assert client.chat.completions.create(**chat()).choices[0].message is not None
    assert served.request("GET", "/health", Host=f"localhost:{served.port}")[0] == 200
    assert served.request("GET", "/health", Host=f"[::1]:{served.port}")[0] == 200


def test_admin_needs_its_own_key_and_loads_only_from_allowed_dirs(served, tiny_model_dir, tmp_path):
    outside = write_lora_adapter(tmp_path / "elsewhere", tiny_model_dir, seed=1)
    inside = write_lora_adapter(served.allowed / "mail", tiny_model_dir, seed=1)
    admin = {"Content_Type": "application/json", "Authorization": "Bearer adm"}
    status, _, payload = served.request("POST", "/admin/adapters", {"name": "m", "path": str(outside)}, **admin)
    assert status == 403 and json.loads(payload)["error"]["code"] == "path_not_allowed"
    # A symlink inside the allowed directory pointing out of it is followed, then refused.
    (served.allowed / "link").symlink_to(outside)
    assert served.request("POST", "/admin/adapters", {"name": "m", "path": str(served.allowed / "link")}, **admin)[0] == 403
    assert served.request("POST", "/admin/adapters", {"name": "m", "path": f"{served.allowed}/../{outside.name}"}, **admin)[0] == 403
    status, _, payload = served.request("POST", "/admin/adapters", {"name": "m", "path": str(inside)}, **admin)
    assert status == 200, payload
    assert served.request("POST", "/admin/adapters", {"name": "m", "path": str(inside)}, Content_Type="application/json")[0] == 401


def test_the_api_key_does_not_open_the_admin_api(tiny_model_dir, tmp_path):
    """The fallback the issue found: with only --api-key, API clients could load any local path."""
    adapter = write_lora_adapter(tmp_path / "a", tiny_model_dir, seed=1)
    with running(tiny_model_dir, tmp_path, api_key="k", record=False, adapter_dirs=[str(tmp_path)]) as rt:
        status, body = raw(rt.port, b"POST /admin/adapters HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                                    b"Authorization: Bearer k\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(json.dumps({"name": "m", "path": str(adapter)})), json.dumps({"name": "m", "path": str(adapter)}).encode()))
        assert status == 403 and b"--admin-key" in body
        assert rt.adapters_state()["current"] == {}


def nest_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_deep_nesting_is_a_400_not_a_traceback(served):
    deep_body = b'{"model":"base","messages":[{"role":"user","content":"hi"}],"metadata":' + b"[" * 3000 + b"]" * 3000 + b"}"
    status, _, payload = served.request("POST", "/v1/chat/completions", deep_body, Content_Type="application/json")
    assert status == 400 and json.loads(payload)["error"]["code"] == "too_deep"
    for depth in (300, 40):  # 40 objects = 80 JSON levels: still over the limit in a body
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": nest_schema(depth)}}
        status, _, payload = served.request("POST", "/v1/chat/completions", {**chat(), "response_format": fmt},
                                            Content_Type="application/json")
        assert status == 400, payload
        tool = {"type": "function", "function": {"name": "f", "parameters": nest_schema(depth)}}
        status, _, payload = served.request("POST", "/v1/chat/completions", {**chat(), "tools": [tool], "tool_choice": "required"},
                                            Content_Type="application/json")
        assert status == 400, payload
    # Brackets inside strings are text, not nesting.
    status, _, payload = served.request("POST", "/v1/chat/completions", chat("[" * 300 + "\\\\\"{" * 50),
                                        Content_Type="application/json")
    assert status == 200, payload
    assert "Traceback" not in served.log.read_text() and "RecursionError" not in served.log.read_text()


def test_a_deep_schema_from_anywhere_is_a_grammar_error():
    """Schemas reach the grammar from eval suites too, not only through HTTP bodies."""
    from tinygpt.runtime.grammar import GrammarError, grammar_spec

    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": nest_schema(300)}}
    with pytest.raises(GrammarError, match="nested more than 64 levels"):
        grammar_spec(response_format=fmt)


def test_serving_the_network_without_a_key_refuses_to_start(tiny_model_dir, tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "without --api-key" in done.stderr and "--insecure" in done.stderr
    up_script = "import argparse, sys\nfrom tinygpt.runtime.commands import up\np = argparse.ArgumentParser()\nup.configure(p)\nsys.exit(up.run(p.parse_args(sys.argv[1:])))"
    env_home = {"TINYGPT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", up_script, "--host", "0.0.0.0", "--plain", "--no-workers"],
                          capture_output=True, text=True, timeout=300, env=env_home)
    assert done.returncode == 2 and "without --api-key" in done.stderr
    assert not (tmp_path / "home" / "redis").exists()  # refused before Redis started
    # With a key, or with --insecure, it serves.
    for extra in ({"api_key": "k"}, {"insecure": True}):
        with running(tiny_model_dir, tmp_path, host="0.0.0.0", record=False, **extra) as rt:
            assert raw(rt.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")[0] == 200
