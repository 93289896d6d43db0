"""Istio's CRD schemas (tests/reference/istio/1.30.3/crd-all.gen.yaml) as strict JSON-schema
validators (crd_schema.py): the security objects crossmesh reads and the Gateway it renders."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from crd_schema import Validators, problems, strict_validators

CRDS = Path(__file__).resolve().parents[1] / "reference" / "istio" / "1.30.3" / "crd-all.gen.yaml"


@functools.cache
def validators() -> Validators:
    assert CRDS.exists(), f"{CRDS} is missing (see tests/reference/SOURCES.md)"
    return strict_validators(
        yaml.safe_load_all(CRDS.read_text()), ("AuthorizationPolicy", "PeerAuthentication", "Gateway")
    )


def schema_problems(obj: dict[str, Any]) -> list[str]:
    return problems(validators(), obj)
