"""`crossmesh policy …`: policy verdicts with the policies and rules that decided them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, friendly, out
from crossmesh.istio.index import istio_index
from crossmesh.policy import trace as traces
from crossmesh.policy.endpoints import mesh_index
from crossmesh.workspace import compile_mesh

app = typer.Typer(
    help="Network policy (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy) as Kubernetes "
    "and Cilium evaluate it.",
    no_args_is_help=True,
)


@app.callback()
def _policy() -> None:
    """Network policy verdicts."""


@app.command("trace")
@friendly
def trace(  # noqa: PLR0913 - the command's options
    mesh: Path = typer.Argument(..., help="the mesh file", show_default=False),
    source: str = typer.Option(
        ..., "--from", help="source: pod CLUSTER/NS/POD, node name, IP address, or local (the client outside)"
    ),
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
    with the policies that select the endpoint and the rule that allowed or denied it. In a mesh with
    Istio (spec.istio), also the destination proxy's verdict: its mTLS mode and the PeerAuthentication
    that set it, the client's principal and the AuthorizationPolicy rule that decided; the flow is
    allowed only when both layers allow it.

    A service is traced to each of its backends after DNAT (policy sees the backend and its target
    port); the first backend of the serving tier is the one shown in full.

    Exit status: 0 when the flow is allowed, 1 when it is denied, 2 on bad input.
    """
    traces.parse_port(port)  # bad input is refused before the mesh is compiled
    request = traces.http_request(http_method, http_path, http_header)
    compiled = compile_mesh(mesh)
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    mesh_istio = compiled.plan.istio  # the mesh file's spec.istio; None: no service mesh, no Istio layer
    result = traces.trace(
        compiled.plan,
        index,
        source,
        target,
        port,
        request,
        istio=None if mesh_istio is None else istio_index(compiled.plan, compiled.loaded.manifests),
        trust_domain="" if mesh_istio is None else mesh_istio.trust_domain,
    )
    if output is not Output.TABLE:
        emit(result.as_json(index.by_policy_id), output)
    else:
        _print(result)
    if not result.allowed:
        raise typer.Exit(1)  # as `kubectl auth can-i`: scripts test the verdict by the exit code


def _print(result: traces.Trace) -> None:
    """The trace's lines, the verdict line in bold and every verdict word in colour."""
    head = 1 if result.dst.service is not None else 0
    for i, line in enumerate(result.lines()):
        text = Text(line, style="bold" if i == head else "")
        text.highlight_regex(r"(?<=: )allowed$|(?<=: )allowed(?= —)", "green")
        text.highlight_regex(r"(?<=: )denied$|(?<=: )denied(?= —)", "red")
        out.print(text)
