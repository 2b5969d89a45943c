"""Strict validation of custom resources against the CRDs their operators serve.

The API server prunes fields a structural schema does not declare (silently, unless the
client asks for strict field validation, which `kubectl apply` does since 1.27 and fails).
Here every object schema without `additionalProperties` or
`x-kubernetes-preserve-unknown-fields` is closed, so a typo or a field the served version
dropped fails the test. The CRD files are vendored in tests/deploy/crds/ (see its README).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final

import jsonschema
import yaml

CRDS: Final = Path(__file__).with_name("crds")
Schema = dict[str, Any]

KAFKA_ACCESS_SCHEMA: Final[Schema] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["kafka"],
            "properties": {
                "kafka": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "namespace": {"type": "string"},
                        "listener": {"type": "string"},
                    },
                },
                "user": {
                    "type": "object",
                    "required": ["apiGroup", "kind", "name"],
                    "properties": {
                        "apiGroup": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "namespace": {"type": "string"},
                    },
                },
            },
        },
    },
}
"""Strimzi Access Operator `access.strimzi.io/v1alpha1` KafkaAccess, written from its
documented API (spec.kafka and spec.user); no upstream CRD file is vendored for it."""


def _crd_documents() -> Iterator[Schema]:
    for path in sorted(CRDS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                yield document


@cache
def served_schemas() -> Mapping[tuple[str, str], Schema]:
    """(apiVersion, kind) -> openAPIV3Schema, for every served version of every CRD."""
    found: dict[tuple[str, str], Schema] = {
        ("access.strimzi.io/v1alpha1", "KafkaAccess"): KAFKA_ACCESS_SCHEMA
    }
    for crd in _crd_documents():
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                api_version = f"{spec['group']}/{version['name']}"
                found[(api_version, spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return found


def strict(schema: Schema) -> Schema:
    """A copy that rejects undeclared fields and knows Kubernetes' schema extensions."""
    result: Schema = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties") and isinstance(value, dict):
            result[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            result[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            result[key] = [strict(sub) for sub in value]
        else:
            result[key] = value
    if result.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if result.pop("nullable", False) and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    closed = "properties" in result and "additionalProperties" not in result
    if closed and not result.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


def validation_errors(obj: Schema) -> list[str]:
    """Every schema violation of a rendered custom resource; [] when it is valid."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    schema = served_schemas().get(key)
    if schema is None:
        return [f"no served CRD version for {key[0]} {key[1]}"]
    validator = jsonschema.Draft7Validator(strict(schema))
    name = obj.get("metadata", {}).get("name", "?")
    return [
        f"{key[1]} {name}: {'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
