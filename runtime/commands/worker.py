"""Start pipeline workers: RQ SimpleWorkers, each in its own (spawned) process.

Workers on other machines join the same pipeline by pointing REDIS_URL at one Redis
and TINYGPT_HOME at the same shared directory (see the README). Only one worker per
machine serves the train queue."""

from __future__ import annotations

import argparse

EXAMPLE = "tinygpt worker --queues data,train --count 2\n  REDIS_URL=redis://queue-host:6379/0 tinygpt worker --queues data --count 4 --burst"


def configure(parser: argparse.ArgumentParser) -> None:
    from tinygpt.queue.worker import configure as add_arguments

    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tinygpt.queue.worker import cli_run

    return cli_run(args)
