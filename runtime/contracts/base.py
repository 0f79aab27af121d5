"""The base of every contract: strict, versioned msgspec Structs.

Every record that crosses a boundary (a file on disk, a Redis payload, an HTTP body)
is a `Contract`. Unknown fields are rejected so a typo in a config file is an error,
not a silently ignored setting; `schema_version` lets readers refuse data they do
not understand instead of misreading it.
"""

from __future__ import annotations

import msgspec


class Contract(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=False):
    """Base class: strict decoding, keyword-only construction."""


class ContractError(ValueError):
    """A file or payload that does not match its contract.

    The message names the source (file path or payload kind), the field path and
    what was expected, e.g. ``tinygpt.project.json: Expected `str`, got `int` - at `$.base_model```.
    """

    def __init__(self, source: str, detail: str):
        self.source = source
        self.detail = detail
        super().__init__(f"{source}: {detail}")
