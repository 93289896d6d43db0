"""nftables rulesets as data: the tables, chains, sets, maps and rule expressions crossmesh uses.

Only what the lab's tables need, not a general nft model: a builder composes these values, and
`text.render` is the one place that turns them into nft's syntax. Values are typed (addresses
are `ipaddress` objects, ports and marks integers, names enums or checked identifiers), so a
builder cannot paste a stray quote or brace into a ruleset.

Set elements are the exception to "build, then serialise everything at render": a policy's
elements (millions for a large mesh) are shared by every node that hosts the identity, so they
are serialised once, when made (`text.elements`), and carried as `Elements`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network


class Family(StrEnum):
    IP = "ip"


class Type(StrEnum):
    """Data types of set keys and map values."""

    MARK = "mark"
    IPV4_ADDR = "ipv4_addr"
    INET_PROTO = "inet_proto"
    INET_SERVICE = "inet_service"
    IFNAME = "ifname"


class Proto(StrEnum):
    """Layer 4 protocols, as set elements of type `inet_proto`."""

    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class Field(StrEnum):
    """What a rule reads of a packet or its connection."""

    IP_SADDR = "ip saddr"
    IP_DADDR = "ip daddr"
    IIFNAME = "iifname"
    OIFNAME = "oifname"
    META_MARK = "meta mark"
    META_L4PROTO = "meta l4proto"
    TH_DPORT = "th dport"
    TCP_DPORT = "tcp dport"
    UDP_DPORT = "udp dport"
    UDP_SPORT = "udp sport"
    CT_MARK = "ct mark"
    CT_STATE = "ct state"
    CT_STATUS = "ct status"
    CT_ORIGINAL_IP_DADDR = "ct original ip daddr"
    ICMP_TYPE = "icmp type"
    ICMP_CODE = "icmp code"


def dport(protocol: str) -> Field:
    """The destination-port field of `tcp` or `udp` (any case)."""
    return {"tcp": Field.TCP_DPORT, "udp": Field.UDP_DPORT}[protocol.lower()]


class CtState(StrEnum):
    NEW = "new"
    ESTABLISHED = "established"
    RELATED = "related"


class CtStatus(StrEnum):
    DNAT = "dnat"


class Verdict(StrEnum):
    ACCEPT = "accept"
    DROP = "drop"
    RETURN = "return"


class RejectWith(StrEnum):
    TCP_RESET = "tcp reset"
    PORT_UNREACHABLE = "icmp type port-unreachable"


@dataclass(frozen=True, slots=True)
class SetRef:
    """A named set of the table (`@name`)."""

    name: str


@dataclass(frozen=True, slots=True)
class AnonSet:
    """An anonymous set (`{ a, b }`), in the given order."""

    values: tuple[IPv4Address | IPv4Network | int | str, ...]  # a str is an interface name


Value = int | IPv4Address | IPv4Network | str | SetRef | AnonSet | CtStatus | tuple[CtState, ...]
"""What a match compares with; a `str` is an interface name (printed quoted)."""

Key = Field | tuple[Field, ...]
"""One field, or a concatenation (`a . b`) looked up in a set."""


@dataclass(frozen=True, slots=True)
class Match:
    key: Key
    value: Value
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Counter:
    pass


@dataclass(frozen=True, slots=True)
class Jump:
    chain: str


@dataclass(frozen=True, slots=True)
class MapLookup:
    """`<key> map @<name>`: the value the map holds for the key."""

    key: Field
    map: str


@dataclass(frozen=True, slots=True)
class SetMark:
    """`meta mark set …` or `ct mark set …`."""

    target: Field
    value: int | MapLookup


class NatKind(StrEnum):
    SNAT = "snat"
    DNAT = "dnat"


@dataclass(frozen=True, slots=True)
class Nat:
    kind: NatKind
    to: IPv4Address
    port: int | None = None  # also rewrite the port (`to <address>:<port>`)


@dataclass(frozen=True, slots=True)
class RandomDnat:
    """DNAT to one of `targets` (address, port), picked at random for each new connection."""

    targets: tuple[tuple[IPv4Address, int], ...]


@dataclass(frozen=True, slots=True)
class Redirect:
    port: int


@dataclass(frozen=True, slots=True)
class Reject:
    with_: RejectWith


@dataclass(frozen=True, slots=True)
class Log:
    """`log prefix "<prefix>" group <group>`: the packet, with its prefix, to NFLOG group `group`
    (read by `crossmesh.drivers.nflog`). Not a verdict: the rule goes on. The prefix is a short
    ASCII code (`text.log_prefix`)."""

    group: int
    prefix: str


Expr = Match | Counter | Log | Jump | SetMark | Nat | RandomDnat | Redirect | Reject | Verdict


@dataclass(frozen=True, slots=True)
class Rule:
    exprs: tuple[Expr, ...]
    comment: str | None = None  # any text: the emitter makes it a valid comment (`text.comment`)


class ChainType(StrEnum):
    FILTER = "filter"
    NAT = "nat"
    ROUTE = "route"  # output hook only: a packet whose mark a rule changed is routed again


class Hook(StrEnum):
    PREROUTING = "prerouting"
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"
    POSTROUTING = "postrouting"


class Priority(StrEnum):
    """Named priorities; a number is written as such."""

    DSTNAT = "dstnat"
    SRCNAT = "srcnat"


@dataclass(frozen=True, slots=True)
class Base:
    """What makes a chain a base chain: attached to a hook (its policy is always accept here)."""

    type: ChainType
    hook: Hook
    priority: Priority | int


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()
    base: Base | None = None


@dataclass(frozen=True, slots=True)
class Elements:
    """Elements of a set or map of one type, already serialised (made by `text.elements`)."""

    key: tuple[Type, ...]
    data: Type | None
    printed: tuple[str, ...]

    def part(self, start: int, stop: int) -> Elements:
        """Elements start..stop-1, to interleave with other blocks (`concat`)."""
        return Elements(self.key, self.data, self.printed[start:stop])

    @staticmethod
    def concat(blocks: Sequence[Elements]) -> Elements:
        """The blocks' elements in one block, in order; ValueError for blocks of different types."""
        if not blocks:
            raise ValueError("no blocks to concatenate")
        first = blocks[0]
        if any(b.key != first.key or b.data is not first.data for b in blocks):
            raise ValueError("elements of different types")
        return Elements(first.key, first.data, tuple(itertools.chain.from_iterable(b.printed for b in blocks)))


@dataclass(frozen=True, slots=True)
class Set:
    name: str
    key: tuple[Type, ...]
    elements: tuple[Elements, ...] = ()  # blocks, printed in this order
    interval: bool = False
    counter: bool = False  # a counter on every element


@dataclass(frozen=True, slots=True)
class Map:
    name: str
    key: tuple[Type, ...]
    data: Type
    elements: tuple[Elements, ...] = ()


Item = Set | Map | Chain


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    items: tuple[Item, ...]  # printed in this order (sets before the chains that use them)
    family: Family = Family.IP
    comment: str | None = None


def without_logs(table: Table) -> Table:
    """`table` with every `Log` expression taken out of its rules — a lab whose flow logs are off:
    nothing reaches NFLOG, the rest (matches, counters, marks, NAT, verdicts) is the same. A rule
    left with nothing but matches (one that only logged) does nothing, so it goes too: no packet
    pays for comparing it."""

    def strip(rule: Rule) -> Rule | None:
        if not any(isinstance(e, Log) for e in rule.exprs):
            return rule
        kept = tuple(e for e in rule.exprs if not isinstance(e, Log))
        return Rule(kept, rule.comment) if not all(isinstance(e, Match) for e in kept) else None

    def chain(item: Item) -> Item:
        if not isinstance(item, Chain):
            return item
        rules = tuple(r for r in map(strip, item.rules) if r is not None)
        return Chain(item.name, rules, item.base)

    return Table(table.name, tuple(map(chain, table.items)), table.family, table.comment)
