"""A site-to-site VPN gateway in a lab namespace: one charon (kernel-libipsec) per IPsec tunnel and
one BIRD speaking eBGP over all of them (the configuration: crossmesh.render.ipsec and .bgp).

Everything a gateway writes is under the folder the caller gives: per tunnel `charon-<i>/`
(strongswan.conf, swanctl.conf, charon.log, run/charon.pid, run/charon.vici) and `bird/`
(bird.conf, bird.log, bird.ctl, bird.pid). No file of the host's strongSwan or BIRD is read or
written: charon reads `STRONGSWAN_CONF`, and its compiled-in /var/run is a bind mount of its
own `run/` in a private mount namespace (`ip netns exec` + `unshare --mount`).

The daemons are started in order — charon 0, 1, … then BIRD — and each is waited for. If one
fails, everything this call started is stopped and `DaemonFailed` names the daemon and the line
of its log (or output) that says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path, PurePosixPath
from typing import NoReturn

from crossmesh import nft
from crossmesh.drivers.lab import netns, processes
from crossmesh.errors import CrossmeshError
from crossmesh.render import bgp, ipsec

CHARON = "/usr/lib/ipsec/charon"
NFT_TABLE = "cm_vpn"
_TUN_LINE = re.compile(r"created TUN device: (\S+)")
_FAILURE = re.compile(r"error|fail|unable|invalid|abort|not found|no such|syntax|cannot|can't", re.IGNORECASE)


class DaemonFailed(CrossmeshError):
    """A VPN daemon (charon, swanctl, bird) did not start or refused its configuration."""

    def __init__(self, daemon: str, namespace: str, line: str, log: Path | None = None) -> None:
        self.daemon = daemon
        self.namespace = namespace
        self.line = line
        self.log = log
        where = f" (log: {log})" if log else ""
        super().__init__(f"{daemon} in {namespace} failed: {line}{where}")


@dataclass(frozen=True, slots=True)
class ChildSa:
    name: str
    state: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int


@dataclass(frozen=True, slots=True)
class IkeSa:
    """One IKE SA as `swanctl --list-sas` reports it, with its CHILD_SAs."""

    name: str
    state: str
    local: str
    remote: str
    children: tuple[ChildSa, ...]

    @property
    def installed(self) -> bool:
        return self.state == "ESTABLISHED" and any(c.state == "INSTALLED" for c in self.children)

    @property
    def bytes_out(self) -> int:
        return sum(c.bytes_out for c in self.children)

    @property
    def bytes_in(self) -> int:
        return sum(c.bytes_in for c in self.children)


@dataclass(frozen=True, slots=True)
class BgpSession:
    """A line of `birdc show protocols`: name, state (up/start/down) and info (Established, Active…)."""

    name: str
    state: str
    info: str

    @property
    def established(self) -> bool:
        return self.state == "up" and self.info.startswith("Established")


@dataclass(frozen=True, slots=True)
class BirdRoute:
    """A route in BIRD's table as `birdc show route` lists it: the protocol it came from (a BGP
    session's name, or `owned` for what the gateway originates), whether BIRD chose it (`*`), and the
    device its next hop is on."""

    prefix: IPv4Network
    protocol: str
    best: bool
    device: str


@dataclass(frozen=True, slots=True)
class KernelRoute:
    dst: IPv4Network
    dev: str
    gateway: IPv4Address | None
    protocol: str


def parse_swanctl_raw(text: str) -> list[IkeSa]:
    """The IKE SAs in `swanctl --list-sas --raw` output (`key=value`, `key=[…]`, `name {…}`)."""
    tokens = re.findall(r"[^\s{}=]+=\[[^\]]*\]|[^\s{}=]+=\S*?(?=[\s}])|[^\s{}]+ \{|[^\s{}]+|\{|\}", text)
    root: dict[str, object] = {}
    stack: list[dict[str, object]] = [root]
    for tok in tokens:
        if tok == "}":
            if len(stack) > 1:
                stack.pop()
        elif tok.endswith("{"):
            child: dict[str, object] = {}
            key = tok[:-1].strip() or "_"
            if key in stack[-1]:  # one `list-sa event` per IKE SA
                key = f"{key}#{len(stack[-1])}"
            stack[-1][key] = child
            stack.append(child)
        elif "=" in tok:
            key, _, value = tok.partition("=")
            stack[-1][key] = value
    sas = []
    for event in (v for k, v in root.items() if k.startswith("event") and isinstance(v, dict)):
        for name, sa in event.items():
            if not isinstance(sa, dict):
                continue
            kids = sa.get("child-sas", {})
            children = tuple(
                ChildSa(
                    name=str(c.get("name", key)),
                    state=str(c.get("state", "")),
                    bytes_in=int(str(c.get("bytes-in", 0))),
                    bytes_out=int(str(c.get("bytes-out", 0))),
                    packets_in=int(str(c.get("packets-in", 0))),
                    packets_out=int(str(c.get("packets-out", 0))),
                )
                for key, c in (kids.items() if isinstance(kids, dict) else [])
                if isinstance(c, dict)
            )
            sas.append(
                IkeSa(
                    name=name,
                    state=str(sa.get("state", "")),
                    local=f"{sa.get('local-host', '')}[{sa.get('local-port', '')}]",
                    remote=f"{sa.get('remote-host', '')}[{sa.get('remote-port', '')}]",
                    children=children,
                )
            )
    return sas


def parse_bird_protocols(text: str) -> list[BgpSession]:
    """The BGP sessions in `birdc show protocols` output."""
    sessions = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) >= 5 and parts[1] == "BGP":
            sessions.append(BgpSession(parts[0], parts[3], parts[5] if len(parts) > 5 else ""))
    return sessions


_ROUTE_LINE = re.compile(r"^(\S+)?\s+\S+ \[(\S+) [^\]]*\](\s+\*)?")
_VIA_LINE = re.compile(r"^\s+(?:via \S+ )?on (\S+)")


def parse_bird_routes(text: str) -> list[BirdRoute]:
    """The routes in `birdc show route` output: a prefix line, then one line per further route of the
    same prefix (no prefix), each followed by its `via … on <device>` line."""
    routes: list[BirdRoute] = []
    prefix: IPv4Network | None = None
    pending: tuple[IPv4Network, str, bool] | None = None
    for line in text.splitlines():
        head = _ROUTE_LINE.match(line)
        if head and not line.startswith("\t"):
            if pending is not None:
                routes.append(BirdRoute(*pending, ""))
            if head.group(1):
                prefix = IPv4Network(head.group(1))
            pending = (prefix, head.group(2), bool(head.group(3))) if prefix is not None else None
            continue
        via = _VIA_LINE.match(line)
        if via and pending is not None:
            routes.append(BirdRoute(*pending, via.group(1)))
            pending = None
    if pending is not None:
        routes.append(BirdRoute(*pending, ""))
    return routes


def _failure_line(*texts: str, first: bool = False) -> str:
    """The last line of the texts that reads like an error (the first: for swanctl, whose last line
    only counts what failed), else the last line at all."""
    lines = [ln.strip() for t in texts for ln in t.splitlines() if ln.strip()]
    # swanctl --file looks for credential folders (x509/, private/, …) next to the file: not a cause
    lines = [ln for ln in lines if not ln.startswith("opening directory")]
    for line in lines if first else reversed(lines):
        if _FAILURE.search(line):
            return line
    return lines[-1] if lines else "exited without a word"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _write_private(path: Path, text: str) -> None:
    """A file only root reads: the swanctl.conf holds the pre-shared key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class _Daemon:
    """A daemon started in a session of its own: stopping its process group also stops what
    `ip netns exec`, `unshare` and `sh` left in between."""

    process: subprocess.Popen[bytes] | None = None

    def _launch(self, argv: list[str], out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(out, "wb") as f:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            processes.stop_group(self.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)
            self.process = None


@dataclass
class Charon(_Daemon):
    namespace: str
    instance: ipsec.CharonInstance
    tunnel: ipsec.TunnelSpec

    @property
    def folder(self) -> Path:
        return Path(self.instance.folder)

    def swanctl(self, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        """swanctl against this charon's vici socket (a path on the host: no namespace needed)."""
        env = {**os.environ, "STRONGSWAN_CONF": str(self.instance.config)}
        return subprocess.run(
            ["swanctl", *args, "--uri", f"unix://{self.instance.vici_socket}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def start(self, timeout: float) -> None:
        run = Path(self.instance.run_dir)
        run.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(Path(self.instance.config), ipsec.strongswan_conf(self.instance))
        _write_private(Path(self.instance.swanctl_config), ipsec.swanctl_conf(self.tunnel, self.instance.liveness))
        log = Path(self.instance.log)
        log.unlink(missing_ok=True)
        script = f'mount --bind "{run}" /run && exec {CHARON}'
        argv = netns.exec_argv(self.namespace, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        env = {**os.environ, "STRONGSWAN_CONF": str(self.instance.config)}
        process = self._launch(argv, self.folder / "charon.out", env)
        deadline = time.monotonic() + timeout
        tun = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._fail("exited at start")
            found = _TUN_LINE.search(_read(log))
            tun = found.group(1) if found else None
            if tun and Path(self.instance.vici_socket).exists():
                break
            time.sleep(0.05)
        else:
            self._fail(f"not ready within {timeout:.0f} s")
        if tun != self.instance.tun_device:
            self._fail(f"made TUN device {tun}, expected {self.instance.tun_device} (another charon's left over?)")
        address = self.tunnel.inside_local
        dev = self.instance.tun_device
        done = netns.run(self.namespace, ["ip", "addr", "replace", str(address), "dev", dev])
        if done.returncode != 0:
            self._fail(f"ip addr {address} on {dev}: {done.stderr.strip()}")
        loaded = self.swanctl("--load-all", "--file", str(self.instance.swanctl_config))
        if loaded.returncode != 0:
            self.stop()
            raise DaemonFailed(
                "swanctl",
                self.namespace,
                _failure_line(loaded.stdout, loaded.stderr, first=True),
                Path(self.instance.log),
            )

    def _fail(self, why: str) -> NoReturn:
        log = _read(Path(self.instance.log))
        out = _read(self.folder / "charon.out")
        self.stop()
        line = _failure_line(out, log) if (log or out) else why
        raise DaemonFailed(f"charon ({self.tunnel.name})", self.namespace, f"{why}: {line}", Path(self.instance.log))

    def sas(self) -> list[IkeSa]:
        done = self.swanctl("--list-sas", "--raw")
        return parse_swanctl_raw(done.stdout) if done.returncode == 0 else []


@dataclass
class Bird(_Daemon):
    namespace: str
    folder: Path
    router: bgp.BgpRouterSpec

    @property
    def socket(self) -> Path:
        return self.folder / "bird.ctl"

    @property
    def log(self) -> Path:
        return self.folder / "bird.log"

    def birdc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["birdc", "-s", str(self.socket), *args], capture_output=True, text=True, timeout=10, check=False
        )

    def start(self, timeout: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.folder / "bird.conf"
        _write_private(conf, bgp.bird_conf(self.router, log=PurePosixPath(self.log)))
        checked = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise DaemonFailed("bird", self.namespace, _failure_line(checked.stdout, checked.stderr), conf)
        self.log.unlink(missing_ok=True)
        argv = ["bird", "-f", "-c", str(conf), "-s", str(self.socket), "-P", str(self.folder / "bird.pid")]
        process = self._launch(netns.exec_argv(self.namespace, argv), self.folder / "bird.out")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                why = _failure_line(_read(self.folder / "bird.out"), _read(self.log))
                self.stop()
                raise DaemonFailed("bird", self.namespace, why, self.log)
            if self.socket.exists() and "Daemon is up" in self.birdc("show", "status").stdout:
                return
            time.sleep(0.05)
        self.stop()
        raise DaemonFailed("bird", self.namespace, f"not ready within {timeout:.0f} s", self.log)

    def sessions(self) -> list[BgpSession]:
        return parse_bird_protocols(self.birdc("show", "protocols").stdout)

    def table(self) -> list[BirdRoute]:
        """Every route BIRD holds, chosen or not (the standby tunnel's routes are there, unchosen)."""
        return parse_bird_routes(self.birdc("show", "route").stdout)


@dataclass
class Gateway:
    """A running VPN gateway: its charons (one per tunnel, in tunnel order) and its BIRD."""

    namespace: str
    folder: Path
    charons: list[Charon] = field(default_factory=list)
    bird: Bird | None = None
    nat: bool = False

    def sas(self) -> dict[str, IkeSa | None]:
        """Each tunnel's IKE SA (the established one if there are several), or None."""
        out: dict[str, IkeSa | None] = {}
        for c in self.charons:
            found = [s for s in c.sas() if s.name == c.tunnel.name]
            found.sort(key=lambda s: s.installed, reverse=True)
            out[c.tunnel.name] = found[0] if found else None
        return out

    def sessions(self) -> dict[str, BgpSession]:
        return {s.name: s for s in (self.bird.sessions() if self.bird else [])}

    def bird_routes(self) -> list[BirdRoute]:
        return self.bird.table() if self.bird else []

    def routes(self, table: int | None = None) -> list[KernelRoute]:
        """The routes BIRD put in the kernel, in the main table or `table` (a hub's route table): what
        decides which tunnel carries a packet."""
        where = ["table", str(table)] if table is not None else []
        done = netns.run(self.namespace, ["ip", "-j", "-4", "route", "show", *where, "proto", "bird"])
        routes = []
        for r in json.loads(done.stdout or "[]"):
            dst = r["dst"] if "/" in r["dst"] else f"{r['dst']}/32"
            gw = IPv4Address(r["gateway"]) if r.get("gateway") else None
            routes.append(KernelRoute(IPv4Network(dst), r.get("dev", ""), gw, "bird"))
        return routes

    def device_for(self, dst: IPv4Network) -> str | None:
        return next((r.dev for r in self.routes() if r.dst == dst), None)

    def up(self) -> bool:
        """Every tunnel's CHILD_SA installed and every BGP session established."""
        sas = self.sas()
        sessions = self.sessions()
        peers = self.bird.router.peers if self.bird else ()
        return all(s is not None and s.installed for s in sas.values()) and all(
            p.name in sessions and sessions[p.name].established for p in peers
        )

    def wait_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.up():
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.namespace}: tunnels or BGP not up in {timeout:.0f} s: {self.sas()} {self.sessions()}"
        )

    def stop(self) -> None:
        """Stop BIRD, then the charons (each takes its TUN device and routing rule with it), and
        remove the port mapping. Safe to call twice."""
        if self.bird is not None:
            self.bird.stop()
        for c in reversed(self.charons):
            c.stop()
        if self.nat:
            netns.run(self.namespace, ["nft", "delete", "table", "ip", NFT_TABLE])
            self.nat = False


def start(
    namespace: str,
    folder: Path,
    tunnels: Sequence[ipsec.TunnelSpec],
    router: bgp.BgpRouterSpec | None,
    *,
    liveness: ipsec.Liveness | None = None,
    timeout: float = 15,
) -> Gateway:
    """Start the gateway's daemons in `namespace` (which must exist, with its outside address) and
    return it once every daemon answers; tunnels and BGP come up afterwards (`wait_up`). No `router`:
    no BIRD (static routing only)."""
    live = liveness or ipsec.Liveness()
    gw = Gateway(namespace, folder)
    try:
        for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
            netns.write_sysctl(namespace, key.replace(".", "/"), "1" if key.endswith("forward") else "0")
        table = ipsec.port_map(tunnels, NFT_TABLE)
        if table is not None:
            done = netns.run(namespace, ["nft", "-f", "-"], input=nft.render(table))
            if done.returncode != 0:
                raise DaemonFailed("nft", namespace, _failure_line(done.stderr))
            gw.nat = True
        for index, tunnel in enumerate(tunnels):
            instance = ipsec.CharonInstance(index, PurePosixPath(folder / f"charon-{index}"), live)
            charon = Charon(namespace, instance, tunnel)
            gw.charons.append(charon)
            charon.start(timeout)
        if router is not None:
            gw.bird = Bird(namespace, folder / "bird", router)
            gw.bird.start(timeout)
    except BaseException:
        gw.stop()
        raise
    return gw


def attach(
    namespace: str,
    folder: Path,
    tunnels: Sequence[ipsec.TunnelSpec],
    router: bgp.BgpRouterSpec | None,
    *,
    liveness: ipsec.Liveness | None = None,
) -> Gateway:
    """A gateway another process started in `folder`, to read its state (`sas`, `sessions`, `routes`)
    through its control sockets; `stop_started` stops it."""
    live = liveness or ipsec.Liveness()
    gw = Gateway(namespace, folder)
    for index, tunnel in enumerate(tunnels):
        gw.charons.append(
            Charon(namespace, ipsec.CharonInstance(index, PurePosixPath(folder / f"charon-{index}"), live), tunnel)
        )
    if router is not None:
        gw.bird = Bird(namespace, folder / "bird", router)
    return gw


def _pid_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("charon-*/run/charon.pid")) + sorted(folder.glob("bird/bird.pid"))


def running_pids(folder: Path) -> list[int]:
    """The daemons started in `folder` that still run (by their pid files)."""
    out = []
    for f in _pid_files(folder):
        with contextlib.suppress(OSError, ValueError):
            pid = int(f.read_text().strip())
            if processes.alive(pid):
                out.append(pid)
    return out


def stop_started(folder: Path, namespace: str) -> None:
    """Stop every daemon started in `folder` (BIRD first, then the charons) and the port mapping."""
    for f in reversed(_pid_files(folder)):
        with contextlib.suppress(OSError, ValueError):
            pid = int(f.read_text().strip())
            if processes.alive(pid):
                processes.stop_group(pid)
        f.unlink(missing_ok=True)
    netns.run(namespace, ["nft", "delete", "table", "ip", NFT_TABLE])
