"""Mesh data with hubs and VPN connections for the VPN model and plan tests: seed 001's values (the
test mesh tests/meshes/hybrid-tgw) and variations built from them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from crossmesh.ipam.allocate import Allocations, allocate
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import Mesh
from crossmesh.model.plan import Plan
from crossmesh.plan.planner import build_plan
from crossmesh.validate import rules

HYBRID = Path(__file__).resolve().parents[1] / "meshes" / "hybrid-tgw" / "mesh.yaml"


def hybrid() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(HYBRID.read_text())
    return data


def with_gcp(data: dict[str, Any]) -> dict[str, Any]:
    """A third site, GCP, outside the hub: it keeps WireGuard with both others. Its cluster is Cilium,
    so the hybrid cluster turns Cilium too (Flannel cannot reach a WireGuard site)."""
    out = copy.deepcopy(data)
    out["spec"]["sites"].append({"name": "gcp", "provider": "gcp", "network": "10.200.0.0/16", "mtu": 1460})
    cluster = out["spec"]["clusters"][0]
    cluster["cni"] = "cilium"
    cluster["nodes"][0]["publicAddress"] = "198.51.100.190"
    cluster["nodes"].append({"name": "gcp-1", "site": "gcp", "address": "10.200.0.5", "publicAddress": "203.0.113.5"})
    return out


def with_gateways(data: dict[str, Any]) -> dict[str, Any]:
    """`with_gcp`'s mesh under `topology: gateways`: one gateway a site (openstack-master, the AWS node
    made public, gcp-1); openstack-worker routes through its site's gateway."""
    out = copy.deepcopy(data)
    out["spec"]["wireguard"] = {"topology": "gateways"}
    for n in out["spec"]["clusters"][0]["nodes"]:
        n["gateway"] = n["name"] in ("openstack-master", "aws-worker-1", "gcp-1")
        if n["name"] == "aws-worker-1":
            n["publicAddress"] = "203.0.113.69"
    return out


def spokes(data: dict[str, Any]) -> dict[str, Any]:
    """A second customer site, `branch`, with its own connection to the same hub (default route table)."""
    out = copy.deepcopy(data)
    out["spec"]["sites"].append({"name": "branch", "provider": "baremetal", "network": "10.50.0.0/24"})
    out["spec"]["hubs"][0].pop("routeTables")
    out["spec"]["vpnConnections"].append(
        {
            "name": "branch-vpn",
            "hub": "tgw",
            "site": "branch",
            "customerGateway": {"asn": 65001, "publicAddress": "203.0.113.50"},
            "tunnels": [{"insideCIDR": "169.254.30.0/30"}, {"insideCIDR": "169.254.40.0/30"}],
        }
    )
    out["spec"]["clusters"][0]["nodes"].append({"name": "branch-1", "site": "branch", "address": "10.50.0.10"})
    return out


def problems_of(data: dict[str, Any]) -> list[str]:
    """The rules' problems (the schema must accept `data`)."""
    mesh = Mesh.model_validate(data)
    return [str(p) for p in rules.check(mesh, Document("mesh.yaml", data))]


def plan_of(data: dict[str, Any]) -> Plan:
    mesh = Mesh.model_validate(data)
    problems = rules.check(mesh, Document("mesh.yaml", data))
    assert problems == [], [str(p) for p in problems]
    alloc, alloc_problems = allocate(mesh, Allocations())
    assert alloc_problems == []
    return build_plan(mesh, alloc, {n.name: f"pub-{n.name}" for c in mesh.spec.clusters for n in c.nodes})
