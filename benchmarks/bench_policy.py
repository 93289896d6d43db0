"""Benchmark of issue 4's policy evaluator: verdicts per second over generated policies and pods.

A generated mesh of three Cilium clusters (one Cluster Mesh) with --pods pods spread over
10 namespaces and 40 apps, and --policies policies: Kubernetes NetworkPolicies (pod,
namespace and AND selectors, ipBlock with except, named ports, port ranges),
CiliumNetworkPolicies (endpoints with and without the cluster label, entities, CIDR sets,
port ranges, deny rules, L7 HTTP rules) and a few CiliumClusterwideNetworkPolicies.
Every pod namespace also gets a default deny, so most flows walk the rule tables.

Measured in one process, each the median of --repeat runs:
- parse:  raw specs → IR (what `validate` and `policy trace` do per policy);
- index:  PolicyIndex construction (identities, which policies select which identity);
- cold:   --flows random flows on a fresh index (includes building each rule table on
          first use);
- warm:   the same flows again (tables built): the steady verdict rate;
- http:   the warm rate when every flow carries an HTTP request.
Flows: pod → pod (80% of them, any cluster), pod → world, world → pod, on ports drawn
from the ports the policies and pods use.

Usage: python3 benchmarks/bench_policy.py [--policies 1000] [--pods 500] [--flows 200000] [--repeat 3]
Results: a table on stdout and benchmarks/results/policy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from crossmesh.model import k8s
from crossmesh.policy.endpoints import node_endpoint, pod_endpoint, world_endpoint
from crossmesh.policy.evaluator import PolicyIndex, evaluate
from crossmesh.policy.model import CILIUM_DOMAIN, Endpoint, HttpRequest, Policy
from crossmesh.policy.parse import parse_manifest

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "policy.json"
CLUSTERS = ("c1", "c2", "c3")
NAMESPACES = tuple(f"ns{i}" for i in range(10))
APPS = tuple(f"app{i}" for i in range(40))
TIERS = ("web", "api", "db", "cache")
PORTS = (80, 443, 5432, 6379, 8080, 9090)
ENTITIES = ("world", "cluster", "host", "remote-node", "all", "cluster-mesh")


def gen_pods(rng: random.Random, count: int) -> list[Endpoint]:
    out: list[Endpoint] = []
    for i in range(count):
        cluster = CLUSTERS[i % len(CLUSTERS)]
        c = CLUSTERS.index(cluster)
        app = rng.choice(APPS)
        labels = {"app": app, "tier": rng.choice(TIERS), "version": f"v{rng.randint(1, 3)}"}
        ports = ((80, "TCP", "http"), (rng.choice(PORTS), "TCP", "svc"), (53, "UDP", "dns"))
        out.append(
            pod_endpoint(
                cluster=cluster,
                namespace=rng.choice(NAMESPACES),
                name=f"pod-{i}",
                labels=labels,
                node=f"{cluster}-node-{i % 4}",
                address=IPv4Address(f"10.{10 + c}.{(i // 250) % 256}.{2 + i % 250}"),
                namespace_labels={"team": f"t{NAMESPACES.index(rng.choice(NAMESPACES)) % 3}"},
                ports=ports,
            )
        )
    for c, cluster in enumerate(CLUSTERS):
        for n in range(4):
            out.append(
                node_endpoint(
                    name=f"{cluster}-node-{n}",
                    cluster=cluster,
                    addresses=(IPv4Address(f"10.{c}.0.{10 + n}"), IPv4Address(f"10.{10 + c}.{n}.1")),
                )
            )
    return out


def _sel(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.2:
        return {"matchExpressions": [{"key": "tier", "operator": "In", "values": rng.sample(TIERS, 2)}]}
    return {"matchLabels": {"app": rng.choice(APPS)}}


def _np(rng: random.Random, name: str, ns: str) -> dict[str, Any]:
    peers: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.5:
            peers.append({"podSelector": _sel(rng)})
        elif kind < 0.7:
            peers.append({"namespaceSelector": {"matchLabels": {"team": f"t{rng.randint(0, 2)}"}}})
        elif kind < 0.85:
            peers.append({"namespaceSelector": {"matchLabels": {"team": "t1"}}, "podSelector": _sel(rng)})
        else:
            peers.append({"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}})
    port = rng.choice([{"port": rng.choice(PORTS)}, {"port": "http"}, {"port": 8000, "endPort": 8100}])
    spec: dict[str, Any] = {"podSelector": _sel(rng), "ingress": [{"from": peers, "ports": [port]}]}
    if rng.random() < 0.4:
        spec["egress"] = [{"to": [{"podSelector": _sel(rng)}], "ports": [{"port": rng.choice(PORTS)}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip


def _cnp(rng: random.Random, name: str, ns: str | None) -> dict[str, Any]:
    kind = "CiliumNetworkPolicy" if ns else "CiliumClusterwideNetworkPolicy"
    rule: dict[str, Any]
    choice = rng.random()
    if choice < 0.45:
        peer = {"matchLabels": {"app": rng.choice(APPS)}}
        if rng.random() < 0.5:
            peer["matchLabels"]["io.cilium.k8s.policy.cluster"] = rng.choice(CLUSTERS)
        rule = {"fromEndpoints": [peer]}
    elif choice < 0.7:
        rule = {"fromEntities": [rng.choice(ENTITIES)]}
    else:
        rule = {"fromCIDRSet": [{"cidr": "198.51.100.0/24", "except": ["198.51.100.0/28"]}]}
    port: dict[str, Any] = {"port": str(rng.choice(PORTS)), "protocol": "TCP"}
    if rng.random() < 0.2:
        port = {"port": "8000", "endPort": 8100, "protocol": "TCP"}
    rule["toPorts"] = [{"ports": [port]}]
    if rng.random() < 0.1:
        rule["toPorts"][0]["rules"] = {"http": [{"method": "GET", "path": "/public/.*"}]}
    spec: dict[str, Any] = {"endpointSelector": _sel(rng), "ingress": [rule]}
    if rng.random() < 0.15:
        spec["ingressDeny"] = [{"fromEndpoints": [{"matchLabels": {"tier": "cache"}}]}]
    if rng.random() < 0.3:
        spec["egress"] = [{"toEndpoints": [_sel(rng)], "toPorts": [{"ports": [{"port": str(rng.choice(PORTS))}]}]}]
    meta: dict[str, Any] = {"name": name} if ns is None else {"name": name, "namespace": ns}
    return {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": spec}


def gen_manifests(rng: random.Random, count: int) -> dict[str, list[k8s.Manifest]]:
    out: dict[str, list[k8s.Manifest]] = {c: [] for c in CLUSTERS}
    for cluster in CLUSTERS:
        for ns in NAMESPACES:
            raw = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "default-deny", "namespace": ns},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}  # fmt: skip
            out[cluster].append(_manifest(raw))
    made = sum(len(v) for v in out.values())
    for i in range(max(0, count - made)):
        ns = rng.choice(NAMESPACES)
        r = rng.random()
        raw = _np(rng, f"np-{i}", ns) if r < 0.5 else _cnp(rng, f"cnp-{i}", ns if r < 0.95 else None)
        out[rng.choice(CLUSTERS)].append(_manifest(raw))
    return out


def _manifest(raw: dict[str, Any]) -> k8s.Manifest:
    kind = raw["kind"]
    ns = "" if kind == "CiliumClusterwideNetworkPolicy" else raw["metadata"]["namespace"]
    return k8s.Manifest(
        "generated.yaml", 1, kind, raw["metadata"]["name"], ns, raw, k8s.MODELS[kind].model_validate(raw)
    )


def parse_all(manifests: dict[str, list[k8s.Manifest]]) -> list[Policy]:
    policies: list[Policy] = []
    for cluster, objects in manifests.items():
        for m in objects:
            got, issues = parse_manifest(m, cluster=cluster)
            errors = [i for i in issues if i.severity == "error"]
            if errors:
                raise SystemExit(f"generated policy {m.name} is invalid: {errors[0]}")
            policies.extend(got)
    return policies


def gen_flows(rng: random.Random, endpoints: list[Endpoint], count: int) -> list[tuple[Endpoint, Endpoint, int, str]]:
    pods = [e for e in endpoints if e.kind.value == "pod"]
    world = [world_endpoint(f"203.0.113.{i}") for i in range(1, 255, 7)] + [
        world_endpoint(f"198.51.100.{i}") for i in range(1, 255, 9)
    ]
    flows = []
    for _ in range(count):
        r = rng.random()
        if r < 0.8:
            src, dst = rng.choice(pods), rng.choice(pods)
        elif r < 0.9:
            src, dst = rng.choice(pods), rng.choice(world)
        else:
            src, dst = rng.choice(world), rng.choice(pods)
        port = rng.choice((*PORTS, 8050, 53))
        flows.append((src, dst, port, "UDP" if port == 53 else "TCP"))
    return flows


CPU: dict[str, list[float]] = {}


def timed(fn: Any, *args: Any, name: str = "") -> tuple[float, Any]:
    """Wall time of fn(*args); its CPU time goes to CPU[name] (the machine may be shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    if name:
        CPU.setdefault(name, []).append(time.process_time() - cpu)
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    endpoints = gen_pods(rng, args.pods)
    manifests = gen_manifests(rng, args.policies)
    flows = gen_flows(rng, endpoints, args.flows)
    domains = dict.fromkeys(CLUSTERS, CILIUM_DOMAIN)
    request = HttpRequest("GET", "/public/index.html")
    runs: dict[str, list[float]] = {k: [] for k in ("parse", "index", "cold", "warm", "http")}
    allowed = 0
    index: PolicyIndex | None = None
    for _ in range(args.repeat):
        t, policies = timed(parse_all, manifests, name="parse")
        runs["parse"].append(t)
        t, index = timed(PolicyIndex, policies, endpoints, domains, name="index")
        runs["index"].append(t)

        def pass_(req: HttpRequest | None, idx: PolicyIndex = index) -> int:
            return sum(evaluate(idx, s, d, p, proto, req).allowed for s, d, p, proto in flows)

        t, allowed = timed(pass_, None, name="cold")
        runs["cold"].append(t)
        t, _ = timed(pass_, None, name="warm")
        runs["warm"].append(t)
        t, _ = timed(pass_, request, name="http")
        runs["http"].append(t)
    assert index is not None
    med = {k: statistics.median(v) for k, v in runs.items()}
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "policies": len(index.policies),
        "pods": sum(1 for e in endpoints if e.kind.value == "pod"),
        "identities": len(index.identities),
        "rules": sum(len(p.rules) for p in index.policies),
        "flows": len(flows),
        "allowed": allowed,
        "seconds": med,
        "cpu_seconds": cpu,
        "verdicts_per_second": {k: len(flows) / med[k] for k in ("cold", "warm", "http")},
        "verdicts_per_cpu_second": {k: len(flows) / cpu[k] for k in ("cold", "warm", "http")},
        "load_average": list(os.getloadavg()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", type=int, default=1000)
    p.add_argument("--pods", type=int, default=500)
    p.add_argument("--flows", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=4)
    args = p.parse_args()
    result = run(args)
    s, v, c = result["seconds"], result["verdicts_per_second"], result["verdicts_per_cpu_second"]
    print(
        f"{result['policies']} policies ({result['rules']} rules), {result['pods']} pods "
        f"({result['identities']} identities), {result['flows']} flows, {result['allowed']} allowed"
    )
    print(f"parse {s['parse'] * 1000:8.1f} ms    index {s['index'] * 1000:8.1f} ms")
    for k in ("cold", "warm", "http"):
        print(f"{k:5} {s[k]:8.3f} s  {v[k]:12,.0f} verdicts/s   {c[k]:12,.0f} per CPU second")
    print(f"load average {result['load_average'][0]:.2f} on {os.cpu_count()} CPUs")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
