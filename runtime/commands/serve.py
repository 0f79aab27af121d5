"""Serve a model over an OpenAI-compatible API: chat completions (streaming too),
grammar-constrained tool calls, specialists (LoRA/DoRA adapters) on one base model,
and token-preserving trajectories of every conversation.

Point any OpenAI client at http://HOST:PORT/v1. `model` picks the base model (its
name, or "base") or a specialist ("NAME" or "NAME@VERSION"). Requests sharing the
header `X-TinyGPT-Session: ID` (or `metadata.session_id`) are recorded as one
trajectory; without either, a request that continues an earlier answer joins its
trajectory. Responses carry `X-TinyGPT-Trajectory`, `X-TinyGPT-Step` and
`X-TinyGPT-Model`; rewards go to POST /v1/trajectories/ID/feedback. Sealed
trajectories (idle for --session-idle seconds, or at shutdown) go to the Redis
pipeline ($REDIS_URL, else the embedded server) unless --no-queue.

Admin endpoints (off unless --admin-key is set; that key as a Bearer token):
  POST   /admin/adapters  {"name": "sql", "path": "/srv/adapters/sql/3", "version": "3"}
         loads a specialist, or hot-swaps to a new version (requests in flight finish
         on the old one); paths only from the specialist cache and --adapter-dir
  DELETE /admin/adapters/NAME[@VERSION]   stop serving it (memory freed when idle)
  GET    /admin/adapters
Also: GET /v1/models, GET /health, GET /metrics (Prometheus).

Browsers: requests whose Host is not this server (DNS rebinding) or whose Origin is
not listed with --allow-origin are refused, and POST bodies must be application/json.
Binding anything but loopback needs --api-key (or --insecure).
"""

from __future__ import annotations

import argparse
import os

from tinygpt.runtime.models import DEFAULT_MODEL
from tinygpt.runtime.serving.config import DEFAULTS

EXAMPLE = "tinygpt serve --model smollm2-135m-instruct --port 8000 --adapter sql=specialists/sql/3"

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """Options `serve` and `up` share about who may use the runtime."""
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from this origin call the API (CORS), e.g. http://localhost:3000 (repeatable); "
                             "other browser origins are refused")
    parser.add_argument("--adapter-dir", action="append", default=[], metavar="DIR",
                        help="a directory POST /admin/adapters may load from, besides the specialist cache (repeatable)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow binding a non-loopback --host without --api-key (anyone who reaches it can use it)")


def _adapter(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"cached model name or model directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--name", help="name clients use for the base model (default: the model's name)")
    parser.add_argument("--host", default=DEFAULTS.host, help=f"interface to bind (default: {DEFAULTS.host}, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULTS.port, help=f"port (default: {DEFAULTS.port}; 0 picks a free one)")
    parser.add_argument("--api-key", default=os.environ.get("TINYGPT_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 (default: $TINYGPT_API_KEY)")
    parser.add_argument("--admin-key", default=os.environ.get("TINYGPT_ADMIN_KEY"),
                        help="key for /admin endpoints, which are off without it (default: $TINYGPT_ADMIN_KEY)")
    add_security_options(parser)
    parser.add_argument("--adapter", action="append", type=_adapter, default=[], metavar="NAME=PATH",
                        help="serve a specialist from an mlx-lm adapter directory (repeatable)")
    d = DEFAULTS
    parser.add_argument("--max-batch", type=int, default=d.max_batch,
                        help="sequences decoded together (default: 16 on a CPU, 256 on a GPU)")
    parser.add_argument("--max-queue", type=int, default=d.max_queue,
                        help="requests waiting before 503 (default: 64 on a CPU, 1024 on a GPU)")
    parser.add_argument("--memory-fraction", type=float, default=d.memory_fraction,
                        help="share of the GPU's memory this server may take (default: $TINYGPT_MEMORY_FRACTION, "
                             "else no cap); the device itself: TINYGPT_DEVICE=cpu|gpu")
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens, help=f"default max_tokens of a request (default: {d.max_tokens})")
    parser.add_argument("--max-body-kb", type=int, default=d.max_body_bytes >> 10,
                        help=f"largest request body in KiB; larger is a 413 (default: {d.max_body_bytes >> 10})")
    parser.add_argument("--prefix-cache-mb", type=int, default=d.prefix_cache_mb,
                        help=f"KV prefix cache budget in MiB (default: {d.prefix_cache_mb})")
    parser.add_argument("--no-record", dest="record", action="store_false", help="do not record trajectories")
    parser.add_argument("--no-queue", dest="queue", action="store_false",
                        help="record trajectories to disk only; do not hand them to the Redis pipeline")
    parser.add_argument("--trajectories-dir", help="where trajectories go (default: <tinygpt home>/trajectories)")
    parser.add_argument("--session-idle", type=float, default=d.session_idle_s,
                        help=f"seconds before an idle trajectory is sealed (default: {d.session_idle_s:g})")
    parser.add_argument("--project", default=d.project, help="project name recorded in trajectories")
    parser.add_argument("--tool-mode", choices=["full", "deferred"], default=d.tool_mode,
                        help="how tools are shown: full schemas in the prompt, or a one-line index whose chosen "
                             f"tool's schema is fed after its name (default: {d.tool_mode}; a request may ask otherwise)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys

    from tinygpt.runtime.serving.config import ServerConfig
    from tinygpt.runtime.serving.protocol import ApiError
    from tinygpt.runtime.stack import start_runtime

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.insecure and args.host not in LOCAL_HOSTS and not args.api_key:
        print(f"tinygpt serve: warning: --insecure: anyone who reaches {args.host} can use this runtime", file=sys.stderr)
    config = ServerConfig(
        model=args.model,
        name=args.name,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        admin_key=args.admin_key,
        allow_origins=list(args.allow_origin),
        adapter_dirs=list(args.adapter_dir),
        insecure=args.insecure,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        memory_fraction=args.memory_fraction,
        max_tokens=args.max_tokens,
        prefix_cache_mb=args.prefix_cache_mb,
        max_body_bytes=args.max_body_kb << 10,
        record=args.record,
        trajectories_dir=args.trajectories_dir,
        session_idle_s=args.session_idle,
        project=args.project,
        adapters=list(args.adapter),
        tool_mode=args.tool_mode,
    )
    try:
        runtime = start_runtime(config, queue=args.queue)
    except (ValueError, ApiError, OSError) as e:
        print(f"tinygpt serve: error: {e}", file=sys.stderr)
        return 1

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    names = ", ".join(c.id for c in runtime.model_list().data)
    print(f"tinygpt serve: {runtime.url}/v1 serving {names} on {runtime.engine.device.describe()} "
          f"(batch {runtime.engine.max_batch}, queue {runtime.engine.max_queue}; Ctrl-C to stop)", flush=True)
    try:
        runtime.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
