"""`crossmesh agent`: the control-plane agent of one real node, against an existing etcd."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from crossmesh.cli.common import friendly
from crossmesh.errors import UsageError
from crossmesh.workspace import compile_mesh


@friendly
def agent(
    mesh: Path = typer.Argument(..., help="the mesh file", show_default=False),
    node: str = typer.Option(..., "--node", help="this node's name in the mesh file"),
    etcd_endpoints: str = typer.Option(
        ..., "--etcd-endpoints", help="comma-separated etcd client URLs, e.g. https://10.0.0.10:2379,https://..."
    ),
    cacert: Path | None = typer.Option(None, "--cacert", help="CA bundle of the etcd servers (TLS)"),
    cert: Path | None = typer.Option(None, "--cert", help="client certificate for etcd (TLS)"),
    key: Path | None = typer.Option(None, "--key", help="client private key for etcd (TLS)"),
    interface: str = typer.Option("wg-crossmesh", "--interface", help="the WireGuard device (wg-quick up first)"),
    lease_ttl: int = typer.Option(10, "--lease-ttl", min=1, max=600, help="etcd lease TTL in seconds"),
    state: Path | None = typer.Option(None, "--state", help="state directory holding this node's private key"),
    namespace: str | None = typer.Option(None, "--netns", help="network namespace of the device (default: host)"),
) -> None:
    """Run this node's agent: publish its record under an etcd lease, watch the other nodes and keep
    the WireGuard peers and routes of the device equal to what they publish. Runs until stopped.

    The private key stays in the node's state directory; etcd gets public keys only.
    """
    from crossmesh.agent import records  # the agent's stack (gRPC, netlink) loads only when it runs
    from crossmesh.agent.daemon import Agent

    tls = [cacert, cert, key]
    if any(tls) and not all(tls):
        raise UsageError("TLS needs --cacert, --cert and --key together")
    compiled = compile_mesh(mesh, state)
    try:
        planned = compiled.plan.node(node)
    except KeyError:
        raise UsageError(f"no node {node} in {mesh}") from None
    if planned.tunnel is None:
        raise UsageError(f"node {node} has no tunnel in this topology: it needs no agent")
    cfg: dict[str, Any] = {
        "node": node,
        "namespace": namespace,
        "ifname": interface,
        "etcd": [e.strip() for e in etcd_endpoints.split(",") if e.strip()],
        "prefix": f"/crossmesh/{compiled.plan.mesh}/nodes/",
        "ttl": lease_ttl,
        "keepalive": compiled.loaded.mesh.spec.wireguard.persistent_keepalive,
        "mtu": planned.tunnel.mtu.value,
        "privateKeyPath": str(compiled.store.private_key_path(node)),
        "status": str(compiled.store.root / f"agent-{node}.status.json"),
        "wireguardLog": str(compiled.store.root / f"wireguard-{node}.log"),
        "record": records.record_of(planned, compiled.store.public_keys([node])[node]),
        # Records that do not match what this mesh plans are refused (a node may change only its
        # key and endpoint): the mesh file is the trusted intent.
        "intent": {name: asdict(p) for name, p in records.intent_of(compiled.plan).items()},
    }
    if all(tls):
        cfg["tls"] = {"ca": str(cacert), "cert": str(cert), "key": str(key)}
    asyncio.run(Agent(cfg).run())
