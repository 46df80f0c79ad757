"""A small JSON Schema check (the subset pydantic writes: $ref, anyOf, type, const, enum,
properties, required, additionalProperties, items, pattern, minimum), so a test can validate
a real output against the committed schema in docs/schemas/ without another dependency."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def validate(value: Any, schema: dict[str, Any], root: dict | None = None, at: str = "$") -> None:
    """Raise AssertionError naming the first place where ``value`` breaks ``schema``."""
    root = schema if root is None else root
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(value, root["$defs"][name], root, at)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return validate(value, option, root, at)
            except AssertionError as err:
                errors.append(str(err))
        raise AssertionError(f"{at}: matches no option ({'; '.join(errors)})")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        assert any(_is(value, k) for k in kinds), f"{at}: {value!r} is not {kinds}"
    if "const" in schema:
        assert value == schema["const"], f"{at}: {value!r} is not {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{at}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, str) and "pattern" in schema:
        assert re.search(schema["pattern"], value), f"{at}: {value!r} !~ {schema['pattern']}"
    if _is(value, "number") and "minimum" in schema and not math.isnan(value):
        assert value >= schema["minimum"], f"{at}: {value} < {schema['minimum']}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, f"{at}: required {key!r} missing"
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                validate(item, props[key], root, f"{at}.{key}")
            elif extra is False:
                raise AssertionError(f"{at}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                validate(item, extra, root, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], root, f"{at}[{i}]")
    return None
