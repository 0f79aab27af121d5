"""Flattening `$ref` and `allOf` into one schema, and proving `oneOf` branches disjoint.

A regex cannot intersect two sub-grammars, so `allOf` is enforced by merging its
subschemas keyword by keyword into one schema before compiling (outlines_core instead
concatenates their regexes, which produces `{...}{...}`). Where two subschemas constrain
the same keyword in a way this merge cannot combine, the request is refused.

`oneOf` compiles to an alternation, which only enforces "at least one". It is accepted
when no value produced by one branch can validate against another: different JSON
types, disjoint literal sets, or a required property with disjoint constant values
(a discriminator).
"""

from __future__ import annotations

import json
from typing import Callable

from .errors import GrammarError
from .keywords import ANNOTATIONS, join

ALL_KINDS = frozenset({"object", "array", "string", "number", "boolean", "null"})
KIND_OF_TYPE = {
    "integer": "number",
    "number": "number",
    "string": "string",
    "object": "object",
    "array": "array",
    "boolean": "boolean",
    "null": "null",
}

_LOWER_BOUNDS = ("minimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "maxLength", "maxItems", "maxProperties")
_MUST_AGREE = ("pattern", "format", "multipleOf", "prefixItems", "additionalItems", "anyOf", "oneOf")


class Unsatisfiable(GrammarError):
    """No JSON value satisfies the schema (after merging)."""


class TooDeep(Exception):
    """A $ref nested more than MAX_REF_DEPTH times; optional places leave it out."""

    def __init__(self, ref: str, path: str):
        super().__init__(ref, path)
        self.ref, self.path = ref, path


def canonical(value) -> str:
    """The canonical JSON text of a value, for comparing enum members and caching."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def kind_of(value) -> str:
    """The JSON kind of a Python value decoded from JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def type_names(schema: dict, path: str) -> list[str] | None:
    """The names in `type` (validated), or None when the schema has no `type`."""
    if "type" not in schema:
        return None
    declared = schema["type"]
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not names:
        raise GrammarError(f"{join(path, 'type')}: invalid schema: type must be a name or a non-empty list")
    for name in names:
        if name not in KIND_OF_TYPE:
            raise GrammarError(f"{join(path, 'type')}: invalid schema: unknown type {name!r}")
    return list(dict.fromkeys(names))


def merge_all(schemas: list[dict], path: str) -> dict:
    """One schema equivalent to (or narrower than) all of `schemas` together.

    `schemas` are flattened (no top-level $ref or allOf). Narrower only where
    `additionalProperties` of one part forbids a property another part declares: the
    property is then left out (or the merge is unsatisfiable when it is required).
    """
    parts = [{k: v for k, v in s.items() if k not in ANNOTATIONS and not k.startswith("x-")} for s in schemas]
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            if key in ("properties", "additionalProperties"):
                continue
            merged[key] = value if key not in merged else _combine(key, merged[key], value, path)
    properties = _merge_properties(parts, merged.get("required", []), path)
    if properties is not None:
        merged["properties"] = properties
    closed = [p["additionalProperties"] for p in parts if "additionalProperties" in p]
    if any(ap is False for ap in closed):
        merged["additionalProperties"] = False
    else:
        extra = [ap for ap in closed if isinstance(ap, dict)]
        if extra:
            merged["additionalProperties"] = extra[0] if len(extra) == 1 else {"allOf": extra}
    return merged


def _merge_properties(parts: list[dict], required: list, path: str) -> dict | None:
    declared: dict[str, list] = {}
    for part in parts:
        for name, sub in part.get("properties", {}).items():
            declared.setdefault(name, []).append(sub)
    if not declared:
        return None
    result = {}
    for name, subs in declared.items():
        extra = []
        forbidden = False
        for part in parts:
            ap = part.get("additionalProperties", True)
            if name in part.get("properties", {}) or ap is True:
                continue
            if ap is False:
                forbidden = True
            else:
                extra.append(ap)
        if forbidden:
            if name in required:
                raise Unsatisfiable(
                    f"{path}: property {name!r} is required but another allOf part forbids it (additionalProperties: false)"
                )
            continue
        subs = list({canonical(s): s for s in subs + extra}.values())
        result[name] = subs[0] if len(subs) == 1 else {"allOf": subs}
    return result


def _combine(key: str, a, b, path: str):
    where = join(path, key)
    if key == "required":
        return list(dict.fromkeys(list(a) + list(b)))
    if key == "type":
        left, right = type_names({"type": a}, path), type_names({"type": b}, path)
        both = [t for t in left if t in right]
        # integer is the part of number both agree on.
        if "integer" in left and "number" in right or "number" in left and "integer" in right:
            both.append("integer")
        both = list(dict.fromkeys(both))
        if not both:
            raise Unsatisfiable(f"{where}: allOf parts require disjoint types {a!r} and {b!r}")
        return both
    if key == "enum":
        right = {canonical(v) for v in b}
        kept = [v for v in a if canonical(v) in right]
        if not kept:
            raise Unsatisfiable(f"{where}: allOf parts have no enum value in common")
        return kept
    if key == "const":
        if canonical(a) != canonical(b):
            raise Unsatisfiable(f"{where}: allOf parts require different constants")
        return a
    if key in _LOWER_BOUNDS or key in _UPPER_BOUNDS:
        return max(a, b) if key in _LOWER_BOUNDS else min(a, b)
    if key in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(a, bool) or isinstance(b, bool):
            if a == b:
                return a
            raise GrammarError(f"{where}: cannot merge draft-4 boolean and numeric {key}")
        return max(a, b) if key == "exclusiveMinimum" else min(a, b)
    if key == "items":
        return a if canonical(a) == canonical(b) else {"allOf": [a, b]}
    if key == "uniqueItems":
        return bool(a) or bool(b)
    if key == "unevaluatedProperties":
        return False if a is False or b is False else {"allOf": [a, b]}
    if key in _MUST_AGREE and canonical(a) == canonical(b):
        return a
    raise GrammarError(f"{where}: allOf parts give {key!r} different values, which cannot be merged")


def accepted_kinds(schema: dict) -> frozenset[str]:
    """A superset of the JSON kinds `schema` (flattened) can accept."""
    names = schema.get("type")
    if names is not None:
        names = [names] if isinstance(names, str) else names
        kinds = {KIND_OF_TYPE.get(n, "object") for n in names}
        if schema.get("nullable") is True:
            kinds.add("null")
        return frozenset(kinds)
    if "const" in schema:
        return frozenset({kind_of(schema["const"])})
    if "enum" in schema and isinstance(schema["enum"], list):
        return frozenset(kind_of(v) for v in schema["enum"])
    return ALL_KINDS


def literal_values(schema: dict) -> frozenset[str] | None:
    """Canonical JSON of the values a flattened `schema` is restricted to, if finite."""
    if "const" in schema:
        return frozenset({canonical(schema["const"])})
    if isinstance(schema.get("enum"), list):
        return frozenset(canonical(v) for v in schema["enum"])
    return None


def check_disjoint(
    branches: list[dict],
    produced: list,
    flatten: Callable[[object, str], dict],
    path: str,
) -> None:
    """Raise GrammarError unless no output of one branch validates against another.

    `branches` are the flattened oneOf subschemas, `produced` their compiled Fragments
    (with .kinds and .values: what the grammar actually emits for each branch).
    """
    for i, fragment in enumerate(produced):
        for j, other in enumerate(branches):
            if i == j or _excludes(fragment, branches[i], other, flatten, path):
                continue
            raise GrammarError(
                f"{join(path, 'oneOf')}: branches {i} and {j} can match the same value, so 'exactly one' "
                "cannot be guaranteed; use anyOf, or make the branches disjoint (different types, "
                "different enum values, or a required property with different const values)"
            )


def _excludes(fragment, own: dict, other: dict, flatten, path: str) -> bool:
    """True when no value the grammar emits for `own` validates against `other`."""
    if not fragment.kinds & accepted_kinds(other):
        return True
    other_values = literal_values(other)
    if fragment.values is not None and other_values is not None:
        return not fragment.values & other_values
    if fragment.kinds == {"object"} and "object" in accepted_kinds(other):
        return any(_discriminates(name, own, other, flatten, path) for name in own.get("required", []))
    return False


def _discriminates(name: str, own: dict, other: dict, flatten, path: str) -> bool:
    mine = own.get("properties", {}).get(name)
    theirs = other.get("properties", {}).get(name)
    if not isinstance(mine, dict) or not isinstance(theirs, dict):
        return False
    mine_values = literal_values(flatten(mine, path))
    their_values = literal_values(flatten(theirs, path))
    return mine_values is not None and their_values is not None and not mine_values & their_values
