"""Generate text from a model: a quick check that a base model loads and answers.

The prompt goes through the model's chat template (one user turn, plus a system turn
with --system) unless --no-chat-template is given. The answer streams to stdout;
token counts and speed go to stderr. The model is a cached name or a directory; the
offline default is pulled (converted from its GGUF) on first use.
"""

from __future__ import annotations

import argparse

# Cheap: the models package imports neither MLX nor gguf until a model is converted or loaded.
from ..models.pull import DEFAULT_MODEL

EXAMPLE = 'tinygpt generate --model smollm2-135m-instruct --prompt "What is the capital of France?"'

EXIT_ERROR = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"cached model name or model directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--prompt", required=True, help="the user message (or raw text with --no-chat-template)")
    parser.add_argument("--system", help="a system message (default: the template's own)")
    parser.add_argument("--max-tokens", type=int, default=256, help="stop after this many new tokens (default: 256)")
    parser.add_argument("--temp", type=float, default=0.0, help="sampling temperature; 0 is greedy (default: 0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling cutoff (default: 1.0, off)")
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")


def prompt_ids(tokenizer, prompt: str, *, system: str | None = None, chat_template: bool = True) -> list[int]:
    """The token ids fed to the model for `prompt` (chat-formatted unless told otherwise)."""
    if not chat_template:
        return tokenizer.encode(prompt)
    if not tokenizer.has_chat_template:
        raise ValueError("this model's tokenizer has no chat template; use --no-chat-template")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from ..models import resolve_model

    err = Console(stderr=True)
    if args.max_tokens < 1:
        err.print(f"[red]error:[/] --max-tokens must be at least 1, got {args.max_tokens}")
        return EXIT_ERROR
    if not 0 < args.top_p <= 1:
        err.print(f"[red]error:[/] --top-p must be in (0, 1], got {args.top_p}")
        return EXIT_ERROR
    if args.temp < 0:
        err.print(f"[red]error:[/] --temp must be >= 0, got {args.temp}")
        return EXIT_ERROR
    try:
        path = resolve_model(args.model, say=lambda msg: err.print(f"[dim]{escape(msg)}[/]"))
    except ValueError as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        return EXIT_ERROR

    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    if args.seed is not None:
        mx.random.seed(args.seed)
    model, tokenizer = load(str(path))
    try:
        ids = prompt_ids(tokenizer, args.prompt, system=args.system, chat_template=not args.no_chat_template)
    except ValueError as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        return EXIT_ERROR

    last = None
    sampler = make_sampler(temp=args.temp, top_p=args.top_p)
    for last in stream_generate(model, tokenizer, ids, max_tokens=args.max_tokens, sampler=sampler):
        print(last.text, end="", flush=True)
    print(flush=True)
    if last is not None:
        err.print(
            f"[dim]{last.prompt_tokens} prompt tokens ({last.prompt_tps:.1f} tok/s), "
            f"{last.generation_tokens} generated ({last.generation_tps:.1f} tok/s), "
            f"finish: {last.finish_reason}[/]"
        )
    return 0
