"""Per-type keywords of JSON Schema compiled to regexes: numbers, strings, arrays, objects.

A mixin of SchemaCompiler (json_schema.py), which provides `node` (compile a
subschema), `_child` (descend into an instance path), `_register` / `_counted` (decode-
time counters, counters.py) and `any_value`.
"""

from __future__ import annotations

import json

from . import numbers, strings
from .errors import GrammarError
from .fragments import ANY_DEPTH, FREE, ITEM, WHITESPACE, Fragment, literal, sequence, subsequence
from .keywords import join
from .schema_merge import KIND_OF_TYPE, TooDeep, Unsatisfiable

# Counted array items / object members beyond this are narrowed (one DFA copy each)
# where the decode-time counter cannot take them.
MAX_COUNTED_ITEMS = 16
# Counted string heads (minLength without maxLength) beyond this are refused.
MAX_MIN_LENGTH = 64


class TypeCompilers:
    """The `type`-specific half of SchemaCompiler."""

    def _typed(self, name: str, schema: dict, path: str) -> Fragment:
        kind = frozenset({KIND_OF_TYPE[name]})
        if name == "null":
            return Fragment("null", kind, frozenset({"null"}))
        if name == "boolean":
            return Fragment("(?:true|false)", kind, frozenset({"true", "false"}))
        if name in ("integer", "number"):
            return Fragment(self._number(schema, path, integer=name == "integer"), kind)
        if name == "string":
            return Fragment(self._string(schema, path), kind)
        if name == "array":
            return Fragment(self._array(schema, path), kind)
        return Fragment(self._object(schema, path), kind)

    def _number(self, schema: dict, path: str, *, integer: bool) -> str:
        lo, lo_x = _bound(schema, "minimum", "exclusiveMinimum", path, lower=True)
        hi, hi_x = _bound(schema, "maximum", "exclusiveMaximum", path, lower=False)
        if "multipleOf" in schema:
            step = schema["multipleOf"]
            if not isinstance(step, (int, float)) or isinstance(step, bool) or step != 1:
                raise GrammarError(
                    f"{join(path, 'multipleOf')}: multipleOf {step!r} is not supported (only 1, i.e. whole numbers)"
                )
            integer = True
        try:
            if integer:
                return numbers.integer_regex(lo, lo_x, hi, hi_x)
            return numbers.number_regex(lo, lo_x, hi, hi_x)
        except numbers.EmptyRange as exc:
            raise Unsatisfiable(f"{path}: {exc}") from None

    def _string(self, schema: dict, path: str) -> str:
        least = _count(schema, "minLength", path, default=0)
        most = _count(schema, "maxLength", path, default=None)
        if most is not None and most < least:
            raise Unsatisfiable(f"{path}: maxLength {most} is below minLength {least}")
        pattern, fmt = schema.get("pattern"), schema.get("format")
        if pattern is not None and fmt is not None:
            raise GrammarError(f"{path}: 'pattern' together with 'format' is not supported")
        if pattern is not None or fmt is not None:
            self._register("string", ("other",))
            if pattern is not None:
                try:
                    regex, low, high = strings.pattern_regex(pattern)
                except strings.PatternError as exc:
                    raise GrammarError(f"{join(path, 'pattern')}: {exc}") from None
                what = f"pattern {pattern!r}"
            else:
                if fmt not in strings.FORMATS:
                    supported = ", ".join(sorted(strings.FORMATS))
                    raise GrammarError(f"{join(path, 'format')}: unsupported format {fmt!r} (supported: {supported})")
                regex, low, high = strings.format_regex(fmt)
                what = f"format {fmt!r}"
            if low < least or (most is not None and (high is None or high > most)):
                raise GrammarError(
                    f"{path}: {what} with minLength/maxLength is only supported when every string it "
                    f"admits ({low}..{'' if high is None else high} characters) satisfies them"
                )
            return regex
        if least == 0 and most is None:
            self._register("string", ("other",))
            return strings.STRING
        self._register("string", ("bounded", least, most))
        if self._counted("string"):
            return strings.COUNTED_STRING  # lengths checked by the decode-time counter
        if least > MAX_MIN_LENGTH:
            raise GrammarError(f"{join(path, 'minLength')}: minLength {least} above {MAX_MIN_LENGTH} is not supported")
        return strings.string_regex(least, most)

    def _array(self, schema: dict, path: str) -> str:
        items, prefix_items = schema.get("items"), schema.get("prefixItems")
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, rest, rest_key = items, schema.get("additionalItems", True), "additionalItems"
        else:
            prefix, rest, rest_key = prefix_items or [], True if items is None else items, "items"
        least = _count(schema, "minItems", path, default=0)
        most = _count(schema, "maxItems", path, default=None)
        prefix_fragments: list[Fragment] = []
        for i, sub in enumerate(prefix):
            try:
                with self._child(ITEM):
                    prefix_fragments.append(self.node(sub, join(join(path, "prefixItems"), i)))
            except (Unsatisfiable, TooDeep):
                most = i if most is None else min(most, i)  # no array can reach position i
                break
        rest_fragment = None
        if len(prefix_fragments) == len(prefix) and rest is not False:
            try:
                with self._child(ITEM):
                    rest_fragment = self.node(rest, join(path, rest_key))
            except (Unsatisfiable, TooDeep):
                pass
        if rest_fragment is None:
            most = len(prefix_fragments) if most is None else min(most, len(prefix_fragments))
        if most is not None and most < least:
            raise Unsatisfiable(f"{path}: no array satisfies minItems {least} with the item schemas")
        if schema.get("uniqueItems") is True and (most is None or most > 1):
            if prefix_fragments or rest_fragment is None or rest_fragment.values is None:
                raise GrammarError(
                    f"{join(path, 'uniqueItems')}: uniqueItems is only enforced for arrays of enum/const "
                    "values (or of at most one item)"
                )
            self._register("array", ("other",))
            return self._unique_literals(rest_fragment, least, most, path)
        if not prefix_fragments and rest_fragment is not None and (least > 1 or most is not None):
            self._register("array", ("bounded", least, most))
            if self._counted("array"):  # sizes checked by the decode-time counter
                return sequence("\\[", "\\]", [], rest_fragment, min(least, 1), None)
        else:
            self._register("array", ("other",))
        if least - 1 > MAX_COUNTED_ITEMS:
            raise GrammarError(f"{join(path, 'minItems')}: minItems {least} above {MAX_COUNTED_ITEMS + 1} is not supported")
        if most is not None and most - 1 > MAX_COUNTED_ITEMS:
            most = MAX_COUNTED_ITEMS + 1  # narrowing: shorter arrays still satisfy maxItems
        return sequence("\\[", "\\]", [f.regex for f in prefix_fragments], rest_fragment, least, most)

    def _unique_literals(self, fragment: Fragment, least: int, most: int | None, path: str) -> str:
        """Arrays of distinct enum values: each value at most once, in enum order."""
        values = sorted(fragment.values)
        if least > 1 or (most is not None and most < len(values)):
            raise GrammarError(
                f"{path}: uniqueItems is enforced with minItems 0 or 1 and no maxItems below the "
                f"{len(values)} allowed values"
            )
        members = [(literal(json.loads(v)), False) for v in values]
        return f"\\[{WHITESPACE}{subsequence(members, nonempty=least == 1)}{WHITESPACE}\\]"

    def _object(self, schema: dict, path: str) -> str:
        properties = dict(schema.get("properties") or {})
        required = list(dict.fromkeys(schema.get("required") or []))
        extra = schema.get("additionalProperties", schema.get("unevaluatedProperties", True))
        for name in required:
            if name not in properties:
                if extra is False:
                    raise Unsatisfiable(f"{path}: required property {name!r} is forbidden by additionalProperties: false")
                properties[name] = extra
        least = _count(schema, "minProperties", path, default=0)
        most = _count(schema, "maxProperties", path, default=None)
        if not properties:
            return self._free_object(extra, least, most, path)
        self._register("object", ("other",))
        members: list[tuple[str, bool]] = []
        for name, sub in properties.items():
            where = join(join(path, "properties"), name)
            try:
                with self._child(name):
                    value = self.node(sub, where)
            except (Unsatisfiable, TooDeep):
                if name in required:
                    raise
                continue  # an optional property that can hold no value is left out
            key = literal(name)
            members.append((f"{key}{WHITESPACE}:{WHITESPACE}{value.regex}", name in required))
        n_required = sum(1 for _, req in members if req)
        nonempty = least == 1 and n_required == 0 and members
        if (least > n_required and not nonempty) or (most is not None and most < len(members)):
            if least > len(members) or (most is not None and most < n_required):
                raise Unsatisfiable(f"{path}: minProperties/maxProperties exclude every object")
            raise GrammarError(
                f"{path}: minProperties/maxProperties that constrain which optional properties appear are not supported"
            )
        body = subsequence(members, nonempty=bool(nonempty))
        return f"\\{{{WHITESPACE}{body}{WHITESPACE}\\}}"

    def _free_object(self, extra, least: int, most, path: str) -> str:
        """An object without declared properties: string keys, values of `extra`."""
        if extra is False or most == 0:
            if least > 0:
                raise Unsatisfiable(f"{path}: minProperties {least} but no property is allowed")
            return f"\\{{{WHITESPACE}\\}}"
        with self._child(FREE):
            if extra is True:
                value = self.any_value(ANY_DEPTH - 1).regex
            else:
                value = self.node(extra, join(path, "additionalProperties")).regex
        member = Fragment(f"{strings.STRING}{WHITESPACE}:{WHITESPACE}{value}", frozenset({"object"}))
        if least > 1 or most is not None:
            self._register("object", ("bounded", least, most))
            if self._counted("object"):  # member counts checked by the decode-time counter
                return sequence("\\{", "\\}", [], member, min(least, 1), None)
        else:
            self._register("object", ("other",))
        if least - 1 > MAX_COUNTED_ITEMS:
            raise GrammarError(f"{join(path, 'minProperties')}: minProperties {least} is not supported")
        if most is not None and most - 1 > MAX_COUNTED_ITEMS:
            most = MAX_COUNTED_ITEMS + 1
        return sequence("\\{", "\\}", [], member, least, most)


def _count(schema: dict, key: str, path: str, *, default):
    value = schema.get(key, default)
    if value is default:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GrammarError(f"{join(path, key)}: invalid schema: {key} must be a non-negative integer")
    return value


def _bound(schema: dict, key: str, exclusive_key: str, path: str, *, lower: bool):
    """(Decimal bound or None, exclusive) from minimum/exclusiveMinimum (or the max pair)."""
    value, exclusive = None, False
    try:
        if key in schema:
            value = numbers.to_decimal(schema[key])
        flag = schema.get(exclusive_key)
        if isinstance(flag, bool):  # draft 4: a flag on minimum/maximum
            if flag and value is None:
                raise GrammarError(f"{join(path, exclusive_key)}: invalid schema: {exclusive_key} true needs {key}")
            exclusive = flag
        elif flag is not None:
            other = numbers.to_decimal(flag)
            if value is None or (other >= value if lower else other <= value):
                value, exclusive = other, True
    except ValueError as exc:
        if isinstance(exc, GrammarError):
            raise
        raise GrammarError(f"{join(path, key)}: invalid schema: {exc}") from None
    return value, exclusive
