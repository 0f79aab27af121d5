"""The one error the grammar package raises for bad requests."""

from __future__ import annotations


class GrammarError(ValueError):
    """A tools / tool_choice / response_format request that cannot be enforced.

    The message names the problem and where it is (a JSON path into the request), so the
    server can answer 400 with it verbatim: an unsupported schema keyword, an invalid
    schema, an unknown tool name, a malformed response_format.
    """
