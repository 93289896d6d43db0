"""Probes that run inside a namespace of the lab: HTTP, UDP echo, DF-sized datagrams, a steady
stream of numbered UDP datagrams to an echo (a failover's loss window), and a raw-socket capture
on the internet router."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from crossmesh.checks.results import Result
from crossmesh.drivers.lab import netns, tracing

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IP_MTU = 14  # getsockopt: the path MTU the kernel knows for a connected socket
TIMEOUT = 3.0


def classify(err: OSError) -> Result:
    if isinstance(err, ssl.SSLError):
        return Result.RESET  # the peer refused the handshake (its alert is in the detail)
    if isinstance(err, TimeoutError | socket.timeout):
        return Result.TIMEOUT
    if err.errno in (errno.ECONNREFUSED,):
        return Result.REFUSED
    if err.errno in (errno.ECONNRESET, errno.EPIPE):
        return Result.RESET
    if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Result.UNREACHABLE
    if err.errno == errno.EMSGSIZE:
        return Result.MSG_TOO_LONG
    return Result.ERROR


def http(  # noqa: PLR0913
    ns: str,
    ip: str,
    port: int,
    *,
    path: str = "/",
    body: bytes = b"",
    method: str | None = None,
    timeout: float = TIMEOUT,
    mark: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[Result, dict[str, Any] | None, str]:
    """One HTTP request from namespace `ns`; (result, answer JSON, detail). `mark`: the socket's
    fwmark (a mesh proxy's own mark is not captured: the request goes out as the app sent it);
    `tls`: spoken over TLS with this context (a client of the mesh's own making)."""

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            if mark is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            s.connect((ip, port))
            return tls.wrap_socket(s) if tls is not None else s
        except BaseException:
            s.close()
            raise

    def run() -> tuple[Result, dict[str, Any] | None, str]:
        try:
            with connect() as s:
                verb = method or ("POST" if body else "GET")
                s.sendall(
                    f"{verb} {path} HTTP/1.1\r\nHost: {ip}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                chunks = []
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as err:
            return classify(err), None, str(err)
        raw = b"".join(chunks)
        if not raw:  # a proxy that refused it closed its side (its own peer may have got a reset)
            return Result.RESET, None, "closed without an answer"
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if head.startswith(b"HTTP/1.1 403"):
            return Result.FORBIDDEN, None, status
        if not head.startswith(b"HTTP/1.1 200"):
            return Result.WRONG_ANSWER, None, status
        try:
            return Result.OK, json.loads(payload), ""
        except ValueError:
            return Result.WRONG_ANSWER, None, "answer is not JSON"

    return netns.run_in(ns, run)


def udp_echo(  # noqa: PLR0913
    ns: str,
    ip: str,
    port: int,
    *,
    size: int = 64,
    dont_fragment: bool = False,
    timeout: float = TIMEOUT,
    payload: bytes | None = None,
) -> tuple[Result, str]:
    """Send `size` bytes of UDP payload (or `payload`) and wait for the same bytes back."""

    def run() -> tuple[Result, str]:
        data_out = payload if payload is not None else (b"crossmesh-udp-" * (size // 14 + 1))[:size]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            if dont_fragment:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                s.send(data_out)
                data = s.recv(65536)
            except OSError as err:
                return classify(err), str(err)
        return (Result.OK, "") if data == data_out else (Result.WRONG_ANSWER, f"{len(data)} bytes came back")

    return netns.run_in(ns, run)


@dataclass(frozen=True, slots=True)
class PathProbe:
    result: Result
    detail: str
    path_mtu: int  # what the socket knows afterwards (IP_MTU)
    refused_on_the_way: bool  # a router's fragmentation-needed, not the node's own device


def df_past_the_node(ns: str, ip: str, port: int, total: int, *, timeout: float = TIMEOUT) -> PathProbe:
    """One DF datagram of `total` IP bytes to a UDP echo, sent with the namespace's learned path MTUs
    forgotten, so that the node's own device lets it out and only a router on the way can refuse it.
    A router's fragmentation-needed comes back as EMSGSIZE on the receive (a connected UDP socket's
    error, RFC 1191) and sets the socket's path MTU; a refusal by the node's own device fails the send."""
    netns.run(ns, ["ip", "route", "flush", "cache"])  # a path MTU learned by an earlier probe

    def run() -> PathProbe:
        data = (b"crossmesh-pmtu-" * (total // 15 + 1))[: total - 28]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.settimeout(timeout)
            s.connect((ip, port))
            try:
                s.send(data)
            except OSError as err:
                mtu = s.getsockopt(socket.IPPROTO_IP, IP_MTU)
                return PathProbe(classify(err), f"refused by the node itself (device MTU {mtu}): {err}", mtu, False)
            try:
                back = s.recv(65536)
            except OSError as err:
                mtu = s.getsockopt(socket.IPPROTO_IP, IP_MTU)
                if err.errno == errno.EMSGSIZE:
                    return PathProbe(Result.MSG_TOO_LONG, f"fragmentation needed on the way: path MTU {mtu}", mtu, True)
                return PathProbe(classify(err), str(err), mtu, False)
            mtu = s.getsockopt(socket.IPPROTO_IP, IP_MTU)
        if back != data:
            return PathProbe(Result.WRONG_ANSWER, f"{len(back)} bytes came back", mtu, False)
        return PathProbe(Result.OK, f"IP packet of {total} bytes crossed with DF", mtu, False)

    return netns.run_in(ns, run)


def dns_a(ns: str, server: str, name: str, *, timeout: float = TIMEOUT) -> tuple[Result, tuple[str, ...], str]:
    """Ask resolver `server` (UDP 53) from namespace `ns` for the A records of `name`, as a pod's
    resolver does; (result, addresses in the order answered, detail). NXDOMAIN is `refused`."""

    def run() -> tuple[Result, tuple[str, ...], str]:
        ident = int.from_bytes(os.urandom(2), "big")
        qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
        query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((server, 53))
                s.send(query)
                reply = s.recv(4096)
            except OSError as err:
                return classify(err), (), str(err)
        if len(reply) < 12 or struct.unpack("!H", reply[:2])[0] != ident:
            return Result.WRONG_ANSWER, (), "not an answer to the query"
        flags, _, count = struct.unpack("!HHH", reply[2:8])
        if flags & 0xF:
            return Result.REFUSED, (), f"rcode {flags & 0xF}"
        pos, found = 12 + len(qname) + 4, []
        for _ in range(count):
            pos += 2 if reply[pos] & 0xC0 == 0xC0 else reply.index(b"\0", pos) - pos + 1
            rtype, _, _, length = struct.unpack("!HHIH", reply[pos : pos + 10])
            if rtype == 1 and length == 4:
                found.append(socket.inet_ntoa(reply[pos + 10 : pos + 14]))
            pos += 10 + length
        return Result.OK, tuple(found), ""

    return netns.run_in(ns, run)


@dataclass
class Packet:
    src: IPv4Address
    dst: IPv4Address
    proto: int
    sport: int
    dport: int
    raw: bytes


@dataclass
class Capture:
    """Every IPv4 packet on every interface of a namespace, through one AF_PACKET socket."""

    ns: str
    packets: list[Packet] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: str = ""

    def __enter__(self) -> Capture:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        try:
            netns.enter(self.ns)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        except OSError as err:
            self.error = str(err)
            self._ready.set()
            return
        s.settimeout(0.1)
        self._ready.set()
        with s:
            while not self._stop.is_set():
                try:
                    frame, addr = s.recvfrom(65535)
                except TimeoutError:
                    continue
                if addr[2] == socket.PACKET_OUTGOING:
                    continue  # a forwarded packet shows up once on the way in; count it once
                self._parse(frame)

    def _parse(self, frame: bytes) -> None:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            return
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src, dst = IPv4Address(ip[12:16]), IPv4Address(ip[16:20])
        sport = dport = 0
        if proto in (6, 17) and len(ip) >= ihl + 4:
            sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
        self.packets.append(Packet(src, dst, proto, sport, dport, bytes(ip)))


def is_private(addr: IPv4Address, ranges: tuple[IPv4Network, ...]) -> bool:
    return any(addr in r for r in ranges)


def spoofed_udp(ns: str, src: str, dst: str, port: int) -> None:
    """Send one UDP datagram with a forged source address (raw socket, IP header ours)."""
    payload = b"crossmesh-spoof"
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0x5A5A, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    checksum = _checksum(header)
    header = header[:10] + struct.pack("!H", checksum) + header[12:]

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(header + udp, (dst, 0))

    netns.run_in(ns, send)


def _checksum(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def nft_counter(ns: str, comment: str) -> int:
    """Packets counted by the rule of the crossmesh table whose comment is `comment` (-1: no table)."""
    return tracing.rule_packets(ns, comment)


@dataclass(frozen=True, slots=True)
class Gap:
    """A run of consecutive datagrams of a stream that got no echo."""

    first: int  # sequence number of the first one lost
    lost: int  # how many in a row
    started: float  # when the first one was sent (monotonic)
    seconds: float  # from its sending to the sending of the next one echoed; inf: none was


def gaps(sent: Sequence[float], echoed: Collection[int], start: float = -math.inf, end: float = math.inf) -> list[Gap]:
    """The runs of lost datagrams among those sent at `sent[seq]`, whose first one was sent in
    [start, end); a run still open at the last datagram lasts for ever (traffic never resumed)."""
    out: list[Gap] = []
    first: int | None = None
    for seq, at in enumerate(sent):
        if seq not in echoed:
            if first is None:
                first = seq
            continue
        if first is not None and start <= sent[first] < end:
            out.append(Gap(first, seq - first, sent[first], at - sent[first]))
        first = None
    if first is not None and start <= sent[first] < end:
        out.append(Gap(first, len(sent) - first, sent[first], math.inf))
    return out


class UdpStream:
    """Numbered datagrams at `rate` per second from namespace `ns` to an echo at ip:port, on a
    thread of their own, recording when each was sent and whether it came back — what a flow
    between two workers sees while a gateway fails over. A datagram the kernel cannot send (no
    route for a moment) counts as lost; echoes of another stream are told apart by a token."""

    LINGER = 0.3  # seconds after the last datagram that its echo may still come back

    def __init__(self, ns: str, ip: str, port: int, *, rate: float = 100.0, size: int = 64) -> None:
        self.ns, self.target, self.interval, self.size = ns, (ip, port), 1.0 / rate, max(size, 16)
        self.token = os.urandom(8)
        self.sent: list[float] = []  # monotonic time each sequence number was sent
        self.echoed: dict[int, float] = {}  # sequence number → when its echo came back
        self.error = ""
        self._lock = threading.Lock()
        self._quiet, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stream-{ns}", daemon=True)

    def __enter__(self) -> UdpStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """No more datagrams; the echoes of the last ones may come back for LINGER seconds."""
        if not self._thread.is_alive():
            return
        self._quiet.set()
        time.sleep(self.LINGER)
        self._stop.set()
        self._thread.join(5)

    def echoes(self, since: float = -math.inf) -> int:
        """How many datagrams sent at or after `since` came back so far."""
        with self._lock:
            return sum(1 for seq in self.echoed if self.sent[seq] >= since)

    def snapshot(self) -> tuple[list[float], set[int]]:
        with self._lock:
            return list(self.sent), set(self.echoed)

    def _run(self) -> None:
        try:
            netns.enter(self.ns)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(self.target)
        except OSError as err:
            self.error = str(err)
            return
        pad = b"\0" * (self.size - 16)
        due = time.monotonic()
        with sock:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= due and not self._quiet.is_set():
                    with self._lock:
                        seq = len(self.sent)
                        self.sent.append(now)
                    with contextlib.suppress(OSError):  # no route, or an earlier one's ICMP error: lost
                        sock.send(self.token + seq.to_bytes(8, "big") + pad)
                    due += self.interval
                    if due < now:  # late (a loaded host): no burst to catch up
                        due = now + self.interval
                ready, _, _ = select.select([sock], [], [], max(0.0, min(due - time.monotonic(), 0.05)))
                if ready:
                    self._drain(sock)

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                continue  # an ICMP error for an earlier datagram (port unreachable for a moment): read on
            except OSError:
                return
            if len(data) >= 16 and data[:8] == self.token:
                seq = int.from_bytes(data[8:16], "big")
                with self._lock:
                    if seq < len(self.sent):
                        self.echoed.setdefault(seq, time.monotonic())
