"""The cloud's inbound firewall at a lab site router, from the same data `render` writes as Terraform
(plan/prerequisites.py): what arrives from the internet through the site's 1:1 NAT reaches a node only
when a prerequisite rule allows it, and the answers to what the site's nodes sent always do — stateful,
as AWS security groups, Azure NSGs, GCP firewall rules and OpenStack security groups all are. So a rule
missing from the prerequisites leaves a tunnel down in the lab, as it would in the cloud.

Rules scoped to the site network (VXLAN, health checks, API) are not enforced: the lab's site network
is a bridge whose frames skip the router's nftables, as a VPC's own traffic skips its edge.
"""

from __future__ import annotations

from crossmesh.plan.prerequisites import ANYWHERE, InboundRule, Scope, SitePrerequisites

NFT_COMMENT_MAX = 128  # nftables refuses a longer comment, and with it the whole table


def comment(rule: InboundRule) -> str:
    """The comment of the rule's accept, which names the prerequisite it stands for."""
    return f"allow {rule.name}"[:NFT_COMMENT_MAX]


def inbound_accepts(wan_if: str, prereq: SitePrerequisites | None) -> str:
    """The accept rules of the router's forward chain for traffic the 1:1 NAT sent to a node
    (`ct status dnat`: after prerouting the destination is the node's site address)."""
    if prereq is None:
        return ""
    lines = []
    for rule in prereq.inbound:
        members = prereq.members(rule.targets)
        if rule.scope is not Scope.INTERNET or not members:
            continue
        daddr = ", ".join(str(address) for _, address in members)
        saddr = "" if rule.source == ANYWHERE else f"ip saddr {rule.source} "
        lines.append(
            f'    iifname "{wan_if}" ct status dnat ip daddr {{ {daddr} }} {saddr}'
            f'{rule.protocol.value} dport {rule.port} accept comment "{comment(rule)}"\n'
        )
    return "".join(lines)
