"""Job functions for the queue admission tests.

Importing this module leaves a mark (the file named by $TINYGPT_TEST_IMPORT_MARK), so a
test can tell whether a worker imported what a refused job named.
"""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("TINYGPT_TEST_IMPORT_MARK"):
    Path(os.environ["TINYGPT_TEST_IMPORT_MARK"]).write_text(f"imported by {os.getpid()}\n")


def echo(value: str) -> str:
    """A job that only returns its argument."""
    return value


def callback(*args) -> None:
    """A would-be RQ callback (never meant to run)."""
