"""The log prefixes of the lab's tables: what the kernel tells the flow daemon about each packet it logs.

A rule that forwards a new connection or drops a packet in a lab node's table (or in a site
router's firewall) also logs it to one NFLOG group (`GROUP`) with a short prefix naming why, and
for policy in which direction: the prefix is the only thing a log message carries of the rule
that wrote it. The tables write these codes (`policy.compile`, `drivers.lab.topology`,
`drivers.lab.servicenat`) and the flow daemon reads them back (`decode_prefix`), so both sides
are here, in one place.

Where a connection is recorded: on every node it crosses that hosts one of its ends, once per
end, as Hubble does (one record per endpoint): a pod's new connection to a pod on another node
is `new:egress` on the sending node and `new:ingress` on the receiving node; between two pods
of one node it is both, on that node. A connection is logged after the policy verdict let it
through (the log rule follows the verdict chains), so a `new` record is a forwarded flow.

`NAT` is not a flow: the service DNAT rule logs the connection's first packet before it
translates it, so that the reader learns the address it was sent to (the ClusterIP or node port)
when the kernel cannot attach the connection's conntrack tuple to the message (the lab's kernel
has no `NETFILTER_NETLINK_GLUE_CT`); `decode_prefix` answers None for it.

Drops no rule makes: a packet with DF set too big for the next hop (`MTU`: FRAG_NEEDED), and one
for a neighbour that never answers ARP (`NO_ROUTE`: the kernel's "no route to host"), are
dropped by the kernel's forwarding, before any chain of the forward hook sees them. The kernel
answers each with an ICMP error it sends itself (destination unreachable: fragmentation needed;
net or host unreachable), which crosses the output hook of the node (or router) that refused the
packet; the table logs those errors there. The error quotes the refused packet's IP header and
first 8 bytes (its ports), which the reader takes the flow from (`drivers.nflog`,
`observe.enrich`).
"""

from __future__ import annotations

from crossmesh.observe.flows import DropReason, Verdict

GROUP = 100
"""The NFLOG group of every log rule of the lab's node and router tables."""

EGRESS, INGRESS = "egress", "ingress"

NEW_EGRESS = "cm:new:egress"  # a local pod's new connection, allowed by its egress policy
NEW_INGRESS = "cm:new:ingress"  # a new connection to a local pod, allowed by its ingress policy
DENY_EGRESS = "cm:deny:egress"  # an egress deny rule matched
DENY_INGRESS = "cm:deny:ingress"  # an ingress deny rule matched
DEFAULT_EGRESS = "cm:default:egress"  # the pod is isolated for egress and no rule allows the flow
DEFAULT_INGRESS = "cm:default:ingress"  # the same for ingress
SPOOF = "cm:spoof"  # a pod sent from an address not its own
NO_BACKEND = "cm:nobackend"  # a Service port without a healthy backend: rejected
FIREWALL = "cm:fw:in"  # a site router's inbound firewall: unsolicited from the internet
PRIVATE_TO_INTERNET = "cm:fw:private"  # a site router: a private destination never goes to the internet
MTU = "cm:mtu"  # an ICMP fragmentation-needed this node sent: it refused a packet too big for the path
NO_ROUTE = "cm:noroute"  # an ICMP net or host unreachable this node sent: no route, or no neighbour
NAT = "cm:nat"  # the first packet of a connection to a Service, before DNAT (not a flow)

_CODES: dict[str, tuple[Verdict, DropReason, str]] = {
    NEW_EGRESS: (Verdict.FORWARDED, DropReason.NONE, EGRESS),
    NEW_INGRESS: (Verdict.FORWARDED, DropReason.NONE, INGRESS),
    DENY_EGRESS: (Verdict.DROPPED, DropReason.POLICY_DENY, EGRESS),
    DENY_INGRESS: (Verdict.DROPPED, DropReason.POLICY_DENY, INGRESS),
    DEFAULT_EGRESS: (Verdict.DROPPED, DropReason.POLICY_DENIED, EGRESS),
    DEFAULT_INGRESS: (Verdict.DROPPED, DropReason.POLICY_DENIED, INGRESS),
    SPOOF: (Verdict.DROPPED, DropReason.ANTI_SPOOFING, ""),
    NO_BACKEND: (Verdict.DROPPED, DropReason.NO_BACKEND, ""),
    FIREWALL: (Verdict.DROPPED, DropReason.NOT_ALLOWED_BY_FIREWALL, ""),
    PRIVATE_TO_INTERNET: (Verdict.DROPPED, DropReason.NO_ROUTE, ""),
    MTU: (Verdict.DROPPED, DropReason.MTU, ""),
    NO_ROUTE: (Verdict.DROPPED, DropReason.NO_ROUTE, ""),
}

# ICMP (RFC 792, RFC 1191): the errors the `MTU` and `NO_ROUTE` rules log, which their reader parses.
ICMP_DEST_UNREACH = 3  # type; its codes:
ICMP_NET_UNREACH, ICMP_HOST_UNREACH, ICMP_FRAG_NEEDED = 0, 1, 4
ICMP_QUOTING = frozenset({3, 4, 5, 11, 12})
"""The ICMP types that quote the packet they answer (its IP header and first 8 bytes): destination
unreachable, source quench, redirect, time exceeded, parameter problem."""

ICMP_ERRORS = frozenset({MTU, NO_ROUTE})
"""The codes logged on an ICMP error the node sent: the flow is the packet it quotes."""


def new(direction: str) -> str:
    """The prefix of a new connection in `direction` (`egress`, `ingress`)."""
    return {EGRESS: NEW_EGRESS, INGRESS: NEW_INGRESS}[direction]


def deny(direction: str) -> str:
    """The prefix of a drop by an explicit deny rule of `direction`."""
    return {EGRESS: DENY_EGRESS, INGRESS: DENY_INGRESS}[direction]


def default(direction: str) -> str:
    """The prefix of the final drop of an identity isolated in `direction`."""
    return {EGRESS: DEFAULT_EGRESS, INGRESS: DEFAULT_INGRESS}[direction]


def decode_prefix(prefix: str) -> tuple[Verdict, DropReason, str] | None:
    """(verdict, drop reason, policy direction or "") of a log prefix the lab's tables write;
    None for `NAT` (not a flow) and for a prefix they do not write."""
    return _CODES.get(prefix)
