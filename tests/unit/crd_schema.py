"""Upstream CRD schemas as strict JSON-schema validators, for the tests of the objects crossmesh reads
and renders (Istio's, Gateway API's).

The API server prunes unknown fields and `kubectl apply` with strict field validation refuses them;
jsonschema alone would let them through, so every object schema with `properties` and no
`additionalProperties` is closed here, as strict validation treats it. CEL rules are not run: the
parsers' own tests cover what they refuse."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import jsonschema

Validators = dict[tuple[str, str], jsonschema.protocols.Validator]  # (kind, apiVersion) → validator


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def strict_validators(crds: Iterable[Any], kinds: Collection[str]) -> Validators:
    """A validator of the whole object for every version of each CRD of `kinds` in `crds`."""
    out: Validators = {}
    for doc in crds:
        if not doc or doc["spec"]["names"]["kind"] not in kinds:
            continue
        kind, group = doc["spec"]["names"]["kind"], doc["spec"]["group"]
        for version in doc["spec"]["versions"]:
            api = f"{group}/{version['name']}"
            body = _closed(version["schema"]["openAPIV3Schema"])
            body["properties"] |= {
                "apiVersion": {"type": "string", "enum": [api]},
                "kind": {"type": "string", "enum": [kind]},
                "metadata": {"type": "object"},
            }
            body["properties"].pop("status", None)  # what a user writes, never the controller's status
            body["required"] = ["apiVersion", "kind", "metadata"]
            out[(kind, api)] = jsonschema.Draft7Validator(body)
    return out


def problems(validators: Validators, obj: dict[str, Any]) -> list[str]:
    """What the CRD refuses in `obj`, one line per error ("no CRD …" when none serves it)."""
    validator = validators.get((obj.get("kind", ""), obj.get("apiVersion", "")))
    if validator is None:
        return [f"no CRD for {obj.get('kind')} {obj.get('apiVersion')}"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(object)'}: {e.message[:160]}" for e in validator.iter_errors(obj)
    ]
