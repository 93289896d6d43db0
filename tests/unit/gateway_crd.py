"""Gateway API's standard CRD schemas (tests/reference/gateway-api/v1.6.1/standard/) as JSON-schema
validators, closed as strict field validation treats them (as `istio_crd`). CEL rules are not run:
the parser's own tests cover what they refuse."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[1] / "reference" / "gateway-api" / "v1.6.1" / "standard"
FILES = ("gateway.networking.k8s.io_gateways.yaml", "gateway.networking.k8s.io_httproutes.yaml")


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@functools.cache
def validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(kind, apiVersion) → a validator of the whole object."""
    out = {}
    for name in FILES:
        doc = yaml.safe_load((CRDS / name).read_text())
        kind, group = doc["spec"]["names"]["kind"], doc["spec"]["group"]
        for version in doc["spec"]["versions"]:
            body = _closed(version["schema"]["openAPIV3Schema"])
            body["properties"] |= {
                "apiVersion": {"type": "string", "enum": [f"{group}/{version['name']}"]},
                "kind": {"type": "string", "enum": [kind]},
                "metadata": {"type": "object"},
            }
            body["properties"].pop("status", None)
            body["required"] = ["apiVersion", "kind", "metadata"]
            out[(kind, f"{group}/{version['name']}")] = jsonschema.Draft7Validator(body)
    return out


def schema_problems(obj: dict[str, Any]) -> list[str]:
    validator = validators().get((obj.get("kind", ""), obj.get("apiVersion", "")))
    if validator is None:
        return [f"no CRD for {obj.get('kind')} {obj.get('apiVersion')}"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(object)'}: {e.message[:160]}" for e in validator.iter_errors(obj)
    ]
