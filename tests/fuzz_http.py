"""A fuzzer for the runtime's HTTP API over raw sockets (shared by a test and a benchmark).

Each case is one connection: malformed JSON, wrong types, unknown fields, huge and deeply
nested bodies, bad headers (content type, length, Host, Origin, request line), slow
clients that dribble their request, clients that hang up mid-request or mid-stream, odd
paths and methods, and valid requests in between. `run_fuzz` returns the tally; the
caller then checks that a valid request is still served and that every recorded
trajectory decodes strictly.

Expected answers: a 4xx for every hostile case (never a 500: that is a traceback), 200
for valid ones; a case whose client leaves early expects nothing, and an unknown HTTP
version gets the stdlib's 505.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import time
from dataclasses import dataclass, field

HELLO = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}


@dataclass
class Case:
    kind: str
    data: bytes
    # How to send: all at once, in small pieces ("slow"), or hang up after `cut` bytes.
    pieces: int = 1
    cut: int | None = None
    # For streaming cases: hang up after the first bytes of the answer.
    read_some_then_close: bool = False
    expect: str = "4xx"  # "4xx" | "200" | "any"


@dataclass
class Tally:
    requests: int = 0
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    trajectories: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "by_kind": dict(sorted(self.by_kind.items())),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "unexpected": len(self.unexpected), "seconds": round(self.seconds, 1)}


def request(method: str, path: str, body: bytes | None, headers: dict[str, str] | None = None, *, port: int) -> bytes:
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close"}
    if body is not None:
        hdrs.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None) + "\r\n"
    return head.encode() + (body or b"")


def chat(**fields) -> dict:
    return {**HELLO, **fields}


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            del b[min(i, len(b) - 1)]
        elif op == 1:
            b[i:i] = bytes([rng.choice(b'{}[]",:\\\x00\xff') if rng.random() < 0.7 else rng.randrange(256)])
        elif op == 2 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        else:
            b = b[:i]
    return bytes(b)


WRONG_TYPES = [
    {"model": 5}, {"messages": "hi"}, {"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user", "content": 7}]}, {"max_tokens": "10"}, {"max_tokens": -1}, {"max_tokens": 1e30},
    {"temperature": []}, {"temperature": 9}, {"top_p": "a"}, {"stream": "yes"}, {"tools": {}}, {"tools": [1]},
    {"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, {"tool_choice": "sometimes"},
    {"tool_choice": {"type": "function", "function": {"name": "missing"}}, "tools": [TOOL]},
    {"response_format": {"type": "xml"}}, {"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}},
    {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "array", "uniqueItems": True}}}},
    {"logit_bias": {"x": 500}}, {"stop": [1, 2]}, {"stop": ["a"] * 9}, {"n": 3}, {"metadata": {"a": 1}},
    {"unknown_field": 1}, {"seed": "x"}, {"logprobs": 1}, {"top_logprobs": 99}, {"user": None, "store": "x"},
    {"messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}]}, {"model": ""}, {"model": "no-such-model"},
    {"max_tokens": 100000, "messages": [{"role": "user", "content": "x " * 5000}]},
]


def _deep(rng: random.Random, depth: int) -> bytes:
    opener, closer = (b"[", b"]") if rng.random() < 0.5 else (b'{"a":', b"}")
    inner = opener * depth + b"1" + closer * depth
    where = rng.choice([b'"metadata"', b'"tools"', b'"response_format"', b'"extra"', b'"messages"'])
    return b'{"model":"base","messages":[{"role":"user","content":"hi"}],' + where + b":" + inner + b"}"


def _deep_schema(depth: int) -> bytes:
    """A chat request whose response_format schema is `depth` objects deep (built as text:
    json.dumps itself recurses per level)."""
    schema = b'{"type":"object","properties":{"a":' * depth + b'{"type":"string"}' + b"}}" * depth
    return (b'{"model":"base","messages":[{"role":"user","content":"hi"}],"max_tokens":2,'
            b'"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":' + schema + b"}}}")


def make_case(rng: random.Random, port: int, *, max_body: int) -> Case:
    kind = rng.choice(["malformed_json", "wrong_types", "huge", "deep", "bad_headers", "slow_client",
                       "hang_up", "stream_disconnect", "paths", "valid", "valid", "feedback"])
    body = json.dumps(chat(messages=[{"role": "user", "content": f"fuzz {rng.random()}"}])).encode()
    if kind == "malformed_json":
        return Case(kind, request("POST", "/v1/chat/completions", _mutate(rng, body), port=port), expect="any")
    if kind == "wrong_types":
        data = json.dumps(chat(**rng.choice(WRONG_TYPES))).encode()
        return Case(kind, request("POST", "/v1/chat/completions", data, port=port))
    if kind == "huge":
        if rng.random() < 0.5:  # announced over the limit: refused before the body is read
            data = request("POST", "/v1/chat/completions", None, {"Content-Type": "application/json",
                                                                  "Content-Length": str(max_body + rng.randrange(1, 1 << 30))}, port=port)
            return Case(kind, data)
        # Just under the limit: a giant string, or a huge array of small values.
        n = max_body - 200
        content = "x" * n if rng.random() < 0.5 else None
        payload = json.dumps(chat(messages=[{"role": "user", "content": content}])) if content else (
            '{"model":"base","messages":[{"role":"user","content":"hi"}],"stop":[' + ",".join(["1"] * (n // 2)) + "]}")
        return Case(kind, request("POST", "/v1/chat/completions", payload.encode()[:max_body], port=port))
    if kind == "deep":
        if rng.random() < 0.3:
            return Case(kind, request("POST", "/v1/chat/completions", _deep_schema(rng.choice([40, 300, 2000])), port=port))
        return Case(kind, request("POST", "/v1/chat/completions", _deep(rng, rng.choice([65, 300, 3000, 50000])), port=port))
    if kind == "bad_headers":
        variant = rng.randrange(9)
        if variant == 0:
            return Case(kind, request("POST", "/v1/chat/completions", body, {"Content-Type": rng.choice(["text/plain", "application/xml", "", "multipart/form-data"])}, port=port))
        if variant == 1:
            return Case(kind, request("POST", "/v1/chat/completions", body, {"Content-Length": rng.choice(["abc", "-5", "1e3"])}, port=port))
        if variant == 2:
            return Case(kind, request("POST", "/v1/chat/completions", body, {"Host": rng.choice(["evil.example", "attacker.test:8000", "127.0.0.1.evil.example"])}, port=port))
        if variant == 3:
            return Case(kind, request("POST", "/v1/chat/completions", body, {"Origin": rng.choice(["http://evil.example", "null", "https://a.b"])}, port=port))
        if variant == 4:
            return Case(kind, request("POST", "/v1/chat/completions", body, {"Transfer-Encoding": "chunked"}, port=port))
        if variant == 5:
            if rng.random() < 0.2:  # the stdlib answers an unknown HTTP version with 505, as it should
                return Case(kind, b"GET / HTTP/9.9\r\n\r\n", expect="any")
            return Case(kind, rng.choice([b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\r\n\r\n",
                                          b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"]))
        if variant == 6:
            return Case(kind, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: \xff\xfe\r\nConnection: close\r\n\r\n", expect="any")
        if variant == 7:  # the request line alone, far too long
            return Case(kind, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
        return Case(kind, request("OPTIONS", "/v1/chat/completions", None, {"Origin": "http://evil.example"}, port=port))
    if kind == "slow_client":
        return Case(kind, request("POST", "/v1/chat/completions", body, port=port), pieces=rng.randint(3, 8), expect="200")
    if kind == "hang_up":
        data = request("POST", "/v1/chat/completions", body, port=port)
        return Case(kind, data, cut=rng.randrange(1, len(data)), expect="any")
    if kind == "stream_disconnect":
        data = json.dumps(chat(stream=True, max_tokens=16, messages=[{"role": "user", "content": f"stream {rng.random()}"}])).encode()
        return Case(kind, request("POST", "/v1/chat/completions", data, port=port), read_some_then_close=True, expect="any")
    if kind == "paths":
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
        path = rng.choice(["/", "/v1", "/v1/models/%00", "/v1/models/" + "x" * 3000, "/admin/adapters", "/admin/adapters/x@1",
                           "/v1/chat/completions/../../etc/passwd", "/v1/trajectories//feedback", "/%zz"])
        return Case(kind, request(method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None, port=port), expect="any")
    if kind == "feedback":  # and hindsight relabels: the other write on a trajectory
        user = {"role": "user", "content": "hi"}
        fb = rng.choice([{"reward": "high"}, {}, {"reward": 1e309}, {"step": -1, "reward": 1}, {"label": ["x"]}, {"x": 1},
                         {"original": "x"}, {"original": [], "messages": [], "reward": 1},
                         {"original": [user] * 300, "messages": [user], "reward": 1},
                         {"original": [user], "messages": [{"role": "root", "content": 1}], "reward": -1}])
        tid = rng.choice(["nope", "../../x", "a" * 500, "traj_" + "0" * 24])
        endpoint = rng.choice(["feedback", "hindsight"])
        return Case(kind, request("POST", f"/v1/trajectories/{tid}/{endpoint}", json.dumps(fb).encode(), port=port), expect="any")
    return Case("valid", request("POST", "/v1/chat/completions", body, port=port), expect="200")


def send(case: Case, port: int, timeout: float = 120.0) -> tuple[int, dict[str, str]]:
    """Send one case; (status, headers) of the answer, status 0 when there was none."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        data = case.data if case.cut is None else case.data[: case.cut]
        try:
            if case.pieces > 1:
                step = max(1, len(data) // case.pieces)
                for i in range(0, len(data), step):
                    s.sendall(data[i : i + step])
                    time.sleep(0.005)
            else:
                s.sendall(data)
        except OSError:
            pass  # the server may answer (413, 400) and close before a huge body is sent
        if case.cut is not None:
            return 0, {}
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if case.read_some_then_close and b"\r\n\r\n" in b"".join(chunks):
                    break
        except OSError:
            pass
    response = b"".join(chunks)
    if not response.startswith(b"HTTP/"):
        return 0, {}
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    return int(head[0].split()[1]), headers


def run_fuzz(port: int, n: int, *, seed: int = 0, max_body: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    start = time.perf_counter()
    for i in range(n):
        case = make_case(rng, port, max_body=max_body)
        status, headers = send(case, port)
        tally.requests += 1
        tally.by_kind[case.kind] += 1
        tally.statuses[status] += 1
        # "any": whatever the protocol calls for, but never a 500 (an unhandled error).
        ok = {"4xx": 400 <= status < 500, "200": status == 200, "any": status != 500}[case.expect]
        if not ok:
            tally.unexpected.append(f"#{i} {case.kind}: {status} for {case.data[:160]!r}")
        # A stream the client left is not recorded (nothing was delivered): only whole answers count.
        if status == 200 and "x-tinygpt-trajectory" in headers and not case.read_some_then_close:
            tally.trajectories.add(headers["x-tinygpt-trajectory"])
    tally.seconds = time.perf_counter() - start
    return tally


def check_trajectories(root, expected_ids: set[str]) -> int:
    """Decode every recorded trajectory strictly; every id a 200 named must be there. Returns the count."""
    from pathlib import Path

    from tinygpt.runtime.contracts.io import read_any
    from tinygpt.runtime.contracts.trajectory import Trajectory

    found = {}
    for path in sorted(Path(root).rglob("*.msgpack")):
        t = read_any(path, Trajectory)  # raises on any corruption
        for step in t.steps:
            assert step.prompt_ids and (not step.logprobs or len(step.logprobs) == len(step.output_ids)), (path, step)
        found[t.id] = t
    missing = expected_ids - set(found)
    assert not missing, f"trajectories answered but not recorded: {sorted(missing)[:5]}"
    return len(found)
