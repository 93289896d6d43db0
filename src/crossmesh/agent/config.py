"""The agent's configuration, built in one place for the lab's agents and `crossmesh agent`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from crossmesh.agent import records
from crossmesh.workspace import Compiled


def build(
    compiled: Compiled,
    node: str,
    *,
    namespace: str | None,
    ifname: str,
    etcd: list[str],
    ttl: int,
    status: Path,
    wireguard_log: Path,
    intent_path: Path | None = None,
    tls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What `crossmesh.agent.daemon.Agent` reads. The intent — what the mesh plans for every node,
    which records are held to — is inline (a real node's mesh file) or a file the lab rewrites on
    membership changes (`intent_path`)."""
    planned = compiled.plan.node(node)
    if planned.tunnel is None:
        raise ValueError(f"node {node} has no tunnel: it runs no agent")
    cfg: dict[str, Any] = {
        "node": node,
        "namespace": namespace,
        "ifname": ifname,
        "etcd": etcd,
        "prefix": records.prefix(compiled.plan.mesh),
        "ttl": ttl,
        "keepalive": compiled.loaded.mesh.spec.wireguard.persistent_keepalive,
        "mtu": planned.tunnel.mtu.value,
        "privateKeyPath": str(compiled.store.private_key_path(node)),
        "status": str(status),
        "wireguardLog": str(wireguard_log),
        "record": records.record_of(planned, compiled.store.public_keys([node])[node]),
    }
    if intent_path is None:
        cfg["intent"] = {name: asdict(p) for name, p in records.intent_of(compiled.plan).items()}
    else:
        cfg["intentPath"] = str(intent_path)
    if tls is not None:
        cfg["tls"] = tls
    return cfg
