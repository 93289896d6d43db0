"""The NFLOG reader's parser on messages built byte by byte as the kernel writes them
(linux/netfilter/nfnetlink_log.h), on batches, on conntrack tuples, and on garbage: the flow
daemon reads a kernel socket in a loop and must never stop on one odd message."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from crossmesh.drivers import nflog


def attr(kind: int, value: bytes, *, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind | (0x8000 if nested else 0)) + value
    return raw + b"\0" * (-len(raw) % 4)


def nlmsg(kind: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, 0, 0) + body


def ipv4(src: str, dst: str, proto: int = 17, sport: int = 40000, dport: int = 53, frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 48, 1, frag, 64, proto, 0, IPv4Address(src).packed, IPv4Address(dst).packed
    )
    return header + struct.pack("!HHHH", sport, dport, 28, 0) + b"x" * 20


def packet(  # noqa: PLR0913 - one knob per attribute the kernel may send
    payload: bytes,
    prefix: str = "cm:new:egress",
    group: int = 100,
    seq: int | None = 7,
    stamp: tuple[int, int] | None = None,
    ct: bytes | None = None,
    indev: int = 3,
    outdev: int = 0,
) -> bytes:
    body = struct.pack("!BBH", 2, 0, group)
    body += attr(nflog.NFULA_PACKET_HDR, struct.pack("!HBB", 0x0800, 2, 0))
    body += attr(nflog.NFULA_PREFIX, prefix.encode() + b"\0")
    if indev:
        body += attr(nflog.NFULA_IFINDEX_INDEV, struct.pack("!I", indev))
    if outdev:
        body += attr(nflog.NFULA_IFINDEX_OUTDEV, struct.pack("!I", outdev))
    if stamp is not None:
        body += attr(nflog.NFULA_TIMESTAMP, struct.pack("!QQ", *stamp))
    if seq is not None:
        body += attr(nflog.NFULA_SEQ, struct.pack("!I", seq))
    if ct is not None:
        body += attr(nflog.NFULA_CT, ct, nested=True)
    body += attr(nflog.NFULA_PAYLOAD, payload)
    return nlmsg(nflog.MSG_PACKET, body)


def ct_tuple(src: str, dst: str, sport: int, dport: int, proto: int = 6) -> bytes:
    ip = attr(nflog.CTA_IP_V4_SRC, IPv4Address(src).packed) + attr(nflog.CTA_IP_V4_DST, IPv4Address(dst).packed)
    l4 = (
        attr(nflog.CTA_PROTO_NUM, bytes([proto]))
        + attr(nflog.CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
        + attr(nflog.CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    )
    return attr(nflog.CTA_TUPLE_IP, ip, nested=True) + attr(nflog.CTA_TUPLE_PROTO, l4, nested=True)


def test_a_logged_udp_packet_reads_back_field_by_field() -> None:
    data = packet(ipv4("10.1.0.2", "10.2.0.3"), stamp=(1700000000, 250000), outdev=5)
    got, skipped = nflog.parse(data, now=1.0)
    assert skipped == 0
    assert got == [
        nflog.LogPacket(
            prefix="cm:new:egress",
            group=100,
            time=1700000000.25,
            indev=3,
            outdev=5,
            protocol=17,
            src="10.1.0.2",
            dst="10.2.0.3",
            sport=40000,
            dport=53,
            seq=7,
            length=48,
        )
    ]


def test_without_a_timestamp_the_time_is_when_it_was_read() -> None:
    got, _ = nflog.parse(packet(ipv4("10.1.0.2", "10.2.0.3")), now=42.5)
    assert got[0].time == 42.5


def test_a_batch_ends_with_done_and_keeps_its_order() -> None:
    data = (
        packet(ipv4("10.1.0.2", "10.2.0.3", proto=6, dport=80), seq=1)
        + packet(ipv4("10.1.0.4", "10.2.0.3"), prefix="cm:deny:ingress", seq=2)
        + nlmsg(nflog.NLMSG_DONE, struct.pack("=i", 0))
    )
    got, skipped = nflog.parse(data, now=0.0)
    assert skipped == 0
    assert [(p.prefix, p.src, p.dport, p.seq) for p in got] == [
        ("cm:new:egress", "10.1.0.2", 80, 1),
        ("cm:deny:ingress", "10.1.0.4", 53, 2),
    ]


def test_the_conntrack_original_tuple_gives_the_address_before_dnat() -> None:
    orig = attr(nflog.CTA_TUPLE_ORIG, ct_tuple("10.1.0.2", "10.96.0.10", 40000, 80), nested=True)
    reply = attr(2, ct_tuple("10.2.0.3", "10.1.0.2", 8080, 40000), nested=True)  # CTA_TUPLE_REPLY
    status = attr(3, struct.pack("!I", 0x1BE))  # CTA_STATUS
    data = packet(ipv4("10.1.0.2", "10.2.0.3", proto=6, dport=8080), ct=orig + reply + status)
    (p,), _ = nflog.parse(data, now=0.0)
    assert (p.dst, p.dport) == ("10.2.0.3", 8080)
    assert (p.orig_src, p.orig_sport, p.orig_dst, p.orig_dport) == ("10.1.0.2", 40000, "10.96.0.10", 80)


def test_icmp_and_later_fragments_have_no_ports() -> None:
    data = packet(ipv4("10.1.0.2", "10.2.0.3", proto=1)) + packet(ipv4("10.1.0.2", "10.2.0.3", frag=0x00B9))
    got, _ = nflog.parse(data, now=0.0)
    assert [(p.protocol, p.sport, p.dport) for p in got] == [(1, 0, 0), (17, 0, 0)]


def test_odd_messages_are_counted_and_skipped_and_the_rest_still_read() -> None:
    good = packet(ipv4("10.1.0.2", "10.2.0.3"))
    ipv6 = packet(b"\x60" + b"\0" * 47)
    no_payload = nlmsg(nflog.MSG_PACKET, struct.pack("!BBH", 2, 0, 100) + attr(nflog.NFULA_PREFIX, b"cm:x\0"))
    bad_attr = nlmsg(nflog.MSG_PACKET, struct.pack("!BBH", 2, 0, 100) + struct.pack("=HH", 200, 9) + b"\0" * 8)
    other = nlmsg(0x0100, b"\0" * 8)  # a conntrack message: not ours
    ack = nlmsg(nflog.NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16)
    got, skipped = nflog.parse(good + ipv6 + no_payload + bad_attr + other + ack + good + good[:20], now=0.0)
    assert len(got) == 2
    assert skipped == 5  # ipv6, no payload, bad attribute, other subsystem, and the cut-short one


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_parse_never_raises_on_random_bytes(data: bytes) -> None:
    got, skipped = nflog.parse(data, now=0.0)
    assert skipped >= 0
    assert all(isinstance(p, nflog.LogPacket) for p in got)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=8))
def test_parse_never_raises_on_a_damaged_message(where: int, noise: bytes) -> None:
    orig = attr(nflog.CTA_TUPLE_ORIG, ct_tuple("10.1.0.2", "10.96.0.10", 40000, 80), nested=True)
    data = bytearray(packet(ipv4("10.1.0.2", "10.2.0.3"), ct=orig, stamp=(1, 2)))
    at = where % len(data)
    data[at : at + len(noise)] = noise
    got, skipped = nflog.parse(bytes(data), now=0.0)
    assert len(got) + skipped >= 1


def test_losses_count_gaps_exactly_and_an_overrun_at_once() -> None:
    losses = nflog.Losses()
    assert [losses.seen(s) for s in (5, 6, 9)] == [0, 0, 2]  # 7 and 8 lost
    assert losses.overrun() == 1  # counted now, before the next message shows how many
    assert losses.seen(20) == 9  # 10..19 lost: one already counted
    assert losses.overrun() + losses.seen(21) + losses.seen(22) == 1  # queued before the loss: no gap yet
    assert losses.seen(26) == 2  # 23, 24, 25: one already counted
    assert losses.seen(-1) == 0  # unnumbered
    assert losses.seen(3) == 0  # behind: the kernel's instance was made anew, nothing lost
    wrapping = nflog.Losses()
    assert wrapping.seen(0xFFFFFFFE) + wrapping.seen(1) == 2  # 0xFFFFFFFF and 0 lost


def test_the_address_before_dnat_is_filled_from_the_nat_message() -> None:
    seen = nflog.Translations(size=2)
    nat, _ = nflog.parse(packet(ipv4("10.1.0.2", "10.96.0.10", dport=53), prefix="cm:nat"), now=0.0)
    seen.learn(nat[0])
    (after,), _ = nflog.parse(packet(ipv4("10.1.0.2", "10.2.0.3", dport=5353)), now=0.0)
    filled = seen.fill(after)
    assert (filled.orig_dst, filled.orig_dport, filled.dst, filled.dport) == ("10.96.0.10", 53, "10.2.0.3", 5353)
    (direct,), _ = nflog.parse(packet(ipv4("10.1.0.2", "10.96.0.10", dport=53)), now=0.0)
    assert seen.fill(direct).orig_dst == ""  # not translated
    for sport in (1, 2):  # bounded: the oldest is forgotten
        seen.learn(nflog.LogPacket("cm:nat", 100, 0.0, 0, 0, 17, "10.9.9.9", "10.96.0.1", sport, 53))
    assert seen.fill(after).orig_dst == ""


# --- ICMP errors: the packet they quote --------------------------------------------------------


def icmp_error(  # noqa: PLR0913 - the outer packet and the ICMP header
    src: str, dst: str, quoted: bytes, *, kind: int = 3, code: int = 4, rest: bytes = b"\0\0\x05\x32"
) -> bytes:
    """An ICMP error from `src` to `dst` as the kernel sends it, quoting `quoted` (IP header + 8 bytes)."""
    body = struct.pack("!BBH", kind, code, 0) + rest + quoted
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(body), 9, 0, 64, 1, 0, IPv4Address(src).packed, IPv4Address(dst).packed
    )
    return header + body


def quote(src: str, dst: str, length: int, *, proto: int = 17, sport: int = 41000, dport: int = 9999) -> bytes:
    """The first 28 bytes of a DF packet of `length` bytes from `src` to `dst`."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, length, 1, 0x4000, 63, proto, 0, IPv4Address(src).packed, IPv4Address(dst).packed
    )
    return header + struct.pack("!HHHH", sport, dport, length - 20, 0)


def test_a_fragmentation_needed_error_gives_the_refused_packet_and_the_next_hops_mtu() -> None:
    # What the lab's node sent a pod whose 1400-byte datagram the 1330-byte VXLAN path cannot carry.
    error = icmp_error("10.10.0.1", "10.10.0.3", quote("10.10.0.3", "10.11.0.3", 1400), rest=b"\0\0\x05\x32")
    (p,), skipped = nflog.parse(packet(error, prefix="cm:mtu", indev=0, outdev=6), now=0.0)
    assert skipped == 0
    assert (p.prefix, p.protocol, p.src, p.dst, p.sport, p.dport) == ("cm:mtu", 1, "10.10.0.1", "10.10.0.3", 0, 0)
    assert (p.icmp_type, p.icmp_code, p.mtu) == (3, 4, 1330)
    inner = (p.inner_protocol, p.inner_src, p.inner_dst, p.inner_sport, p.inner_dport, p.inner_length)
    assert inner == (17, "10.10.0.3", "10.11.0.3", 41000, 9999, 1400)


def test_a_host_unreachable_error_quotes_the_packet_and_has_no_mtu() -> None:
    error = icmp_error("10.10.0.1", "10.10.0.3", quote("10.10.0.3", "10.0.1.99", 33, proto=6), code=1, rest=b"\0" * 4)
    (p,), _ = nflog.parse(packet(error, prefix="cm:noroute"), now=0.0)
    assert (p.icmp_type, p.icmp_code, p.mtu) == (3, 1, 0)
    assert (p.inner_protocol, p.inner_src, p.inner_dst, p.inner_dport) == (6, "10.10.0.3", "10.0.1.99", 9999)


def test_an_echo_quotes_nothing_and_other_protocols_have_no_icmp_fields() -> None:
    echo = icmp_error("10.10.0.3", "10.11.0.3", quote("1.2.3.4", "5.6.7.8", 100), kind=8, code=0)
    (p, q), _ = nflog.parse(packet(echo) + packet(ipv4("10.1.0.2", "10.2.0.3")), now=0.0)
    assert (p.icmp_type, p.icmp_code, p.inner_protocol, p.inner_src) == (8, 0, 0, "")
    assert (q.icmp_type, q.icmp_code, q.mtu, q.inner_protocol, q.inner_src) == (-1, -1, 0, 0, "")


def test_a_quote_cut_short_keeps_what_is_there() -> None:
    whole = quote("10.10.0.3", "10.11.0.3", 1400)
    (p, q, r), skipped = nflog.parse(
        packet(icmp_error("10.10.0.1", "10.10.0.3", whole[:19]))  # no room for the quoted header
        + packet(icmp_error("10.10.0.1", "10.10.0.3", whole[:22]))  # the header, half the ports
        + packet(icmp_error("10.10.0.1", "10.10.0.3", b"")[:24]),  # the ICMP header itself cut short
        now=0.0,
    )
    assert skipped == 0
    assert (p.mtu, p.inner_protocol, p.inner_src) == (1330, 0, "")
    assert (q.inner_src, q.inner_dst, q.inner_sport, q.inner_dport) == ("10.10.0.3", "10.11.0.3", 0, 0)
    assert (r.icmp_type, r.mtu, r.inner_protocol) == (-1, 0, 0)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=255), st.binary(max_size=80))
def test_parse_never_raises_on_any_icmp_message(kind: int, code: int, rest: bytes) -> None:
    error = icmp_error("10.10.0.1", "10.10.0.3", rest[4:], kind=kind, code=code, rest=rest[:4].ljust(4, b"\0"))
    got, skipped = nflog.parse(packet(error, prefix="cm:mtu"), now=0.0)
    assert (len(got), skipped) == (1, 0)
    (p,) = got
    assert p.icmp_type == kind and p.icmp_code == code
    assert p.inner_src == "" or p.inner_protocol == rest[4 + 9]
