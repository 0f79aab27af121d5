"""JSON Schemas from a request, normalized and checked before they become grammar.

llguidance compiles JSON Schema itself; what is left here is what the request format
adds around it: a tool's `parameters` may omit `"type": "object"` (or be absent), they
must describe an object, and a schema llguidance cannot enforce is refused with the
request path in front of llguidance's own message (which names the keyword).
"""

from __future__ import annotations

import itertools
import json
import re

from .errors import GrammarError

_COMBINATORS = ("$ref", "allOf", "anyOf", "oneOf", "enum", "const", "type")
# Keywords that annotate and constrain nothing: dropped, so tool sets that differ only in
# descriptions share one compiled grammar (and the grammar text stays small).
_ANNOTATIONS = frozenset({"description", "title", "examples", "$comment", "deprecated", "readOnly", "writeOnly"})
# Where subschemas sit: one schema, a list of schemas, or a name -> schema map.
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames",
        "unevaluatedProperties", "unevaluatedItems", "additionalItems")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def arguments_schema(parameters, where: str) -> dict:
    """A tool's `parameters` as the schema of its arguments object."""
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise GrammarError(f"{where}: expected a JSON Schema object")
    if not any(k in parameters for k in _COMBINATORS):
        # A parameters schema without a type describes the arguments object.
        parameters = {**parameters, "type": "object"}
    kind = parameters.get("type")
    kinds = set(kind) if isinstance(kind, list) else {kind}
    if "type" in parameters and "object" not in kinds:
        raise GrammarError(f"{where}: must describe a JSON object (the call's arguments), got type {kind!r}")
    if "type" in parameters and kinds != {"object"}:
        parameters = {**parameters, "type": "object"}
    return json_schema(parameters, where)


def json_schema(schema, where: str) -> dict:
    """`schema` if llguidance can enforce it; GrammarError naming `where` and the keyword if not."""
    from llguidance import LLMatcher

    from .compiled import LIMITS

    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise GrammarError(f"{where}: expected a JSON Schema object")
    schema = normalize(schema)
    try:
        text = json.dumps(schema, allow_nan=False)
        grammar = LLMatcher.grammar_from_json_schema(text)
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"{where}: not a valid JSON Schema: {exc}") from None
    error = LLMatcher.validate_grammar(grammar, limits=LIMITS())
    if error:
        keys = re.search(r'Unimplemented keys: \["([^"]+)"', error) or re.search(r"(oneOf) constraints are not supported", error)
        path = _locate(schema, keys.group(1)) if keys else None
        if path is not None:
            why = {"oneOf": "branches that may overlap",
                   "uniqueItems": f"enforced only on arrays of values from an enum of at most {UNIQUE_ENUM_MAX}"}.get(
                keys.group(1), "it cannot be enforced")
            raise GrammarError(f"{where}{path}: unsupported schema keyword {keys.group(1)!r} ({why})")
        raise GrammarError(f"{where}: cannot be enforced: {_first_line(error)}")
    return schema


def normalize(schema, *, close: bool = True):
    """`schema` without annotation keywords (descriptions, titles, examples) anywhere;
    objects that declare `properties` and say nothing of others closed to them; each
    `oneOf` whose branches provably cannot both match turned into `anyOf` (llguidance
    enforces anyOf; a oneOf that may overlap stays, and is refused)."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key in _ONE:
            value = normalize(value) if not isinstance(value, list) else [normalize(v) for v in value]
        elif key in _LIST and isinstance(value, list):
            # allOf parts describe one object together: none (nor their anyOf/oneOf
            # branches) may close it to the others' keys.
            value = [normalize(v, close=close and key != "allOf") for v in value]
        elif key in _MAP and isinstance(value, dict):
            value = {name: normalize(v) for name, v in value.items()}
        out[key] = value
    if close and "allOf" not in out and isinstance(out.get("properties"), dict) and not any(k in out for k in ("additionalProperties", "patternProperties", "unevaluatedProperties")):
        # Only the declared properties: still valid for the schema, and a small model
        # cannot wander into keys the tool never reads.
        out["additionalProperties"] = False
    if isinstance(out.get("oneOf"), list) and "anyOf" not in out and _disjoint(out["oneOf"]):
        out["anyOf"] = out.pop("oneOf")
    if "uniqueItems" in out:
        out = _unique_items(out)
    return out


# An enum of at most this many values makes 2**n distinct-value arrays: 256 at 8.
UNIQUE_ENUM_MAX = 8
_UNIQUE_KEYS = {"type", "items", "uniqueItems", "minItems", "maxItems", "default"}


def _unique_items(out: dict) -> dict:
    """`uniqueItems` in the form llguidance can enforce, or left as is (and refused).

    False says nothing; arrays of at most one item are unique anyway. The common true case,
    a set drawn from a small enum (tags, toppings, labels, route options), becomes the enum
    of its distinct-value arrays with each value in the enum's own order: every set the
    schema allows is still reachable, once, and a small model cannot repeat a value.
    """
    flag, most = out.get("uniqueItems"), out.get("maxItems")
    if flag is False or (flag is True and isinstance(most, int) and not isinstance(most, bool) and most <= 1):
        return {k: v for k, v in out.items() if k != "uniqueItems"}
    items = out.get("items")
    if flag is not True or not set(out) <= _UNIQUE_KEYS or out.get("type", "array") != "array" or not isinstance(items, dict):
        return out
    values = [items["const"]] if set(items) <= {"const", "type"} and "const" in items else (
        items.get("enum") if set(items) <= {"enum", "type"} else None)
    if not isinstance(values, list):
        return out
    kind = items.get("type")
    names = kind if isinstance(kind, list) else [kind]
    if kind is not None and not all(isinstance(k, str) for k in names):
        return out  # a malformed "type": refused with llguidance's own words
    distinct: list = []
    for value in values:
        if value not in distinct and (kind is None or _is_type(value, kind)):
            distinct.append(value)
    least = out.get("minItems", 0)
    most = len(distinct) if most is None else most
    if len(distinct) > UNIQUE_ENUM_MAX or not all(isinstance(n, int) and not isinstance(n, bool) for n in (least, most)):
        return out
    arrays = [list(c) for size in range(max(least, 0), min(most, len(distinct)) + 1) for c in itertools.combinations(distinct, size)]
    if not arrays:
        return out  # unsatisfiable: refused with llguidance's own words
    return {"enum": arrays}


_TYPE_CHECKS = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
                "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}


def _is_type(value, kind: str | list[str]) -> bool:
    kinds = kind if isinstance(kind, list) else [kind]
    return any(k in _TYPE_CHECKS and _TYPE_CHECKS[k](value) for k in kinds)


_NUMERIC = {"integer", "number"}


def _types(branch) -> set[str] | None:
    """The JSON types a branch admits, when it says so plainly (None: unknown)."""
    if not isinstance(branch, dict) or "$ref" in branch or any(k in branch for k in _LIST):
        return None
    values = [branch["const"]] if "const" in branch else branch.get("enum")
    if isinstance(values, list):
        names = {"null" if v is None else "boolean" if isinstance(v, bool) else "number" if isinstance(v, (int, float))
                 else "string" if isinstance(v, str) else "array" if isinstance(v, list) else "object" for v in values}
        return {"number" if n in _NUMERIC else n for n in names}
    kind = branch.get("type")
    kinds = set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else None
    return None if kinds is None else {"number" if k in _NUMERIC else k for k in kinds}


def _disjoint(branches: list) -> bool:
    """Whether no value can match two of `branches`: distinct types, or a discriminator
    (a property every branch requires, with const/enum values no two branches share)."""
    types = [_types(b) for b in branches]
    if all(t is not None for t in types) and sum(len(t) for t in types) == len(set().union(*types)):
        return True
    if not all(isinstance(b, dict) and isinstance(b.get("properties"), dict) for b in branches):
        return False
    common = set.intersection(*(set(b.get("required", [])) for b in branches)) if branches else set()
    for name in sorted(common):
        seen: list = []
        for branch in branches:
            prop = branch["properties"].get(name)
            values = [prop["const"]] if isinstance(prop, dict) and "const" in prop else (prop or {}).get("enum") if isinstance(prop, dict) else None
            if not isinstance(values, list) or any(v in seen for v in values):
                break
            seen += values
        else:
            return True
    return False


def _locate(schema, keyword: str, path: str = "") -> str | None:
    """The path (".properties.x.uniqueItems") of the first subschema using `keyword`."""
    if not isinstance(schema, dict):
        return None
    if keyword in schema:
        return f"{path}.{keyword}"
    for key, value in schema.items():
        if key in _ONE:
            values = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        elif key in _LIST and isinstance(value, list):
            values = list(enumerate(value))
        elif key in _MAP and isinstance(value, dict):
            values = list(value.items())
        else:
            continue
        for name, sub in values:
            step = f".{key}" if name is None else (f".{key}[{name}]" if isinstance(name, int) else f".{key}.{name}")
            found = _locate(sub, keyword, path + step)
            if found is not None:
                return found
    return None


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = " ".join(lines[:3])
    return text if len(text) <= 300 else text[:297] + "..."
