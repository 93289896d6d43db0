"""The lab's ingress gateways: HAProxy in each gateway pod, configured from the cluster's routes.

A Gateway's pods (plan/ingress.py: `<gw>-istio-<i>`) run HAProxy, Debian's, inside the pod's
network namespace, with the configuration `crossmesh.gateway.haproxy` renders from the Gateway
and the cluster's HTTPRoutes — the same rule order `gateway.match.select` decides with, so what
`trace` says the gateway does is what it does. Its upstreams are the backendRefs' Services at
their ClusterIP: the node's Service NAT picks the backend (local tier first, as Cilium does) and
the mesh proxy, which captures the pod's outbound connections, carries the leg in mTLS as the
gateway's identity (`ns/<ns>/sa/<gw>-istio`), as an Istio gateway's Envoy does itself.

Per pod, under `<lab>/ingress/<cluster>_<ns>_<pod>/`: `haproxy.cfg`, the listeners' PEM files
(certificate chain and key, 0600: from the mesh's ingress CA or the user's Secret), the crt-lists,
`stats.sock` (`show stat`: which backend took how many requests, read by `trace` and the checks)
and `haproxy.pid`. A changed configuration reloads HAProxy (`-sf`: the old process finishes its
connections); a gateway gone stops its HAProxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from crossmesh.drivers.lab.processes import alive
from crossmesh.drivers.lab.state import LabError, LabState
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.gateway import haproxy
from crossmesh.gateway.model import Gateway, HTTPRoute, SecretRef
from crossmesh.gateway.parse import cluster_objects
from crossmesh.identity.ingress import ListenerId, secret_pem
from crossmesh.model.plan import IngressPlan, Plan
from crossmesh.workspace import Compiled

HAPROXY = "haproxy"
START = 10.0  # seconds for HAProxy's pid file to appear


@dataclass(frozen=True, slots=True)
class PodConfig:
    """What one gateway pod's HAProxy runs with: the configuration and the files it names."""

    pod: str  # the pod's ref
    folder: Path
    config: haproxy.HaproxyConfig
    files: dict[Path, bytes]  # PEMs (0600) and crt-lists

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.config.text.encode())
        for path, data in sorted(self.files.items()):
            h.update(str(path).encode() + b"\0" + data)
        return h.hexdigest()


def folder(state: LabState, pod: str) -> Path:
    return state.dir / "ingress" / pod.replace("/", "_")


def stats_socket(state: LabState, pod: str) -> Path:
    return folder(state, pod) / "stats.sock"


def _certificates(
    compiled: Compiled, g: IngressPlan, gateway: Gateway, where: Path, now: datetime
) -> tuple[dict[str, str], dict[Path, bytes]]:
    """Each HTTPS listener's PEM path, and the PEMs: the ingress CA's certificate for a `mesh`
    listener (issued in the state directory once, as `render` does), else the listener's first Secret."""
    issued = compiled.ingress_certs(now)
    secrets = {(m.namespace, m.name): m.raw for m in compiled.loaded.manifests.get(g.cluster, []) if m.kind == "Secret"}
    paths: dict[str, str] = {}
    files: dict[Path, bytes] = {}
    for li in gateway.listeners:
        if li.tls is None:
            continue
        if li.tls.mesh:
            cert = issued.get(ListenerId(g.cluster, g.namespace, g.name, li.name))
            if cert is None:
                raise LabError(f"gateway {g.ref}: the ingress CA issued no certificate for listener {li.name}")
            pem = (cert.cert_pem + cert.key_pem).encode("ascii")
        else:
            ref: SecretRef = li.tls.secrets[0]
            raw = secrets.get((ref.namespace, ref.name))
            if raw is None:
                raise LabError(f"gateway {g.ref}: listener {li.name}'s Secret {ref.ref} is not in the manifests")
            try:
                pem = secret_pem(raw)
            except ValueError as err:
                raise LabError(f"gateway {g.ref}: listener {li.name}'s Secret {ref.ref}: {err}") from err
        path = where / f"{li.name}.pem"
        paths[li.name] = str(path)
        files[path] = pem
    return paths, files


def _upstreams(plan: Plan, cluster: str, routes: list[HTTPRoute]) -> dict[str, tuple[str, int]]:
    """Each backendRef's Service at its ClusterIP (the node's Service NAT and the mesh do the rest)."""
    services = {(s.namespace, s.name): s for s in plan.cluster(cluster).services}
    out = {}
    for r in routes:
        for rule in r.rules:
            for b in rule.backends:
                svc = services.get((b.namespace, b.name))
                if svc is not None and svc.cluster_ip is not None:
                    out[b.ref] = (str(svc.cluster_ip), b.port)
    return out


def objects(compiled: Compiled, g: IngressPlan) -> tuple[Gateway, list[HTTPRoute]]:
    """The Gateway of `g` and every HTTPRoute of its cluster (`haproxy.render` keeps the attached)."""
    gateways, routes = cluster_objects(compiled.loaded.manifests.get(g.cluster, []))
    gateway = next(gw for gw in gateways if (gw.namespace, gw.name) == (g.namespace, g.name))
    return gateway, routes


def pod_configs(state: LabState, compiled: Compiled, now: datetime | None = None) -> list[PodConfig]:
    """What every gateway pod of the plan runs. LabError when a listener has no certificate to serve
    or a backendRef no address (a headless Service)."""
    out = []
    when = now or datetime.now(UTC)
    for g in compiled.plan.ingress:
        gateway, routes = objects(compiled, g)
        upstreams = _upstreams(compiled.plan, g.cluster, routes)
        for pod in g.pods:
            where = folder(state, pod)
            certificates, files = _certificates(compiled, g, gateway, where, when)
            try:
                config = haproxy.render(
                    gateway,
                    routes,
                    upstreams=upstreams,
                    certificates=certificates,
                    stats_socket=str(where / "stats.sock"),
                    crt_list_dir=str(where),
                )
            except ValueError as err:
                raise LabError(f"gateway {g.ref}: {err}") from err
            files |= {Path(p): text.encode() for p, text in config.crt_lists.items()}
            out.append(PodConfig(pod, where, config, files))
    return out


def _write(cfg: PodConfig) -> Path:
    cfg.folder.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.folder, 0o700)
    for path, data in cfg.files.items():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask, and for a file that existed already
            fh.write(data)
    path = cfg.folder / "haproxy.cfg"
    path.write_text(cfg.config.text)
    return path


def _pid(cfg: PodConfig) -> int:
    try:
        return int((cfg.folder / "haproxy.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return 0


def _run(namespace: str, cfg: PodConfig, old: int) -> int:
    """HAProxy started (or reloaded: `-sf old`) in the pod's namespace; its pid."""
    path = _write(cfg)
    pidfile = cfg.folder / "haproxy.pid"
    pidfile.unlink(missing_ok=True)
    argv = ["ip", "netns", "exec", namespace, HAPROXY, "-D", "-p", str(pidfile), "-f", str(path)]
    if old:
        argv += ["-sf", str(old)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise LabError(f"haproxy of gateway pod {cfg.pod} did not start: {' / '.join(lines[-3:]) or done.returncode}")
    deadline = time.monotonic() + START
    while time.monotonic() < deadline:
        pid = _pid(cfg)
        if pid and alive(pid):
            return pid
        time.sleep(0.05)
    raise LabError(f"haproxy of gateway pod {cfg.pod} wrote no pid file ({pidfile})")


def start_ingress(state: LabState, topo: LabTopology, compiled: Compiled) -> list[str]:
    """Every gateway pod's HAProxy running the configuration its routes give; the others stopped."""
    configs = pod_configs(state, compiled)
    wanted = {c.pod for c in configs}
    changes = stop_ingress(state, "its gateway is gone", keep=wanted)
    for cfg in configs:
        pid = state.ingress.get(cfg.pod, 0)
        if alive(pid) and state.ingress_digests.get(cfg.pod) == cfg.digest:
            continue
        reload = alive(pid)
        state.ingress[cfg.pod] = _run(topo.pod(cfg.pod).namespace, cfg, pid if reload else 0)
        state.ingress_digests[cfg.pod] = cfg.digest
        state.save()
        changes.append(f"gateway pod {cfg.pod}: haproxy {'reloaded' if reload else 'started'}")
    return changes


def stop_ingress(state: LabState, why: str, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    changes = []
    for pod, pid in sorted(state.ingress.items()):
        if pod in keep:
            continue
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            changes.append(f"gateway pod {pod}: haproxy stopped ({why})")
        del state.ingress[pod]
        state.ingress_digests.pop(pod, None)
    if changes:
        state.save()
    return changes


def read_stats(state: LabState, pod: str, timeout: float = 2.0) -> dict[tuple[str, str], haproxy.Counters]:
    """`show stat` of a gateway pod's HAProxy: requests per (backend, server), per frontend."""
    path = stats_socket(state, pod)
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(b"show stat\n")
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except OSError as err:
            raise LabError(f"gateway pod {pod}: its haproxy's stats socket {path}: {err}") from err
    return haproxy.parse_stats(b"".join(chunks).decode())
