"""NFLOG reader: the packets nftables' `log group N` rules send to user space, in pure Python.

pyroute2 (0.9) has no nfnetlink_log, and libnetfilter_log is a C library; the protocol is small:
a `NETLINK_NETFILTER` socket, three configuration messages (bind the group, copy the first
`copy_range` bytes of each packet, number the messages), then packet messages of netlink
attributes (linux/netfilter/nfnetlink_log.h). `parse` reads them and is pure (a unit test feeds
it crafted and random bytes); `NflogSocket` is the thin shell around a socket.

The socket belongs to the network namespace of the thread that opens it: the lab's flow daemon
enters a node's namespace in a thread (`lab.netns`) and opens one socket there per node.

Losses are counted, never hidden: the kernel numbers each instance's messages (NFULA_SEQ), so a
gap says exactly how many were lost; a receive-buffer overrun (ENOBUFS) is counted at once as
one, and made exact by the gap that follows it.

Where the connection went before DNAT: with `NFULNL_CFG_F_CONNTRACK` the kernel attaches the
conntrack tuples (NFULA_CT), but only a kernel built with NETFILTER_NETLINK_GLUE_CT does (the
lab's does not: the flag is refused with EOPNOTSUPP, and the socket opens without it). The lab's
service DNAT rules therefore log the first packet of each connection before they translate it
(`observe.codes.NAT`); the socket keeps those addresses (bounded) and fills `orig_dst` of the
later messages of the same connection from them, and does not return the NAT messages.

ICMP errors quote the packet they answer (its IP header and first 8 bytes: the ports). The lab's
tables log the errors a node sends for the packets its forwarding refuses (fragmentation needed,
net or host unreachable: `observe.codes.MTU`, `NO_ROUTE`), and the flow is the refused packet:
`parse` reads the quote (`inner_*`) and, for fragmentation needed, the next hop's MTU. A copy of
96 bytes holds it all (20 + 8 + 20 + 8 without IP options).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from types import TracebackType

from crossmesh.observe import codes

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

# enum nfulnl_attr_type
NFULA_PACKET_HDR = 1
NFULA_MARK = 2
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_SEQ = 12
NFULA_CT = 18

# enum nfulnl_msg_config_cmds, enum nfulnl_attr_config, modes and flags
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND, NFULNL_CFG_CMD_PF_BIND, NFULNL_CFG_CMD_PF_UNBIND = 1, 2, 3, 4
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT = 1, 2, 3, 4
NFULA_CFG_QTHRESH, NFULA_CFG_FLAGS = 5, 6
_CONFIGS = {1: "binding", 2: "copy mode", 3: "buffer size", 4: "flush timeout", 5: "batch size", 6: "flags"}
NFULNL_COPY_PACKET = 0x02
NFULNL_CFG_F_SEQ, NFULNL_CFG_F_CONNTRACK = 0x0001, 0x0004

# nfnetlink_conntrack.h: enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_ORIG = 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3

SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module does not name it
PORTS = frozenset({6, 17, 132})  # TCP, UDP, SCTP: ports are the first four bytes of their header
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: native byte order, as every netlink header
_NLA = struct.Struct("=HH")
_NFGEN = struct.Struct("!BBH")  # nfgenmsg: family, version, res_id (the group, big-endian)


@dataclass(frozen=True, slots=True)
class LogPacket:
    """One logged packet: the rule's prefix, where and when, and its IPv4 header's addresses and ports."""

    prefix: str  # the nft rule's log prefix
    group: int
    time: float  # NFULA_TIMESTAMP if present, else the time it was read
    indev: int  # ifindex, 0 if absent
    outdev: int
    protocol: int  # IP protocol number
    src: str  # addresses as in the packet (after DNAT where logged after it)
    dst: str
    sport: int  # 0 when not TCP/UDP/SCTP
    dport: int
    orig_dst: str = ""  # the connection's destination before DNAT, "" if unknown
    orig_dport: int = 0
    orig_src: str = ""
    orig_sport: int = 0
    seq: int = -1  # NFULA_SEQ (per-instance sequence) for counting losses
    length: int = 0  # IP total length
    mark: int = 0  # the packet's meta mark (NFULA_MARK)
    icmp_type: int = -1  # an ICMP message's type and code; -1 for any other protocol
    icmp_code: int = -1
    mtu: int = 0  # fragmentation needed: the next hop's MTU (RFC 1191); 0 otherwise
    inner_protocol: int = 0  # an ICMP error's quote of the packet it answers; 0: no quote
    inner_src: str = ""
    inner_dst: str = ""
    inner_sport: int = 0  # 0 when not TCP/UDP/SCTP, a later fragment, or cut short
    inner_dport: int = 0
    inner_length: int = 0  # the quoted packet's IP total length: how big it was


@dataclass(frozen=True, slots=True)
class _Icmp:
    type: int = -1
    code: int = -1
    mtu: int = 0
    protocol: int = 0
    src: str = ""
    dst: str = ""
    sport: int = 0
    dport: int = 0
    length: int = 0


class _Malformed(Exception):
    pass


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """Netlink attributes of data[start:end] by type (the first of each type wins)."""
    out: dict[int, bytes] = {}
    pos = start
    while pos + _NLA.size <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < _NLA.size or pos + length > end:
            raise _Malformed
        out.setdefault(kind & NLA_TYPE_MASK, data[pos + _NLA.size : pos + length])
        pos += (length + 3) & ~3
    return out


def _be(value: bytes | None, size: int) -> int | None:
    if value is None or len(value) < size:
        return None
    return int.from_bytes(value[:size], "big")


def _ip(value: bytes | None) -> str:
    return str(IPv4Address(value[:4])) if value is not None and len(value) >= 4 else ""


def _orig_tuple(ct: bytes) -> tuple[str, str, int, int]:
    """(source, destination, source port, destination port) of a conntrack's original tuple."""
    tup = _attrs(ct, 0, len(ct)).get(CTA_TUPLE_ORIG)
    if tup is None:
        return "", "", 0, 0
    parts = _attrs(tup, 0, len(tup))
    ip = parts.get(CTA_TUPLE_IP, b"")
    proto = parts.get(CTA_TUPLE_PROTO, b"")
    ips, l4 = _attrs(ip, 0, len(ip)), _attrs(proto, 0, len(proto))
    sport = _be(l4.get(CTA_PROTO_SRC_PORT), 2) or 0
    dport = _be(l4.get(CTA_PROTO_DST_PORT), 2) or 0
    return _ip(ips.get(CTA_IP_V4_SRC)), _ip(ips.get(CTA_IP_V4_DST)), sport, dport


def _ports(ip: bytes, start: int) -> tuple[int, int]:
    """(source, destination) port of the IPv4 packet at ip[start:], (0, 0) if it has none or is cut short."""
    ihl = (ip[start] & 0x0F) * 4
    protocol = ip[start + 9]
    fragment = int.from_bytes(ip[start + 6 : start + 8], "big") & 0x1FFF
    if protocol in PORTS and fragment == 0 and ihl >= 20 and len(ip) >= start + ihl + 4:
        sport, dport = struct.unpack_from("!HH", ip, start + ihl)
        return sport, dport
    return 0, 0


def _icmp(payload: bytes, ihl: int) -> _Icmp:
    """The ICMP header at payload[ihl:] and, for an error, the packet it quotes (what is there of it)."""
    if len(payload) < ihl + 8:
        return _Icmp()
    kind, code = payload[ihl], payload[ihl + 1]
    mtu = 0
    if kind == codes.ICMP_DEST_UNREACH and code == codes.ICMP_FRAG_NEEDED:
        mtu = int.from_bytes(payload[ihl + 6 : ihl + 8], "big")
    q = ihl + 8
    if kind not in codes.ICMP_QUOTING or len(payload) < q + 20 or payload[q] >> 4 != 4:
        return _Icmp(kind, code, mtu)
    sport, dport = _ports(payload, q)
    return _Icmp(
        kind,
        code,
        mtu,
        protocol=payload[q + 9],
        src=_ip(payload[q + 12 : q + 16]),
        dst=_ip(payload[q + 16 : q + 20]),
        sport=sport,
        dport=dport,
        length=int.from_bytes(payload[q + 2 : q + 4], "big"),
    )


def _packet(group: int, attrs: dict[int, bytes], now: float) -> LogPacket:
    payload = attrs.get(NFULA_PAYLOAD, b"")
    if len(payload) < 20 or payload[0] >> 4 != 4:
        raise _Malformed  # the socket is bound for IPv4 only: anything else is not ours
    ihl = (payload[0] & 0x0F) * 4
    protocol = payload[9]
    fragment = int.from_bytes(payload[6:8], "big") & 0x1FFF
    sport, dport = _ports(payload, 0)
    icmp = _icmp(payload, ihl) if protocol == 1 and fragment == 0 and ihl >= 20 else _Icmp()
    stamp = attrs.get(NFULA_TIMESTAMP)
    when = now
    if stamp is not None and len(stamp) >= 16:
        sec, usec = struct.unpack_from("!QQ", stamp)
        when = sec + usec / 1e6
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
    seq = _be(attrs.get(NFULA_SEQ), 4)
    orig = ("", "", 0, 0)
    ct = attrs.get(NFULA_CT)
    if ct is not None:
        orig = _orig_tuple(ct)
    return LogPacket(
        prefix=prefix,
        group=group,
        time=when,
        indev=_be(attrs.get(NFULA_IFINDEX_INDEV), 4) or 0,
        outdev=_be(attrs.get(NFULA_IFINDEX_OUTDEV), 4) or 0,
        protocol=protocol,
        src=_ip(payload[12:16]),
        dst=_ip(payload[16:20]),
        sport=sport,
        dport=dport,
        orig_src=orig[0],
        orig_dst=orig[1],
        orig_sport=orig[2],
        orig_dport=orig[3],
        seq=-1 if seq is None else seq,
        length=int.from_bytes(payload[2:4], "big"),
        mark=_be(attrs.get(NFULA_MARK), 4) or 0,
        icmp_type=icmp.type,
        icmp_code=icmp.code,
        mtu=icmp.mtu,
        inner_protocol=icmp.protocol,
        inner_src=icmp.src,
        inner_dst=icmp.dst,
        inner_sport=icmp.sport,
        inner_dport=icmp.dport,
        inner_length=icmp.length,
    )


def _messages(data: bytes) -> Iterator[tuple[int, int, int] | None]:
    """(type, start, end) of each netlink message in a buffer; None for one that is cut short,
    which ends the buffer (nothing after it can be found)."""
    pos = 0
    while pos < len(data):
        if pos + _NLMSG.size > len(data):
            yield None
            return
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size or pos + length > len(data):
            yield None
            return
        yield kind, pos + _NLMSG.size, pos + length
        pos += (length + 3) & ~3


def parse(data: bytes, now: float | None = None) -> tuple[list[LogPacket], int]:
    """The logged packets in one receive buffer, and how many messages were skipped as malformed
    or not NFLOG packets (netlink's DONE, NOOP and acknowledgements are not counted). Pure but
    for the clock, read once when `now` is not given; never raises on garbage."""
    when = time.time() if now is None else now
    packets: list[LogPacket] = []
    skipped = 0
    for message in _messages(data):
        if message is None:
            skipped += 1
            break
        kind, start, end = message
        if kind in (NLMSG_NOOP, NLMSG_DONE):
            continue
        if kind == NLMSG_ERROR and end - start >= 4 and struct.unpack_from("=i", data, start)[0] == 0:
            continue  # an acknowledgement
        if kind != MSG_PACKET or end - start < _NFGEN.size:
            skipped += 1
            continue
        _family, _version, group = _NFGEN.unpack_from(data, start)
        try:
            packets.append(_packet(group, _attrs(data, start + _NFGEN.size, end), when))
        except (_Malformed, ValueError, struct.error):
            skipped += 1
    return packets, skipped


# --- the socket ----------------------------------------------------------------------------------


def _config(group: int, family: int, *attrs: tuple[int, bytes]) -> bytes:
    body = _NFGEN.pack(family, 0, group)
    for kind, value in attrs:
        attr = _NLA.pack(_NLA.size + len(value), kind) + value
        body += attr + b"\0" * (-len(attr) % 4)
    return _NLMSG.pack(_NLMSG.size + len(body), MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 0, 0) + body


class NflogError(OSError):
    """The socket could not be opened or configured (no NFLOG support, the group taken, no privilege)."""


class Losses:
    """Messages lost, from the kernel's sequence numbers and the socket's overruns: an overrun
    counts one at once; the next gap counts the rest, so the total comes out exact."""

    def __init__(self) -> None:
        self._next: int | None = None
        self._credit = 0  # overruns counted before the gap that measures them

    def overrun(self) -> int:
        self._credit += 1
        return 1

    def seen(self, seq: int) -> int:
        """Messages lost before the one numbered `seq` (-1: unnumbered), less overruns already counted."""
        if seq < 0:
            return 0
        gap = 0
        if self._next is not None:
            gap = (seq - self._next) & 0xFFFFFFFF
            if gap >= 1 << 31:  # behind the last one: a restart or reordering, not a loss
                gap = 0
        self._next = (seq + 1) & 0xFFFFFFFF
        # An overrun is reported before the messages still queued ahead of the loss are read,
        # so its credit waits for the gap, however many messages without one come first.
        counted = min(gap, self._credit)
        self._credit -= counted
        return gap - counted


class Translations:
    """The pre-DNAT destination of recent connections, by (protocol, source, source port),
    learned from `codes.NAT` messages; at most `size`, the oldest forgotten first."""

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self._seen: dict[tuple[int, str, int], tuple[str, int]] = {}

    def learn(self, p: LogPacket) -> None:
        key = (p.protocol, p.src, p.sport)
        self._seen.pop(key, None)
        self._seen[key] = (p.dst, p.dport)
        if len(self._seen) > self.size:
            del self._seen[next(iter(self._seen))]

    def fill(self, p: LogPacket) -> LogPacket:
        if p.orig_dst:
            return p
        got = self._seen.get((p.protocol, p.src, p.sport))
        if got is None or got == (p.dst, p.dport):
            return p
        return replace(p, orig_dst=got[0], orig_dport=got[1], orig_src=p.src, orig_sport=p.sport)


class NflogSocket:
    """An NFLOG group's packets in the calling thread's network namespace; a context manager.

    `flush` is how long the kernel may hold messages to send them in one batch (it rounds to
    hundredths of a second; its default is a whole second), `batch` how many at most; `nlbufsiz`
    the size of a batch's buffer in the kernel."""

    def __init__(  # noqa: PLR0913 - the kernel's knobs, all with defaults
        self,
        group: int,
        copy_range: int = 96,
        rcvbuf: int = 4 << 20,
        *,
        flush: float = 0.05,
        batch: int = 64,
        nlbufsiz: int = 65536,
    ) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"group: {group} is not an NFLOG group (0-65535)")
        self.group = group
        self.conntrack = False  # whether the kernel attaches conntrack tuples (NFULA_CT)
        self.malformed = 0  # messages skipped since open
        self.lost = 0  # messages lost since open
        self._losses = Losses()
        self._translations = Translations()
        self._buf = bytearray(1 << 18)
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._open(copy_range, rcvbuf, flush, batch, nlbufsiz)
        except BaseException:
            self._sock.close()
            raise

    def _open(self, copy_range: int, rcvbuf: int, flush: float, batch: int, nlbufsiz: int) -> None:
        s = self._sock
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # past rmem_max: root
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((0, 0))
        s.settimeout(2.0)
        # PF_UNBIND / PF_BIND make NFLOG the namespace's default IPv4 logger, as libnetfilter_log's
        # users do; `log group` rules reach it without, so a refusal is not fatal.
        self._command(socket.AF_INET, 0, NFULNL_CFG_CMD_PF_UNBIND, quiet=True)
        self._command(socket.AF_INET, 0, NFULNL_CFG_CMD_PF_BIND, quiet=True)
        self._command(socket.AF_UNSPEC, self.group, NFULNL_CFG_CMD_BIND)
        for attr in (
            (NFULA_CFG_MODE, struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0)),
            (NFULA_CFG_NLBUFSIZ, struct.pack("!I", nlbufsiz)),
            (NFULA_CFG_TIMEOUT, struct.pack("!I", max(1, round(flush * 100)))),  # hundredths of a second
            (NFULA_CFG_QTHRESH, struct.pack("!I", batch)),
        ):
            self._request(_config(self.group, socket.AF_UNSPEC, attr))
        flags = NFULNL_CFG_F_SEQ | NFULNL_CFG_F_CONNTRACK
        g = self.group
        for _attempt in range(2):  # EAGAIN: the kernel loaded ctnetlink's glue just now
            err = self._request(_config(g, socket.AF_UNSPEC, (NFULA_CFG_FLAGS, struct.pack("!H", flags))), quiet=True)
            if err != errno.EAGAIN:
                break
        self.conntrack = err == 0
        if not self.conntrack:
            self._request(_config(g, socket.AF_UNSPEC, (NFULA_CFG_FLAGS, struct.pack("!H", NFULNL_CFG_F_SEQ))))
        s.setblocking(False)

    def _command(self, family: int, group: int, command: int, *, quiet: bool = False) -> int:
        return self._request(_config(group, family, (NFULA_CFG_CMD, bytes([command]))), quiet=quiet)

    def _request(self, message: bytes, *, quiet: bool = False) -> int:
        """Send one configuration message and wait for its acknowledgement; its error number (0: done)."""
        self._sock.send(message)
        while True:
            data = self._sock.recv(65536)
            for got in _messages(data):
                if got is None:
                    break
                kind, start, end = got
                if kind == NLMSG_ERROR and end - start >= 4:
                    err: int = -struct.unpack_from("=i", data, start)[0]
                    if err and not quiet:
                        what = _CONFIGS.get(struct.unpack_from("=HH", message, _NLMSG.size + _NFGEN.size)[1], "")
                        hint = " (another socket of this namespace reads it)" if err == errno.EBUSY else ""
                        raise NflogError(err, f"NFLOG group {self.group}: {what} refused{hint}: {os.strerror(err)}")
                    return err

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, *, buffers: int = 1024) -> tuple[list[LogPacket], int]:
        """Every packet the kernel has sent so far (never blocks), and how many were lost since
        the last read: an overrun counts as one at once, a sequence gap exactly. At most
        `buffers` receive buffers (a batch of up to 64 messages each), so that a flood does not
        hold the caller forever: the socket stays readable while more waits."""
        packets: list[LogPacket] = []
        lost = 0
        for _ in range(buffers):
            try:
                size = self._sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                lost += self._losses.overrun()
                continue
            got, skipped = parse(bytes(self._buf[:size]))
            self.malformed += skipped
            for p in got:
                lost += self._losses.seen(p.seq)
                if p.prefix == codes.NAT:
                    self._translations.learn(p)
                else:
                    packets.append(self._translations.fill(p))
        self.lost += lost
        return packets, lost

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NflogSocket:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
