"""`crossmesh apply | diff | status | operator`: the mesh as desired state in etcd.

crossmesh apply mesh.yaml --etcd-endpoints https://10.0.0.10:2379 --cacert ca.crt --cert admin.crt --key admin.key
crossmesh status --mesh three-clouds --wait ...
crossmesh operator --mesh three-clouds ...          (2+ replicas: one leads, the others stand by)
"""

from __future__ import annotations

import asyncio
import getpass
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape

from crossmesh.cli.agent import etcd_access, require_agent_extra
from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, err, friendly, out

T = TypeVar("T")

ENDPOINTS = typer.Option(
    ..., "--etcd-endpoints", help="comma-separated etcd client URLs, e.g. https://10.0.0.10:2379,https://..."
)
CACERT = typer.Option(None, "--cacert", help="CA bundle of the etcd servers (TLS)")
CERT = typer.Option(None, "--cert", help="client certificate for etcd (TLS); its common name is who etcd sees")
KEY = typer.Option(None, "--key", help="client private key for etcd (TLS)")
PLAINTEXT = typer.Option(
    False, "--insecure-plaintext", help="allow http:// endpoints: anyone on the path can rewrite the mesh (tests only)"
)


def _etcd_access(
    endpoints: str, cacert: Path | None, cert: Path | None, key: Path | None, plaintext: bool
) -> tuple[list[str], Any]:
    """The endpoints and TLS material of the etcd flags (checked as the agent checks them)."""
    require_agent_extra()
    from crossmesh.kv import etcd as kv_etcd

    urls, files = etcd_access(endpoints, cacert, cert, key, plaintext)
    return urls, kv_etcd.Tls(Path(files["ca"]), Path(files["cert"]), Path(files["key"])) if files else None


def _with_kv(
    endpoints: str, cacert: Path | None, cert: Path | None, key: Path | None, plaintext: bool
) -> Callable[[Callable[[Any], Awaitable[T]]], T]:
    """Check the etcd flags and return a runner of async work with a connected client."""
    from crossmesh.kv import etcd as kv_etcd

    urls, tls = _etcd_access(endpoints, cacert, cert, key, plaintext)

    def runner(work: Callable[[Any], Awaitable[T]]) -> T:
        async def main() -> T:
            kv = await kv_etcd.connect(urls, tls)
            try:
                return await work(kv)
            finally:
                await kv.close()

        return asyncio.run(main())

    return runner


@friendly
def apply(
    mesh: Path = typer.Argument(..., help="the mesh file (its manifests are applied with it)", show_default=False),
    etcd_endpoints: str = ENDPOINTS,
    cacert: Path | None = CACERT,
    cert: Path | None = CERT,
    key: Path | None = KEY,
    insecure_plaintext: bool = PLAINTEXT,
    who: str | None = typer.Option(None, "--as", help="who applies, recorded with the revision (default user@host)"),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Validate the mesh file and publish it (with its manifests) to etcd as the next revision.

    The operator allocates and rolls it out to the agents; `crossmesh status --wait` follows it.
    The file is validated against the allocations etcd holds, so what passes here is what the
    operator will plan. If another apply lands between the read and the write, nothing is changed
    (exit 2): run `crossmesh diff` and apply again. An unchanged mesh makes no new revision.
    """
    from crossmesh.operator import apply as ops

    run = _with_kv(etcd_endpoints, cacert, cert, key, insecure_plaintext)
    by = who or f"{getpass.getuser()}@{socket.gethostname()}"

    async def work(kv: Any) -> tuple[Any, bool]:
        return await ops.apply(kv, await ops.propose(kv, mesh), by)

    applied, new = run(work)
    if output is not Output.TABLE:
        emit({**applied.summary(), "new": new}, output)
        return
    if new:
        out.print(f"applied revision {applied.revision} of mesh {escape(applied.mesh)} ({applied.digest[:19]}…)")
    else:
        out.print(f"unchanged: mesh {escape(applied.mesh)} is at revision {applied.revision}")


@friendly
def diff(
    mesh: Path = typer.Argument(..., help="the mesh file", show_default=False),
    etcd_endpoints: str = ENDPOINTS,
    cacert: Path | None = CACERT,
    cert: Path | None = CERT,
    key: Path | None = KEY,
    insecure_plaintext: bool = PLAINTEXT,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Show what `apply` would change against the applied revision: nodes added and removed, and
    the files' differences. Exit 0 when nothing would change, 1 when something would (as
    `kubectl diff`)."""
    from crossmesh.operator import apply as ops

    run = _with_kv(etcd_endpoints, cacert, cert, key, insecure_plaintext)

    async def work(kv: Any) -> dict[str, Any]:
        return ops.diff(await ops.propose(kv, mesh))

    changes = run(work)
    if output is not Output.TABLE:
        emit(changes, output)
    else:
        base = changes["applied"]
        out.print(
            f"applied: revision {base['revision']} by {escape(base['appliedBy'])}" if base else "applied: nothing"
        )
        for what in ("added", "removed"):
            for name in changes["nodes"][what]:
                out.print(f"  node {escape(name)} {what}")
        if changes["files"]:
            sys.stdout.write(changes["files"])
        elif not changes["changed"]:
            out.print("no changes")
    raise typer.Exit(1 if changes["changed"] else 0)


@friendly
def status(
    mesh: str = typer.Option(..., "--mesh", help="the mesh's name (metadata.name)"),
    etcd_endpoints: str = ENDPOINTS,
    cacert: Path | None = CACERT,
    cert: Path | None = CERT,
    key: Path | None = KEY,
    insecure_plaintext: bool = PLAINTEXT,
    wait: bool = typer.Option(False, "--wait", help="wait until every node runs the applied revision"),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="seconds --wait waits before it gives up (exit 1)"),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Show the rollout: the applied revision, the revision the operator published, and for each
    node whether its agent is online, which revision it runs and why not. With --wait, return
    when all nodes run the applied revision (exit 0) or when --timeout passes (exit 1), as
    `cilium status --wait` does."""
    from crossmesh.operator import apply as ops

    run = _with_kv(etcd_endpoints, cacert, cert, key, insecure_plaintext)

    async def work(kv: Any) -> Any:
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while True:
            got = await ops.status(kv, mesh)
            if not wait or got.converged or time.monotonic() >= deadline:
                return got
            done = sum(1 for n in got.nodes if n.converged)
            err.print(f"waiting: {done}/{len(got.nodes)} nodes converged ({time.monotonic() - started:.0f} s)")
            await asyncio.sleep(0.5)

    got = run(work)
    if output is not Output.TABLE:
        emit(got.to_json(), output)
    else:
        _print_status(got)
    raise typer.Exit(0 if got.converged else 1)


def _print_status(got: Any) -> None:
    d, r = got.desired, got.rollout
    out.print(
        f"mesh {escape(got.mesh)}: {'[green]converged[/green]' if got.converged else '[yellow]not converged[/yellow]'}"
    )
    out.print(
        f"  applied:  {'revision ' + str(d['revision']) + ' by ' + escape(str(d.get('appliedBy'))) if d else '-'}"
    )
    out.print(f"  operator: {escape(got.leader) if got.leader else 'no leader'}", end="")
    out.print(f", published revision {r['revision']}" if r else ", nothing published")
    if r and r.get("error"):
        out.print(f"  [red]rollout error:[/red] {escape(r['error'])}")
    for site, gw in sorted(got.gateways.items()):
        out.print(f"  site {escape(site)}: active gateway {escape(gw)}")
    for n in got.nodes:
        state = "[green]ok[/green]" if n.converged else "[yellow]…[/yellow]" if n.ok else "[red]failed[/red]"
        online = "online " if n.online else "offline"
        line = f"  {escape(n.name):<24} {online} rev {n.revision:<4} {state} peers {n.peers}/{n.want_peers}"
        if n.next_rotation is not None:
            line += f"  key rotation {time.strftime('%Y-%m-%d %H:%M', time.gmtime(n.next_rotation))} UTC"
        if n.error:
            line += f"  {escape(n.error)}"
        out.print(line)


@friendly
def operator(
    mesh: str = typer.Option(..., "--mesh", help="the mesh's name (metadata.name)"),
    etcd_endpoints: str = ENDPOINTS,
    cacert: Path | None = CACERT,
    cert: Path | None = CERT,
    key: Path | None = KEY,
    insecure_plaintext: bool = PLAINTEXT,
    identity: str = typer.Option(socket.gethostname(), "--id", help="this replica's name, shown as the leader"),
    lease_ttl: int = typer.Option(
        5, "--lease-ttl", min=2, max=60, help="leader lease TTL: failover takes at most this"
    ),
) -> None:
    """Run one replica of the operator (run two or more). One leader, elected through an etcd lease,
    turns each applied revision into allocations (written once, never moved) and per-node intents;
    the others stand by and take over within the lease TTL. Runs until stopped; stopping the leader
    hands over at once."""
    urls, tls = _etcd_access(etcd_endpoints, cacert, cert, key, insecure_plaintext)
    from crossmesh.kv import etcd as kv_etcd
    from crossmesh.operator.run import Operator

    async def main() -> None:
        op = Operator(lambda: kv_etcd.connect(urls, tls), mesh, identity, ttl=lease_ttl)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, op.stop.set)
        await op.run()

    asyncio.run(main())
