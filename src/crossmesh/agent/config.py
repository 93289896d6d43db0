"""The agent's configuration as typed data, built in one place for the lab's agents and `crossmesh
agent`, and read back from the JSON file the lab writes (checked field by field: a file on disk is
input like any other).

Where the agent learns what the mesh plans (its `intent_source`):
- `inline`: `crossmesh agent MESH` compiled the mesh file; the plan of every node is in the configuration;
- `file`:   the lab writes the plan of every node to a file and rewrites it on membership changes;
- `etcd`:   the operator publishes one intent per node under `intents/` (`crossmesh agent --mesh NAME`):
            no mesh file, no allocation state, only the node's own key on disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Literal, get_args

from crossmesh.agent import records
from crossmesh.errors import CrossmeshError
from crossmesh.kv.layout import Layout
from crossmesh.model.mesh import duration_seconds
from crossmesh.observe.metrics import AGENT_PORT
from crossmesh.workspace import Compiled

IntentSource = Literal["inline", "file", "etcd"]
DEFAULT_METRICS = f":{AGENT_PORT}"  # every address of the node, Cilium agent's port


class ConfigError(CrossmeshError):
    """An agent configuration that is not one."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    mesh: str
    namespace: str | None  # the lab's node namespace; None on a real node
    ifname: str
    etcd: tuple[str, ...]
    ttl: int  # lease TTL, seconds
    private_key_path: Path
    status: Path
    wireguard_log: Path
    intent_source: IntentSource
    # inline and file: what the mesh file plans for this node; etcd: None (its intent says)
    record: dict[str, Any] | None = None  # this node's record (records.NodeRecord fields)
    keepalive: int | None = None
    mtu: int | None = None  # the tunnel device's
    intent: dict[str, dict[str, Any]] | None = None  # inline: every node's records.PlannedNode fields
    intent_path: Path | None = None  # file
    tls: dict[str, str] | None = None  # ca, cert, key
    key_rotation: int | None = None  # inline and file: spec.wireguard.keyRotation in seconds (etcd: the intent's)
    metrics: str = DEFAULT_METRICS  # where /metrics listens: HOST:PORT, :PORT (every address), or off (port 0 too)

    def __post_init__(self) -> None:
        if self.intent_source not in get_args(IntentSource):
            raise ConfigError(f"agent configuration: intentSource {self.intent_source!r} is not inline, file or etcd")
        planned: dict[str, object] = {"record": self.record, "keepalive": self.keepalive, "mtu": self.mtu}
        wanted: dict[str, object] = {
            "inline": {**planned, "intent": self.intent},
            "file": {**planned, "intentPath": self.intent_path},
            "etcd": {},
        }[self.intent_source]
        for name, value in wanted.items():
            if value is None:
                raise ConfigError(f"agent configuration: {name} is needed with intentSource {self.intent_source}")
        given = {**planned, "intent": self.intent, "intentPath": self.intent_path}
        for name, value in given.items():
            if name not in wanted and value is not None:
                raise ConfigError(f"agent configuration: {name} is not read with intentSource {self.intent_source}")
        if self.key_rotation is not None and self.intent_source == "etcd":
            raise ConfigError("agent configuration: keyRotation is not read with intentSource etcd")
        if self.tls is not None and sorted(self.tls) != ["ca", "cert", "key"]:
            raise ConfigError("agent configuration: tls needs exactly ca, cert and key")
        _ = self.metrics_listen  # checked here, not when the agent starts serving

    @property
    def metrics_listen(self) -> tuple[str, int] | None:
        """(host, port) /metrics listens on ("" host: every address); None when off."""
        return listen_address(self.metrics)

    @property
    def layout(self) -> Layout:
        return Layout(self.mesh)

    @property
    def prefix(self) -> str:
        """The etcd prefix of the mesh's node records."""
        return self.layout.nodes.decode()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node,
            "mesh": self.mesh,
            "namespace": self.namespace,
            "ifname": self.ifname,
            "etcd": list(self.etcd),
            "prefix": self.prefix,  # read by people and tests, never back
            "ttl": self.ttl,
            "privateKeyPath": str(self.private_key_path),
            "status": str(self.status),
            "wireguardLog": str(self.wireguard_log),
            "intentSource": self.intent_source,
        }
        optional = {
            "record": self.record,
            "keepalive": self.keepalive,
            "mtu": self.mtu,
            "intent": self.intent,
            "intentPath": None if self.intent_path is None else str(self.intent_path),
            "tls": self.tls,
            "keyRotation": self.key_rotation,
        }
        out["metricsAddress"] = self.metrics
        return out | {k: v for k, v in optional.items() if v is not None}

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
        intent_path = get("intentPath", str, optional=True)
        tls = get("tls", dict, optional=True)
        if tls is not None and not all(isinstance(v, str) for v in tls.values()):
            raise ConfigError("agent configuration: tls must map ca, cert and key to paths")
        return cls(
            node=get("node", str),
            mesh=get("mesh", str),
            namespace=get("namespace", str, optional=True),
            ifname=get("ifname", str),
            etcd=tuple(etcd),
            ttl=get("ttl", int),
            private_key_path=Path(get("privateKeyPath", str)),
            status=Path(get("status", str)),
            wireguard_log=Path(get("wireguardLog", str)),
            intent_source=get("intentSource", str),
            record=get("record", dict, optional=True),
            keepalive=get("keepalive", int, optional=True),
            mtu=get("mtu", int, optional=True),
            intent=get("intent", dict, optional=True),
            intent_path=None if intent_path is None else Path(intent_path),
            tls=tls,
            key_rotation=get("keyRotation", int, optional=True),
            metrics=get("metricsAddress", str, optional=True) or DEFAULT_METRICS,
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
    metrics: str = DEFAULT_METRICS,
) -> AgentConfig:
    """What `crossmesh.agent.daemon.Agent` runs with from a compiled mesh file. The intent — what the
    mesh plans for every node, which records are held to — is inline (a real node's mesh file) or a
    file the lab rewrites on membership changes (`intent_path`)."""
    planned = compiled.plan.node(node)
    if planned.tunnel is None:
        raise ValueError(f"node {node} has no tunnel: it runs no agent")
    return AgentConfig(
        node=node,
        mesh=compiled.plan.mesh,
        namespace=namespace,
        ifname=ifname,
        etcd=tuple(etcd),
        ttl=ttl,
        private_key_path=compiled.store.private_key_path(node),
        status=status,
        wireguard_log=wireguard_log,
        intent_source="inline" if intent_path is None else "file",
        record=records.record_of(planned, compiled.store.public_keys([node])[node]),
        keepalive=compiled.loaded.mesh.spec.wireguard.persistent_keepalive,
        mtu=planned.tunnel.mtu.value,
        intent=None
        if intent_path is not None
        else {name: asdict(p) for name, p in records.intent_of(compiled.plan).items()},
        intent_path=intent_path,
        tls=tls,
        key_rotation=duration_seconds(rotation)
        if (rotation := compiled.loaded.mesh.spec.wireguard.key_rotation)
        else None,
        metrics=metrics,
    )


def etcd_fed(
    node: str,
    mesh: str,
    *,
    namespace: str | None,
    ifname: str,
    etcd: list[str],
    ttl: int,
    state: Path,
    private_key_path: Path,
    tls: dict[str, str] | None = None,
    metrics: str = DEFAULT_METRICS,
) -> AgentConfig:
    """The configuration of an agent that follows the operator's intents in etcd: its state folder
    holds its own key, its status file and the device's log (the lab's wireguard-go)."""
    return AgentConfig(
        node=node,
        mesh=mesh,
        namespace=namespace,
        ifname=ifname,
        etcd=tuple(etcd),
        ttl=ttl,
        private_key_path=private_key_path,
        status=state / f"agent-{node}.status.json",
        wireguard_log=state / f"wireguard-{node}.log",
        intent_source="etcd",
        tls=tls,
        metrics=metrics,
    )


def listen_address(value: str) -> tuple[str, int] | None:
    """`HOST:PORT` or `:PORT` (every address) → (host, port); `off` or port 0 → None (not served)."""
    if value == "off":
        return None
    host, colon, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    ok = bool(colon) and port.isdigit() and int(port) <= 65535
    if ok and host:
        try:
            ip_address(host)
        except ValueError:
            ok = False
    if not ok:
        raise ConfigError(
            f"agent configuration: metricsAddress {value!r} is not HOST:PORT, :PORT or off "
            f"(e.g. 10.0.0.5:{AGENT_PORT}, :{AGENT_PORT})"
        )
    return None if int(port) == 0 else (host, int(port))
