"""The lab's site-to-site VPNs: every customer gateway (in its site's router, seed 001's r1) and every
transit gateway's tunnel endpoints (the hub's namespace) run strongSwan and BIRD as plan/vpngw.py
derives them — the customer side byte for byte what `render` writes for the real gateway.

Reconciled like the lab's other daemons: a gateway whose specification is unchanged and whose daemons
all run is left alone; a changed or broken one is stopped and started again; a gateway the plan no
longer has is stopped. The transit gateway's route tables (kernel tables and `ip rule`s, hubtopo.py)
are written once its TUN devices exist. Then every tunnel's CHILD_SA and every BGP session must come
up, or `lab up` fails naming what did not.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from crossmesh.drivers.lab import hubtopo, netns, vpn
from crossmesh.drivers.lab.state import VPN_ROOT, LabError, LabState
from crossmesh.drivers.lab.topology import ROUTE_PROTO, LabTopology
from crossmesh.plan import vpngw
from crossmesh.workspace import Compiled

RULE_PRIORITY = 1000  # the hub's association rules, before `main` (32766)
UP_TIMEOUT_S = 45.0


@dataclass(frozen=True, slots=True)
class LabGateway:
    key: str  # customer:<site> | hub:<hub>, the entry in LabState.vpn
    namespace: str
    folder: Path
    spec: vpngw.GatewaySpec


def gateways(state: LabState, topo: LabTopology, compiled: Compiled) -> list[LabGateway]:
    """Every VPN gateway of the plan where the lab runs it: hubs first (the responders), then the
    customer gateways, which initiate."""
    plan = compiled.plan
    if not plan.vpn:
        return []
    psks = compiled.tunnel_psks()
    out = []
    for name, spec in sorted(vpngw.hub_gateways(plan, topo.vpn_outside, psks).items()):
        key = f"hub:{name}"
        out.append(LabGateway(key, topo.hubs[name].namespace, vpn_dir(state) / folder_name(key), spec))
    for site, spec in sorted(vpngw.customer_gateways(plan, topo.vpn_outside, psks).items()):
        key = f"customer:{site}"
        out.append(LabGateway(key, topo.site_ns[site], vpn_dir(state) / folder_name(key), spec))
    return out


def folder_name(key: str) -> str:
    """A gateway's folder: fixed by its key, so that a hub or site joining a running lab moves no other
    gateway's folder (whose running daemons would otherwise be started a second time), and short, for
    the control sockets' 108-byte paths."""
    return f"{key[0]}{zlib.crc32(key.encode()) & 0xFFFFFF:06x}"


def _folder(state: LabState, name: str) -> Path | None:
    """A gateway's folder named in lab.json: a plain name inside the lab's vpn/ folder, or None."""
    if not name or "/" in name or name in (".", ".."):
        return None
    return vpn_dir(state) / name


def vpn_dir(state: LabState) -> Path:
    return VPN_ROOT / f"cm-{state.tag}"


def attach(gw: LabGateway) -> vpn.Gateway:
    return vpn.attach(gw.namespace, gw.folder, gw.spec.tunnels, gw.spec.router)


def _digest(gw: LabGateway) -> str:
    return hashlib.sha256(f"{gw.namespace}\n{gw.spec!r}".encode()).hexdigest()[:16]


def _expected(spec: vpngw.GatewaySpec) -> int:
    return len(spec.tunnels) + (spec.router is not None)


def start_transit(state: LabState, topo: LabTopology, compiled: Compiled) -> list[str]:
    """Bring every VPN gateway of the plan to its specification and wait for tunnels and BGP."""
    wanted = gateways(state, topo, compiled)
    changes = []
    keys = {g.key for g in wanted}
    for key in sorted(set(state.vpn) - keys):
        entry = state.vpn.pop(key)
        folder, namespace = _folder(state, entry.get("folder", "")), entry.get("namespace", "")
        if folder is None or not namespace.startswith(f"cm-{state.tag}-"):
            continue  # not a record this lab wrote: nothing is touched on its word
        if netns.exists(namespace):
            vpn.stop_started(folder, namespace)
        shutil.rmtree(folder, ignore_errors=True)
        changes.append(f"VPN gateway {key} stopped")
    state.save()
    for gw in wanted:
        digest = _digest(gw)
        found = state.vpn.get(gw.key)
        if found and found.get("digest") == digest and len(vpn.running_pids(gw.folder)) == _expected(gw.spec):
            continue
        vpn.stop_started(gw.folder, gw.namespace)
        shutil.rmtree(gw.folder, ignore_errors=True)
        VPN_ROOT.mkdir(mode=0o700, exist_ok=True)
        gw.folder.mkdir(parents=True, mode=0o700)
        state.vpn[gw.key] = {"digest": "", "folder": gw.folder.name, "namespace": gw.namespace}
        state.save()  # a crash below still finds the folder to clean
        try:
            vpn.start(gw.namespace, gw.folder, gw.spec.tunnels, gw.spec.router)
        except vpn.DaemonFailed as err:
            raise LabError(f"VPN gateway {gw.key}: {err}") from err
        state.vpn[gw.key]["digest"] = digest
        state.save()
        changes.append(f"{gw.namespace}: VPN gateway {gw.key} started ({len(gw.spec.tunnels)} tunnels)")
    for gw in wanted:
        changes += _kernel_state(topo, compiled, gw)
    _wait_up(wanted)
    return changes


def _ip(namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return netns.run(namespace, ["ip", *argv])


def _kernel_state(topo: LabTopology, compiled: Compiled, gw: LabGateway) -> list[str]:
    """A hub's route tables and association rules; a static connection's routes (either side).
    Idempotent: `replace`, and rules added only when missing."""
    plan = compiled.plan
    changes = []
    if gw.spec.side == vpngw.HUB:
        link = topo.hubs[gw.spec.name]
        have = _ip(gw.namespace, "rule", "show").stdout
        for dev, table in hubtopo.table_rules(plan, gw.spec.name, link, gw.spec):
            if f"iif {dev} lookup {table}" not in have:
                _check(_ip(gw.namespace, "rule", "add", "pref", str(RULE_PRIORITY), "iif", dev, "lookup", str(table)))
                changes.append(f"{gw.namespace}: rule iif {dev} lookup {table}")
        for r in hubtopo.table_routes(plan, gw.spec.name, link, gw.spec):
            where = ["blackhole", str(r.destination)] if r.device is None else [str(r.destination)]
            if r.gateway is not None:
                where += ["via", str(r.gateway)]
            if r.device is not None:
                where += ["dev", r.device]
            _check(_ip(gw.namespace, "route", "replace", *where, "table", str(r.table), "proto", str(ROUTE_PROTO)))
    else:
        for s in gw.spec.static_routes:
            _check(
                _ip(gw.namespace, "route", "replace", str(s.destination), "dev", s.device, "proto", str(ROUTE_PROTO))
            )
    return changes


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise LabError(f"{' '.join(done.args)}: {done.stderr.strip()}")


def _wait_up(wanted: list[LabGateway]) -> None:
    """Every tunnel's CHILD_SA installed and every BGP session established, at every gateway."""
    attached = [attach(g) for g in wanted]
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(a.up() for a in attached):
            return
        time.sleep(0.25)
    lines = []
    for g, a in zip(wanted, attached, strict=True):
        sas = {name: (sa.state if sa else "none") for name, sa in a.sas().items()}
        sessions = {name: s.state for name, s in a.sessions().items()}
        lines.append(f"{g.key} ({g.namespace}): IKE {sas}, BGP {sessions}, logs in {g.folder}")
    raise LabError(f"VPN tunnels or BGP sessions not up within {UP_TIMEOUT_S:.0f} s: " + "; ".join(lines))
