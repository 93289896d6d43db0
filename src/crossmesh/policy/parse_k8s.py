"""Kubernetes NetworkPolicy specs → the policy IR (see policy/parse.py for the defaults followed)."""

from __future__ import annotations

from typing import Any

from crossmesh.load.fields import Path, brief, dotted
from crossmesh.policy.model import (
    NS_LABEL,
    NS_LABELS_PREFIX,
    Action,
    Direction,
    Operator,
    PeerTerm,
    Policy,
    PortMatcher,
    Requirement,
    Rule,
    Selector,
)
from crossmesh.policy.parse_base import (
    IANA_SVC_NAME,
    L4_PROTOCOLS,
    NP_EGRESS,
    NP_INGRESS,
    NP_PEER,
    NP_PORT,
    NP_SPEC,
    ParserBase,
)


class NetworkPolicyParser(ParserBase):
    __slots__ = ()

    def network_policy(self, spec_raw: Any, file: str, line: int) -> list[Policy]:
        base: Path = ("spec",)
        spec = self.mapping(spec_raw, base, NP_SPEC)
        if spec is None:
            return []
        if "podSelector" not in spec:
            self.error((*base, "podSelector"), "required field 'podSelector' is missing — {} selects every pod")
        pid = self.policy_id("spec")
        subject_reqs = self.selector(spec.get("podSelector"), (*base, "podSelector"), cilium=False)
        ns_req = Requirement(NS_LABEL, Operator.IN, (self.namespace,))
        subject = Selector(subject_reqs or (), (ns_req,))
        ingress = self.listing(spec.get("ingress"), (*base, "ingress"))
        egress = self.listing(spec.get("egress"), (*base, "egress"))
        types_raw = self.listing(spec.get("policyTypes"), (*base, "policyTypes"))
        types: set[Direction] = set()
        if types_raw is None:
            # "by default Ingress will always be set and Egress will be set if the
            # NetworkPolicy has any egress rules" (Kubernetes docs, The NetworkPolicy resource).
            types = {Direction.INGRESS} | ({Direction.EGRESS} if egress else set())
        for i, t in enumerate(types_raw or []):
            if t not in ("Ingress", "Egress"):
                self.error((*base, "policyTypes", i), f"policy type {brief(t)} is not Ingress or Egress")
            elif Direction(t.lower()) in types:
                self.error((*base, "policyTypes", i), f"{t} is listed twice")
            else:
                types.add(Direction(t.lower()))
        rules: list[Rule] = []
        for section, direction, peer_field, known in (
            ("ingress", Direction.INGRESS, "from", NP_INGRESS),
            ("egress", Direction.EGRESS, "to", NP_EGRESS),
        ):
            items = ingress if direction is Direction.INGRESS else egress
            for i, raw_rule in enumerate(items or []):
                path = (*base, section, i)
                rule = self.mapping(raw_rule, path, known)
                if rule is None:
                    continue
                self.rule_base = path
                peers = self.np_peers(rule.get(peer_field), (*path, peer_field))
                ports = self.np_ports(rule.get("ports"), (*path, "ports"))
                if direction in types:
                    rules.append(Rule(pid, direction, Action.ALLOW, dotted(path), peers, ports))
            if items and direction not in types:
                self.warn(
                    (*base, section),
                    f"{section} rules are ignored: policyTypes does not list {section.capitalize()} — add it",
                )
        if subject_reqs is None:
            return []
        return [Policy(pid, file, line, subject, frozenset(types), tuple(rules))]

    def np_peers(self, raw: Any, path: Path) -> tuple[PeerTerm, ...]:
        items = self.listing(raw, path)
        if not items:
            # "If this field is empty or missing, this rule matches all sources/destinations."
            return (PeerTerm(f"(no {path[-1]}: every peer)", wildcard=True),)
        out: list[PeerTerm] = []
        for i, raw_peer in enumerate(items):
            where = (*path, i)
            peer = self.mapping(raw_peer, where, NP_PEER)
            if peer is None:
                continue
            has_pods, has_ns, has_block = ("podSelector" in peer, "namespaceSelector" in peer, "ipBlock" in peer)
            if not (has_pods or has_ns or has_block):
                self.error(where, "a peer needs podSelector, namespaceSelector or ipBlock")
                continue
            if has_block and (has_pods or has_ns):
                self.error(
                    where,
                    "ipBlock cannot be combined with podSelector or namespaceSelector in one peer — "
                    "make them two peers",
                )
                continue
            if has_block:
                block = self.mapping(peer["ipBlock"], (*where, "ipBlock"), ("cidr", "except"))
                if block is None:
                    continue
                if "cidr" not in block:
                    self.error((*where, "ipBlock", "cidr"), "required field 'cidr' is missing — add it")
                    continue
                cidr = self.cidr_block(
                    block["cidr"], block.get("except"), (*where, "ipBlock", "cidr"), (*where, "ipBlock", "except")
                )
                if cidr is not None:
                    out.append(PeerTerm(self.rel(where), cidr=cidr))
                continue
            pods = self.selector(peer.get("podSelector"), (*where, "podSelector"), cilium=False)
            if pods is None:
                continue
            if not has_ns:
                implied = (Requirement(NS_LABEL, Operator.IN, (self.namespace,)), *self.cluster_default(pods))
                out.append(PeerTerm(self.rel(where), selector=Selector(pods, implied)))
                continue
            ns = self.selector(peer.get("namespaceSelector"), (*where, "namespaceSelector"), cilium=False)
            if ns is None:
                continue
            ns_reqs = tuple(Requirement(NS_LABELS_PREFIX + r.key, r.operator, r.values) for r in ns)
            # An empty namespaceSelector selects every namespace: "a namespace label exists".
            every_ns = () if ns_reqs else (Requirement(NS_LABEL, Operator.EXISTS),)
            out.append(
                PeerTerm(self.rel(where), selector=Selector(ns_reqs + pods, every_ns + self.cluster_default(pods)))
            )
        return tuple(out)

    def np_ports(self, raw: Any, path: Path) -> tuple[PortMatcher, ...]:
        out: list[PortMatcher] = []
        for i, raw_port in enumerate(self.listing(raw, path) or []):
            where = (*path, i)
            item = self.mapping(raw_port, where, NP_PORT)
            if item is None:
                continue
            protocol = item.get("protocol") or "TCP"
            if protocol not in L4_PROTOCOLS:
                self.error((*where, "protocol"), f"protocol {brief(protocol)} is not TCP, UDP or SCTP")
                continue
            port = item.get("port")
            end = item.get("endPort")
            number: int | None = None
            name: str | None = None
            if isinstance(port, bool) or port is not None and not isinstance(port, int | str):
                self.error((*where, "port"), f"found {brief(port)}, expected a port number or a port name")
                continue
            if isinstance(port, int):
                if not 1 <= port <= 65535:
                    self.error((*where, "port"), f"port {port} is out of range 1..65535")
                    continue
                number = port
            elif isinstance(port, str):
                if port.isdigit():
                    self.error((*where, "port"), f"port {port!r} is a string — write {port} without quotes")
                    continue
                if len(port) > 15 or not IANA_SVC_NAME.fullmatch(port) or "--" in port:
                    self.error(
                        (*where, "port"),
                        f"port name {port!r} must be an IANA service name: ≤15 lower-case "
                        "letters, digits, '-', with at least one letter",
                    )
                    continue
                name = port
            end_port = None
            if end is not None:
                if isinstance(end, bool) or not isinstance(end, int):
                    self.error((*where, "endPort"), f"found {brief(end)}, expected a port number")
                    continue
                if number is None:
                    self.error((*where, "endPort"), "endPort needs a numeric port to start the range")
                    continue
                if not 1 <= end <= 65535:
                    self.error((*where, "endPort"), f"endPort {end} is out of range 1..65535")
                    continue
                if end < number:
                    self.error((*where, "endPort"), f"endPort {end} is below port {number}")
                    continue
                end_port = end
            out.append(PortMatcher(self.rel(where), str(protocol), number, end_port, name))
        return tuple(out)

    # --- Cilium ------------------------------------------------------------------------------
