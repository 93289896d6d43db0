"""The WireGuard driver against a real wireguard-go: its control-socket path (what the lab and
the agents use) and its `wg` path (kernel WireGuard on real nodes, forced here by pointing the
driver away from the socket directory) must leave the device in the same state, and the
socket's reading of a device must be what `wg show dump` prints."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossmesh.drivers.lab import netns, wireguard
from crossmesh.state import keys


def conf(private: str, peers: list[tuple[str, str | None, list[str], int]]) -> str:
    lines = ["[Interface]", f"PrivateKey = {private}", "ListenPort = 51820"]
    for public, endpoint, allowed, keepalive in peers:
        lines += ["[Peer]", f"PublicKey = {public}", f"AllowedIPs = {', '.join(allowed)}"]
        if endpoint:
            lines.append(f"Endpoint = {endpoint}")
        if keepalive:
            lines.append(f"PersistentKeepalive = {keepalive}")
    return "\n".join(lines) + "\n"


def wg_dump(ifname: str) -> tuple[wireguard.DeviceConf, dict[str, tuple[int, int, int, str | None]]]:
    text = subprocess.run(["wg", "show", ifname, "dump"], capture_output=True, text=True, check=True).stdout
    return wireguard.parse_dump(text)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[str]:
    tag = secrets.token_hex(2)
    ns, ifname = f"cm-{tag}-wgt", f"cm-{tag}-wgt"
    netns.create(ns)
    pid = 0
    try:
        pid = wireguard.start(ns, ifname, tmp_path / "wg.log")
        yield ifname
    finally:
        if pid:
            wireguard.stop(pid)
        (wireguard.SOCKET_DIR / f"{ifname}.sock").unlink(missing_ok=True)
        netns.remove(ns)


def peers() -> list[tuple[str, str | None, list[str], int]]:
    made = [keys.public_key(keys.generate_private_key()) for _ in range(4)]
    return [
        (made[0], "192.0.2.10:51820", ["100.64.0.2/32", "10.240.1.0/24"], 0),
        (made[1], "198.51.100.7:51820", ["100.64.0.3/32"], 25),
        (made[2], None, ["100.64.0.4/32", "10.240.3.0/24"], 25),
        (made[3], "203.0.113.9:51821", ["100.64.0.5/32"], 0),
    ]


@pytest.mark.parametrize("path", ["socket", "wg"])
def test_reconcile_matches_wg(device: str, path: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The socket's view of a device equals `wg show dump`, before and after every step.
    def same_view() -> None:
        ours = wireguard.dump(device)
        assert ours is not None
        assert wireguard.parse_dump(ours) == wg_dump(device)
        assert wireguard.peer_stats(device) == wg_dump(device)[1]

    if path == "wg":
        monkeypatch.setattr(wireguard, "SOCKET_DIR", tmp_path / "no-sockets")
    private = keys.generate_private_key()
    ps = peers()
    changes = wireguard.reconcile(device, wireguard.parse_setconf(conf(private, ps[:3])))
    assert changes == [f"{device}: configured (3 peers)"]
    same_view()
    want = wireguard.parse_setconf(conf(private, ps[:3]))
    assert wg_dump(device)[0].peers == want.peers
    assert wg_dump(device)[0].private_key == private

    # Again: nothing to do.
    assert wireguard.reconcile(device, wireguard.parse_setconf(conf(private, ps[:3]))) == []

    # One peer added, one removed, one moved to new allowed IPs: only those change, in one go.
    moved = (ps[1][0], ps[1][1], ["100.64.0.3/32", "10.240.2.0/24"], 0)
    changes = wireguard.reconcile(device, wireguard.parse_setconf(conf(private, [ps[0], moved, ps[3]])))
    assert sorted(c.split(": ", 1)[1].split("… ")[1] for c in changes) == ["added", "removed", "updated"]
    assert wg_dump(device)[0].peers == wireguard.parse_setconf(conf(private, [ps[0], moved, ps[3]])).peers
    same_view()

    # A rotated key replaces the key alone; the peers stay.
    rotated = keys.generate_private_key()
    assert wireguard.reconcile(device, wireguard.parse_setconf(conf(rotated, [ps[0], moved, ps[3]]))) == [
        f"{device}: private key replaced"
    ]
    current = wg_dump(device)[0]
    assert current.private_key == rotated and len(current.peers) == 3
    same_view()


def test_dead_device_does_not_answer(device: str) -> None:
    pids = subprocess.run(["pgrep", "-f", f"wireguard-go -f {device}$"], capture_output=True, text=True).stdout.split()
    assert pids
    for pid in pids:
        subprocess.run(["kill", "-9", pid], check=True)
    for _ in range(100):
        if wireguard.dump(device) is None:
            break
        subprocess.run(["sleep", "0.02"], check=True)
    assert wireguard.dump(device) is None  # a socket file that nothing listens on
    assert not wireguard.is_running(device)


def test_agent_routes_over_rtnetlink() -> None:
    """The agents' route path (rtnetlink, no process) against what `ip route` then shows."""
    from crossmesh.drivers import iproute

    ns = f"cm-{secrets.token_hex(2)}-rt"
    netns.create(ns)
    try:
        ip = ["ip", "-n", ns]
        subprocess.run([*ip, "link", "add", "cm-rt-a", "type", "veth", "peer", "name", "cm-rt-b"], check=True)
        for dev in ("cm-rt-a", "cm-rt-b"):
            subprocess.run([*ip, "link", "set", dev, "up"], check=True)

        def shown() -> dict[str, str]:
            routes = iproute.show(ns, ["route", "show", "table", "main", "proto", "100"]) or []
            return {r["dst"]: r["dev"] for r in routes}

        iproute.set_routes(ns, "cm-rt-a", ["10.240.1.0/24", "100.64.0.2/32"], [], 100)
        assert shown() == {"10.240.1.0/24": "cm-rt-a", "100.64.0.2": "cm-rt-a"}
        # Moved to the other device, one withdrawn, one already gone: no error.
        iproute.set_routes(ns, "cm-rt-b", ["10.240.1.0/24"], ["100.64.0.2/32", "100.64.0.9/32"], 100)
        assert shown() == {"10.240.1.0/24": "cm-rt-b"}
        # Routes of another protocol are not ours to delete.
        subprocess.run([*ip, "route", "add", "10.9.0.0/16", "dev", "cm-rt-a", "proto", "99"], check=True)
        iproute.set_routes(ns, "cm-rt-a", [], ["10.9.0.0/16"], 100)
        assert "10.9.0.0/16" in subprocess.run([*ip, "route"], capture_output=True, text=True, check=True).stdout
        with pytest.raises(OSError):
            iproute.set_routes(ns, "cm-rt-missing", ["10.240.2.0/24"], [], 100)
    finally:
        netns.remove(ns)
