"""JSON Schema → a regex whose every match is a JSON text that validates.

Why not outlines_core's `build_regex_from_schema`: it silently drops constraints
(minimum/maximum, allOf concatenated as two objects, oneOf treated as anyOf, a pattern
pasted unescaped between quotes, keywords next to `properties` ignored). This compiler
emits regexes for outlines_core's Index but decides itself what each keyword means, and
raises GrammarError naming the keyword and its path for anything it cannot enforce.

The grammar may be narrower than the schema (properties in schema order, bounded
whitespace and number sizes, see numbers.py / strings.py); it is never wider. This
module handles a schema's structure ($ref, allOf, anyOf, oneOf, enum, const);
schema_types.py the keywords of each type.
"""

from __future__ import annotations

from contextlib import contextmanager
from urllib.parse import unquote

from .errors import GrammarError
from .fragments import ANY_DEPTH, FREE, Fragment, any_value_regex, literal, union
from .keywords import (
    ARRAY_KEYWORDS,
    NUMBER_KEYWORDS,
    OBJECT_KEYWORDS,
    STRING_KEYWORDS,
    check_keywords,
    is_annotation_only,
    join,
)
from .schema_merge import (
    ALL_KINDS,
    TooDeep,
    Unsatisfiable,
    canonical,
    check_disjoint,
    kind_of,
    merge_all,
    type_names,
)
from .schema_types import TypeCompilers

# How often one $ref may nest inside itself before recursive fields are cut off.
MAX_REF_DEPTH = 3


def compile_schema(schema, path: str = "schema", *, check: bool = True, count: bool = True) -> Fragment:
    """Compile a JSON Schema to a Fragment; GrammarError if it cannot be enforced.

    `path` prefixes every error message (e.g. "tools[0].function.parameters").
    With `check`, the schema is first validated against its metaschema. With `count`,
    bounded plain strings, arrays and free-form objects at unambiguous instance paths
    are left to the decode-time counters (`Fragment.counts`): exact at any bound and far
    cheaper to index than counted repeats. Without it the regex counts (narrowing bounds
    above its caps, see strings.py and schema_types.py).
    """
    if check:
        check_schema(schema, path)
    first = _compile(SchemaCompiler(schema), schema, path)
    if not count or not first.counts:
        return Fragment(first.regex, first.kinds, first.values)
    second = _compile(SchemaCompiler(schema, counted=first.counts), schema, path)
    return Fragment(second.regex, second.kinds, second.values, first.counts)


def _compile(compiler: "SchemaCompiler", schema, path: str) -> Fragment:
    try:
        fragment = compiler.node(schema, path)
    except TooDeep as exc:
        raise GrammarError(
            f"{exc.path}: $ref {exc.ref!r} recurses more than {MAX_REF_DEPTH} levels deep where a value "
            "is required; make the recursive field optional"
        ) from None
    return Fragment(fragment.regex, fragment.kinds, fragment.values, compiler.countable())


def check_schema(schema, path: str) -> None:
    """GrammarError when `schema` is not a valid JSON Schema (by its $schema draft)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GrammarError(f"{path}: invalid schema: expected an object, got {type(schema).__name__}")
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with outlines
        return
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise GrammarError(f"{path}{where}: invalid schema: {exc.message}") from None


class SchemaCompiler(TypeCompilers):
    """Compiles the subschemas of one root schema (which `$ref`s resolve against)."""

    def __init__(self, root, *, counted: dict | None = None):
        self.root = root
        self.counted = counted or {}
        self._refs: list[str] = []
        self._any: dict[int, str] = {}
        self._at: list = []  # the instance path being compiled
        self._forms: dict[tuple, set] = {}  # (kind, path) -> how strings/arrays/objects there are formed
        self._open: set[tuple] = set()  # paths below which any value may appear

    @contextmanager
    def _child(self, key):
        """Compile inside the value at instance key `key` (a property name or ITEM)."""
        self._at.append(key)
        try:
            yield
        finally:
            self._at.pop()

    def _register(self, kind: str, form: tuple) -> None:
        self._forms.setdefault((kind, tuple(self._at)), set()).add(form)

    def _counted(self, kind: str) -> bool:
        return (kind, tuple(self._at)) in self.counted

    def countable(self) -> dict:
        """(kind, path) -> bounds, where exactly one bounded plain string, simple array or
        free-form object can appear. A path is left out when other strings / arrays /
        objects (patterns, enums, tuples, a value left open) can appear there too: the
        counters could not tell them apart.
        """
        result = {}
        for (kind, path), forms in self._forms.items():
            if len(forms) != 1 or FREE in path:
                continue
            (form,) = forms
            if form[0] != "bounded" or any(path[: len(o)] == o for o in self._open):
                continue
            result[(kind, path)] = form[1:]
        return result

    # -- structure ---------------------------------------------------------------

    def node(self, schema, path: str) -> Fragment:
        """Compile one subschema found at `path`."""
        if schema is True:
            return self.any_value(ANY_DEPTH)
        if schema is False:
            raise Unsatisfiable(f"{path}: the schema 'false' admits no value")
        if not isinstance(schema, dict):
            raise GrammarError(f"{path}: invalid schema: expected an object or a boolean, got {type(schema).__name__}")
        flat, refs = self.flatten(schema, path)
        for ref in refs:
            if self._refs.count(ref) >= MAX_REF_DEPTH:
                raise TooDeep(ref, path)
        self._refs.extend(refs)
        try:
            return self._flat(flat, path)
        finally:
            del self._refs[len(self._refs) - len(refs) :]

    def flatten(self, schema, path: str, seen: frozenset = frozenset()) -> tuple[dict, list[str]]:
        """`schema` with its top-level $ref and allOf merged in, and the refs expanded."""
        if schema is True:
            return {}, []
        if schema is False:
            raise Unsatisfiable(f"{path}: the schema 'false' admits no value")
        if not isinstance(schema, dict):
            raise GrammarError(f"{path}: invalid schema: expected an object or a boolean, got {type(schema).__name__}")
        check_keywords(schema, path)
        if "$ref" not in schema and "allOf" not in schema:
            return schema, []
        parts = [{k: v for k, v in schema.items() if k not in ("$ref", "allOf")}]
        refs: list[str] = []
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                raise GrammarError(f"{join(path, '$ref')}: circular $ref {ref!r} never reaches a schema")
            target = self.resolve(ref, join(path, "$ref"))
            flat, inner = self.flatten(target, ref, seen | {ref})
            parts.append(flat)
            refs += [ref, *inner]
        if "allOf" in schema:
            subs = schema["allOf"]
            if not isinstance(subs, list) or not subs:
                raise GrammarError(f"{join(path, 'allOf')}: invalid schema: allOf must be a non-empty list")
            for i, sub in enumerate(subs):
                flat, inner = self.flatten(sub, join(join(path, "allOf"), i), seen)
                parts.append(flat)
                refs += inner
        return merge_all(parts, path), refs

    def resolve(self, ref, path: str):
        """The subschema a local `$ref` points to; GrammarError for anything else."""
        if not isinstance(ref, str):
            raise GrammarError(f"{path}: invalid schema: $ref must be a string")
        base, _, pointer = ref.partition("#")
        root_id = self.root.get("$id") if isinstance(self.root, dict) else None
        if base and base != root_id:
            raise GrammarError(f"{path}: only local references ('#/...') are supported, got {ref!r}")
        target = self.root
        for token in [t for t in pointer.split("/") if t]:
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            elif isinstance(target, dict) and token in target:
                target = target[token]
            else:
                raise GrammarError(f"{path}: $ref {ref!r} does not resolve")
        return target

    def _flat(self, schema: dict, path: str) -> Fragment:
        if is_annotation_only(schema):
            return self.any_value(ANY_DEPTH)
        if "anyOf" in schema and "oneOf" in schema:
            raise GrammarError(f"{path}: anyOf together with oneOf in one schema is not supported")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._union(key, schema, path)
        if "enum" in schema or "const" in schema:
            return self._literals(schema, path)
        names = type_names(schema, path) or self._implied_types(schema)
        if names is None:
            return self.any_value(ANY_DEPTH)
        fragments = []
        failure = None
        for name in names:
            try:
                fragments.append(self._typed(name, schema, path))
            except Unsatisfiable as exc:
                failure = exc  # other types may still admit values
        if not fragments:
            raise failure
        return union(fragments)

    def _implied_types(self, schema: dict) -> list[str] | None:
        """Without `type`, the types whose keywords appear (a narrowing); None: any."""
        names = [
            name
            for name, keys in (
                ("object", OBJECT_KEYWORDS),
                ("array", ARRAY_KEYWORDS),
                ("string", STRING_KEYWORDS),
                ("number", NUMBER_KEYWORDS),
            )
            if keys & schema.keys()
        ]
        return names or None

    def _union(self, key: str, schema: dict, path: str) -> Fragment:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise GrammarError(f"{join(path, key)}: invalid schema: {key} must be a non-empty list")
        # Keywords next to anyOf/oneOf apply to every branch: merge them into each.
        siblings = {k: v for k, v in schema.items() if k != key}
        fragments, flats, failure = [], [], None
        for i, branch in enumerate(branches):
            where = join(join(path, key), i)
            combined = {"allOf": [siblings, branch]} if not is_annotation_only(siblings) else branch
            try:
                fragments.append(self.node(combined, where))
            except (Unsatisfiable, TooDeep) as exc:
                failure = exc  # this branch admits nothing here; the others still do
                continue
            flats.append(self.flatten(branch, where)[0] if branch is not True else {})
        if not fragments:
            raise failure
        if key == "oneOf" and len(fragments) > 1:
            check_disjoint(flats, fragments, lambda s, p: self.flatten(s, p)[0], path)
        return union(fragments)

    def _literals(self, schema: dict, path: str) -> Fragment:
        if any(isinstance(v, str) for v in schema.get("enum", [])) or isinstance(schema.get("const"), str):
            self._register("string", ("other",))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError(f"{join(path, 'enum')}: invalid schema: enum must be a non-empty list")
        else:
            values = []
        if "const" in schema:
            const = schema["const"]
            values = [const] if "enum" not in schema else [v for v in values if canonical(v) == canonical(const)]
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const") and not is_annotation_only({k: v})}
        if rest:
            values = [v for v in values if self._valid(v, rest)]
        if not values:
            raise Unsatisfiable(f"{path}: no enum/const value satisfies the schema's other keywords")
        unique = {canonical(v): v for v in values}
        regex = "(?:" + "|".join(literal(v) for v in unique.values()) + ")"
        return Fragment(regex, frozenset(kind_of(v) for v in values), frozenset(unique))

    def _valid(self, value, schema: dict) -> bool:
        """Whether `value` validates against `schema` (a part of this root)."""
        import jsonschema

        document = dict(schema)
        for key in ("$defs", "definitions"):
            if isinstance(self.root, dict) and key in self.root:
                document.setdefault(key, self.root[key])
        validator = jsonschema.Draft202012Validator(document, format_checker=jsonschema.FormatChecker())
        return validator.is_valid(value)

    def any_value(self, depth: int) -> Fragment:
        """Any JSON value, containers nested at most `depth` levels."""
        self._open.add(tuple(self._at))
        if depth not in self._any:
            self._any[depth] = any_value_regex(depth)
        return Fragment(self._any[depth], ALL_KINDS)


__all__ = ["MAX_REF_DEPTH", "SchemaCompiler", "check_schema", "compile_schema"]
