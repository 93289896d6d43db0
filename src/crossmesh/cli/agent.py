"""`crossmesh agent`: the control-plane agent of one real node, against an existing etcd."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import typer

from crossmesh.cli.common import friendly
from crossmesh.errors import UsageError
from crossmesh.observe.metrics import AGENT_PORT
from crossmesh.state.store import StateStore
from crossmesh.workspace import compile_mesh

if TYPE_CHECKING:
    from crossmesh.agent.config import AgentConfig


def require_agent_extra() -> None:
    """The agent's etcd client is an extra (`crossmesh[agent]`): name it when it is missing."""
    if importlib.util.find_spec("aetcd") is None:
        raise UsageError("the agent needs its etcd client, which is not installed — pip install 'crossmesh[agent]'")


DEFAULT_STATE = Path("/var/lib/crossmesh")  # an etcd-fed agent's key, status and device log
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
METRICS_ADDRESS = f":{AGENT_PORT}"  # every address, Cilium agent's port (agent config: metricsAddress)


@friendly
def agent(
    mesh: Path | None = typer.Argument(
        None, help="the mesh file; leave it out to follow the operator's intents in etcd (--mesh)", show_default=False
    ),
    node: str = typer.Option(..., "--node", help="this node's name in the mesh"),
    mesh_name: str | None = typer.Option(
        None, "--mesh", help="the mesh's name (metadata.name), without a mesh file: its intents come from etcd"
    ),
    etcd_endpoints: str = typer.Option(
        ..., "--etcd-endpoints", help="comma-separated etcd client URLs, e.g. https://10.0.0.10:2379,https://..."
    ),
    cacert: Path | None = typer.Option(None, "--cacert", help="CA bundle of the etcd servers (TLS)"),
    cert: Path | None = typer.Option(None, "--cert", help="client certificate for etcd (TLS)"),
    key: Path | None = typer.Option(None, "--key", help="client private key for etcd (TLS)"),
    interface: str = typer.Option("wg-crossmesh", "--interface", help="the WireGuard device (wg-quick up first)"),
    lease_ttl: int = typer.Option(10, "--lease-ttl", min=1, max=600, help="etcd lease TTL in seconds"),
    state: Path | None = typer.Option(
        None,
        "--state",
        help=f"state directory holding this node's private key (with --mesh: default {DEFAULT_STATE})",
    ),
    namespace: str | None = typer.Option(None, "--netns", help="network namespace of the device (default: host)"),
    metrics_address: str = typer.Option(
        METRICS_ADDRESS,
        "--metrics-address",
        help="where /metrics listens: HOST:PORT, :PORT (every address) or off",
    ),
    insecure_plaintext: bool = typer.Option(
        False,
        "--insecure-plaintext",
        help="allow http:// endpoints: anyone on the path can read and rewrite node records (tests only)",
    ),
) -> None:
    """Run this node's agent: publish its record under an etcd lease, watch the other nodes and keep
    the WireGuard peers and routes of the device equal to what they publish. Runs until stopped.

    With a mesh file, records are held to what that file plans. With --mesh NAME and no file, the
    agent follows the operator's intents in etcd (`intents/<node>`), needs no allocation state and
    reports what it runs under `status/<node>`. Either way the private key stays in the node's
    state directory (its own key only); etcd gets public keys only.
    """
    require_agent_extra()
    from crossmesh.agent.config import ConfigError, listen_address
    from crossmesh.agent.daemon import Agent  # the agent's stack (gRPC, netlink) loads only when it runs

    endpoints, files = etcd_access(etcd_endpoints, cacert, cert, key, insecure_plaintext)
    if (mesh is None) == (mesh_name is None):
        raise UsageError("give the mesh file, or --mesh NAME to follow the operator's intents in etcd (not both)")
    try:
        listen_address(metrics_address)
    except ConfigError as err:  # it names the configuration's field; the user typed the flag
        raise UsageError(f"--metrics-address {metrics_address!r} is not HOST:PORT, :PORT or off (e.g. :9962)") from err
    where = Where(
        interface=interface, namespace=namespace, etcd=endpoints, ttl=lease_ttl, tls=files, metrics=metrics_address
    )
    if mesh_name is not None:
        cfg = etcd_fed_config(node, mesh_name, state or DEFAULT_STATE, where)
    else:
        assert mesh is not None  # noqa: S101 - one of the two, checked above
        cfg = mesh_file_config(mesh, node, state, where)
    asyncio.run(Agent(cfg).run())


@dataclass(frozen=True, slots=True)
class Where:
    """What every agent takes from the command line: its device and its etcd."""

    interface: str
    namespace: str | None
    etcd: list[str]
    ttl: int
    tls: dict[str, str] | None
    metrics: str = METRICS_ADDRESS  # where /metrics listens (agent config: metricsAddress)


def mesh_file_config(mesh: Path, node: str, state: Path | None, where: Where) -> AgentConfig:
    """The agent of a mesh file: compiled with the local state (only this node's key made or read).
    Records that do not match what this mesh plans are refused (a node may change only its key
    and endpoint): the mesh file is the trusted intent, inline in the configuration."""
    from crossmesh.agent import config as agent_config

    compiled = compile_mesh(mesh, state, only_key=node)
    try:
        planned = compiled.plan.node(node)
    except KeyError:
        raise UsageError(f"no node {node} in {mesh}") from None
    if planned.tunnel is None:
        raise UsageError(
            f"node {node} has no tunnel: under topology gateways its routes follow the site's active gateway, "
            f"which the operator publishes — run its agent from etcd (`crossmesh agent --mesh {compiled.plan.mesh} "
            f"--node {node} --etcd-endpoints …`)"
        )
    return agent_config.build(
        compiled,
        node,
        namespace=where.namespace,
        ifname=where.interface,
        etcd=where.etcd,
        ttl=where.ttl,
        status=compiled.store.root / f"agent-{node}.status.json",
        wireguard_log=compiled.store.root / f"wireguard-{node}.log",
        tls=where.tls,
        metrics=where.metrics,
    )


def etcd_fed_config(node: str, mesh: str, state: Path, where: Where) -> AgentConfig:
    """The agent of a node the operator drives: its own private key made in `state` (0600, by the
    state store, the one writer of keys) if it has none — never another node's — and nothing else."""
    from crossmesh.agent import config as agent_config

    for flag, value in (("--node", node), ("--mesh", mesh)):
        if not _NAME.fullmatch(value):
            raise UsageError(f"{flag} {value!r} is not a DNS-1123 name (lower-case letters, digits and '-')")
    store = StateStore(state)
    store.ensure_keys([node])
    return agent_config.etcd_fed(
        node,
        mesh,
        namespace=where.namespace,
        ifname=where.interface,
        etcd=where.etcd,
        ttl=where.ttl,
        state=state,
        private_key_path=store.private_key_path(node),
        tls=where.tls,
        metrics=where.metrics,
    )


def etcd_access(
    endpoints: str, cacert: Path | None, cert: Path | None, key: Path | None, plaintext: bool
) -> tuple[list[str], dict[str, str] | None]:
    """The endpoints and the TLS files (ca, cert, key) the etcd flags give, refusing what would
    weaken the connection: one place for the agent, apply, diff, status and the operator."""
    tls = [cacert, cert, key]
    if any(tls) and not all(tls):
        raise UsageError("TLS needs --cacert, --cert and --key together")
    urls = etcd_urls(endpoints, tls=all(tls), insecure=plaintext)
    for flag, path in zip(("--cacert", "--cert", "--key"), tls, strict=True):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    return urls, {"ca": str(cacert), "cert": str(cert), "key": str(key)} if all(tls) else None


def etcd_urls(text: str, *, tls: bool, insecure: bool) -> list[str]:
    """`--etcd-endpoints` → `scheme://host:port` URLs, refusing what would silently weaken the
    agent: an https:// endpoint without the TLS flags (it would be dialled in plaintext), http://
    with them, and http:// at all unless asked for by name."""
    urls = []
    for item in (e.strip() for e in text.split(",")):
        if not item:
            continue
        parsed = urlsplit(item if "://" in item else f"//{item}")
        try:
            port = parsed.port or 2379
        except ValueError:
            port = 0
        well_formed = parsed.scheme in ("", "http", "https") and parsed.path in ("", "/") and port
        if not well_formed or not parsed.hostname:
            raise UsageError(f"--etcd-endpoints: {item!r} is not a URL like https://10.0.0.10:2379")
        scheme = parsed.scheme or ("https" if tls else "http")
        if scheme == "https" and not tls:
            raise UsageError(
                f"--etcd-endpoints: {item} is https but no client certificate was given — "
                "add --cacert, --cert and --key"
            )
        if scheme == "http" and tls:
            raise UsageError(f"--etcd-endpoints: {item} is http:// while TLS flags are given — write https://")
        if scheme == "http" and not insecure:
            raise UsageError(
                f"--etcd-endpoints: {item} is plaintext: anyone on the path could read and rewrite node records — "
                "use https:// with --cacert, --cert and --key (or --insecure-plaintext for a test etcd)"
            )
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        urls.append(f"{scheme}://{host}:{port}")
    if not urls:
        raise UsageError("--etcd-endpoints names no endpoint")
    return urls
