"""The cloud's inbound firewall at a lab site router, from the same data `render` writes as Terraform
(plan/prerequisites.py): what arrives from the internet through the site's 1:1 NAT reaches a node only
when a prerequisite rule allows it, and the answers to what the site's nodes sent always do — stateful,
as AWS security groups, Azure NSGs, GCP firewall rules and OpenStack security groups all are. So a rule
missing from the prerequisites leaves a tunnel down in the lab, as it would in the cloud.

Rules scoped to the site network (VXLAN, health checks, API) are not enforced: the lab's site network
is a bridge whose frames skip the router's nftables, as a VPC's own traffic skips its edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address

from crossmesh import nft
from crossmesh.plan.prerequisites import ANYWHERE, InboundRule, Scope, SitePrerequisites, Targets


def comment(rule: InboundRule) -> str:
    """The comment of the rule's accept, which names the prerequisite it stands for (as nft keeps it)."""
    return nft.comment(f"allow {rule.name}")


def inbound_accepts(
    wan_if: str, prereq: SitePrerequisites | None, balancers: Mapping[str, IPv4Address] | None = None
) -> tuple[nft.Rule, ...]:
    """The accept rules of the router's forward chain for traffic the 1:1 NAT sent to a node
    (`ct status dnat`: after prerouting the destination is the node's site address).

    A load balancer's rule (targets `ingress`) takes only what was sent to the balancer's own address
    (`balancers`: gateway ref → address; `ct original ip daddr`): the balancer forwards its listeners
    to the node port, and a node's own public address does not publish that node port."""
    if prereq is None:
        return ()
    rules = []
    known = balancers or {}
    fronts = tuple(sorted({known[lb.gateway] for lb in prereq.load_balancers if lb.gateway in known}))
    for rule in prereq.inbound:
        members = prereq.members(rule.targets)
        if rule.scope is not Scope.INTERNET or not members:
            continue
        source = () if rule.source == ANYWHERE else (nft.Match(nft.Field.IP_SADDR, rule.source),)
        if rule.targets is Targets.INGRESS:
            # On AWS the rule admits the balancer's private addresses (client IP preservation off, the
            # site network as source); the lab's balancer is the router itself, which translates only
            # the destination: "came through the balancer" is the same test, said by conntrack.
            source = ()
        front = (
            (nft.Match(nft.Field.CT_ORIGINAL_IP_DADDR, nft.AnonSet(fronts)),)
            if rule.targets is Targets.INGRESS and fronts
            else ()
        )
        exprs = (
            nft.Match(nft.Field.IIFNAME, wan_if),
            nft.Match(nft.Field.CT_STATUS, nft.CtStatus.DNAT),
            nft.Match(nft.Field.IP_DADDR, nft.AnonSet(tuple(address for _, address in members))),
            *front,
            *source,
            nft.Match(nft.dport(rule.protocol.value), rule.port),
            nft.Verdict.ACCEPT,
        )
        rules.append(nft.Rule(exprs, comment(rule)))
    return tuple(rules)


def load_balancer_comment(gateway: str, port: int) -> str:
    """The comment of a load balancer's DNAT rule, whose counter `trace` and the checks read."""
    return nft.comment(f"lb {gateway} {port}")


def load_balancer_dnats(
    from_wan: nft.Match, prereq: SitePrerequisites | None, lb_addr: Mapping[str, IPv4Address]
) -> list[nft.Rule]:
    """The site's load balancers (plan/prerequisites.py): a listener's port on the balancer's address,
    DNATed to the gateway's node port on one of its nodes, picked at random per connection (a
    passthrough balancer keeps the client's address: no source NAT)."""
    out = []
    for lb in () if prereq is None else prereq.load_balancers:
        for port, node_port in lb.listeners:
            to = nft.RandomDnat(tuple((address, node_port) for _, address in lb.targets))
            match = (from_wan, nft.Match(nft.Field.IP_DADDR, lb_addr[lb.gateway]), nft.Match(nft.dport("tcp"), port))
            # counted: `trace --from local` confirms the hop by this rule's packets (a connection's first)
            out.append(nft.Rule((*match, nft.Counter(), to), load_balancer_comment(lb.gateway, port)))
    return out
