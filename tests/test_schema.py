"""The JSON Schema itself: valid Draft 2020-12, closed objects, and the examples pass it as-is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from mfprefect import manifest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "schema" / "pipeline-v1.schema.json"


def _objects(node: Any, where: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            found.append((where, node))
        for key, value in node.items():
            found += _objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _objects(value, f"{where}/{i}")
    return found


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_checkout_validates_against_schema_directory() -> None:
    assert manifest.schema_path() == SCHEMA_FILE
    assert manifest.schema() == json.loads(SCHEMA_FILE.read_text())


def test_every_object_is_closed() -> None:
    """additionalProperties: false everywhere; maps keyed by name constrain their values instead."""
    schema = json.loads(SCHEMA_FILE.read_text())
    for where, node in _objects(schema):
        if where.endswith("/if"):
            continue  # a condition, not a shape
        if "additionalProperties" in node:
            assert node["additionalProperties"] is False or isinstance(
                node["additionalProperties"], dict
            ), where
            if isinstance(node["additionalProperties"], dict):
                assert "propertyNames" in node, f"{where}: a name-keyed map must constrain its keys"
            continue
        # The kind unions (the manifest itself, triggers, deployment.code): closed by each `kind`
        # branch, which they must route every kind to.
        unions = ("#", "#/$defs/trigger", "#/$defs/code", "#/$defs/executor")
        assert where in unions, f"{where} is open"
        kinds = node["properties"]["kind"]["enum"]
        routed = [branch["if"]["properties"]["kind"]["const"] for branch in node["allOf"]]
        assert sorted(kinds) == sorted(routed)
        for branch in node["allOf"]:
            target = schema["$defs"][branch["then"]["$ref"].split("/")[-1]]
            assert target["additionalProperties"] is False


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_examples_pass_a_plain_schema_validator(path: Path) -> None:
    """Independent of our own reader: the stock jsonschema validator accepts each example."""
    data = json.loads(json.dumps(YAML(typ="safe").load(path.read_text())))
    errors = list(Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).iter_errors(data))
    assert errors == []


def test_the_fields_a_manifest_may_leave_to_the_ui_are_the_ones_plan_knows() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    unmanaged = schema["$defs"]["pipeline"]["properties"]["deployment"]["properties"]["unmanaged"]
    assert tuple(unmanaged["items"]["enum"]) == manifest.UNMANAGEABLE
    assert "unmanaged" not in schema["$defs"]["pipeline"]["properties"]["deployment"]["required"]
