"""The agent's configuration as typed data, built in one place for the lab's agents and `crossmesh
agent`, and read back from the JSON file the lab writes (checked field by field: a file on disk is
input like any other)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crossmesh.agent import records
from crossmesh.errors import CrossmeshError
from crossmesh.workspace import Compiled


class ConfigError(CrossmeshError):
    """An agent configuration that is not one."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    namespace: str | None  # the lab's node namespace; None on a real node
    ifname: str
    etcd: tuple[str, ...]
    prefix: str  # the etcd prefix of the mesh's node records
    ttl: int  # lease TTL, seconds
    keepalive: int
    mtu: int  # the tunnel device's
    private_key_path: Path
    status: Path
    wireguard_log: Path
    record: dict[str, Any]  # this node's record (records.NodeRecord fields)
    intent: dict[str, dict[str, Any]] | None  # inline, or read from intent_path
    intent_path: Path | None
    tls: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node,
            "namespace": self.namespace,
            "ifname": self.ifname,
            "etcd": list(self.etcd),
            "prefix": self.prefix,
            "ttl": self.ttl,
            "keepalive": self.keepalive,
            "mtu": self.mtu,
            "privateKeyPath": str(self.private_key_path),
            "status": str(self.status),
            "wireguardLog": str(self.wireguard_log),
            "record": self.record,
        }
        if self.intent is not None:
            out["intent"] = self.intent
        if self.intent_path is not None:
            out["intentPath"] = str(self.intent_path)
        if self.tls is not None:
            out["tls"] = self.tls
        return out

    @classmethod
    def from_json(cls, data: Any) -> AgentConfig:
        """The configuration a JSON document gives; ConfigError naming the field that is wrong."""
        if not isinstance(data, dict):
            raise ConfigError("the agent configuration is not a JSON object")

        def get(key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise ConfigError(f"agent configuration: {key} must be {getattr(kind, '__name__', kind)}")
            return value

        etcd = get("etcd", list)
        if not all(isinstance(e, str) for e in etcd):
            raise ConfigError("agent configuration: etcd must be a list of URLs")
        intent, intent_path = get("intent", dict, optional=True), get("intentPath", str, optional=True)
        if (intent is None) == (intent_path is None):
            raise ConfigError("agent configuration: exactly one of intent and intentPath")
        return cls(
            node=get("node", str),
            namespace=get("namespace", str, optional=True),
            ifname=get("ifname", str),
            etcd=tuple(etcd),
            prefix=get("prefix", str),
            ttl=get("ttl", int),
            keepalive=get("keepalive", int),
            mtu=get("mtu", int),
            private_key_path=Path(get("privateKeyPath", str)),
            status=Path(get("status", str)),
            wireguard_log=Path(get("wireguardLog", str)),
            record=get("record", dict),
            intent=intent,
            intent_path=None if intent_path is None else Path(intent_path),
            tls=get("tls", dict, optional=True),
        )


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
) -> AgentConfig:
    """What `crossmesh.agent.daemon.Agent` runs with. The intent — what the mesh plans for every node,
    which records are held to — is inline (a real node's mesh file) or a file the lab rewrites on
    membership changes (`intent_path`)."""
    planned = compiled.plan.node(node)
    if planned.tunnel is None:
        raise ValueError(f"node {node} has no tunnel: it runs no agent")
    return AgentConfig(
        node=node,
        namespace=namespace,
        ifname=ifname,
        etcd=tuple(etcd),
        prefix=records.prefix(compiled.plan.mesh),
        ttl=ttl,
        keepalive=compiled.loaded.mesh.spec.wireguard.persistent_keepalive,
        mtu=planned.tunnel.mtu.value,
        private_key_path=compiled.store.private_key_path(node),
        status=status,
        wireguard_log=wireguard_log,
        record=records.record_of(planned, compiled.store.public_keys([node])[node]),
        intent=None
        if intent_path is not None
        else {name: asdict(p) for name, p in records.intent_of(compiled.plan).items()},
        intent_path=intent_path,
        tls=tls,
    )
