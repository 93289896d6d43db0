"""wireguard-go processes and their configuration.

A device is configured from the node's rendered wg-quick file: `wg-quick strip`
gives the `wg setconf` form. Reconcile compares with the device's current state and,
once the device has its key and port, changes only the peers that differ — all of them
in one transaction — so adding one peer never resets the sessions of the others.

wireguard-go is spoken to through its control socket (/var/run/wireguard/DEV.sock,
WireGuard's cross-platform userspace API: `get=1` / `set=1`, keys in hex), as `wg`
itself does, without a process per call; a device with no such socket (kernel
WireGuard on a real node) goes through the `wg` command. Its state holds the private
key: it is parsed here and never logged.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from crossmesh.drivers.lab import netns
from crossmesh.state.keys import is_valid_key, public_key

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


class PeerStats(NamedTuple):
    """What a device says of one peer: typed, and still the (handshake, rx, tx, endpoint) tuple."""

    handshake: int  # latest handshake, unix seconds (0: never)
    rx: int  # bytes received from the peer
    tx: int  # bytes sent to it
    endpoint: str | None  # where it was last heard from


def parse_dump(text: str) -> tuple[DeviceConf, dict[str, PeerStats]]:
    """`wg show DEV dump` → configuration and, per peer, its statistics."""
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError("empty wg dump")
    head = lines[0].split("\t")
    peers: dict[str, PeerConf] = {}
    stats: dict[str, PeerStats] = {}
    for line in lines[1:]:
        f = line.split("\t")
        endpoint = None if f[2] == "(none)" else f[2]
        allowed = tuple(sorted(a for a in f[3].split(",") if a and a != "(none)"))
        keepalive = 0 if f[7] == "off" else int(f[7])
        peers[f[0]] = PeerConf(f[0], endpoint, allowed, keepalive)
        stats[f[0]] = PeerStats(int(f[4]), int(f[5]), int(f[6]), endpoint)
    return DeviceConf(head[0], int(head[2]), peers), stats


def strip(conf_path: Path) -> str:
    done = subprocess.run(["wg-quick", "strip", str(conf_path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wg-quick strip {conf_path}: {done.stderr.strip()}")
    return done.stdout


def dump(ifname: str) -> str | None:
    """The device in `wg show DEV dump` form, None when it does not answer."""
    if (SOCKET_DIR / f"{ifname}.sock").exists():
        reply = _uapi(ifname, "get=1\n\n")
        return None if reply is None else _dump_of_uapi(reply)
    done = subprocess.run(["wg", "show", ifname, "dump"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def is_running(ifname: str) -> bool:
    """Whether the device answers: wireguard-go on its control socket (a dead one leaves the
    file), kernel WireGuard to `wg`."""
    path = SOCKET_DIR / f"{ifname}.sock"
    if not path.exists():
        return dump(ifname) is not None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
    except OSError:
        return False
    return True


def _uapi(ifname: str, request: str) -> str | None:
    """One request on the device's control socket; its reply without the final `errno=0`,
    None when nothing listens. A refused `set` raises with the errno wireguard-go gave."""
    buf = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(SOCKET_DIR / f"{ifname}.sock"))
            sock.sendall(request.encode())
            while not (buf.endswith(b"\n\n") and b"errno=" in buf):
                data = sock.recv(1 << 16)
                if not data:
                    break
                buf += data
    except OSError:
        return None
    text = buf.decode()
    lines = text.strip("\n").split("\n")
    if not lines or not lines[-1].startswith("errno="):
        return None
    if lines[-1] != "errno=0":
        raise RuntimeError(f"wireguard-go {ifname} refused the change ({lines[-1]})")
    return "\n".join(lines[:-1])


def peer_stats(ifname: str) -> dict[str, PeerStats] | None:
    """Each peer's public key → (latest handshake, rx bytes, tx bytes, endpoint), read cheaply
    (no private key, no reformatting: the lab polls every device while it waits for handshakes);
    None when the device does not answer."""
    if not (SOCKET_DIR / f"{ifname}.sock").exists():
        text = dump(ifname)
        return None if text is None else parse_dump(text)[1]
    reply = _uapi(ifname, "get=1\n\n")
    if reply is None:
        return None
    out: dict[str, PeerStats] = {}
    key, fields = "", {"last_handshake_time_sec": "0", "rx_bytes": "0", "tx_bytes": "0"}
    endpoint: str | None = None
    for line in [*reply.splitlines(), "public_key="]:
        name, _, value = line.partition("=")
        if name == "public_key":
            if key:
                hs, rx, tx = (int(fields[k]) for k in ("last_handshake_time_sec", "rx_bytes", "tx_bytes"))
                out[_b64(key)] = PeerStats(hs, rx, tx, endpoint)
            key, endpoint = value, None
            fields = {"last_handshake_time_sec": "0", "rx_bytes": "0", "tx_bytes": "0"}
        elif name == "endpoint":
            endpoint = value
        elif name in fields:
            fields[name] = value
    return out


def poke(namespace: str | None, addresses: list[str]) -> None:
    """One datagram to each address (a peer's tunnel address) from `namespace` (None: here): WireGuard
    starts a handshake for it now instead of when a session times out. The one poker of the lab and
    the agents."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for a in addresses:
                with contextlib.suppress(OSError):
                    s.sendto(b"crossmesh-handshake", (a, 9))

    if not addresses:
        return
    if namespace is None:
        send()
    else:
        netns.run_in(namespace, send)


def _hex(key_b64: str) -> str:
    return base64.b64decode(key_b64).hex()


@functools.lru_cache(maxsize=65536)
def _b64(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode()


@functools.lru_cache(maxsize=4096)
def _public_key(private_b64: str) -> str:
    return public_key(private_b64)


def _dump_of_uapi(reply: str) -> str:
    """`get=1` reply → the `wg show dump` lines (tab-separated) that parse_dump reads."""
    private, port, fwmark = "", "0", "off"
    peers: list[dict[str, list[str]]] = []
    for line in reply.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            peers.append({})
        if peers:
            peers[-1].setdefault(key, []).append(value)
        elif key == "private_key":
            private = _b64(value)
        elif key == "listen_port":
            port = value
        elif key == "fwmark" and value != "0":
            fwmark = value
    zero = "0" * 64
    head = [private or "(none)", _public_key(private) if private else "(none)", port, fwmark]
    out = ["\t".join(head)]
    for p in peers:

        def one(k: str, default: str, p: dict[str, list[str]] = p) -> str:
            return p.get(k, [default])[0]

        psk = one("preshared_key", zero)
        keepalive = one("persistent_keepalive_interval", "0")
        out.append(
            "\t".join(
                [
                    _b64(one("public_key", zero)),
                    "(none)" if psk == zero else _b64(psk),
                    one("endpoint", "(none)"),
                    ",".join(p.get("allowed_ip", [])) or "(none)",
                    one("last_handshake_time_sec", "0"),
                    one("rx_bytes", "0"),
                    one("tx_bytes", "0"),
                    "off" if keepalive == "0" else keepalive,
                ]
            )
        )
    return "\n".join(out) + "\n"


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


def reconcile(ifname: str, desired: DeviceConf) -> list[str]:
    """Bring the device to `desired`; returns what changed. Every value is checked before it goes
    to the device (see `_checked`): nothing a value holds can add a line to what is sent."""
    check(desired)
    current_text = dump(ifname)
    if current_text is None:
        raise RuntimeError(f"WireGuard device {ifname} does not answer")
    current, _ = parse_dump(current_text)
    if current.listen_port != desired.listen_port or current.private_key == "(none)":
        _set(ifname, desired, replace=True)
        return [f"{ifname}: configured ({len(desired.peers)} peers)"]
    out = []
    if current.private_key != desired.private_key:
        # A rotated key: replace it alone, so that peers are not reset on this side.
        _set(ifname, DeviceConf(desired.private_key, 0, {}))
        out.append(f"{ifname}: private key replaced")
    removed = sorted(set(current.peers) - set(desired.peers))
    out += [f"{ifname}: peer {key[:8]}… removed" for key in removed]
    changed: dict[str, PeerConf] = {}
    for key, want in sorted(desired.peers.items()):
        have = current.peers.get(key)
        if (
            have is not None
            and have.allowed_ips == want.allowed_ips
            and have.keepalive == want.keepalive
            and (want.endpoint is None or have.endpoint == want.endpoint)
        ):
            continue
        changed[key] = want
        out.append(f"{ifname}: peer {key[:8]}… {'added' if have is None else 'updated'}")
    if removed or changed:  # every peer change in one transaction
        _set(ifname, DeviceConf("", 0, changed), remove=removed)
    return out


_ENDPOINT = re.compile(r"\d{1,3}(\.\d{1,3}){3}:\d{1,5}")


def check(conf: DeviceConf) -> None:
    """Refuse a configuration with a value that is not what its field says: a key that is not
    32 bytes of base64, an endpoint that is not address:port, an allowed IP that is not a
    network, a port or keepalive out of range. The control socket's protocol and `wg setconf`
    are line-based: a newline in a value would be a line of its own (another peer, another key)."""
    bad = []
    if conf.private_key and not is_valid_key(conf.private_key):
        bad.append("the private key")
    if not 0 <= conf.listen_port <= 65535:
        bad.append(f"listen port {conf.listen_port}")
    for key, p in conf.peers.items():
        if key != p.public_key or not is_valid_key(key):
            bad.append(f"peer key {key[:12]!r}")
            continue
        if p.endpoint is not None and not _ENDPOINT.fullmatch(p.endpoint):
            bad.append(f"endpoint {p.endpoint[:40]!r}")
        if not 0 <= p.keepalive <= 65535:
            bad.append(f"keepalive {p.keepalive}")
        for a in p.allowed_ips:
            try:
                ipaddress.ip_network(a)
            except ValueError:
                bad.append(f"allowed IP {a[:40]!r}")
    if bad:
        raise ValueError(f"refusing to configure WireGuard with {', '.join(bad[:5])}")


def _set(ifname: str, conf: DeviceConf, *, replace: bool = False, remove: list[str] | tuple[str, ...] = ()) -> None:
    """Set what `conf` holds (a private key, a port, peers; empty fields are left alone) and remove
    the peers `remove`; `replace` drops every peer not in `conf`. Through the control socket of
    wireguard-go when there is one, else with one `wg set`. Its only caller, `reconcile`, has checked
    every value before the first write."""
    if (SOCKET_DIR / f"{ifname}.sock").exists():
        lines = ["set=1"]
        if conf.private_key:
            lines.append(f"private_key={_hex(conf.private_key)}")
        if conf.listen_port:
            lines.append(f"listen_port={conf.listen_port}")
        if replace:
            lines.append("replace_peers=true")
        lines += [f"public_key={_hex(k)}\nremove=true" for k in remove]
        for key, p in conf.peers.items():
            lines += [f"public_key={_hex(key)}", "replace_allowed_ips=true"]
            lines += [f"allowed_ip={a}" for a in p.allowed_ips]
            lines.append(f"persistent_keepalive_interval={p.keepalive}")
            if p.endpoint is not None:
                lines.append(f"endpoint={p.endpoint}")
        if _uapi(ifname, "\n".join(lines) + "\n\n") is None:
            raise RuntimeError(f"WireGuard device {ifname} does not answer")
        return
    if replace:
        text = "\n".join(
            ["[Interface]", f"PrivateKey = {conf.private_key}", f"ListenPort = {conf.listen_port}"]
            + [
                line
                for k, p in conf.peers.items()
                for line in ["[Peer]", f"PublicKey = {k}", f"AllowedIPs = {', '.join(p.allowed_ips)}"]
                + ([f"Endpoint = {p.endpoint}"] if p.endpoint else [])
                + ([f"PersistentKeepalive = {p.keepalive}"] if p.keepalive else [])
            ]
        )
        _wg(["setconf", ifname, "/dev/stdin"], text + "\n")
        return
    if conf.private_key:
        _wg(["set", ifname, "private-key", "/dev/stdin"], conf.private_key + "\n")
    args: list[str] = []
    for k in remove:
        args += ["peer", k, "remove"]
    for key, p in conf.peers.items():
        args += ["peer", key, "allowed-ips", ",".join(p.allowed_ips)]
        args += ["persistent-keepalive", str(p.keepalive) if p.keepalive else "off"]
        if p.endpoint is not None:
            args += ["endpoint", p.endpoint]
    if args:
        _wg(["set", ifname, *args])


def _wg(args: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # stderr of wg never holds key material; the arguments may hold public keys only.
        raise RuntimeError(f"wg {args[0]} {args[1]}: {done.stderr.strip()}")
