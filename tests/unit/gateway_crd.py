"""Gateway API's standard CRD schemas (tests/reference/gateway-api/v1.6.1/standard/) as strict
JSON-schema validators (crd_schema.py)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from crd_schema import Validators, problems, strict_validators

CRDS = Path(__file__).resolve().parents[1] / "reference" / "gateway-api" / "v1.6.1" / "standard"
FILES = ("gateway.networking.k8s.io_gateways.yaml", "gateway.networking.k8s.io_httproutes.yaml")


@functools.cache
def validators() -> Validators:
    return strict_validators((yaml.safe_load((CRDS / f).read_text()) for f in FILES), ("Gateway", "HTTPRoute"))


def schema_problems(obj: dict[str, Any]) -> list[str]:
    return problems(validators(), obj)
