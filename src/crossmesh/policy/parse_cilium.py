"""CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy specs → the policy IR (see policy/parse.py)."""

from __future__ import annotations

from typing import Any

from crossmesh.load.fields import Path, brief, dotted
from crossmesh.policy.model import (
    CLUSTER_LABEL,
    NS_LABEL,
    RESERVED_PREFIX,
    Action,
    CidrBlock,
    Direction,
    Entity,
    HeaderMatch,
    HttpRule,
    Operator,
    PeerTerm,
    Policy,
    PolicyId,
    PortMatcher,
    Requirement,
    Rule,
    Selector,
)
from crossmesh.policy.parse_base import (
    CIDR_RULE,
    CILIUM_PROTOCOLS,
    CNP_RULE_FIELDS,
    CNP_SECTIONS,
    CNP_SPEC,
    HEADER_MATCH,
    HTTP_RULE,
    ICMP_RULE,
    L7_RULES,
    MAX_CILIUM_PORTS,
    MAX_PORT_NAME,
    PORT_DENY_RULE,
    PORT_PROTOCOL,
    PORT_RULE,
    ParserBase,
    cilium_port_name,
)


class CiliumPolicyParser(ParserBase):
    __slots__ = ()

    def cilium_policy(self, raw: dict[str, Any], file: str, line: int) -> list[Policy]:
        specs: list[tuple[Path, Any]] = []
        if raw.get("spec") is not None:
            specs.append((("spec",), raw["spec"]))
        many = self.listing(raw.get("specs"), ("specs",))
        specs += [(("specs", i), s) for i, s in enumerate(many or [])]
        if not specs:
            self.error((), f"{self.kind.value} has neither spec nor specs — add a spec with an endpointSelector")
            return []
        out = []
        for path, spec in specs:
            policy = self.cilium_spec(spec, path, file, line, dotted(path))
            if policy is not None:
                out.append(policy)
        return out

    def cilium_spec(self, raw: Any, base: Path, file: str, line: int, spec_name: str) -> Policy | None:
        spec = self.mapping(raw, base, CNP_SPEC)
        if spec is None:
            return None
        has_ep, has_node = spec.get("endpointSelector") is not None, spec.get("nodeSelector") is not None
        if has_ep == has_node:
            self.error(base, "a Cilium policy spec needs exactly one of endpointSelector and nodeSelector")
        pid = self.policy_id(spec_name)
        rules: list[Rule] = []
        section_has: dict[Direction, bool] = {Direction.INGRESS: False, Direction.EGRESS: False}
        for section, direction, action in CNP_SECTIONS:
            items = self.listing(spec.get(section), (*base, section))
            for i, raw_rule in enumerate(items or []):
                path = (*base, section, i)
                rule = self.cilium_rule(raw_rule, path, pid, direction, action)
                if rule is not None:
                    rules.append(rule)
            section_has[direction] = section_has[direction] or bool(items)
        dd = self.mapping(spec.get("enableDefaultDeny"), (*base, "enableDefaultDeny"), ("ingress", "egress")) or {}
        default_deny: set[Direction] = set()
        for direction in Direction:
            flag = dd.get(direction.value)
            if flag is not None and not isinstance(flag, bool):
                self.error(
                    (*base, "enableDefaultDeny", direction.value), f"found {brief(flag)}, expected true or false"
                )
                flag = None
            if flag if flag is not None else section_has[direction]:
                default_deny.add(direction)
        if has_node and not has_ep:
            self.warn((*base, "nodeSelector"), "host policies (nodeSelector) are not evaluated by crossmesh")
            return None
        subject = self.cilium_subject(spec.get("endpointSelector"), (*base, "endpointSelector"))
        if subject is None:
            return None
        return Policy(pid, file, line, subject, frozenset(default_deny), tuple(rules))

    def cilium_subject(self, raw: Any, path: Path) -> Selector | None:
        written = self.selector(raw, path, cilium=True)
        if written is None:
            return None
        if any(r.key.startswith(RESERVED_PREFIX) for r in written):
            self.warn(path, "an endpointSelector with reserved: labels selects no pod — crossmesh does not evaluate it")
            return None
        if not self.namespace:
            return Selector(written)
        for r in written:
            # "Kubernetes prohibits specifying the namespace in the endpointSelector" (Cilium docs,
            # Using Kubernetes Constructs in Policy → Namespaces): Cilium rejects another namespace.
            if r.key == NS_LABEL and (r.operator is not Operator.IN or r.values != (self.namespace,)):
                self.error(
                    self.namespace_key_path(raw, path),
                    f"the endpointSelector of a policy in namespace {self.namespace!r} cannot select "
                    f"another namespace ({r}) — move the policy or use a CiliumClusterwideNetworkPolicy",
                )
                return None
        implied = (
            () if any(r.key == NS_LABEL for r in written) else (Requirement(NS_LABEL, Operator.IN, (self.namespace,)),)
        )
        return Selector(written, implied)

    def namespace_key_path(self, raw: Any, path: Path) -> Path:
        """Where a selector names the namespace label, to point the problem at that line."""
        data = raw if isinstance(raw, dict) else {}
        for key in data.get("matchLabels") or {}:
            if str(key).partition(":")[2] == NS_LABEL or key == NS_LABEL:
                return (*path, "matchLabels", key)
        for i, expr in enumerate(data.get("matchExpressions") or []):
            key = str(expr.get("key", "")) if isinstance(expr, dict) else ""
            if key == NS_LABEL or key.partition(":")[2] == NS_LABEL:
                return (*path, "matchExpressions", i)
        return path

    def cilium_rule(self, raw: Any, path: Path, pid: PolicyId, direction: Direction, action: Action) -> Rule | None:
        rule = self.mapping(raw, path, CNP_RULE_FIELDS[(direction, action)])
        if rule is None:
            return None
        self.rule_base = path
        pre = "from" if direction is Direction.INGRESS else "to"
        l3 = [
            f
            for f in (
                f"{pre}Endpoints",
                f"{pre}CIDR",
                f"{pre}CIDRSet",
                f"{pre}Entities",
                f"{pre}Nodes",
                f"{pre}Groups",
                "toServices",
                "toFQDNs",
            )
            if f in rule and (direction is Direction.EGRESS or not f.startswith("to"))
        ]
        present = [f for f in l3 if rule.get(f)]
        if len(present) > 1:
            self.error(
                path,
                f"combining {present[0]} and {present[1]} in one rule is not supported by Cilium — "
                "write them as two rules",
            )
            return None
        notes: list[str] = []
        for unmodelled, why in (
            (f"{pre}Requires", "was removed in Cilium 1.19; crossmesh ignores it"),
            ("authentication", "(mutual authentication) is not evaluated by crossmesh"),
        ):
            if rule.get(unmodelled):
                self.warn((*path, unmodelled), f"{unmodelled} {why}")
                notes.append(f"{unmodelled} ignored")
        peers = self.cilium_peers(rule, path, pre, l3)
        icmps = self.listing(rule.get("icmps"), (*path, "icmps"))
        to_ports = self.listing(rule.get("toPorts"), (*path, "toPorts"))
        if icmps and to_ports:
            self.error(path, "icmps may only be present without toPorts — define a separate rule for toPorts")
            return None
        ports: list[PortMatcher] = []
        http: list[HttpRule] = []
        for i, raw_icmp in enumerate(icmps or []):
            self.mapping(raw_icmp, (*path, "icmps", i), ICMP_RULE)
            ports.append(PortMatcher(self.rel((*path, "icmps", i)), protocol="ICMP"))
        for i, raw_pr in enumerate(to_ports or []):
            got = self.cilium_port_rule(raw_pr, (*path, "toPorts", i), direction, action, notes)
            if got is not None:
                ports.extend(got[0])
                http.extend(got[1])
        if not present and not [f for f in l3 if f in rule] and (to_ports or icmps):
            # L4-only rule: "to any layer 3 destination" (Cilium docs, Layer 4 Policies).
            peers = (PeerTerm("(no L3 field: every peer)", wildcard=True),)
        if to_ports and not ports:
            return None  # every toPorts entry was wrong: reported, and not widened to "every port"
        return Rule(pid, direction, action, dotted(path), peers, tuple(ports), tuple(http), tuple(notes))

    def cilium_peers(self, rule: dict[str, Any], path: Path, pre: str, l3: list[str]) -> tuple[PeerTerm, ...]:
        out: list[PeerTerm] = []
        for i, raw_sel in enumerate(self.listing(rule.get(f"{pre}Endpoints"), (*path, f"{pre}Endpoints")) or []):
            where = (*path, f"{pre}Endpoints", i)
            written = self.selector(raw_sel, where, cilium=True)
            if written is not None:
                out.append(PeerTerm(f"{pre}Endpoints[{i}]", selector=self.cilium_peer(written)))
        for i, raw_ent in enumerate(self.listing(rule.get(f"{pre}Entities"), (*path, f"{pre}Entities")) or []):
            where = (*path, f"{pre}Entities", i)
            if raw_ent not in tuple(e.value for e in Entity):
                known = ", ".join(e.value for e in Entity)
                self.error(where, f"entity {brief(raw_ent)} is unknown (known: {known})")
                continue
            out.extend(self.entity_terms(Entity(raw_ent), f"{pre}Entities[{i}]"))
        for i, raw_cidr in enumerate(self.listing(rule.get(f"{pre}CIDR"), (*path, f"{pre}CIDR")) or []):
            net = self.cidr(raw_cidr, (*path, f"{pre}CIDR", i))
            if net is not None:
                out.append(PeerTerm(f"{pre}CIDR[{i}]", cidr=CidrBlock(net)))
        for i, raw_set in enumerate(self.listing(rule.get(f"{pre}CIDRSet"), (*path, f"{pre}CIDRSet")) or []):
            where = (*path, f"{pre}CIDRSet", i)
            item = self.mapping(raw_set, where, CIDR_RULE)
            if item is None:
                continue
            if "cidr" not in item:
                if item.get("cidrGroupRef") or item.get("cidrGroupSelector"):
                    self.warn(
                        where, "CiliumCIDRGroup references are not modelled by crossmesh; this entry matches nothing"
                    )
                else:
                    self.error(where, "a CIDR set entry needs cidr (or a cidrGroupRef)")
                continue
            block = self.cidr_block(item["cidr"], item.get("except"), (*where, "cidr"), (*where, "except"))
            if block is not None:
                out.append(PeerTerm(f"{pre}CIDRSet[{i}]", cidr=block))
        for unmodelled in (f"{pre}Nodes", f"{pre}Groups", "toServices", "toFQDNs"):
            if unmodelled in l3 and rule.get(unmodelled):
                self.warn((*path, unmodelled), f"{unmodelled} is not evaluated by crossmesh; the rule matches no peer")
        return tuple(out)

    def entity_terms(self, entity: Entity, path: str) -> list[PeerTerm]:
        """Entities as selectors over identity labels (Cilium pkg/policy/api/entity.go)."""

        def sel(key: str, op: Operator = Operator.EXISTS, *values: str) -> Selector:
            return Selector((Requirement(key, op, values),))

        host = PeerTerm(path, selector=sel("reserved:host"), entity=entity)
        remote = PeerTerm(path, selector=sel("reserved:remote-node"), entity=entity)
        if entity is Entity.ALL:
            return [PeerTerm(path, wildcard=True, entity=entity)]
        if entity is Entity.WORLD:
            return [PeerTerm(path, selector=sel("reserved:world"), entity=entity)]
        if entity is Entity.HOST:
            return [host]
        if entity is Entity.REMOTE_NODE:
            return [remote]
        if entity is Entity.CLUSTER:
            # "all network endpoints inside of the local cluster ... as well as the host,
            # remote-node ... This also includes all remote nodes in a clustermesh scenario."
            return [PeerTerm(path, selector=sel(CLUSTER_LABEL, Operator.IN, self.cluster), entity=entity), host, remote]
        if entity is Entity.CLUSTER_MESH:
            return [PeerTerm(path, selector=sel(CLUSTER_LABEL), entity=entity), host, remote]
        return []  # kube-apiserver, ingress, init, health, unmanaged, none: no such endpoint in crossmesh

    def cilium_port_rule(
        self, raw: Any, path: Path, direction: Direction, action: Action, notes: list[str]
    ) -> tuple[list[PortMatcher], list[HttpRule]] | None:
        item = self.mapping(raw, path, PORT_RULE if action is Action.ALLOW else PORT_DENY_RULE)
        if item is None:
            return None
        ports: list[PortMatcher] = []
        raw_ports = self.listing(item.get("ports"), (*path, "ports"))
        if raw_ports is not None and len(raw_ports) > MAX_CILIUM_PORTS:
            self.error(
                (*path, "ports"), f"{len(raw_ports)} ports in one entry; Cilium accepts at most {MAX_CILIUM_PORTS}"
            )
        for i, raw_port in enumerate(raw_ports or []):
            matcher = self.cilium_port(raw_port, (*path, "ports", i))
            if matcher is not None:
                ports.append(matcher)
        if raw_ports and not ports:
            return None
        if not raw_ports:
            ports.append(PortMatcher(self.rel(path)))
        for unmodelled in ("listener", "originatingTLS", "terminatingTLS", "serverNames"):
            if item.get(unmodelled):
                self.warn((*path, unmodelled), f"{unmodelled} is not evaluated by crossmesh")
                notes.append(f"{unmodelled} ignored")
        http: list[HttpRule] = []
        rules = self.mapping(item.get("rules"), (*path, "rules"), L7_RULES)
        if rules:
            kinds = [k for k in L7_RULES if rules.get(k)]
            if len(kinds) > 1:
                self.error((*path, "rules"), f"one port carries one L7 protocol; found {' and '.join(kinds)}")
            if rules.get("dns") is not None:
                if direction is Direction.INGRESS:
                    self.error((*path, "rules", "dns"), "L7 protocol DNS is not supported on ingress")
                else:
                    notes.append("DNS rules are not evaluated: every query passes")
            if rules.get("kafka"):
                self.warn((*path, "rules", "kafka"), "Kafka rules are deprecated and not evaluated by crossmesh")
                notes.append("Kafka rules are not evaluated")
            for i, raw_http in enumerate(self.listing(rules.get("http"), (*path, "rules", "http")) or []):
                rule = self.http_rule(raw_http, (*path, "rules", "http", i))
                if rule is not None:
                    http.append(rule)
        return ports, http

    def cilium_port(self, raw: Any, path: Path) -> PortMatcher | None:
        item = self.mapping(raw, path, PORT_PROTOCOL)
        if item is None:
            return None
        protocol = item.get("protocol", "ANY")
        if protocol in ("", None):
            protocol = "ANY"
        if protocol not in CILIUM_PROTOCOLS:
            self.error((*path, "protocol"), f"protocol {brief(protocol)} is not one of {', '.join(CILIUM_PROTOCOLS)}")
            return None
        port = item.get("port")
        number: int | None = None
        name: str | None = None
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, str):
                hint = f' — write "{port}"' if isinstance(port, int) and not isinstance(port, bool) else ""
                self.error((*path, "port"), f"found {brief(port)}; a Cilium port is a string{hint}")
                return None
            if len(port) > MAX_PORT_NAME:
                self.error(
                    (*path, "port"),
                    f"port {brief(port)} is {len(port)} characters: a port number or a port name "
                    f"has at most {MAX_PORT_NAME}",
                )
                return None
            if port.isascii() and port.isdigit():
                number = int(port)
                if number > 65535:
                    self.error((*path, "port"), f"port {number} is out of range 0..65535")
                    return None
            elif cilium_port_name(port):
                name = port.lower()
            else:
                self.error((*path, "port"), f"port {port!r} is neither a number nor a port name")
                return None
        end = item.get("endPort")
        end_port = None
        if end is not None and end != 0:
            if isinstance(end, bool) or not isinstance(end, int):
                self.error((*path, "endPort"), f"found {brief(end)}, expected a port number")
                return None
            if not 0 <= end <= 65535:
                self.error((*path, "endPort"), f"endPort {end} is out of range 0..65535")
                return None
            if number is not None and number != 0:
                if end < number:
                    self.error((*path, "endPort"), f"endPort {end} is below port {number}")
                    return None
                end_port = end
        l4 = None if protocol == "ANY" else str(protocol)
        # Port 0 is Cilium's "every port"; endPort is "ignored if Port is a named port".
        return PortMatcher(self.rel(path), l4, number or None, end_port, name)

    def http_rule(self, raw: Any, path: Path) -> HttpRule | None:
        item = self.mapping(raw, path, HTTP_RULE)
        if item is None:
            return None
        ok = True
        texts: dict[str, str | None] = {}
        for key in ("method", "path", "host"):
            value = item.get(key)
            if value is None or value == "":
                texts[key] = None
                continue
            text = self.string(value, (*path, key), f"the {key} regex")
            if text is None or not self.regex(text, (*path, key)):
                ok = False
            texts[key] = text
        headers: list[HeaderMatch] = []
        for i, h in enumerate(self.listing(item.get("headers"), (*path, "headers")) or []):
            text = self.string(h, (*path, "headers", i), "a header")
            if text is None:
                ok = False
                continue
            name, colon, value = text.partition(":")
            if not name.strip():
                self.error((*path, "headers", i), f"header {text!r} has no name — write 'Name' or 'Name: value'")
                ok = False
                continue
            headers.append(HeaderMatch(name.strip(), value.strip() if colon else None))
        for i, raw_hm in enumerate(self.listing(item.get("headerMatches"), (*path, "headerMatches")) or []):
            where = (*path, "headerMatches", i)
            hm = self.mapping(raw_hm, where, HEADER_MATCH)
            if hm is None:
                ok = False
                continue
            hname = hm.get("name")
            if not isinstance(hname, str) or not hname:
                self.error((*where, "name"), "required field 'name' is missing — add the header name")
                ok = False
                continue
            mismatch = hm.get("mismatch")
            if mismatch is not None and mismatch not in ("LOG", "ADD", "DELETE", "REPLACE"):
                self.error((*where, "mismatch"), f"mismatch {brief(mismatch)} is not LOG, ADD, DELETE or REPLACE")
                ok = False
                continue
            value = hm.get("value")
            if hm.get("secret") is not None and value is None:
                self.warn((*where, "secret"), "header values from secrets are not modelled; this header never matches")
            secret = hm.get("secret") is not None and value is None
            headers.append(
                HeaderMatch(hname, None if value is None else str(value), enforced=mismatch is None, secret=secret)
            )
        if not ok:
            return None
        return HttpRule(self.rel(path), texts["method"], texts["path"], texts["host"], tuple(headers))
