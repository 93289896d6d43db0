"""`crossmesh policy …`: policy verdicts with the policies and rules that decided them."""

from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, friendly, out
from crossmesh.errors import UsageError
from crossmesh.model.plan import Plan, ServicePlan
from crossmesh.policy.endpoints import mesh_index, world_endpoint
from crossmesh.policy.evaluator import PolicyIndex, Side, Verdict, evaluate
from crossmesh.policy.model import MAX_HTTP_REQUEST, Endpoint, EndpointKind, HttpRequest
from crossmesh.services.backends import backend_sets
from crossmesh.workspace import compile_mesh

PORT_RE = re.compile(r"^(\d{1,5})/(TCP|UDP|SCTP)$", re.IGNORECASE)

app = typer.Typer(
    help="Network policy (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy) as Kubernetes "
    "and Cilium evaluate it.",
    no_args_is_help=True,
)


@app.callback()
def _policy() -> None:
    """Network policy verdicts."""


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What `--to` named: the endpoints that answer, and on which port."""

    service: ServicePlan | None
    backends: tuple[tuple[Endpoint, int], ...]  # (endpoint, port after service DNAT)


@app.command("trace")
@friendly
def trace(  # noqa: PLR0913 - the command's options
    mesh: Path = typer.Argument(..., help="the mesh file", show_default=False),
    source: str = typer.Option(..., "--from", help="source: pod CLUSTER/NS/POD, node name, or IP address"),
    target: str = typer.Option(
        ...,
        "--to",
        help="destination: pod CLUSTER/NS/POD, service CLUSTER/NS/SERVICE or NS/SERVICE, node name, or IP address",
    ),
    port: str = typer.Option(..., "--port", help="PORT/PROTO, e.g. 80/TCP (the service port for a service)"),
    http_method: str | None = typer.Option(None, "--http-method", help="HTTP method, for L7 rules"),
    http_path: str | None = typer.Option(None, "--http-path", help="HTTP path, for L7 rules"),
    http_header: list[str] = typer.Option([], "--http-header", help="'Name: value', repeatable"),
    output: Output = OUTPUT_OPTION,
) -> None:
    """The policy verdict of a flow: the egress of the source and the ingress of the destination, each
    with the policies that select the endpoint and the rule that allowed or denied it.

    A service is traced to each of its backends after DNAT (policy sees the backend and its target
    port); the first backend of the serving tier is the one shown in full.

    Exit status: 0 when the flow is allowed, 1 when it is denied, 2 on bad input.
    """
    m = PORT_RE.match(port)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise UsageError(f"--port {port!r}: write PORT/PROTO with PROTO TCP, UDP or SCTP, e.g. 80/TCP")
    number, proto = int(m.group(1)), m.group(2).upper()
    request = _request(http_method, http_path, http_header)
    compiled = compile_mesh(mesh)
    plan = compiled.plan
    index = mesh_index(plan, compiled.loaded.manifests)
    src = _endpoint(index, plan, source)
    dst = _target(index, plan, src, target, number, proto)
    verdicts = [(ep, p, evaluate(index, src, ep, p, proto, request)) for ep, p in dst.backends]
    first_ep, first_port, first = verdicts[0]
    data: dict[str, Any] = {
        "verdict": first.verdict,
        "from": source,
        "to": target,
        "port": f"{number}/{proto}",
        "destination": first_ep.ref,
        "destination_port": f"{first_port}/{proto}",
        "http": None
        if request is None
        else {"method": request.method, "path": request.path, "headers": [f"{k}: {v}" for k, v in request.headers]},
        "egress": first.egress.as_json(index.by_policy_id),
        "ingress": first.ingress.as_json(index.by_policy_id),
    }
    if dst.service is not None:
        data["service"] = dst.service.ref
        data["backends"] = [
            {
                "backend": ep.ref,
                "port": f"{p}/{proto}",
                "verdict": v.verdict,
                "egress": v.egress.as_json(index.by_policy_id),
                "ingress": v.ingress.as_json(index.by_policy_id),
            }
            for ep, p, v in verdicts
        ]
    if output is not Output.TABLE:
        emit(data, output)
    else:
        _print(index, src, dst, verdicts, number, proto, request)
    if not first.allowed:
        raise typer.Exit(1)  # as `kubectl auth can-i`: scripts test the verdict by the exit code


def _request(method: str | None, path: str | None, headers: list[str]) -> HttpRequest | None:
    if method is None and path is None and not headers:
        return None
    pairs = []
    for h in headers:
        name, colon, value = h.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--http-header {h!r}: write 'Name: value'")
        pairs.append((name.strip(), value.strip()))
    if path is not None and not path.startswith("/"):
        raise UsageError(f"--http-path {path!r}: an HTTP path starts with /")
    size = len(method or "") + len(path or "") + sum(len(k) + len(v) for k, v in pairs)
    if size > MAX_HTTP_REQUEST:
        raise UsageError(
            f"the HTTP request is {size} characters; Envoy refuses requests whose headers pass "
            f"{MAX_HTTP_REQUEST // 1024} KiB — shorten --http-path or --http-header"
        )
    return HttpRequest(method=(method or "GET").upper(), path=path or "/", headers=tuple(pairs))


def _endpoint(index: PolicyIndex, plan: Plan, ref: str) -> Endpoint:
    """A pod, node or address; an address of a pod or node is that pod or node."""
    found = index.endpoints.get(ref)
    if found is not None:
        return found
    try:
        addr = ip_address(ref)
    except ValueError:
        raise UsageError(
            f"{ref} is neither a pod (CLUSTER/NAMESPACE/POD), a node nor an IP address — "
            f"pods are e.g. {next(iter(p.ref for p in plan.pods()), 'cluster/default/web-0')}"
        ) from None
    owner = index.by_address.get(addr)
    if owner is None:
        return world_endpoint(addr)
    # The address the flow uses comes first: a CIDR rule matches that one.
    return dataclasses.replace(owner, addresses=(addr, *(a for a in owner.addresses if a != addr)))


def _target(index: PolicyIndex, plan: Plan, src: Endpoint, ref: str, port: int, proto: str) -> Target:
    if ref in index.endpoints:
        return Target(None, ((index.endpoints[ref], port),))
    service = _service(plan, src, ref)
    if service is None:
        return Target(None, ((_endpoint(index, plan, ref), port),))
    sets = [b for b in backend_sets(plan, service) if b.port == port and b.protocol == proto]
    if not sets:
        ports = ", ".join(f"{p}/{pr}" for p, pr, _, _ in service.ports)
        raise UsageError(f"service {service.ref} has no port {port}/{proto} (its ports: {ports})")
    backends = [(index.endpoints[b.pod], b.port) for tier in sets[0].tiers for b in tier]
    if not backends:
        raise UsageError(f"service {service.ref} has no backends on {port}/{proto}")
    return Target(service, tuple(backends))


def _service(plan: Plan, src: Endpoint, ref: str) -> ServicePlan | None:
    parts = ref.split("/")
    if len(parts) in (2, 3) and all(parts):
        cluster = parts[0] if len(parts) == 3 else src.cluster
        if cluster not in {c.name for c in plan.clusters}:
            return None
        return next(
            (s for s in plan.cluster(cluster).services if s.namespace == parts[-2] and s.name == parts[-1]), None
        )
    try:
        addr = ip_address(ref)
    except ValueError:
        return None
    # A ClusterIP of the source's cluster (every cluster may reuse the same service range).
    if src.cluster and isinstance(addr, IPv4Address):
        return next((s for s in plan.cluster(src.cluster).services if s.cluster_ip == addr), None)
    return None


def _print(  # noqa: PLR0913
    index: PolicyIndex,
    src: Endpoint,
    dst: Target,
    verdicts: list[tuple[Endpoint, int, Verdict]],
    port: int,
    proto: str,
    request: HttpRequest | None,
) -> None:
    ep, dport, first = verdicts[0]
    what = escape(f"{port}/{proto}" + (f" {request.method} {request.path}" if request else ""))
    if dst.service is not None:
        out.print(
            f"service {dst.service.ref} {port}/{proto} → {len(verdicts)} backend"
            f"{'s' if len(verdicts) != 1 else ''}; in full: the first of the serving tier, {ep.ref} "
            + (
                f"(headless: the client connects to the pod itself, port {dport})"
                if dst.service.headless
                else f"(port {dport} after DNAT)"
            ),
            markup=False,
        )
    out.print(f"[bold]{_name(src)} → {_name(ep)} {what}: {_colour(first.verdict)}[/bold]")
    for side in (first.egress, first.ingress):
        _print_side(index, side)
    if dst.service is not None and len(verdicts) > 1:
        out.print("all backends:")
        for bep, bport, v in verdicts:
            why = "" if v.allowed else f" — {_short(v.egress if not v.egress.allowed else v.ingress)}"
            out.print(f"  {escape(bep.ref)} {bport}/{proto}: {_colour(v.verdict)}{escape(why)}")


def _print_side(index: PolicyIndex, side: Side) -> None:
    verdict = "allowed" if side.allowed else "denied"
    out.print(f"  {side.direction.value} of {_name(side.endpoint)}: {_colour(verdict)}")
    if side.policies:
        out.print("    selected by:", markup=False)
        for p in side.policies:
            deny = "default-deny" if side.direction in p.default_deny else "no default deny"
            where = f", {p.where}" if p.where else ""
            out.print(f"      {p.id} ({deny}{where})", markup=False)
    out.print(f"    {side.message}", markup=False)


def _short(side: Side) -> str:
    return f"{side.direction.value} of {side.endpoint.ref}: {side.message}"


def _name(ep: Endpoint) -> str:
    """The endpoint as rich markup text (its name escaped)."""
    if ep.kind is EndpointKind.POD:
        return escape(f"{ep.ref} ({ep.address})")
    if ep.kind is EndpointKind.NODE:
        return escape(f"node {ep.ref} ({ep.address})")
    return escape(f"{ep.ref} (world)")


def _colour(verdict: str) -> str:
    return f"[green]{verdict}[/green]" if verdict == "allowed" else f"[red]{verdict}[/red]"
