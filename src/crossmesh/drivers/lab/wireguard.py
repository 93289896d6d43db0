"""wireguard-go processes and their configuration through `wg`.

A device is configured from the node's rendered wg-quick file: `wg-quick strip`
gives the `wg setconf` form. Reconcile compares with `wg show <dev> dump` and, once
the device has its key and port, changes peers one by one (`wg set ... peer`), so
adding one peer never resets the sessions of the others. The dump holds the
private key: it is parsed here and never logged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from crossmesh.drivers.lab import netns

SOCKET_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True, slots=True)
class PeerConf:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive: int


@dataclass(frozen=True, slots=True)
class DeviceConf:
    private_key: str
    listen_port: int
    peers: dict[str, PeerConf]


def parse_setconf(text: str) -> DeviceConf:
    """The `wg setconf` form (output of `wg-quick strip`)."""
    private_key, port = "", 0
    peers: dict[str, PeerConf] = {}
    current: dict[str, str] | None = None

    def flush() -> None:
        if current is not None and "PublicKey" in current:
            peers[current["PublicKey"]] = PeerConf(
                public_key=current["PublicKey"],
                endpoint=current.get("Endpoint"),
                allowed_ips=tuple(sorted(a.strip() for a in current.get("AllowedIPs", "").split(",") if a.strip())),
                keepalive=int(current.get("PersistentKeepalive", "0")),
            )

    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line == "[Peer]":
            flush()
            current = {}
            continue
        if line == "[Interface]" or "=" not in line:
            continue
        key, value = (p.strip() for p in line.split("=", 1))
        if current is None:
            if key == "PrivateKey":
                private_key = value
            elif key == "ListenPort":
                port = int(value)
        else:
            current[key] = value
    flush()
    return DeviceConf(private_key, port, peers)


def parse_dump(text: str) -> tuple[DeviceConf, dict[str, tuple[int, int, int, str | None]]]:
    """`wg show DEV dump` → configuration and, per peer, (latest handshake, rx, tx, endpoint)."""
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError("empty wg dump")
    head = lines[0].split("\t")
    peers: dict[str, PeerConf] = {}
    stats: dict[str, tuple[int, int, int, str | None]] = {}
    for line in lines[1:]:
        f = line.split("\t")
        endpoint = None if f[2] == "(none)" else f[2]
        allowed = tuple(sorted(a for a in f[3].split(",") if a and a != "(none)"))
        keepalive = 0 if f[7] == "off" else int(f[7])
        peers[f[0]] = PeerConf(f[0], endpoint, allowed, keepalive)
        stats[f[0]] = (int(f[4]), int(f[5]), int(f[6]), endpoint)
    return DeviceConf(head[0], int(head[2]), peers), stats


def strip(conf_path: Path) -> str:
    done = subprocess.run(["wg-quick", "strip", str(conf_path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wg-quick strip {conf_path}: {done.stderr.strip()}")
    return done.stdout


def dump(ifname: str) -> str | None:
    done = subprocess.run(["wg", "show", ifname, "dump"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def is_running(ifname: str) -> bool:
    return (SOCKET_DIR / f"{ifname}.sock").exists() and dump(ifname) is not None


def start(namespace: str, ifname: str, log: Path) -> int:
    """Start wireguard-go for `ifname` inside `namespace`; returns its pid once the device answers."""
    stale = SOCKET_DIR / f"{ifname}.sock"
    if stale.exists() and dump(ifname) is None:
        stale.unlink()
    with netns.open_ns(namespace) as ipr:
        for idx in ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=idx)  # a TUN left by a dead process
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            netns.exec_argv(namespace, ["wireguard-go", "-f", ifname]),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"wireguard-go for {ifname} exited with {proc.returncode}; see {log}")
        if is_running(ifname):
            return proc.pid
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"wireguard-go for {ifname} did not open its control socket within 10 s; see {log}")


def stop(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def reconcile(ifname: str, desired_text: str) -> list[str]:
    """Bring the device to the stripped configuration `desired_text`; returns what changed."""
    desired = parse_setconf(desired_text)
    current_text = dump(ifname)
    if current_text is None:
        raise RuntimeError(f"WireGuard device {ifname} does not answer")
    current, _ = parse_dump(current_text)
    if current.listen_port != desired.listen_port or current.private_key == "(none)":
        _wg(["setconf", ifname, "/dev/stdin"], desired_text)
        return [f"{ifname}: configured ({len(desired.peers)} peers)"]
    out = []
    if current.private_key != desired.private_key:
        # A rotated key: replace it alone, so that peers are not reset on this side.
        _wg(["set", ifname, "private-key", "/dev/stdin"], desired.private_key + "\n")
        out.append(f"{ifname}: private key replaced")
    for key in sorted(set(current.peers) - set(desired.peers)):
        _wg(["set", ifname, "peer", key, "remove"])
        out.append(f"{ifname}: peer {key[:8]}… removed")
    for key, want in sorted(desired.peers.items()):
        have = current.peers.get(key)
        if (
            have is not None
            and have.allowed_ips == want.allowed_ips
            and have.keepalive == want.keepalive
            and (want.endpoint is None or have.endpoint == want.endpoint)
        ):
            continue
        args = [
            "set",
            ifname,
            "peer",
            key,
            "allowed-ips",
            ",".join(want.allowed_ips),
            "persistent-keepalive",
            str(want.keepalive) if want.keepalive else "off",
        ]
        if want.endpoint is not None:
            args += ["endpoint", want.endpoint]
        _wg(args)
        out.append(f"{ifname}: peer {key[:8]}… {'added' if have is None else 'updated'}")
    return out


def _wg(args: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # stderr of wg never holds key material; the arguments may hold public keys only.
        raise RuntimeError(f"wg {args[0]} {args[1]}: {done.stderr.strip()}")
