"""The pipeline manifest: its typed model, and validation (JSON Schema plus graph rules).

Imports neither Metaflow nor Prefect: `mfprefect validate` and `graph` run from this package alone.
One job a module, each importing its siblings directly (never this file):

- `model`: the frozen dataclasses and `from_data`.
- `json_schema`: the JSON Schema file, and jsonschema's errors as diagnostics.
- `rules`: what the schema cannot express (the step graph, parameters, schedule, triggers, ...).
- `check`: files and text to diagnostics and a `Manifest` (`check_file`, `check_text`, `load`).

This file only gathers their public names, so callers import them from `mfprefect.manifest`.
"""

from __future__ import annotations

from .check import (
    check_file,
    check_text,
    diagnostic_at,
    file_sha256,
    load,
    validate_data,
    validate_document,
    with_executor,
)
from .json_schema import SCHEMA_NAME, schema, schema_path
from .model import (
    API_VERSION,
    KIND,
    PARAMETER_TYPES,
    STEP_KINDS,
    UNMANAGEABLE,
    CodeSource,
    Deployment,
    EnvRef,
    EnvValue,
    EventTrigger,
    Executor,
    FlowFinishedTrigger,
    Manifest,
    ParameterSpec,
    Project,
    Resources,
    Retries,
    RuntimeSettings,
    Schedule,
    SecretRef,
    StepSpec,
    from_data,
)
from .rules import REMOTE_DATASTORES, RESERVED_ENV_PREFIXES, RESERVED_PARAMETER, runtime_warnings

__all__ = [
    "API_VERSION",
    "KIND",
    "PARAMETER_TYPES",
    "REMOTE_DATASTORES",
    "RESERVED_ENV_PREFIXES",
    "RESERVED_PARAMETER",
    "SCHEMA_NAME",
    "STEP_KINDS",
    "UNMANAGEABLE",
    "CodeSource",
    "Deployment",
    "EnvRef",
    "EnvValue",
    "EventTrigger",
    "Executor",
    "FlowFinishedTrigger",
    "Manifest",
    "ParameterSpec",
    "Project",
    "Resources",
    "Retries",
    "RuntimeSettings",
    "Schedule",
    "SecretRef",
    "StepSpec",
    "check_file",
    "check_text",
    "diagnostic_at",
    "file_sha256",
    "from_data",
    "load",
    "runtime_warnings",
    "schema",
    "schema_path",
    "validate_data",
    "validate_document",
    "with_executor",
]
