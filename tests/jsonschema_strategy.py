"""Hypothesis strategies for documents valid against our exported JSON Schemas.

Covers the subset pydantic emits for our models ($ref, objects, arrays, strings with
patterns and lengths, bounded numbers, enums, nullable unions, date-times), and keeps
collections small so a run stays fast. Date-times are drawn near now: event times must be
within a window of the receiver's clock (``schemas.base.Timestamp``), which JSON Schema
can only say in words.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

_FEW = 3
#: Date-times are drawn around this moment (fixed for the session: a strategy must not
#: change between the runs of one test).
_NOW = datetime.now().replace(minute=0, second=0, microsecond=0)


def documents(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Documents that ``schema`` (with its ``$defs``) accepts."""
    return _node(schema, schema.get("$defs", {}))


def _node(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "$ref" in node:
        return _node(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        return st.one_of([_node(option, defs) for option in node["anyOf"]])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "const" in node:
        return st.just(node["const"])
    kind = node.get("type")
    if kind == "object":
        return _object(node, defs)
    if kind == "array":
        items = _node(node.get("items", {}), defs)
        low = node.get("minItems", 0)
        return st.lists(items, min_size=low, max_size=min(node.get("maxItems", _FEW), low + _FEW))
    if kind == "string":
        return _string(node)
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "number":
        return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    raise NotImplementedError(f"schema node not covered: {node}")


def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    if node.get("format") == "date-time":
        return st.datetimes(
            min_value=_NOW - timedelta(days=3000),
            max_value=_NOW + timedelta(hours=12),
            timezones=st.just(UTC),
        ).map(lambda moment: moment.isoformat())
    longest = node.get("maxLength", 40)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: len(s) <= longest)
    return st.text(min_size=node.get("minLength", 0), max_size=min(longest, 40))


def _object(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = node.get("properties")
    if properties is None:
        ((key_pattern, value_schema),) = node["patternProperties"].items()
        keys = _string({"type": "string", "pattern": key_pattern})
        most = min(node.get("maxProperties", _FEW), _FEW)
        return st.dictionaries(keys, _node(value_schema, defs), max_size=most)
    required = set(node.get("required", ()))
    return st.fixed_dictionaries(
        {name: _node(sub, defs) for name, sub in properties.items() if name in required},
        optional={
            name: _node(sub, defs) for name, sub in properties.items() if name not in required
        },
    )
