"""Istio's CRD schemas (tests/reference/istio/1.30.3/crd-all.gen.yaml) as JSON-schema validators.

The API server prunes unknown fields and `kubectl apply` with strict field validation refuses
them; jsonschema alone would let them through, so every object schema with `properties` and no
`additionalProperties` is closed here, as strict validation treats it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[1] / "reference" / "istio" / "1.30.3" / "crd-all.gen.yaml"


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
    assert CRDS.exists(), f"{CRDS} is missing (see tests/reference/SOURCES.md)"
    out = {}
    for doc in yaml.safe_load_all(CRDS.read_text()):
        if not doc or doc["spec"]["names"]["kind"] not in ("AuthorizationPolicy", "PeerAuthentication"):
            continue
        kind = doc["spec"]["names"]["kind"]
        for version in doc["spec"]["versions"]:
            body = _closed(version["schema"]["openAPIV3Schema"])
            body["properties"] |= {
                "apiVersion": {"type": "string", "enum": [f"{doc['spec']['group']}/{version['name']}"]},
                "kind": {"type": "string", "enum": [kind]},
                "metadata": {"type": "object"},
            }
            body["required"] = ["apiVersion", "kind", "metadata"]
            out[(kind, f"{doc['spec']['group']}/{version['name']}")] = jsonschema.Draft7Validator(body)
    return out


def schema_problems(obj: dict[str, Any]) -> list[str]:
    validator = validators().get((obj.get("kind", ""), obj.get("apiVersion", "")))
    if validator is None:
        return [f"no CRD for {obj.get('kind')} {obj.get('apiVersion')}"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(object)'}: {e.message[:160]}" for e in validator.iter_errors(obj)
    ]
