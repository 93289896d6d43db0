"""`crossmesh test`: the checks framework (checks/framework.py) with every scenario registered.

Importing this module imports every scenario module, each of which registers its builders with
the framework; callers use `Context`, `build` and `run` from here.
"""

from __future__ import annotations

from crossmesh.checks import (
    connectivity,
    failover,
    fidelity,
    gateways,
    ingress,
    ingressedge,
    ingressfailover,
    mtls,
    mtu,
    observe,
    policy,
    security,
    service_types,
    services,
    underlay,
    vpn,
    vpnfailover,
    vpnpath,
)
from crossmesh.checks.framework import CHECK_PATH, Context, Planned, Runner, Skips, build, builders, run
from crossmesh.checks.gateways import lab_view

SCENARIOS = (
    connectivity,
    failover,
    fidelity,
    gateways,
    ingress,
    ingressedge,
    ingressfailover,
    mtls,
    mtu,
    observe,
    policy,
    security,
    service_types,
    services,
    underlay,
    vpn,
    vpnpath,
    vpnfailover,
)

__all__ = [
    "CHECK_PATH",
    "SCENARIOS",
    "Context",
    "Planned",
    "Runner",
    "Skips",
    "build",
    "builders",
    "lab_view",
    "run",
]
