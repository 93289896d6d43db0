"""Random (AuthorizationPolicy set, request) pairs over a mesh's pods, for the differential test.

Issue 11 asks that `policy trace` and the lab agree on at least 500 generated pairs. This module
makes the pairs and says what the evaluator expects of each; the integrator applies each case's
policies to the lab, sends the request from the source pod through the proxies and compares the
outcome with `expected`. The randomness is an input (a seeded `random.Random`), so a failing case
is replayed from its seed and number.

Values are drawn from the pods themselves (their principals, namespaces, addresses, ports), in
every form Istio matches (exact, `prefix*`, `*suffix`, `*`, CIDRs around the source), so most
rules sit near the boundary between matching and not. Every policy generated is valid: it passes
`istio.parse` and Istio's CRD schema.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network
from typing import Any, TypeVar

import yaml

from crossmesh.istio.index import AuthzVerdict, IstioIndex, Request, principal
from crossmesh.istio.model import ROOT_NAMESPACE
from crossmesh.istio.parse import cluster_policies
from crossmesh.model import k8s
from crossmesh.policy.model import Endpoint, EndpointKind

T = TypeVar("T")

METHODS = ("GET", "POST", "DELETE", "PUT")
PATHS = ("/", "/api/v1", "/api/v2/items", "/x.json", "/admin", "/admin/users")
PATH_PATTERNS = ("/", "/api/*", "*.json", "/admin", "/admin*", "*", "/api/v1")
OTHER_PORT = 8080


@dataclass(frozen=True, slots=True)
class Case:
    """One generated pair: policies (raw manifests, all in the destination's cluster) and a request
    from pod `src` to pod `dst`. `plaintext`: sent without mTLS (replay with the destination in
    PERMISSIVE mode). `method`/`path` None: a plain TCP connection."""

    number: int
    policies: tuple[dict[str, Any], ...]
    src: str
    dst: str
    port: int
    method: str | None
    path: str | None
    plaintext: bool

    def request(self, endpoints: Mapping[str, Endpoint], trust_domain: str) -> Request:
        src = endpoints[self.src]
        address = src.addresses[0]
        who = None if self.plaintext else principal(src, trust_domain)
        return Request(who, None if self.plaintext else src.namespace, address, self.port, self.method, self.path)

    def manifests(self) -> list[k8s.Manifest]:
        """The policies as the loader would type them (file `generated`, line = position)."""
        out = []
        for i, raw in enumerate(self.policies):
            obj = k8s.MODELS[raw["kind"]].model_validate(raw)
            meta = raw["metadata"]
            out.append(k8s.Manifest("generated", i + 1, raw["kind"], meta["name"], meta["namespace"], raw, obj))
        return out

    def index(self, endpoints: Mapping[str, Endpoint]) -> IstioIndex:
        authz, peer = cluster_policies(endpoints[self.dst].cluster, self.manifests())
        return IstioIndex(authz, peer)

    def yaml(self) -> str:
        return str(yaml.safe_dump_all(self.policies, sort_keys=False))


def expected(case: Case, endpoints: Mapping[str, Endpoint], trust_domain: str) -> AuthzVerdict:
    """What Istio decides for the case (the evaluator's verdict)."""
    return case.index(endpoints).authorize(endpoints[case.dst], case.request(endpoints, trust_domain))


@dataclass(frozen=True, slots=True)
class _Draw:
    rng: random.Random
    pods: Sequence[Endpoint]
    trust_domain: str

    def some(self, items: Sequence[T], most: int = 2) -> list[T]:
        return self.rng.sample(list(items), self.rng.randint(1, min(most, len(items))))

    def principals(self, src: Endpoint) -> list[str]:
        out = []
        for pod in self.some([src, *self.pods], 2):
            full = principal(pod, self.trust_domain) or ""
            td, _, rest = full.partition("/ns/")
            namespace, _, account = rest.partition("/sa/")
            out.append(
                self.rng.choice(
                    (
                        full,
                        full,
                        f"{td}/ns/{namespace}/*",
                        f"*/sa/{account}",
                        "*",
                        f"example.org/ns/{namespace}/sa/{account}",
                    )
                )
            )
        return out

    def namespaces(self, src: Endpoint) -> list[str]:
        names = sorted({p.namespace for p in self.pods} | {src.namespace})
        return [self.rng.choice((n, n, n[:2] + "*", "*" + n[-2:], "*")) for n in self.some(names, 2)]

    def blocks(self, src: Endpoint) -> list[str]:
        out = []
        for pod in self.some([src, *self.pods], 2):
            address = pod.addresses[0]
            prefix = self.rng.choice((32, 24, 16, 8))
            out.append(str(ip_network(f"{address}/{prefix}", strict=False)) if prefix != 32 else str(address))
        return out

    def ports(self, dst: Endpoint) -> list[str]:
        ports = sorted({p for p, _ in dst.named_ports.values()} | {80, OTHER_PORT})
        return [str(p) for p in self.some(ports, 2)]

    def source(self, src: Endpoint) -> dict[str, Any]:
        fields = {
            "principals": lambda: self.principals(src),
            "notPrincipals": lambda: self.principals(src),
            "namespaces": lambda: self.namespaces(src),
            "notNamespaces": lambda: self.namespaces(src),
            "ipBlocks": lambda: self.blocks(src),
            "notIpBlocks": lambda: self.blocks(src),
        }
        return {name: fields[name]() for name in self.some(sorted(fields), 2)}

    def operation(self, dst: Endpoint) -> dict[str, Any]:
        fields = {
            "ports": lambda: self.ports(dst),
            "notPorts": lambda: self.ports(dst),
            "methods": lambda: self.some(METHODS, 2),
            "notMethods": lambda: self.some(METHODS, 2),
            "paths": lambda: self.some(PATH_PATTERNS, 2),
            "notPaths": lambda: self.some(PATH_PATTERNS, 2),
        }
        return {name: fields[name]() for name in self.some(sorted(fields), 2)}

    def rule(self, src: Endpoint, dst: Endpoint) -> dict[str, Any]:
        rule: dict[str, Any] = {}
        if self.rng.random() < 0.7:
            rule["from"] = [{"source": self.source(src)} for _ in range(self.rng.randint(1, 2))]
        if self.rng.random() < 0.6:
            rule["to"] = [{"operation": self.operation(dst)} for _ in range(self.rng.randint(1, 2))]
        return rule

    def policy(self, name: str, src: Endpoint, dst: Endpoint) -> dict[str, Any]:
        namespace = self.rng.choice((dst.namespace, dst.namespace, ROOT_NAMESPACE, src.namespace))
        spec: dict[str, Any] = {"action": self.rng.choice(("ALLOW", "ALLOW", "DENY"))}
        own = sorted((k, v) for k, v in dst.labels.items() if "." not in k and "/" not in k)
        pick = self.rng.random()
        if own and pick < 0.5:
            key, value = self.rng.choice(own)
            spec["selector"] = {"matchLabels": {key: value if pick < 0.4 else value + "-other"}}
        shape = self.rng.random()
        if shape < 0.08:
            pass  # no rules: ALLOW allows nothing, DENY denies nothing
        elif shape < 0.16:
            spec["rules"] = [{}]
        else:
            spec["rules"] = [self.rule(src, dst) for _ in range(self.rng.randint(1, 3))]
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }


def generate(rng: random.Random, pods: Sequence[Endpoint], *, count: int, trust_domain: str) -> list[Case]:
    """`count` cases over `pods` (pod endpoints with addresses; others are skipped)."""
    usable = sorted(
        (p for p in pods if p.kind is EndpointKind.POD and isinstance(p.address, IPv4Address)), key=lambda p: p.ref
    )
    if len(usable) < 2:
        raise ValueError("the differential test needs at least two pods with addresses")
    draw = _Draw(rng, usable, trust_domain)
    out = []
    for n in range(count):
        src, dst = rng.sample(usable, 2)
        policies = tuple(draw.policy(f"gen-{n}-{j}", src, dst) for j in range(rng.randint(0, 3)))
        port = rng.choice(sorted({p for p, _ in dst.named_ports.values()} | {80}))
        http = rng.random() < 0.6
        out.append(
            Case(
                number=n,
                policies=policies,
                src=src.ref,
                dst=dst.ref,
                port=port,
                method=rng.choice(METHODS) if http else None,
                path=rng.choice(PATHS) if http else None,
                plaintext=rng.random() < 0.2,
            )
        )
    return out
