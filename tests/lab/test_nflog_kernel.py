"""The NFLOG reader against the kernel: a namespace of its own, an nftables `log group` rule
written by `crossmesh.nft`, real packets. What the kernel logs reads back with the rule's prefix
and the packet's addresses and ports; a connection to a service address logged after its DNAT
still names the address it was sent to; and a reader that falls behind loses messages that it
counts, every one."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from crossmesh import nft
from crossmesh.drivers import nflog
from crossmesh.drivers.lab import netns
from crossmesh.observe import codes

GROUP = 77
F = nft.Field


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"cm-nflogt-{os.getpid()}"
    netns.create(name)
    try:
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "cm-d0", "type", "veth", "peer", "name", "cm-d1"],
            ["ip", "addr", "add", "10.0.0.1/24", "dev", "cm-d0"],
            ["ip", "link", "set", "cm-d0", "up"],
            ["ip", "link", "set", "cm-d1", "up"],
            ["ip", "route", "add", "10.96.0.0/16", "dev", "cm-d0"],
        ):
            done = netns.run(name, argv)
            assert done.returncode == 0, done.stderr
        yield name
    finally:
        netns.remove(name)
    assert name not in netns.listing()


def load(namespace: str, *chains: nft.Chain) -> None:
    done = netns.run(namespace, ["nft", "-f", "-"], input=nft.render(nft.Table("t", chains)))
    assert done.returncode == 0, done.stderr


def filter_output(*rules: nft.Rule) -> nft.Chain:
    return nft.Chain("out", rules, nft.Base(nft.ChainType.FILTER, nft.Hook.OUTPUT, 0))


def send(namespace: str, address: str, port: int, count: int = 1) -> None:
    sock = netns.run_in(namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        sock.bind(("10.0.0.1", 41000))
        for _ in range(count):
            sock.sendto(b"hello", (address, port))


def read_until(reader: nflog.NflogSocket, count: int, timeout: float = 5.0) -> list[nflog.LogPacket]:
    got: list[nflog.LogPacket] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        select.select([reader], [], [], 0.1)
        packets, lost = reader.read()
        assert lost == 0
        got += packets
    return got


def test_a_logged_packet_reads_back_with_its_prefix_addresses_and_ports(namespace: str) -> None:
    match = (nft.Match(F.UDP_DPORT, 5555),)
    load(namespace, filter_output(nft.Rule((*match, nft.Log(GROUP, "cm:test:out")))))
    with netns.run_in(namespace, lambda: nflog.NflogSocket(GROUP)) as reader:
        send(namespace, "10.0.0.1", 5555)
        (p,) = read_until(reader, 1)
    assert (p.prefix, p.group, p.protocol) == ("cm:test:out", GROUP, socket.IPPROTO_UDP)
    assert (p.src, p.sport, p.dst, p.dport) == ("10.0.0.1", 41000, "10.0.0.1", 5555)
    assert p.length == 20 + 8 + 5
    assert p.seq == 0 and p.outdev == socket.if_nametoindex("lo") and abs(p.time - time.time()) < 10


def test_a_flow_logged_after_dnat_names_the_service_address_it_was_sent_to(namespace: str) -> None:
    service = (nft.Match(F.IP_DADDR, nft.AnonSet((nft.model.IPv4Address("10.96.0.10"),))), nft.Match(F.UDP_DPORT, 53))
    dnat = nft.RandomDnat(((nft.model.IPv4Address("10.0.0.1"), 5353),))
    nat = nft.Chain("nat_out", (nft.Rule((*service, nft.Log(GROUP, codes.NAT), dnat)),), servicenat_output())
    new = nft.Match(F.CT_STATE, (nft.CtState.NEW,))
    load(namespace, nat, filter_output(nft.Rule((new, nft.Match(F.UDP_DPORT, 5353), nft.Log(GROUP, codes.NEW_EGRESS)))))
    with netns.run_in(namespace, lambda: nflog.NflogSocket(GROUP)) as reader:
        send(namespace, "10.96.0.10", 53)
        (p,) = read_until(reader, 1)  # the NAT message is read, kept, and not returned
    assert p.prefix == codes.NEW_EGRESS
    assert (p.dst, p.dport) == ("10.0.0.1", 5353)  # as the packet is after DNAT
    assert (p.orig_dst, p.orig_dport, p.orig_src, p.orig_sport) == ("10.96.0.10", 53, "10.0.0.1", 41000)


def servicenat_output() -> nft.Base:
    return nft.Base(nft.ChainType.NAT, nft.Hook.OUTPUT, -100)


def test_a_reader_that_falls_behind_counts_every_message_it_lost(namespace: str) -> None:
    load(namespace, filter_output(nft.Rule((nft.Match(F.UDP_DPORT, 5555), nft.Log(GROUP, "cm:flood")))))
    sent = 20_000
    reader = netns.run_in(namespace, lambda: nflog.NflogSocket(GROUP, rcvbuf=1 << 16))
    with reader:
        send(namespace, "10.0.0.1", 5555, count=sent)  # not read meanwhile: the buffer overflows
        time.sleep(0.3)  # the kernel's last batch (flushed after 50 ms)
        got: list[nflog.LogPacket] = []
        lost = 0
        while True:
            packets, gone = reader.read()
            if not packets and not gone:
                break
            got += packets
            lost += gone
        send(namespace, "10.0.0.1", 5555)  # one more: its number shows what the last overrun took
        time.sleep(0.3)
        packets, gone = reader.read()
        got += packets
        lost += gone
    assert lost > 0
    assert len(got) + lost == sent + 1
    assert [p.seq for p in got] == sorted(p.seq for p in got)


def test_a_group_already_read_in_the_namespace_is_refused_by_name(namespace: str) -> None:
    refused = pytest.raises(nflog.NflogError, match=f"NFLOG group {GROUP}: binding refused")
    with netns.run_in(namespace, lambda: nflog.NflogSocket(GROUP)), refused:
        netns.run_in(namespace, lambda: nflog.NflogSocket(GROUP))
