"""Which JSON Schema keywords the grammar enforces, ignores, or refuses.

Strict by design: a keyword that is neither enforced nor a pure annotation is refused
with the keyword's name and path, because ignoring it would let the model produce
output that the caller's validator rejects. (Plain JSON Schema ignores unknown
keywords; here an unknown keyword may be a constraint someone relies on.)
"""

from __future__ import annotations

import json
import re

from .errors import GrammarError

# Pure annotations: they never make a value invalid.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "example",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$schema",
        "$id",
        "$anchor",
        "$defs",
        "definitions",
        # OpenAPI / editor metadata that only documents.
        "discriminator",
        "externalDocs",
        "xml",
        "markdownDescription",
        "enumDescriptions",
        "markdownEnumDescriptions",
        "propertyOrder",
        # OpenAPI 3.0's "null is also fine": JSON Schema validators ignore it, so the
        # grammar never emits null for it (valid under both readings).
        "nullable",
    }
)

OBJECT_KEYWORDS = frozenset(
    {"properties", "required", "additionalProperties", "minProperties", "maxProperties", "unevaluatedProperties"}
)
ARRAY_KEYWORDS = frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"})
STRING_KEYWORDS = frozenset({"minLength", "maxLength", "pattern", "format"})
NUMBER_KEYWORDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
GENERIC_KEYWORDS = frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"})

ENFORCED = OBJECT_KEYWORDS | ARRAY_KEYWORDS | STRING_KEYWORDS | NUMBER_KEYWORDS | GENERIC_KEYWORDS

# Known keywords a regular grammar cannot enforce, with the reason given to the caller.
UNSUPPORTED = {
    "not": "negation cannot be expressed as a regular grammar",
    "if": "conditional schemas (if/then/else) are not supported",
    "then": "conditional schemas (if/then/else) are not supported",
    "else": "conditional schemas (if/then/else) are not supported",
    "patternProperties": "property names matched by pattern are not supported; list the properties",
    "propertyNames": "constraints on property names are not supported",
    "dependentRequired": "dependent requirements are not supported",
    "dependentSchemas": "dependent schemas are not supported",
    "dependencies": "dependent requirements are not supported",
    "contains": "'contains' cannot be enforced on arbitrary arrays",
    "minContains": "'minContains' cannot be enforced",
    "maxContains": "'maxContains' cannot be enforced",
    "unevaluatedItems": "'unevaluatedItems' is not supported",
    "contentEncoding": "encoded string content cannot be checked by the grammar",
    "contentMediaType": "string media types cannot be checked by the grammar",
    "contentSchema": "string content schemas cannot be checked by the grammar",
    "$dynamicRef": "dynamic references are not supported",
    "$dynamicAnchor": "dynamic references are not supported",
    "$recursiveRef": "recursive references of draft 2019-09 are not supported; use $ref",
    "$recursiveAnchor": "recursive references of draft 2019-09 are not supported; use $ref",
}


def check_keywords(schema: dict, path: str) -> None:
    """Raise GrammarError for the first keyword of `schema` that would not be enforced."""
    for key in schema:
        if key in ENFORCED or key in ANNOTATIONS or key.startswith("x-"):
            continue
        reason = UNSUPPORTED.get(key, "unknown keyword")
        raise GrammarError(f"{join(path, key)}: unsupported schema keyword {key!r} ({reason})")


_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def join(path: str, key: str | int) -> str:
    """`path` extended by an object key or array index, as a readable JSON path."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def is_annotation_only(schema: dict) -> bool:
    """True when `schema` holds only annotations: it admits any JSON value."""
    return all(key in ANNOTATIONS or key.startswith("x-") for key in schema)
