"""Global services (issue 5), pure parts: backend tiers, the ClusterIP nftables table, DNS
answers, annotation validation and the MCS objects.

Cilium Cluster Mesh semantics (seed 003): a plain Service balances over its own cluster's
backends; `service.cilium.io/global: "true"` joins the backends of the same ns/name in
every cluster that also declares it global; `shared: "false"` keeps a cluster's backends
out of the others' sets while it still uses theirs; `affinity: local|remote|none` puts the
preferred side in a first tier that serves while any of it is healthy.

Most plans are built directly from the plan dataclasses (small, exact); the example
`examples/three-clouds` goes through the loader and planner like `crossmesh plan` does.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from crossmesh import nft
from crossmesh.drivers.lab import servicenat
from crossmesh.drivers.lab.dns import dns_answer, dns_records
from crossmesh.model.plan import ClusterPlan, Plan, PodPlan, ServicePlan
from crossmesh.render import mcs
from crossmesh.services.backends import Backend, BackendSet, backend_sets
from crossmesh.workspace import compile_mesh

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "three-clouds"
MCS_CRDS = REPO / "tests" / "reference" / "mcs-api" / "v0.5.2"

HTTP = ((80, "TCP", "http", "http"),)  # service port 80 → the pods' port named "http"


# --- building plans --------------------------------------------------------------------------------


def pod(
    cluster: str,
    name: str,
    address: str,
    ports: tuple[tuple[int, str, str], ...] = ((8080, "TCP", "http"),),
    *,
    namespace: str = "default",
) -> PodPlan:
    return PodPlan(
        cluster, namespace, name, f"{cluster}-node", IPv4Address(address), (("app", name.rsplit("-", 1)[0]),), ports
    )


def service(
    cluster: str,
    name: str,
    cluster_ip: str,
    backends: list[PodPlan],
    *,
    ports: tuple[tuple[int, str, str, str], ...] = HTTP,
    is_global: bool = False,
    shared: bool = True,
    affinity: str = "none",
    namespace: str = "default",
) -> ServicePlan:
    return ServicePlan(
        cluster,
        namespace,
        name,
        IPv4Address(cluster_ip),
        ports,
        tuple(p.ref for p in backends),
        is_global,
        shared,
        affinity,
    )


def plan_of(*clusters: tuple[str, list[PodPlan], list[ServicePlan]]) -> Plan:
    out = []
    for i, (name, pods, services) in enumerate(clusters, start=1):
        out.append(
            ClusterPlan(
                name,
                i,
                "talos",
                "cilium",
                IPv4Network(f"10.{10 + i}.0.0/16"),
                IPv4Network("10.96.0.0/16"),
                (f"{name}-node",),
                ("site",),
                tuple(pods),
                tuple(services),
            )
        )
    return Plan("test", "full-mesh", "cluster.local", 51820, (), tuple(out), ())


def refs(tier: tuple[Backend, ...]) -> list[str]:
    return [b.pod for b in tier]


def only(sets: list[BackendSet]) -> BackendSet:
    assert len(sets) == 1, sets
    return sets[0]


def global_web(affinity_a: str = "none", *, shared_c: bool = True, global_c: bool = True) -> Plan:
    """Service default/web in clusters a (1 pod), b (2 pods) and c (1 pod)."""
    a0 = pod("a", "web-0", "10.11.0.2")
    b0, b1 = pod("b", "web-0", "10.12.0.2"), pod("b", "web-1", "10.12.0.3")
    c0 = pod("c", "web-0", "10.13.0.2")
    return plan_of(
        ("a", [a0], [service("a", "web", "10.96.0.20", [a0], is_global=True, affinity=affinity_a)]),
        ("b", [b0, b1], [service("b", "web", "10.96.0.21", [b0, b1], is_global=True)]),
        ("c", [c0], [service("c", "web", "10.96.0.22", [c0], is_global=global_c, shared=shared_c)]),
    )


def svc_of(plan: Plan, cluster: str, name: str, namespace: str = "default") -> ServicePlan:
    return next(s for s in plan.cluster(cluster).services if (s.namespace, s.name) == (namespace, name))


# --- backend tiers ---------------------------------------------------------------------------------


def test_plain_service_uses_only_its_own_cluster() -> None:
    a0, a1 = pod("a", "web-0", "10.11.0.2"), pod("a", "web-1", "10.11.0.3")
    b0 = pod("b", "web-0", "10.12.0.2")
    plan = plan_of(
        ("a", [a0, a1], [service("a", "web", "10.96.0.20", [a0, a1])]),
        # the same ns/name elsewhere, even global there, is another service
        ("b", [b0], [service("b", "web", "10.96.0.21", [b0], is_global=True)]),
    )

    bs = only(backend_sets(plan, svc_of(plan, "a", "web")))

    assert bs.service == "a/default/web"
    assert (bs.port, bs.protocol) == (80, "TCP")
    assert [refs(t) for t in bs.tiers] == [["a/default/web-0", "a/default/web-1"]]
    assert [(b.address, b.port, b.cluster) for b in bs.all] == [("10.11.0.2", 8080, "a"), ("10.11.0.3", 8080, "a")]
    assert bs.excluded == ()


def test_global_service_is_the_union_over_clusters_declaring_it_global() -> None:
    plan = global_web()

    for cluster in ("a", "b", "c"):
        bs = only(backend_sets(plan, svc_of(plan, cluster, "web")))
        assert len(bs.tiers) == 1
        assert sorted(refs(bs.all)) == ["a/default/web-0", "b/default/web-0", "b/default/web-1", "c/default/web-0"]
        assert bs.all[0].cluster == cluster  # local backends first, then the others in plan order
        assert bs.excluded == ()


def test_same_name_without_global_in_one_cluster_is_not_joined() -> None:
    plan = global_web(global_c=False)

    joined = only(backend_sets(plan, svc_of(plan, "a", "web")))
    alone = only(backend_sets(plan, svc_of(plan, "c", "web")))

    assert refs(joined.all) == ["a/default/web-0", "b/default/web-0", "b/default/web-1"]
    assert joined.excluded == ()  # not "not shared": simply not a global service there
    assert refs(alone.all) == ["c/default/web-0"]


def test_same_name_in_another_namespace_is_not_joined() -> None:
    a0 = pod("a", "web-0", "10.11.0.2")
    b0 = pod("b", "web-0", "10.12.0.2", namespace="shop")
    plan = plan_of(
        ("a", [a0], [service("a", "web", "10.96.0.20", [a0], is_global=True)]),
        ("b", [b0], [service("b", "web", "10.96.0.21", [b0], is_global=True, namespace="shop")]),
    )

    assert refs(only(backend_sets(plan, svc_of(plan, "a", "web"))).all) == ["a/default/web-0"]


def test_shared_false_keeps_that_clusters_backends_out_of_the_others_sets() -> None:
    plan = global_web(shared_c=False)

    for cluster in ("a", "b"):
        bs = only(backend_sets(plan, svc_of(plan, cluster, "web")))
        assert "c/default/web-0" not in refs(bs.all)
        assert sorted(refs(bs.all)) == ["a/default/web-0", "b/default/web-0", "b/default/web-1"]
        assert bs.excluded == ("c",)
    # ... while c still uses the remote ones, and its own
    own = only(backend_sets(plan, svc_of(plan, "c", "web")))
    assert refs(own.all) == ["c/default/web-0", "a/default/web-0", "b/default/web-0", "b/default/web-1"]
    assert own.excluded == ()


def test_affinity_local_puts_local_backends_first() -> None:
    bs = only(backend_sets(global_web("local"), svc_of(global_web("local"), "a", "web")))

    assert [refs(t) for t in bs.tiers] == [
        ["a/default/web-0"],
        ["b/default/web-0", "b/default/web-1", "c/default/web-0"],
    ]


def test_affinity_remote_puts_remote_backends_first() -> None:
    plan = global_web("remote")
    bs = only(backend_sets(plan, svc_of(plan, "a", "web")))

    assert [refs(t) for t in bs.tiers] == [
        ["b/default/web-0", "b/default/web-1", "c/default/web-0"],
        ["a/default/web-0"],
    ]


def test_affinity_none_is_one_tier() -> None:
    plan = global_web("none")

    assert len(only(backend_sets(plan, svc_of(plan, "a", "web"))).tiers) == 1


@pytest.mark.parametrize("affinity", ["local", "remote"])
def test_affinity_without_the_preferred_side_is_one_tier_of_the_other(affinity: str) -> None:
    """No local (remote) backend at all: nothing to prefer, the other side is the only tier."""
    b0 = pod("b", "web-0", "10.12.0.2")
    a0 = pod("a", "web-0", "10.11.0.2")
    if affinity == "local":  # a has the service but no pod of it
        plan = plan_of(
            ("a", [], [service("a", "web", "10.96.0.20", [], is_global=True, affinity="local")]),
            ("b", [b0], [service("b", "web", "10.96.0.21", [b0], is_global=True)]),
        )
        expected = ["b/default/web-0"]
    else:  # a is the only cluster with the service
        plan = plan_of(("a", [a0], [service("a", "web", "10.96.0.20", [a0], is_global=True, affinity="remote")]))
        expected = ["a/default/web-0"]

    bs = only(backend_sets(plan, svc_of(plan, "a", "web")))

    assert [refs(t) for t in bs.tiers] == [expected]


def test_affinity_local_with_shared_false_elsewhere() -> None:
    plan = global_web("local", shared_c=False)
    bs = only(backend_sets(plan, svc_of(plan, "a", "web")))

    assert [refs(t) for t in bs.tiers] == [["a/default/web-0"], ["b/default/web-0", "b/default/web-1"]]
    assert bs.excluded == ("c",)


def test_named_target_port_resolves_per_pod() -> None:
    # Two versions of the workload name their port "http" on different numbers; one pod
    # lacks the name and is no backend of that port (as an EndpointSlice would leave it out).
    old = pod("a", "web-0", "10.11.0.2", ((8080, "TCP", "http"), (9090, "TCP", "metrics")))
    new = pod("a", "web-1", "10.11.0.3", ((8443, "TCP", "http"),))
    bare = pod("a", "web-2", "10.11.0.4", ((8080, "TCP", ""),))
    ports = ((80, "TCP", "http", "http"), (9090, "TCP", "9090", "metrics"), (81, "TCP", "8080", "plain"))
    plan = plan_of(("a", [old, new, bare], [service("a", "web", "10.96.0.20", [old, new, bare], ports=ports)]))

    http, metrics, plain = backend_sets(plan, svc_of(plan, "a", "web"))

    assert [(b.pod, b.port) for b in http.all] == [("a/default/web-0", 8080), ("a/default/web-1", 8443)]
    assert (metrics.port, [(b.pod, b.port) for b in metrics.all]) == (
        9090,
        # a numeric targetPort is taken as written, declared by the pod or not
        [("a/default/web-0", 9090), ("a/default/web-1", 9090), ("a/default/web-2", 9090)],
    )
    assert (plain.port, [b.port for b in plain.all]) == (81, [8080, 8080, 8080])


def test_remote_backends_use_their_own_clusters_target_port() -> None:
    """Cilium merges remote endpoints by service port name: cluster b's pods listen where
    b's Service sends them, whatever a's Service says."""
    a0 = pod("a", "web-0", "10.11.0.2", ((8080, "TCP", "http"),))
    b0 = pod("b", "web-0", "10.12.0.2", ((8080, "TCP", "http"), (9000, "TCP", "alt")))
    plan = plan_of(
        ("a", [a0], [service("a", "web", "10.96.0.20", [a0], is_global=True, ports=((80, "TCP", "8080", "http"),))]),
        ("b", [b0], [service("b", "web", "10.96.0.21", [b0], is_global=True, ports=((80, "TCP", "alt", "http"),))]),
    )

    from_a = only(backend_sets(plan, svc_of(plan, "a", "web")))
    from_b = only(backend_sets(plan, svc_of(plan, "b", "web")))

    assert [(b.pod, b.port) for b in from_a.all] == [("a/default/web-0", 8080), ("b/default/web-0", 9000)]
    assert [(b.pod, b.port) for b in from_b.all] == [("b/default/web-0", 9000), ("a/default/web-0", 8080)]


def test_service_without_backends_has_one_empty_tier() -> None:
    plan = plan_of(("a", [], [service("a", "web", "10.96.0.20", [])]))

    bs = only(backend_sets(plan, svc_of(plan, "a", "web")))

    assert bs.tiers == ((),)
    assert bs.all == ()


def test_one_backend_set_per_service_port() -> None:
    a0 = pod("a", "dns-0", "10.11.0.2", ((53, "UDP", "dns"), (53, "TCP", "dns-tcp")))
    ports = ((53, "UDP", "dns", "dns"), (53, "TCP", "dns-tcp", "dns-tcp"))
    plan = plan_of(("a", [a0], [service("a", "dns", "10.96.0.10", [a0], ports=ports)]))

    sets = backend_sets(plan, svc_of(plan, "a", "dns"))

    assert [(s.port, s.protocol, [b.port for b in s.all]) for s in sets] == [(53, "UDP", [53]), (53, "TCP", [53])]


# --- the example, through loader and planner -------------------------------------------------------


@pytest.fixture(scope="module")
def example_plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    work = tmp_path_factory.mktemp("three-clouds")
    shutil.copytree(EXAMPLE, work / "mesh", ignore=shutil.ignore_patterns(".crossmesh"))
    return compile_mesh(work / "mesh" / "mesh.yaml", work / "state").plan


def test_example_relay_tiers(example_plan: Plan) -> None:
    def tiers(cluster: str) -> tuple[list[list[str]], tuple[str, ...]]:
        bs = only(backend_sets(example_plan, svc_of(example_plan, cluster, "relay")))
        assert {b.port for b in bs.all} == {8080}  # targetPort "http"
        return [refs(t) for t in bs.tiers], bs.excluded

    # cluster1 and cluster2: affinity local; cluster3: shared "false", affinity none
    assert tiers("cluster1") == ([["cluster1/default/relay-0"], ["cluster2/default/relay-0"]], ("cluster3",))
    assert tiers("cluster2") == ([["cluster2/default/relay-0"], ["cluster1/default/relay-0"]], ("cluster3",))
    assert tiers("cluster3") == (
        [["cluster3/default/relay-0", "cluster1/default/relay-0", "cluster2/default/relay-0"]],
        (),
    )


def test_example_rebel_base_in_cluster1_has_only_remote_backends(example_plan: Plan) -> None:
    bs = only(backend_sets(example_plan, svc_of(example_plan, "cluster1", "rebel-base")))

    assert sorted(refs(bs.all)) == [
        "cluster2/default/rebel-base-0",
        "cluster2/default/rebel-base-1",
        "cluster3/default/rebel-base-0",
        "cluster3/default/rebel-base-1",
    ]
    assert {b.port for b in bs.all} == {80}


# --- the ClusterIP table ---------------------------------------------------------------------------

RULE = re.compile(
    r"ip daddr (?P<ip>\S+) (?P<proto>tcp|udp) dport (?P<port>\d+) "
    r"dnat ip addr \. port to numgen random mod (?P<mod>\d+) map \{ (?P<map>[^}]*) \}"
)
REJECT = re.compile(r"ip daddr (?P<ip>\S+) (?P<proto>tcp|udp) dport (?P<port>\d+) reject with (?P<how>.+)")


def chain(text: str, name: str) -> str:
    match = re.search(rf"  chain {name} \{{\n(.*?)\n?  \}}\n", text, re.S)
    assert match is not None, f"no chain {name} in\n{text}"
    return match.group(1)


def dnat_targets(text: str, ip: str, port: int) -> list[str] | None:
    """The addr:port of every map element of the service's DNAT rule (None when no rule)."""
    for m in RULE.finditer(chain(text, "services")):
        if (m["ip"], int(m["port"])) == (ip, port):
            elements = [e.strip() for e in m["map"].split(",")]
            assert [int(e.split(" : ")[0]) for e in elements] == list(range(int(m["mod"])))  # 0..N-1, mod N
            return [e.split(" : ")[1].replace(" . ", ":") for e in elements]
    return None


def rejects(text: str) -> list[tuple[str, str, int, str]]:
    return [(m["ip"], m["proto"], int(m["port"]), m["how"]) for m in REJECT.finditer(chain(text, "no_endpoints"))]


def key(plan: Plan, ref: str, port: int) -> str:
    p = next(p for p in plan.pods() if p.ref == ref)
    return servicenat.backend_key(ref, str(p.address), port)


NODE_SIDE = IPv4Address("10.11.0.1")


def test_nft_serves_the_first_tier_while_it_is_healthy() -> None:
    plan = global_web("local")

    text = nft.render(servicenat.services_table(plan, "a", [], NODE_SIDE))

    assert text is not None
    assert dnat_targets(text, "10.96.0.20", 80) == ["10.11.0.2:8080"]
    assert rejects(text) == []


def test_nft_moves_to_the_next_tier_when_the_first_is_unhealthy() -> None:
    plan = global_web("local")
    dead = frozenset({key(plan, "a/default/web-0", 8080)})

    text = nft.render(servicenat.services_table(plan, "a", [], NODE_SIDE, dead))

    assert text is not None
    assert dnat_targets(text, "10.96.0.20", 80) == ["10.12.0.2:8080", "10.12.0.3:8080", "10.13.0.2:8080"]


def test_nft_leaves_out_unhealthy_backends_of_the_serving_tier() -> None:
    plan = global_web("none")
    dead = frozenset({key(plan, "b/default/web-0", 8080), key(plan, "c/default/web-0", 8080)})

    text = nft.render(servicenat.services_table(plan, "a", [], NODE_SIDE, dead))

    assert text is not None
    assert dnat_targets(text, "10.96.0.20", 80) == ["10.11.0.2:8080", "10.12.0.3:8080"]


def test_nft_rejects_when_no_backend_is_healthy() -> None:
    plan = global_web("local")
    dead = frozenset(key(plan, p.ref, 8080) for p in plan.pods())

    text = nft.render(servicenat.services_table(plan, "a", [], NODE_SIDE, dead))

    assert text is not None
    assert dnat_targets(text, "10.96.0.20", 80) is None
    assert rejects(text) == [("10.96.0.20", "tcp", 80, "tcp reset")]
    # the reject is on the paths a pod's packet (forward) and the node's own (output) take
    assert "jump no_endpoints" in chain(text, "forward")
    assert "jump no_endpoints" in chain(text, "local_out")


def test_nft_rejects_a_service_without_backends() -> None:
    a0 = pod("a", "dns-0", "10.11.0.2", ((53, "UDP", "dns"),))
    plan = plan_of(
        (
            "a",
            [a0],
            [
                service("a", "web", "10.96.0.20", []),
                service("a", "dns", "10.96.0.10", [], ports=((53, "UDP", "53", "dns"),)),
            ],
        )
    )

    text = nft.render(servicenat.services_table(plan, "a", [a0], NODE_SIDE))

    assert text is not None
    assert sorted(rejects(text)) == [
        ("10.96.0.10", "udp", 53, "icmp type port-unreachable"),
        ("10.96.0.20", "tcp", 80, "tcp reset"),
    ]


def test_nft_one_rule_per_service_port_whatever_the_backend_count() -> None:
    """The cost of a new connection must not grow with the backends: one numgen map rule."""
    pods = [pod("a", f"web-{i}", str(IPv4Address("10.11.0.2") + i)) for i in range(300)]
    plan = plan_of(("a", pods, [service("a", "web", "10.96.0.20", pods)]))

    text = nft.render(servicenat.services_table(plan, "a", [], NODE_SIDE))

    assert text is not None
    assert len(RULE.findall(chain(text, "services"))) == 1
    targets = dnat_targets(text, "10.96.0.20", 80)
    assert targets is not None and len(targets) == 300


def test_nft_hairpin_and_a_cluster_without_services() -> None:
    a0 = pod("a", "web-0", "10.11.0.2")
    plan = plan_of(("a", [a0], [service("a", "web", "10.96.0.20", [a0])]), ("b", [], []))

    text = nft.render(servicenat.services_table(plan, "a", [a0], NODE_SIDE))

    assert text is not None
    assert "ct status dnat ip saddr 10.11.0.2 ip daddr 10.11.0.2 snat to 169.254.42.1" in chain(text, "postrouting")
    empty = nft.render(servicenat.services_table(plan, "b", [], IPv4Address("10.12.0.1")))
    assert not RULE.search(empty) and not REJECT.search(empty)


def test_example_nft_fails_over_and_rejects(example_plan: Plan) -> None:
    relay = svc_of(example_plan, "cluster1", "relay")
    ip = str(relay.cluster_ip)
    addr = {p.ref: str(p.address) for p in example_plan.pods()}
    local = key(example_plan, "cluster1/default/relay-0", 8080)
    remote = key(example_plan, "cluster2/default/relay-0", 8080)

    def targets(dead: set[str]) -> list[str] | None:
        text = nft.render(servicenat.services_table(example_plan, "cluster1", [], NODE_SIDE, frozenset(dead)))
        assert text is not None
        return dnat_targets(text, ip, 80)

    assert targets(set()) == [f"{addr['cluster1/default/relay-0']}:8080"]
    assert targets({local}) == [f"{addr['cluster2/default/relay-0']}:8080"]
    assert targets({local, remote}) is None  # cluster3 does not share its relay


# --- DNS -------------------------------------------------------------------------------------------

RECORDS = {
    "web.default.svc.cluster.local": "10.96.0.20",
    "web.default.svc.clusterset.local": "10.96.0.20",
}


def query(
    name: str, qtype: int = 1, *, ident: int = 0x1234, flags: int = 0x0100, qdcount: int = 1, additional: bytes = b""
) -> bytes:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    arcount = 1 if additional else 0
    return (
        struct.pack("!HHHHHH", ident, flags, qdcount, 0, 0, arcount) + qname + struct.pack("!HH", qtype, 1) + additional
    )


def parse(reply: bytes) -> dict[str, Any]:
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
    pos = 12
    labels = []
    while reply[pos]:
        n = reply[pos]
        labels.append(reply[pos + 1 : pos + 1 + n].decode())
        pos += 1 + n
    qtype, qclass = struct.unpack("!HH", reply[pos + 1 : pos + 5])
    pos += 5
    answers = []
    for _ in range(an):
        assert reply[pos : pos + 2] == b"\xc0\x0c"  # pointer to the question's name
        rtype, rclass, ttl, length = struct.unpack("!HHIH", reply[pos + 2 : pos + 12])
        data = reply[pos + 12 : pos + 12 + length]
        answers.append((rtype, rclass, ttl, socket.inet_ntoa(data) if rtype == 1 else data))
        pos += 12 + length
    assert pos == len(reply), "trailing bytes"
    return {
        "id": ident,
        "qr": bool(flags & 0x8000),
        "aa": bool(flags & 0x0400),
        "rd": bool(flags & 0x0100),
        "rcode": flags & 0xF,
        "counts": (qd, an, ns, ar),
        "question": (".".join(labels), qtype, qclass),
        "answers": answers,
    }


def test_dns_a_record() -> None:
    reply = dns_answer(RECORDS, query("web.default.svc.clusterset.local"))

    assert reply is not None
    r = parse(reply)
    assert (r["id"], r["qr"], r["aa"], r["rd"], r["rcode"]) == (0x1234, True, True, True, 0)
    assert r["counts"] == (1, 1, 0, 0)
    assert r["question"] == ("web.default.svc.clusterset.local", 1, 1)
    assert r["answers"] == [(1, 1, 5, "10.96.0.20")]


def test_dns_name_is_case_insensitive_and_question_is_echoed_as_asked() -> None:
    reply = dns_answer(RECORDS, query("Web.Default.SVC.Cluster.Local", flags=0))

    assert reply is not None
    r = parse(reply)
    assert r["question"][0] == "Web.Default.SVC.Cluster.Local"
    assert not r["rd"]
    assert r["answers"] == [(1, 1, 5, "10.96.0.20")]


def test_dns_aaaa_of_a_known_name_is_an_empty_answer() -> None:
    reply = dns_answer(RECORDS, query("web.default.svc.cluster.local", qtype=28))

    assert reply is not None
    r = parse(reply)
    assert r["rcode"] == 0  # NOERROR: the name exists (NXDOMAIN would make a resolver give up on A too)
    assert r["counts"] == (1, 0, 0, 0)
    assert r["question"] == ("web.default.svc.cluster.local", 28, 1)


def test_dns_any_answers_the_address() -> None:
    reply = dns_answer(RECORDS, query("web.default.svc.cluster.local", qtype=255))

    assert reply is not None
    assert parse(reply)["answers"] == [(1, 1, 5, "10.96.0.20")]


@pytest.mark.parametrize(
    "name",
    [
        "nope.default.svc.cluster.local",
        "web.other.svc.cluster.local",
        "nope.default.svc.clusterset.local",
        # what a resolver with `search default.svc.cluster.local` and ndots:5 asks first
        "web.default.svc.clusterset.local.default.svc.cluster.local",
    ],
)
def test_dns_unknown_cluster_names_are_nxdomain(name: str) -> None:
    for qtype in (1, 28):
        reply = dns_answer(RECORDS, query(name, qtype))
        assert reply is not None
        r = parse(reply)
        assert (r["qr"], r["rcode"], r["counts"]) == (True, 3, (1, 0, 0, 0))
        assert r["question"] == (name, qtype, 1)


def test_dns_names_outside_the_cluster_domains_fail() -> None:
    reply = dns_answer(RECORDS, query("example.com"))

    assert reply is not None
    assert parse(reply)["rcode"] == 2  # SERVFAIL: this resolver knows nothing else


def test_dns_ignores_an_edns_record_after_the_question() -> None:
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)  # root name, OPT, UDP size, no options

    reply = dns_answer(RECORDS, query("web.default.svc.cluster.local", additional=opt))

    assert reply is not None
    r = parse(reply)
    assert r["answers"] == [(1, 1, 5, "10.96.0.20")]
    assert r["question"] == ("web.default.svc.cluster.local", 1, 1)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x12\x34\x01\x00",  # shorter than a header
        query("web.default.svc.cluster.local", flags=0x8180),  # a response, not a query
        query("web.default.svc.cluster.local", qdcount=2),
        query("web.default.svc.cluster.local", qdcount=0),
        query("web.default.svc.cluster.local")[:-3],  # truncated question
    ],
)
def test_dns_does_not_answer_what_is_not_one_query(packet: bytes) -> None:
    assert dns_answer(RECORDS, packet) is None


def test_dns_records_of_the_example(example_plan: Plan) -> None:
    records = dns_records(example_plan)

    assert set(records) == {"cluster1", "cluster2", "cluster3"}
    for cluster in ("cluster1", "cluster2", "cluster3"):
        for name in ("relay", "rebel-base"):
            ip = str(svc_of(example_plan, cluster, name).cluster_ip)
            # the local ClusterIP, whose backends span the clusters, under both names
            assert records[cluster][f"{name}.default.svc.cluster.local"] == ip
            assert records[cluster][f"{name}.default.svc.clusterset.local"] == ip
    reply = dns_answer(records["cluster1"], query("rebel-base.default.svc.clusterset.local"))
    assert reply is not None
    assert parse(reply)["answers"][0][3] == str(svc_of(example_plan, "cluster1", "rebel-base").cluster_ip)


def test_dns_records_have_no_clusterset_name_for_a_plain_service() -> None:
    a0 = pod("a", "web-0", "10.11.0.2")
    plan = plan_of(("a", [a0], [service("a", "web", "10.96.0.20", [a0])]))

    assert dns_records(plan) == {"a": {"web.default.svc.cluster.local": "10.96.0.20"}}


# --- annotation values, through `crossmesh validate` -----------------------------------------------
# (a bad affinity alone is tests/bad/42-manifest-service-bad-affinity; `global: "yes"` in-process is
# in test_validate.py; here all three annotations at once, as a user runs the command)

MESH = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: annotations
spec:
  sites:
    - name: site-a
      provider: aws
      network: 10.0.0.0/16
  clusters:
    - name: one
      id: 1
      podCIDR: 10.10.0.0/16
      nodes:
        - name: a-1
          site: site-a
          address: 10.0.1.5
          publicAddress: 203.0.113.10
      manifests: [svc.yaml]
"""

SERVICES = """\
apiVersion: v1
kind: Service
metadata:
  name: one
  annotations:
    service.cilium.io/global: "yes"
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: two
  annotations:
    service.cilium.io/global: "true"
    service.cilium.io/shared: "no"
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: three
  annotations:
    service.cilium.io/global: "true"
    service.cilium.io/affinity: Local
spec:
  ports: [{port: 80}]
"""


def test_bad_annotation_values_exit_2_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "svc.yaml").write_text(SERVICES)
    before = sorted(p.name for p in tmp_path.iterdir())

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
    report = json.loads(done.stdout)
    assert report["valid"] is False
    found = sorted((Path(p["file"]).name, p["line"], p["column"], p["path"], p["message"]) for p in report["problems"])
    assert found == [
        ("svc.yaml", 6, 5, "metadata.annotations.service.cilium.io/global", "must be true or false (found 'yes')"),
        ("svc.yaml", 16, 5, "metadata.annotations.service.cilium.io/shared", "must be true or false (found 'no')"),
        (
            "svc.yaml",
            26,
            5,
            "metadata.annotations.service.cilium.io/affinity",
            "must be local, remote or none (found 'Local')",
        ),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


# --- MCS objects against the mcs-api CRDs ----------------------------------------------------------


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected (`kubectl apply --validate=strict`): the API
    server would prune them silently, which hides a misspelt field."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def mcs_validators() -> dict[str, jsonschema.protocols.Validator]:
    assert MCS_CRDS.is_dir(), f"upstream reference {MCS_CRDS} is missing from the repository"
    out = {}
    for path in sorted(MCS_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
        assert version["served"], f"{path.name}: v1beta1 is not served"
        schema = strict(version["schema"]["openAPIV3Schema"])
        kind = crd["spec"]["names"]["kind"]
        # apiVersion and kind are fixed by the CRD; the schema only says "string"
        schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/v1beta1"}
        schema["properties"]["kind"] = {"const": kind}
        schema.setdefault("required", []).extend(["apiVersion", "kind", "metadata"])
        out[kind] = jsonschema.Draft7Validator(schema)
    assert set(out) == {"ServiceExport", "ServiceImport"}
    return out


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def mcs_problems(validators: dict[str, jsonschema.protocols.Validator], objects: list[dict[str, Any]]) -> list[str]:
    out = []
    for obj in objects:
        where = f"{obj.get('kind')} {obj.get('metadata', {}).get('namespace')}/{obj.get('metadata', {}).get('name')}"
        validator = validators.get(obj.get("kind", ""))
        if validator is None:
            out.append(f"{where}: not an MCS kind")
            continue
        out += [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
        meta = obj["metadata"]
        for field in ("name", "namespace"):
            if not DNS_LABEL.match(meta.get(field, "")):
                out.append(f"{where}: metadata.{field} {meta.get(field)!r} is not a DNS label")
        for port in obj.get("spec", {}).get("ports", []):
            number = port.get("port")
            if not DNS_LABEL.match(port.get("name", "x")) or not (isinstance(number, int) and 1 <= number <= 65535):
                out.append(f"{where}: bad port {port}")
    return out


def test_mcs_objects_of_the_example_validate(
    example_plan: Plan, mcs_validators: dict[str, jsonschema.protocols.Validator]
) -> None:
    kinds = {}
    for cluster in example_plan.clusters:
        objects = mcs.objects(example_plan, cluster)
        assert mcs_problems(mcs_validators, objects) == []
        kinds[cluster.name] = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    # every cluster imports both global services; cluster3 does not export relay (shared "false");
    # rebel-base-gcp (the ingress gateway's share for cluster3) is declared in cluster2 and cluster3
    assert kinds["cluster3"] == [
        ("ServiceExport", "rebel-base"),
        ("ServiceExport", "rebel-base-gcp"),
        ("ServiceImport", "rebel-base"),
        ("ServiceImport", "rebel-base-gcp"),
        ("ServiceImport", "relay"),
    ]
    assert kinds["cluster1"] == [
        ("ServiceExport", "rebel-base"),
        ("ServiceExport", "relay"),
        ("ServiceImport", "rebel-base"),
        ("ServiceImport", "relay"),
    ]


def test_mcs_objects_with_several_unnamed_and_udp_ports_validate(
    mcs_validators: dict[str, jsonschema.protocols.Validator],
) -> None:
    a0 = pod("a", "dns-0", "10.11.0.2", ((53, "UDP", "dns"), (53, "TCP", "dns-tcp")))
    ports = ((53, "UDP", "53", ""), (53, "TCP", "dns-tcp", "dns-tcp"))
    plan = plan_of(
        (
            "a",
            [a0],
            [
                service("a", "dns", "10.96.0.10", [a0], ports=ports, is_global=True, namespace="kube-system"),
                service("a", "web", "10.96.0.20", []),
            ],
        ),
        (
            "b",
            [],
            [service("b", "dns", "10.96.0.10", [], ports=ports, is_global=True, shared=False, namespace="kube-system")],
        ),
    )

    objects = [o for c in plan.clusters for o in mcs.objects(plan, c)]

    assert mcs_problems(mcs_validators, objects) == []
    imports = [o for o in objects if o["kind"] == "ServiceImport"]
    assert [o["spec"]["ports"] for o in imports][0] == [
        {"name": "udp-53", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    assert all(o["metadata"]["annotations"]["crossmesh.io/exported-by"] == "a" for o in imports)
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceExport"] == ["dns"]  # b does not share


def test_mcs_validator_does_reject_a_wrong_object(mcs_validators: dict[str, jsonschema.protocols.Validator]) -> None:
    bad = {
        "apiVersion": "multicluster.x-k8s.io/v1beta1",
        "kind": "ServiceImport",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ClusterIP", "ports": [{"port": "80"}], "sessionAfinity": "None"},
    }

    problems = mcs_problems(mcs_validators, [bad])

    assert any("spec/type" in p for p in problems)
    assert any("spec/ports/0/port" in p for p in problems)
    assert any("sessionAfinity" in p for p in problems)
    assert mcs_problems(mcs_validators, [{**bad, "apiVersion": "multicluster.x-k8s.io/v1alpha1"}])
