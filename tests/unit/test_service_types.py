"""Headless Services and node ports: planning (allocation, refusals), the lab's NAT table, DNS,
MCS, trace and the checks built for them — all without a lab."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from crossmesh import nft
from crossmesh.checks import service_types
from crossmesh.checks.framework import Context
from crossmesh.drivers.lab import servicenat, topology
from crossmesh.drivers.lab.dns import dns_answer, dns_records, headless_records, ready
from crossmesh.model import k8s
from crossmesh.model.plan import Plan
from crossmesh.plan import workloads
from crossmesh.plan.serialize import plan_json
from crossmesh.plan.trace import trace
from crossmesh.render import mcs
from crossmesh.workspace import compile_mesh

REPO = Path(__file__).resolve().parents[2]
HYBRID = REPO / "tests" / "meshes" / "hybrid-wireguard"
CIDR = IPv4Network("10.96.0.0/16")


def manifests(text: str, file: str = "svc.yaml") -> list[k8s.Manifest]:
    out = []
    for i, raw in enumerate(yaml.safe_load_all(text)):
        raw.setdefault("apiVersion", "v1")
        raw.setdefault("kind", "Service")
        raw["metadata"].setdefault("namespace", "default")
        obj = k8s.Service.model_validate(raw)
        out.append(k8s.Manifest(file, 1 + 10 * i, "Service", raw["metadata"]["name"], "default", raw, obj))
    return out


def services(text: str, cidr: IPv4Network = CIDR) -> dict[str, object]:
    return {s.name: s for s in workloads.plan_services("c", manifests(text), (), cidr)}


def svc(name: str, spec: str) -> str:
    return f"metadata: {{name: {name}}}\nspec: {spec}\n"


# --- planning --------------------------------------------------------------------------------------


def test_a_headless_service_has_no_cluster_ip_and_takes_none_from_the_range() -> None:
    alone = services(svc("web", "{ports: [{port: 80}]}"))
    both = services(
        svc("web", "{ports: [{port: 80}]}") + "---\n" + svc("db", "{clusterIP: None, ports: [{port: 5432}]}")
    )
    db = both["db"]
    assert db.cluster_ip is None and db.headless  # type: ignore[attr-defined]
    assert both["web"].cluster_ip == alone["web"].cluster_ip  # type: ignore[attr-defined]
    # a /27 holds 32 − 17 = 15 ClusterIPs: 15 Services and a headless one fit
    text = "---\n".join(svc(f"s{i}", "{ports: [{port: 80}]}") for i in range(15))
    fits = services(text + "---\n" + svc("h", "{clusterIP: None, ports: [{port: 80}]}"), IPv4Network("10.96.0.0/27"))
    assert sum(1 for s in fits.values() if s.cluster_ip is not None) == 15  # type: ignore[attr-defined]


def test_node_ports_stated_kept_and_the_others_allocated_in_range_deterministically() -> None:
    text = (
        svc("web", "{type: NodePort, ports: [{port: 80, nodePort: 30080}, {port: 443}]}")
        + "---\n"
        + svc("lb", "{type: LoadBalancer, ports: [{port: 53, protocol: UDP}]}")
        + "---\n"
        + svc("plain", "{ports: [{port: 80}]}")
    )
    first, again = services(text), services(text)
    web = first["web"]
    assert web.type == "NodePort"  # type: ignore[attr-defined]
    assert web.node_port(80, "TCP") == 30080  # type: ignore[attr-defined]
    allocated = web.node_port(443, "TCP")  # type: ignore[attr-defined]
    assert allocated is not None and 30000 <= allocated <= 32767 and allocated != 30080
    assert first["lb"].node_ports[0][:2] == (53, "UDP")  # type: ignore[attr-defined]
    assert first["plain"].node_ports == ()  # type: ignore[attr-defined]
    assert [s.node_ports for s in first.values()] == [s.node_ports for s in again.values()]  # type: ignore[attr-defined]
    # a Service added later does not move the ports already given
    more = services(text + "---\n" + svc("new", "{type: NodePort, ports: [{port: 8080}]}"))
    assert more["web"].node_ports == web.node_ports  # type: ignore[attr-defined]
    assert more["lb"].node_ports == first["lb"].node_ports  # type: ignore[attr-defined]


def test_allocation_probes_past_a_stated_node_port() -> None:
    slot = 30000 + workloads._stable_hash("default/web/80/TCP") % 2768
    planned = services(
        svc("web", "{type: NodePort, ports: [{port: 80}]}")
        + "---\n"
        + svc("other", f"{{type: NodePort, ports: [{{port: 81, nodePort: {slot}}}]}}")
    )
    assert planned["other"].node_port(81, "TCP") == slot  # type: ignore[attr-defined]
    assert planned["web"].node_port(80, "TCP") == (slot + 1 if slot < 32767 else 30000)  # type: ignore[attr-defined]


def test_one_service_may_use_a_node_port_for_tcp_and_udp() -> None:
    planned = services(
        svc("dns", "{type: NodePort, ports: [{port: 53, nodePort: 30053}, {port: 53, protocol: UDP, nodePort: 30053}]}")
    )
    assert planned["dns"].node_ports == ((53, "TCP", 30053), (53, "UDP", 30053))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        (
            svc("web", "{type: NodePort, ports: [{port: 80, nodePort: 29999}]}"),
            ("spec", "ports", "0", "nodePort"),
            "nodePort 29999 is outside the node port range 30000-32767",
        ),
        (
            svc("web", "{type: NodePort, ports: [{port: 80}, {port: 81, nodePort: 32768}]}"),
            ("spec", "ports", "1", "nodePort"),
            "nodePort 32768 is outside",
        ),
        (
            svc("web", "{ports: [{port: 80, nodePort: 30080}]}"),
            ("spec", "ports", "0", "nodePort"),
            "nodePort 30080 on a Service of type ClusterIP",
        ),
        (
            svc("web", "{type: NodePort, clusterIP: None, ports: [{port: 80}]}"),
            ("spec", "clusterIP"),
            "a NodePort Service cannot be headless",
        ),
        (
            svc("web", "{type: NodePort, ports: [{port: 80, nodePort: 30080}, {port: 81, nodePort: 30080}]}"),
            ("spec", "ports", "1", "nodePort"),
            "nodePort 30080 is already used by Service default/web (svc.yaml:1)",
        ),
        (
            svc("a", "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}")
            + "---\n"
            + svc("b", "{type: NodePort, ports: [{port: 53, protocol: UDP, nodePort: 30080}]}"),
            ("spec", "ports", "0", "nodePort"),
            "nodePort 30080 is already used by Service default/a (svc.yaml:1) in cluster c",
        ),
    ],
)
def test_node_ports_the_api_server_refuses(text: str, path: tuple[str, ...], words: str) -> None:
    with pytest.raises(workloads.PlacementError) as err:
        workloads.plan_services("c", manifests(text), (), CIDR)
    assert err.value.path == path
    assert words in str(err.value)
    assert " — " in str(err.value)  # and the fix


MESH = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: nodeports
spec:
  sites:
    - {name: site-a, provider: aws, network: 10.0.0.0/16}
  clusters:
    - name: one
      id: 1
      podCIDR: 10.10.0.0/16
      nodes:
        - {name: a-1, site: site-a, address: 10.0.1.5, publicAddress: 203.0.113.10}
      manifests: [svc.yaml]
"""


def test_a_duplicate_node_port_exits_2_at_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "svc.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  type: NodePort\n"
        "  ports: [{port: 80, nodePort: 30080}]\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  type: NodePort\n"
        "  ports: [{port: 81, nodePort: 30080}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "crossmesh.cli.main", "validate", "mesh.yaml", "-o", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [problem] = json.loads(done.stdout)["problems"]
    assert (Path(problem["file"]).name, problem["line"], problem["path"]) == ("svc.yaml", 13, "spec.ports.0.nodePort")
    assert "already used by Service default/a (svc.yaml:1)" in problem["message"]


# --- the hybrid example: seed 001's NodePort -------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    work = tmp_path_factory.mktemp("hybrid")
    shutil.copytree(HYBRID, work / "mesh", ignore=shutil.ignore_patterns(".crossmesh"))
    (work / "mesh" / "apps" / "headless.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: tkb-headless, namespace: microservices}\n"
        "spec:\n  clusterIP: None\n  selector: {app: tkb}\n  ports: [{port: 3000, name: http}]\n"
    )
    return compile_mesh(work / "mesh" / "mesh.yaml", work / "state").plan


def tkb(plan: Plan, name: str = "tkb-service") -> object:
    return next(s for s in plan.cluster("k3s").services if s.name == name)


def test_seed_001_node_port_30080_to_container_port_3000(hybrid: Plan) -> None:
    service = tkb(hybrid)
    assert service.type == "NodePort" and service.node_ports == ((30080, "TCP", 30080),)  # type: ignore[attr-defined]
    ref = "k3s/microservices/tkb-service"
    data = next(s for c in plan_json(hybrid)["clusters"] for s in c["services"] if s["ref"] == ref)
    assert data["nodePorts"] == {"30080/TCP": 30080}
    tkbs = ["k3s/microservices/tkb-0@10.42.3.2:3000", "k3s/microservices/tkb-1@10.42.3.3:3000"]
    assert data["backendSets"][0]["tiers"] == [tkbs]
    headless = next(s for c in plan_json(hybrid)["clusters"] for s in c["services"] if s["ref"].endswith("headless"))
    assert (headless["clusterIP"], headless["headless"], headless["nodePorts"]) == (None, True, {})


def test_every_node_answers_the_node_port_and_source_nats_it(hybrid: Plan) -> None:
    for name in ("openstack-master", "openstack-worker", "aws-worker-1"):
        node = hybrid.node(name)
        side = node.pod_cidr.network_address + 1
        text = nft.render(servicenat.services_table(hybrid, "k3s", [], side, node=node))
        own = "{ " + ", ".join(str(a) for a in servicenat.node_addresses(node)) + " }"
        assert str(node.address) in own and str(side) in own
        to = "dnat ip addr . port to numgen random mod 2 map { 0 : 10.42.3.2 . 3000, 1 : 10.42.3.3 . 3000 }"
        # counted, with a comment `crossmesh trace` finds the counter by (seed 001's step 9)
        note = 'comment "nodeport k3s/microservices/tkb-service 30080/TCP"'
        assert f"ip daddr {own} tcp dport 30080 counter {to} {note}" in text
        assert f"ip daddr {tkb(hybrid).cluster_ip} tcp dport 30080 {to}" in text  # type: ignore[attr-defined]
        assert f"ct status dnat ct original ip daddr {own} snat to {side}" in text
        assert text.count("dnat ip addr") == 2  # the headless Service has no rule
    # Health-aware as the ClusterIP: a dead backend leaves the map; with none, no rule (the node refuses)
    node = hybrid.node("openstack-master")
    dead = frozenset({servicenat.backend_key("k3s/microservices/tkb-0", "10.42.3.2", 3000)})
    one = nft.render(servicenat.services_table(hybrid, "k3s", [], IPv4Address("10.42.0.1"), dead, node=node))
    assert "tcp dport 30080 dnat ip addr . port to numgen random mod 1 map { 0 : 10.42.3.3 . 3000 }" in one
    both = dead | {servicenat.backend_key("k3s/microservices/tkb-1", "10.42.3.3", 3000)}
    none = nft.render(servicenat.services_table(hybrid, "k3s", [], IPv4Address("10.42.0.1"), both, node=node))
    assert "dport 30080 dnat" not in none


def test_the_lab_topology_programs_node_ports_on_every_node(hybrid: Plan) -> None:
    topo = topology.build(hybrid, "abcd")
    tables = {ns.owner: nft.render(ns.nft) for ns in topo.namespaces if ns.role == "node" and ns.nft}
    assert set(tables) == {"openstack-master", "openstack-worker", "aws-worker-1"}
    for name, text in tables.items():
        assert text is not None and f"{hybrid.node(name).address}" in text and "tcp dport 30080 dnat" in text


def test_headless_name_answers_its_ready_pods(hybrid: Plan) -> None:
    assert "tkb-headless.microservices.svc.cluster.local" not in dns_records(hybrid)["k3s"]
    records = headless_records(hybrid)["k3s"]
    name = "tkb-headless.microservices.svc.cluster.local"
    assert ready(records, frozenset())[name] == ("10.42.3.2", "10.42.3.3")
    down = {servicenat.backend_key("k3s/microservices/tkb-0", "10.42.3.2", 3000)}
    assert ready(records, down)[name] == ("10.42.3.3",)
    query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    reply = dns_answer(ready(records, frozenset()), query)
    assert reply is not None and struct.unpack("!H", reply[6:8])[0] == 2  # two A records
    assert reply.endswith(bytes([10, 42, 3, 3])) and bytes([10, 42, 3, 2]) in reply
    gone = dns_answer({name: ()}, query)
    assert gone is not None and struct.unpack("!H", gone[2:4])[0] & 0xF == 3  # NXDOMAIN: no ready pod


def test_trace_of_a_headless_service_connects_to_the_pod(hybrid: Plan) -> None:
    t = trace(hybrid, "k3s/demo/demo-app-0", "k3s/microservices/tkb-headless", 3000, "TCP")
    assert t.headless and t.delivered_port == 3000 and t.backend == "k3s/microservices/tkb-0"
    assert "headless service k3s/microservices/tkb-headless (no ClusterIP)" in t.hops[1].action
    assert t.delivery.action.endswith("(10.42.3.2:3000/TCP)")  # then the answer goes back (seed step 12)
    through = trace(hybrid, "k3s/demo/demo-app-0", "k3s/microservices/tkb-service", 30080, "TCP")
    assert not through.headless and through.delivery.action.endswith("(10.42.3.2:3000/TCP)")


def test_a_headless_global_service_is_a_headless_service_import(hybrid: Plan) -> None:
    plain = tkb(hybrid, "tkb-headless")
    shared = dataclasses.replace(plain, is_global=True)  # type: ignore[type-var]
    cluster = dataclasses.replace(hybrid.cluster("k3s"), services=(shared,))
    plan = dataclasses.replace(hybrid, clusters=(cluster,))
    [export, imported] = mcs.objects(plan, plan.clusters[0])
    assert export["kind"] == "ServiceExport" and imported["spec"]["type"] == "Headless"


def test_checks_cover_every_node_from_a_pod_a_node_and_the_site(hybrid: Plan) -> None:
    ctx = Context(hybrid, topology.build(hybrid, "abcd"))
    names = [p.check.name for p in service_types.node_ports(ctx) if not p.check.skipped]
    assert len(names) == 9
    for node in ("openstack-master", "openstack-worker", "aws-worker-1"):
        for origin in ("from-pod", "from-node", "from-site"):
            assert any(n.startswith(f"nodeport/{origin}/http: ") and f"-> {node} (" in n for n in names), names
    [dns] = [p.check for p in service_types.headless(ctx)]
    name = "tkb-headless.microservices.svc.cluster.local"
    assert dns.name == f"headless/dns: k3s/demo/demo-app-0 -> {name} (no ClusterIP)"
