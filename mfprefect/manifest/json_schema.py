"""The JSON Schema of a manifest: where its file is, loading it, and turning what jsonschema reports
into diagnostics (our rule names and wording, at the YAML line and column).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import yamlsafe
from ..diagnostics import Diagnostic, did_you_mean, value_text

SCHEMA_NAME = "pipeline-v1.schema.json"


def schema_path() -> Path:
    """The JSON Schema file: the copy inside an installed wheel, else the checkout's `schema/`."""
    package = Path(__file__).resolve().parent.parent  # mfprefect/, where the wheel puts _schema/
    packaged = package / "_schema" / SCHEMA_NAME
    return packaged if packaged.is_file() else package.parent / "schema" / SCHEMA_NAME


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The parsed JSON Schema."""
    with open(schema_path(), encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _expected(subschema: Mapping[str, Any]) -> str:
    if "x-expected" in subschema:
        return str(subschema["x-expected"])
    kind = subschema.get("type")
    if isinstance(kind, str):
        return _TYPE_WORDS.get(kind, kind)
    if "enum" in subschema:
        return "one of " + ", ".join(f"`{v}`" for v in subschema["enum"])
    return "a different value"


def schema_diagnostics(doc: yamlsafe.Document) -> Iterator[Diagnostic]:
    """A diagnostic, in our words, for everything in the document the JSON Schema rejects."""
    for error in _validator().iter_errors(doc.data):
        yield from _map_error(doc, error)


def _map_error(doc: yamlsafe.Document, error: Any) -> Iterator[Diagnostic]:
    path = tuple(error.absolute_path)
    validator = error.validator
    instance = error.instance
    sub = error.schema if isinstance(error.schema, dict) else {}
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed = list(sub.get("properties", {}))
        for key in instance:
            if key not in allowed:
                yield doc.diagnostic(
                    path + (key,),
                    "schema.unknown-field",
                    f"unknown field `{key}`{did_you_mean(str(key), allowed)}"
                    + (
                        ""
                        if did_you_mean(str(key), allowed)
                        else f" (expected one of: {', '.join(allowed)})"
                    ),
                    key=True,
                )
        return
    if validator == "required" and isinstance(instance, dict):
        for name in error.validator_value:
            if name not in instance:
                yield doc.diagnostic(
                    path, "schema.required", f"missing required field `{name}`", key=True
                )
        return
    if "propertyNames" in error.relative_schema_path:
        # jsonschema reports the failing keyword (pattern, maxLength) with the key as instance.
        key = instance
        yield doc.diagnostic(
            path + (key,), "schema.name", f"{value_text(key)} is not {_expected(sub)}", key=True
        )
        return
    if validator in ("anyOf", "oneOf"):
        branches = [b for b in error.validator_value if isinstance(b, dict)]
        same_type = [
            b
            for b in branches
            if _json_type(instance) == b.get("type")
            or (
                b.get("type") == "number"
                and isinstance(instance, int)
                and not isinstance(instance, bool)
            )
        ]
        if len(same_type) > 1 and isinstance(instance, dict):
            same_type = [b for b in same_type if set(b.get("required", ())) <= set(instance)]
        if len(same_type) == 1 and error.context:
            index = branches.index(same_type[0])
            inner_errors = [e for e in error.context if e.schema_path and e.schema_path[0] == index]
            if inner_errors:
                for inner in inner_errors:
                    yield from _map_error(doc, inner)
                return
        yield doc.diagnostic(
            path, "schema.type", f"expected {_expected(sub)}, got {value_text(instance)}"
        )
        return
    if validator == "type":
        yield doc.diagnostic(
            path, "schema.type", f"expected {_expected(sub)}, got {value_text(instance)}"
        )
        return
    if validator == "enum":
        choices = [str(v) for v in error.validator_value]
        hint = did_you_mean(str(instance), choices) if isinstance(instance, str) else ""
        yield doc.diagnostic(
            path, "schema.enum", f"{value_text(instance)} is not one of: {', '.join(choices)}{hint}"
        )
        return
    if validator == "const":
        yield doc.diagnostic(
            path, "schema.const", f"must be `{error.validator_value}`, got {value_text(instance)}"
        )
        return
    if validator == "pattern":
        yield doc.diagnostic(
            path, "schema.pattern", f"{value_text(instance)} is not {_expected(sub)}"
        )
        return
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "more than",
            "exclusiveMaximum": "less than",
        }
        yield doc.diagnostic(
            path,
            "schema.range",
            f"{value_text(instance)} must be {words[validator]} {error.validator_value}",
        )
        return
    if validator in (
        "maxLength",
        "minLength",
        "maxItems",
        "minItems",
        "maxProperties",
        "minProperties",
    ):
        limit = error.validator_value
        what = {
            "maxLength": "characters",
            "minLength": "characters",
            "maxItems": "items",
            "minItems": "items",
            "maxProperties": "entries",
            "minProperties": "entries",
        }[validator]
        bound = "at most" if validator.startswith("max") else "at least"
        yield doc.diagnostic(path, "schema.size", f"must have {bound} {limit} {what}")
        return
    if validator == "uniqueItems":
        yield doc.diagnostic(path, "schema.unique", "items must not repeat")
        return
    yield doc.diagnostic(path, f"schema.{validator}", " ".join(str(error.message).split())[:200])
