"""Benchmark of issue 4's policy compiler: 10,000 policies over 5,000 pods into nftables.

A generated mesh of three Cilium clusters (one Cluster Mesh, one identity domain) with
--nodes nodes, --pods pods in --namespaces namespaces and --label-sets distinct pod label
sets (each label set lives in one namespace and runs in every cluster), and --policies
policies, per cluster and namespace:
- a default deny (ingress and egress) NetworkPolicy, as the seeds write them;
- NetworkPolicies (podSelector on app / matchExpressions on tier; peers by podSelector,
  namespaceSelector, both ANDed, or ipBlock with except; TCP ports, named ports, endPort
  ranges; egress to other apps and DNS);
- CiliumNetworkPolicies (endpointSelector; fromEndpoints/toEndpoints in the namespace,
  in another namespace by `k8s:io.kubernetes.pod.namespace`, across clusters by
  `io.cilium.k8s.policy.cluster`; fromEntities; toCIDRSet with except; ingressDeny and
  egressDeny; a few L7 HTTP rules);
- a few CiliumClusterwideNetworkPolicies.

Measured in one process, each the median of --repeat runs (wall and CPU seconds):
- parse:    manifests → policy IR (`parse_manifest`, as `cluster_policies` does);
- index:    PolicyIndex construction (identities, which policies select which identity);
- compile:  for every node `compile.compile_node` + `nft_sets` + `nft_chains` (the rule
            tables are built lazily on first use, so this includes building them);
- nft load: one node's whole table (the largest), assembled as topology.node_nft does,
            loaded with `nft -f` into a fresh network namespace `cm-b4c<pid>-n` (proves the
            text is valid nftables; the namespace is deleted afterwards).
Peak RSS is the process's (getrusage), after all runs.

Usage: python3 benchmarks/bench_policy_compile.py [--policies 10000] [--pods 5000] [--repeat 3]
       [--profile]   (cProfile of one compile pass, top 25 by cumulative time)
Results: a table on stdout and benchmarks/results/policy_compile.json.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from crossmesh import nft
from crossmesh.drivers.lab import servicenat
from crossmesh.model import k8s
from crossmesh.policy import compile as compile_policy
from crossmesh.policy.endpoints import node_endpoint, pod_endpoint
from crossmesh.policy.evaluator import PolicyIndex
from crossmesh.policy.model import CILIUM_DOMAIN, Direction, Endpoint, EndpointKind, Policy
from crossmesh.policy.parse import parse_manifest

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "policy_compile.json"
CLUSTERS = ("c1", "c2", "c3")
TIERS = ("frontend", "backend", "db", "cache", "worker")
PORTS = (80, 443, 5432, 6379, 8080, 9090, 3306, 11211)
PREFIX = "cm-b4"  # interface names in the generated tables (nothing is created with them here)


@dataclass(frozen=True, slots=True)
class Mesh:
    """The generated mesh: what compile_node and node_nft read."""

    endpoints: list[Endpoint]
    manifests: dict[str, list[k8s.Manifest]]
    plan_nodes: dict[str, tuple[IPv4Address, ...]]  # node → its addresses, as topology.node_nft builds them
    local_pods: dict[str, list[tuple[int, Endpoint]]]  # node → (pod index, pod) on it
    apps: dict[str, list[str]]  # namespace → its apps


def _node_name(c: int, k: int) -> str:
    return f"{CLUSTERS[c]}-node-{k}"


def gen_mesh(rng: random.Random, args: argparse.Namespace) -> Mesh:
    namespaces = [f"ns{j:02}" for j in range(args.namespaces)]
    per_ns = max(1, args.label_sets // len(namespaces))
    label_sets: list[tuple[str, dict[str, str]]] = []
    apps: dict[str, list[str]] = {ns: [] for ns in namespaces}
    for j, ns in enumerate(namespaces):
        for m in range(per_ns):
            app = f"app{j * ((per_ns + 1) // 2) + m // 2}"
            if app not in apps[ns]:
                apps[ns].append(app)
            labels = {"app": app, "tier": TIERS[(j + m // 2) % len(TIERS)], "version": f"v{m % 2 + 1}"}
            label_sets.append((ns, labels))
    ns_labels = {ns: {"team": f"t{j % 5}", "env": "prod" if j % 3 else "staging"} for j, ns in enumerate(namespaces)}
    nodes_of = [[k for k in range(args.nodes) if k % len(CLUSTERS) == c] for c in range(len(CLUSTERS))]
    endpoints: list[Endpoint] = []
    plan_nodes: dict[str, tuple[IPv4Address, ...]] = {}
    local_pods: dict[str, list[tuple[int, Endpoint]]] = {}
    per_node: dict[int, int] = {}
    for c, _cluster in enumerate(CLUSTERS):
        for k in nodes_of[c]:
            name = _node_name(c, k)
            # node address, its pods' gateway (pod CIDR .1), tunnel address: as topology.node_nft
            addresses = (
                IPv4Address(f"10.0.{k // 250}.{k % 250 + 2}"),
                IPv4Address(f"10.{64 + k // 2}.{(k % 2) * 128}.1"),
                IPv4Address(f"100.96.{k // 250}.{k % 250 + 2}"),
            )
            plan_nodes[name] = addresses
            local_pods[name] = []
            endpoints.append(node_endpoint(name=name, cluster=CLUSTERS[c], addresses=addresses))
    for i in range(args.pods):
        c = i % len(CLUSTERS)
        ns, labels = label_sets[(i // len(CLUSTERS)) % len(label_sets)]
        k = nodes_of[c][(i // len(CLUSTERS)) % len(nodes_of[c])]
        slot = per_node.get(k, 0)
        per_node[k] = slot + 1
        address = IPv4Address(f"10.{64 + k // 2}.{(k % 2) * 128 + 2 + slot // 256}.{slot % 256}")
        ep = pod_endpoint(
            cluster=CLUSTERS[c],
            namespace=ns,
            name=f"{labels['app']}-{i}",
            labels=labels,
            node=_node_name(c, k),
            address=address,
            namespace_labels=ns_labels[ns],
            ports=((8080, "TCP", "http"), (9090, "TCP", "metrics"), (53, "UDP", "")),
        )
        endpoints.append(ep)
        local_pods[ep.node].append((i, ep))
    manifests = gen_manifests(rng, args.policies, namespaces, apps)
    return Mesh(endpoints, manifests, plan_nodes, local_pods, apps)


# --- policies ---------------------------------------------------------------------------------


def _subject(rng: random.Random, apps: list[str]) -> dict[str, Any]:
    if rng.random() < 0.1:
        return {"matchExpressions": [{"key": "tier", "operator": "In", "values": rng.sample(TIERS, 2)}]}
    return {"matchLabels": {"app": rng.choice(apps)}}


def _ports(rng: random.Random, cilium: bool) -> list[dict[str, Any]]:
    r = rng.random()
    if r < 0.1:
        port: dict[str, Any] = {"port": "http"} if not cilium else {"port": "8080", "protocol": "TCP"}
    elif r < 0.2:
        port = {"port": 8000, "endPort": 8100} if not cilium else {"port": "8000", "endPort": 8100, "protocol": "TCP"}
    else:
        port = {"port": rng.choice(PORTS)} if not cilium else {"port": str(rng.choice(PORTS)), "protocol": "TCP"}
    if not cilium:
        port.setdefault("protocol", "TCP")
    return [port]


def _np(rng: random.Random, name: str, ns: str, namespaces: list[str], apps: dict[str, list[str]]) -> dict[str, Any]:
    peers: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 2)):
        r = rng.random()
        if r < 0.55:
            peers.append({"podSelector": {"matchLabels": {"app": rng.choice(apps[ns])}}})
        elif r < 0.7:
            peers.append({"namespaceSelector": {"matchLabels": {"team": f"t{rng.randint(0, 4)}"}}})
        elif r < 0.9:
            other = rng.choice(namespaces)
            peers.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}},
                          "podSelector": {"matchLabels": {"app": rng.choice(apps[other])}}})  # fmt: skip
        else:
            net = rng.randint(0, 255)
            peers.append({"ipBlock": {"cidr": f"203.0.{net}.0/24", "except": [f"203.0.{net}.128/25"]}})
    spec: dict[str, Any] = {"podSelector": _subject(rng, apps[ns]), "policyTypes": ["Ingress"],
                            "ingress": [{"from": peers, "ports": _ports(rng, False)}]}  # fmt: skip
    if rng.random() < 0.35:
        other = rng.choice(namespaces)
        spec["policyTypes"].append("Egress")
        spec["egress"] = [
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}},
                     "podSelector": {"matchLabels": {"app": rng.choice(apps[other])}}}],
             "ports": _ports(rng, False)}
        ]  # fmt: skip
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip


def _cnp(rng: random.Random, name: str, ns: str, namespaces: list[str], apps: dict[str, list[str]]) -> dict[str, Any]:
    r = rng.random()
    rule: dict[str, Any]
    if r < 0.5:
        rule = {"fromEndpoints": [{"matchLabels": {"app": rng.choice(apps[ns])}}]}
    elif r < 0.65:
        other = rng.choice(namespaces)
        rule = {"fromEndpoints": [{"matchLabels": {"app": rng.choice(apps[other]),
                                                   "k8s:io.kubernetes.pod.namespace": other}}]}  # fmt: skip
    elif r < 0.8:
        # across clusters: the same app of this namespace in another cluster (seed 003's x-wing → rebel-base)
        rule = {"fromEndpoints": [{"matchLabels": {"app": rng.choice(apps[ns]),
                                                   "io.cilium.k8s.policy.cluster": rng.choice(CLUSTERS)}}]}  # fmt: skip
    elif r < 0.88:
        rule = {"fromEntities": [rng.choice(("world", "host", "remote-node"))]}
    else:
        net = rng.randint(0, 255)
        rule = {"fromCIDRSet": [{"cidr": f"198.51.{net}.0/24", "except": [f"198.51.{net}.0/28"]}]}
    rule["toPorts"] = [{"ports": _ports(rng, True)}]
    if rng.random() < 0.02:
        rule["toPorts"][0]["ports"] = [{"port": "8080", "protocol": "TCP"}]
        rule["toPorts"][0]["rules"] = {"http": [{"method": "GET", "path": "/public/.*"}]}
    spec: dict[str, Any] = {"endpointSelector": _subject(rng, apps[ns]), "ingress": [rule]}
    if rng.random() < 0.1:
        tier = rng.choice(TIERS)
        deny_port = {"port": str(rng.choice(PORTS)), "protocol": "TCP"}
        spec["ingressDeny"] = [{"fromEndpoints": [{"matchLabels": {"tier": tier}}],
                                "toPorts": [{"ports": [deny_port]}]}]  # fmt: skip
    r = rng.random()
    if r < 0.3:
        other = rng.choice(namespaces)
        spec["egress"] = [{"toEndpoints": [{"matchLabels": {"app": rng.choice(apps[other]),
                                                            "k8s:io.kubernetes.pod.namespace": other}}],
                           "toPorts": [{"ports": _ports(rng, True)}]}]  # fmt: skip
    elif r < 0.4:
        spec["egress"] = [{"toCIDRSet": [{"cidr": f"192.0.{rng.randint(0, 255)}.0/24"}],
                           "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]  # fmt: skip
    if rng.random() < 0.05:
        spec["egressDeny"] = [{"toCIDR": [f"169.254.{rng.randint(0, 255)}.0/24"]}]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip


def _ccnp(rng: random.Random, name: str) -> dict[str, Any]:
    spec = {"endpointSelector": {"matchLabels": {"tier": rng.choice(TIERS)}},
            "egress": [{"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system"}}],
                        "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}],
            "ingressDeny": [{"fromCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}],
                             "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]}  # fmt: skip
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def gen_manifests(
    rng: random.Random, count: int, namespaces: list[str], apps: dict[str, list[str]]
) -> dict[str, list[k8s.Manifest]]:
    out: dict[str, list[k8s.Manifest]] = {c: [] for c in CLUSTERS}
    for cluster in CLUSTERS:
        for ns in namespaces:
            raw = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "default-deny", "namespace": ns},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}  # fmt: skip
            out[cluster].append(_manifest(raw))
    made = sum(len(v) for v in out.values())
    for i in range(max(0, count - made)):
        ns = rng.choice(namespaces)
        r = rng.random()
        if r < 0.5:
            raw = _np(rng, f"np-{i}", ns, namespaces, apps)
        elif r < 0.99:
            raw = _cnp(rng, f"cnp-{i}", ns, namespaces, apps)
        else:
            raw = _ccnp(rng, f"ccnp-{i}")
        out[CLUSTERS[i % len(CLUSTERS)]].append(_manifest(raw))
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


# --- compile ----------------------------------------------------------------------------------


def node_table(policy: compile_policy.NodePolicy, pods: list[tuple[int, Endpoint]], prefix: str = PREFIX) -> str:
    """One node's `table ip crossmesh` as topology.node_nft assembles it (without services):
    anti-spoofing, then `jump netpol` from the forward and input hooks; the sets and chains
    are the compiler's own output."""
    ifaces = [f"{prefix}-v{j}" for j, _ in pods]
    addresses = [p.addresses[0] for _, p in pods if isinstance(p.addresses[0], IPv4Address)]
    spoof = tuple(
        nft.Rule(
            (
                nft.Match(nft.Field.IIFNAME, f"{prefix}-v{j}"),
                nft.Match(nft.Field.IP_SADDR, p.addresses[0], negate=True),
                nft.Counter(),
                nft.Verdict.DROP,
            ),
            f"anti-spoofing {p.ref}",
        )
        for j, p in pods
    )
    extra: tuple[nft.Item, ...] = ()
    l7_rule: tuple[nft.Rule, ...] = ()
    if policy.active:
        extra = (*compile_policy.nft_sets(policy), *compile_policy.nft_chains(ifaces, addresses))
        spoof += (nft.Rule((nft.Jump("netpol"),)),)
        l7_set, rule = compile_policy.nft_l7(policy)
        extra += (l7_set,) if l7_set is not None else ()
        l7_rule = (rule,) if rule is not None else ()
    return nft.render(
        nft.Table(
            "crossmesh",
            (
                *extra,
                nft.Chain("prerouting", l7_rule, servicenat.NAT_PREROUTING),
                nft.Chain("forward", spoof, servicenat.FILTER_FORWARD),
                nft.Chain("local_in", spoof, servicenat.FILTER_INPUT),
            ),
        )
    )


def compile_all(index: PolicyIndex, mesh: Mesh) -> dict[str, tuple[compile_policy.NodePolicy, str, float]]:
    """Per node: the compiled policy, its nft text (sets + chains, as a table) and the seconds it took."""
    out = {}
    for node in mesh.plan_nodes:
        start = time.perf_counter()
        compiled = compile_policy.compile_node(index, node, mesh.plan_nodes)
        pods = mesh.local_pods[node]
        items = compile_policy.nft_sets(compiled) + compile_policy.nft_chains(
            [f"{PREFIX}-v{j}" for j, _ in pods],
            [a for _, p in pods for a in p.addresses if isinstance(a, IPv4Address)],
        )
        text = nft.render(nft.Table("crossmesh", tuple(items)))
        out[node] = (compiled, text, time.perf_counter() - start)
    return out


def element_count(policy: compile_policy.NodePolicy) -> int:
    """Elements of the node's map and sets, as printed."""
    n = len(policy.ident) + sum(len(v) for v in policy.isolated.values())
    for parts in policy.sets.values():
        n += sum(len(elements.printed) for printed in parts for elements in printed.values())
    return n


def nft_load(text: str) -> float:
    """Seconds for `nft -f` of `text` in a fresh namespace (deleted afterwards)."""
    ns = f"cm-b4c{os.getpid()}-n"
    with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="cm-b4c-") as fh:
        fh.write(text)
        fh.flush()
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            start = time.perf_counter()
            done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", fh.name], capture_output=True, text=True)
            took = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"nft -f refused the generated table:\n{done.stderr[:4000]}")
            listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "crossmesh"],
                                    capture_output=True, text=True, check=True)  # fmt: skip
            if "chain netpol" not in listed.stdout:
                raise SystemExit("the loaded table has no netpol chain")
            return took
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def compile_breakdown(mesh: Mesh, domains: dict[str, str]) -> dict[str, float]:
    """CPU seconds of the compile stage's parts on a fresh index: the evaluator's rule tables
    (built on first use: compile_all pays for them), then compile_all without them; and the
    whole stage again with the cyclic garbage collector off, to show its share."""
    policies = parse_all(mesh.manifests)
    index = PolicyIndex(policies, mesh.endpoints, domains)
    cpu = time.process_time()
    for i in range(len(index.identities)):
        for d in Direction:
            index.rule_table(i, d)
    tables = time.process_time() - cpu
    cpu = time.process_time()
    compile_all(index, mesh)
    rest = time.process_time() - cpu
    index = PolicyIndex(policies, mesh.endpoints, domains)
    gc.collect()
    gc.disable()
    try:
        cpu = time.process_time()
        compile_all(index, mesh)
        no_gc = time.process_time() - cpu
    finally:
        gc.enable()
    return {"rule_tables": tables, "identities_and_nodes": rest, "whole_without_gc": no_gc}


CPU: dict[str, list[float]] = {}


def timed(fn: Any, *args: Any, name: str) -> tuple[float, Any]:
    """Wall time of fn(*args); its CPU time goes to CPU[name] (the machine may be shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    CPU.setdefault(name, []).append(time.process_time() - cpu)
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    mesh = gen_mesh(random.Random(args.seed), args)
    domains = dict.fromkeys(CLUSTERS, CILIUM_DOMAIN)
    runs: dict[str, list[float]] = {k: [] for k in ("parse", "index", "compile")}
    compiled: dict[str, tuple[compile_policy.NodePolicy, str, float]] = {}
    index: PolicyIndex | None = None
    rss_one = 0.0
    for _ in range(args.repeat):
        t, policies = timed(parse_all, mesh.manifests, name="parse")
        runs["parse"].append(t)
        t, index = timed(PolicyIndex, policies, mesh.endpoints, domains, name="index")
        runs["index"].append(t)
        t, compiled = timed(compile_all, index, mesh, name="compile")
        runs["compile"].append(t)
        rss_one = rss_one or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert index is not None  # noqa: S101
    breakdown = compile_breakdown(mesh, domains)
    if args.dump:
        args.dump.write_text("".join(f"# {n}\n{t}" for n, (_, t, _) in compiled.items()))
    if args.profile:
        fresh = PolicyIndex(parse_all(mesh.manifests), mesh.endpoints, domains)
        prof = cProfile.Profile()
        prof.runcall(compile_all, fresh, mesh)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    per_node = sorted(t for _, _, t in compiled.values())
    texts = {n: node_table(c, mesh.local_pods[n]) for n, (c, _, _) in compiled.items()}
    biggest = max(texts, key=lambda n: len(texts[n]))
    loads = [nft_load(texts[biggest]) for _ in range(args.repeat)]
    pods = [e for e in mesh.endpoints if e.kind is EndpointKind.POD]
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "clusters": len(CLUSTERS),
        "nodes": len(mesh.plan_nodes),
        "namespaces": args.namespaces,
        "pods": len(pods),
        "label_sets": len({(p.namespace, p.labels["app"], p.labels["tier"], p.labels["version"]) for p in pods}),
        "identities": len(index.identities),
        "policies": len(index.policies),
        "rules": sum(len(p.rules) for p in index.policies),
        "seconds": {k: statistics.median(v) for k, v in runs.items()},
        "cpu_seconds": {k: statistics.median(v) for k, v in CPU.items()},
        "per_node_seconds": {"median": statistics.median(per_node), "max": per_node[-1]},
        "nft_mb": sum(len(t) for _, t, _ in compiled.values()) / 1e6,
        "table_mb_all_nodes": sum(len(t) for t in texts.values()) / 1e6,
        "elements": {
            "total": sum(element_count(c) for c, _, _ in compiled.values()),
            "max_node": max(element_count(c) for c, _, _ in compiled.values()),
        },
        "nft_load": {"node": biggest, "mb": len(texts[biggest]) / 1e6, "seconds": statistics.median(loads)},
        "compile_breakdown_cpu_seconds": breakdown,
        "peak_rss_mb": rss_one,  # after the first run: generated manifests, IR, index and every node's text
        "load_average": list(os.getloadavg()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", type=int, default=10_000)
    p.add_argument("--pods", type=int, default=5_000)
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--label-sets", type=int, default=500)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--dump", type=Path, help="write every node's nft text to this file (to diff compilers)")
    args = p.parse_args()
    result = run(args)
    s, c = result["seconds"], result["cpu_seconds"]
    print(
        f"{result['policies']} policies ({result['rules']} rules), {result['pods']} pods, "
        f"{result['identities']} identities, {result['nodes']} nodes in {result['clusters']} clusters"
    )
    for k in ("parse", "index", "compile"):
        print(f"{k:8} {s[k]:7.3f} s  (CPU {c[k]:.3f} s)")
    pn, ld = result["per_node_seconds"], result["nft_load"]
    print(f"per node {pn['median'] * 1000:.1f} ms median, {pn['max'] * 1000:.1f} ms max")
    b = result["compile_breakdown_cpu_seconds"]
    print(
        f"  of which rule tables {b['rule_tables']:.3f} s, identities + nodes {b['identities_and_nodes']:.3f} s "
        f"(CPU); whole compile with gc off {b['whole_without_gc']:.3f} s"
    )
    print(f"nft text {result['nft_mb']:.2f} MB (sets + chains), {result['elements']['total']:,} elements")
    print(f"nft -f   {ld['seconds']:.3f} s for {ld['node']} ({ld['mb']:.2f} MB)")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB, load average {result['load_average'][0]:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
