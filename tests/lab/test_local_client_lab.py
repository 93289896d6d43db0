"""The client outside on a real lab: `cm-<tag>-local`, a laptop on the internet, reaches a site's
public address (its router answers ping) and never a pod's private address (the internet has no route
there: the laptop hears "unreachable" from the internet router, not silence from a firewall);
`lab exec local` runs a command there, `lab status` shows it, and `lab down` leaves nothing."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable

import pytest
from labkit import Lab, crossmesh

from crossmesh.checks import probes
from crossmesh.checks.results import Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, reconcile
from crossmesh.drivers.lab.desired import topology_of
from crossmesh.drivers.lab.state import LabState


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def icmp_echo(namespace: str, dst: str, timeout: float = 2.0) -> tuple[str, str]:
    """One ping from `namespace` (the host has no ping binary): ("reply", from) when `dst` answers,
    ("unreachable", router) when a router says there is no way there, ("timeout", "") on silence."""
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"crossmesh-local!"  # even length: the checksum sums 16-bit words
    packet = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]

    def go() -> tuple[str, str]:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.sendto(packet, (dst, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data, (src, _) = s.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = (data[0] & 0xF) * 4
                kind, quoted = data[ihl], data[ihl + 8 :]
                if kind == 0 and src == dst and struct.unpack("!H", data[ihl + 4 : ihl + 6])[0] == ident:
                    return "reply", src
                if kind == 3 and len(quoted) >= 20 and socket.inet_ntoa(quoted[16:20]) == dst:
                    return "unreachable", src
        return "timeout", ""

    return netns.run_in(namespace, go)


@pytest.mark.lab
def test_the_laptop_reaches_public_addresses_only(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("tests/meshes/hybrid-wireguard")
    lab.up()
    state = LabState.load(lab.tag)
    assert state is not None and state.local == f"cm-{lab.tag}-local"
    _, topo = topology_of(state)
    local, address = topo.local_ns, str(topo.local_address)

    def exec_local(*argv: str) -> tuple[int, str]:
        done = crossmesh("lab", "exec", "--mesh", str(lab.mesh), "local", "--", *argv, timeout=30)
        return done.returncode, done.stdout + done.stderr

    code, out = exec_local("ip", "-j", "addr")
    assert code == 0, out
    addresses = {a["local"] for link in json.loads(out) for a in link.get("addr_info", []) if a["family"] == "inet"}
    assert address in addresses and not any(a.startswith(("10.", "172.", "192.168.")) for a in addresses)

    for site, wan in topo.site_wan.items():
        assert icmp_echo(local, str(wan)) == ("reply", str(wan)), f"site {site}'s public address did not answer"

    pod = topo.pods[0]
    # Not silence from a firewall: the internet router itself says it has no route to a private address.
    assert icmp_echo(local, str(pod.pod.address)) == ("unreachable", str(topo.inet_address))
    port = next(p for p, proto, _ in pod.pod.ports if proto == "TCP")
    result, _, detail = probes.http(local, str(pod.pod.address), port, timeout=1.5)
    assert result is not Result.OK, detail

    # `crossmesh trace --from local`, probed: the request left the laptop and reached the internet,
    # where it ends; the pod never answers.
    # The internet router's "unreachable" answers are rate-limited per destination, as a real
    # router's are (net.ipv4.icmp_ratelimit): the probes above spent them, so wait for new ones.
    time.sleep(2.5)
    args = ["--from", "local", "--to", pod.pod.ref, "--port", f"{port}/TCP", "-o", "json"]
    traced = json.loads(crossmesh("trace", str(lab.mesh), *args, check=True).stdout)
    assert [h["confirmed"][:4] for h in traced["hops"]] == ["yes:", "yes:"], traced["hops"]
    assert traced["hops"][-1]["verdict"] == "no route" and ": unreachable" in traced["probe"], traced["probe"]

    status = json.loads(crossmesh("lab", "status", "--mesh", str(lab.mesh), "-o", "json", check=True).stdout)
    assert status["local"] == {"namespace": local, "address": address, "up": True}
    assert reconcile.reconcile(topo.namespace(local)) == []  # `lab up` brought it to its spec: nothing to do

    lab.down()
    assert labs.leftovers(lab.tag) == []
    assert not netns.exists(local)
