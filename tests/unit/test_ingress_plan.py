"""An ingress gateway in the plan: the pods and LoadBalancer Service a Gateway implies (Istio's
automated deployment), the load balancer and firewall rule its site needs, and the lab router that
stands for that load balancer — all from the plan, as `render` and the lab read it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import firewall, meshcapture, topology
from crossmesh.errors import SpecError
from crossmesh.istio.index import principal
from crossmesh.plan import ingress, prerequisites
from crossmesh.plan.prerequisites import Scope, Targets
from crossmesh.policy.endpoints import mesh_index
from crossmesh.workspace import Compiled, compile_mesh, rendered

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
GATEWAY = "cluster2/default/rebels"


def _copy(work: Path) -> Path:
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns(".crossmesh"))
    return work / "mesh.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return compile_mesh(_copy(tmp_path_factory.mktemp("tc") / "mesh"), tmp_path_factory.mktemp("state"))


def test_a_gateway_implies_a_pinned_pod_and_a_load_balancer_service(compiled: Compiled) -> None:
    plan = compiled.plan
    [g] = plan.ingress
    assert (g.ref, g.service, g.nodes, g.pods) == (
        GATEWAY,
        "rebels-istio",
        ("azure-talos-1",),
        ("cluster2/default/rebels-istio-0",),
    )
    [li] = g.listeners
    assert (li.name, li.port, li.protocol, li.hostname) == ("https", 443, "HTTPS", "rebels.example.com")
    svc = next(s for s in plan.cluster("cluster2").services if s.name == "rebels-istio")
    assert svc.type == "LoadBalancer" and svc.node_port(443, "TCP") == li.node_port
    assert 30000 <= li.node_port < 32768
    pod = next(p for p in plan.pods() if p.ref == g.pods[0])
    assert ingress.gateway_of(pod) == "rebels" and pod.node == "azure-talos-1"
    # Its mesh identity is Istio's for a gateway: ServiceAccount <gateway>-istio.
    index = mesh_index(plan, compiled.loaded.manifests)
    assert principal(index.endpoints[pod.ref], plan.trust_domain) == "cluster.local/ns/default/sa/rebels-istio"


def test_render_leaves_the_implied_objects_to_istio(compiled: Compiled) -> None:
    files = rendered(compiled)
    applied = files["clusters/cluster2/manifests.yaml"].content
    assert "rebels-istio" not in applied  # Istio makes the Deployment and Service from the Gateway
    assert "kind: HTTPRoute" not in applied and "kind: Gateway\n" not in applied


def test_the_site_gets_a_load_balancer_and_a_firewall_rule_for_the_node_port(compiled: Compiled) -> None:
    plan = compiled.plan
    [g] = plan.ingress
    by_site = {p.site.name: p for p in prerequisites.derive(plan)}
    azure = by_site["azure-we"]
    [lb] = azure.load_balancers
    node = plan.node("azure-talos-1")
    assert (lb.gateway, lb.service, lb.listeners, lb.targets) == (
        GATEWAY,
        "default/rebels-istio",
        ((443, g.listeners[0].node_port),),
        (("azure-talos-1", node.address),),
    )
    [rule] = [r for r in azure.inbound if r.targets is Targets.INGRESS]
    assert (rule.port, str(rule.source), rule.scope) == (g.listeners[0].node_port, "0.0.0.0/0", Scope.INTERNET)
    assert azure.members(Targets.INGRESS) == (("azure-talos-1", node.address),)
    assert not by_site["aws-sg"].load_balancers and not by_site["gcp-ew"].load_balancers


def test_the_lab_router_is_the_load_balancer_on_its_own_public_address(compiled: Compiled) -> None:
    plan = compiled.plan
    [g] = plan.ingress
    topo = topology.build(plan, "t1")
    address = topo.load_balancers[GATEWAY]
    taken = set(topo.site_wan.values()) | {n.public_address for n in plan.nodes} | {topo.local_address}
    assert address not in taken
    router = topo.namespace(topo.site_ns["azure-we"])
    assert any(iface.ip == address for _, iface in router.addresses)
    inet = topo.namespace(f"{topo.prefix}-inet")
    assert any(r.dst.network_address == address and r.dst.prefixlen == 32 for r in inet.routes)
    assert router.nft is not None
    text = nft.render(router.nft)
    node = plan.node("azure-talos-1")
    assert firewall.load_balancer_comment(GATEWAY, 443) in text
    assert (
        f"{node.address} . {g.listeners[0].node_port}" in text or f"{node.address}:{g.listeners[0].node_port}" in text
    )
    others = [topo.namespace(topo.site_ns[s]) for s in ("aws-sg", "gcp-ew")]
    assert all(o.nft is not None and "lb " not in nft.render(o.nft) for o in others)


def test_a_gateway_pod_runs_no_app_and_its_inbound_is_not_captured(compiled: Compiled) -> None:
    plan = compiled.plan
    pods = {p.ref: p for p in plan.pods()}
    gw = pods["cluster2/default/rebels-istio-0"]
    app = pods["cluster2/default/rebel-base-0"]

    def chains(pod_ref: str) -> dict[str, int]:
        table = meshcapture.capture_table(plan, pods[pod_ref], "eth0")
        return {c.name: len(c.rules) for c in table.items if isinstance(c, nft.Chain)}

    assert chains(gw.ref)["prerouting"] == 0 and chains(gw.ref)["output"] == 1
    assert chains(app.ref)["prerouting"] == 1


def test_without_the_node_annotation_one_replica_is_placed_as_any_deployment(tmp_path: Path) -> None:
    mesh = _copy(tmp_path / "mesh")
    path = mesh.parent / "apps" / "cluster2" / "ingress.yaml"
    path.write_text(
        path.read_text().replace("    crossmesh.io/nodes: azure-talos-1   # one gateway pod on each node named\n", "")
    )
    plan = compile_mesh(mesh, tmp_path / "state").plan
    [g] = plan.ingress
    assert g.pods == ("cluster2/default/rebels-istio-0",) and g.nodes == ("azure-talos-1",)


def test_an_object_named_like_the_gateways_own_is_refused_at_the_gateway(tmp_path: Path) -> None:
    mesh = _copy(tmp_path / "mesh")
    extra = mesh.parent / "apps" / "cluster2" / "clash.yaml"
    extra.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: rebels-istio, namespace: default}\n"
        "spec:\n  selector: {app: x}\n  ports: [{port: 80}]\n"
    )
    with pytest.raises(SpecError) as err:
        compile_mesh(mesh, tmp_path / "state")
    [problem] = err.value.problems
    assert problem.file.endswith("ingress.yaml") and "implies a Service default/rebels-istio" in problem.message
