"""Gateway failover (issue 16): loss windows under a UDP stream, the probes' cost at rest, and
throughput through gateways against a full mesh — on real labs with `lab up --agents`.

    sudo python3 benchmarks/bench_gateways.py [--trials 20] [--faults crash,blackhole,uplink]
        [--rest-sites 8] [--rest 30] [--iperf-seconds 10] [--iperf-runs 5] [--only failover,rest,throughput]

1. Failover (`failover`): examples/gateway-failover (3 sites × 2 gateways, on-prem behind NAT)
   under a unique mesh name. A UDP stream, one datagram every 10 ms, from pod shop/api-aws
   (aws-worker-1) to shop/api-azure (azure-worker-1) port 5353, echoes counted by the sender
   (tests/lab/agentkit.UdpStream). Each trial: 1 s of stream; the fault is applied to the
   preferred (active) gateway *in this process* (the lab's own functions: `crash_node`,
   `faults.stop_forwarding`, `faults.cut_uplink`, timed around the call, so the CLI's 1.4 s start
   is not counted); the site's key in etcd is polled until the standby is active; 2 s more of
   traffic through it; then the heal (`faults.heal_node`; for a crash `crossmesh lab up --agents`,
   which restarts the node's agent and wireguard-go) and the key polled until the preferred
   gateway is active again; 1.5 s more, and the stream is stopped. Trials alternate between the
   client's site (gw-aws-1) and the server's site (gw-azure-1).
   - loss window: last lost − first lost datagram + 10 ms, over the datagrams sent from the
     fault until the heal (0 when none was lost);
   - takeover: the key's `since` (written by the standby when it won) − the end of the fault call;
   - back to the preferred: the key's `since` when the preferred wrote it back − the end of the
     heal (expected: HOLD_DOWN 10 s + one round), and the datagrams lost around that switch back.
   A trial whose last second lost anything is reported (`tail_clean`); before each trial both
   sites must have their preferred gateway active and the echo answer.
2. At rest (`rest`): a generated mesh of `--rest-sites` sites with 2 gateways each (all public) and
   one plain node in the first site (a route-only agent: the baseline of an agent that does not
   probe). Settled, then over `--rest` s: CPU of every agent from /proc/<pid>/stat, split into
   its probe thread (the one thread in the node's namespace: /proc/<pid>/task/<tid>/ns/net) and
   the rest, and of each wireguard-go; probe packets counted by nftables counters in a table of
   our own (inet cm_bench_probes, removed after) in every gateway namespace — UDP to and from
   PROBE_PORT in the input, output and forward hooks — against the design's count: a standby
   probes every remote site's active gateway twice (direct and via) each INTERVAL, an active
   gateway once (direct); the active answers every remote gateway's direct probe and every remote
   standby's via probe, and forwards its own standby's via probes and their echoes.
   /proc/net/snmp's Udp counters of each gateway namespace are given too (they also count
   wireguard-go's own datagrams, which carry the direct probes over the tunnels).
3. Throughput (`throughput`): two labs up at once, generated from one mesh of 2 sites × (2
   gateways + 1 plain node), every node public, differing only in `topology: gateways` and
   `topology: full-mesh`. `iperf3` (one TCP stream, `--iperf-seconds`) from the plain node of site
   0 to that of site 1 (node namespaces, node addresses): through both sites' active gateways in
   one lab, over the nodes' own tunnel in the other; `--iperf-runs` runs, the two labs alternating
   first, ratios taken per run.

Every lab has its own mesh name (its own cm-<tag>) and is removed with `crossmesh lab down --mesh`
and by tag in a `finally`; never `--all`. The host's load average and CPU busy share are recorded
with each part. Prints a summary and writes benchmarks/results/gateways.json (merged with the parts
not run this time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "lab"))

from agentkit import UdpStream, etcdctl, state, udp_answers  # noqa: E402
from bench_control_plane import TICK, bring_down, free_name, host_busy, log  # noqa: E402
from labkit import Lab, copy_example, crossmesh  # noqa: E402

from crossmesh.agent import gateways, probes  # noqa: E402
from crossmesh.drivers.lab import faults, netns  # noqa: E402
from crossmesh.drivers.lab import lab as labs  # noqa: E402
from crossmesh.drivers.lab.processes import wireguard_pids  # noqa: E402

CLIENT, SERVER, ECHO_PORT = "shop/shop/api-aws", "shop/shop/api-azure", 5353
FAULTED = (("aws-use1", "gw-aws-1", "gw-aws-2"), ("azure-weu", "gw-azure-1", "gw-azure-2"))  # site, preferred, standby
INTERVAL = 0.01  # the stream's
IPERF_PORT = 5201
COUNTERS = "cm_bench_probes"


# --- small helpers ---------------------------------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    """Nearest rank (as bench_operator_lab): with 20 samples p99 is the largest."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def spread(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {
        "p50": round(pct(xs, 50), 3),
        "p99": round(pct(xs, 99), 3),
        "max": round(max(xs), 3),
        "min": round(min(xs), 3),
        "n": len(xs),
    }


def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    t0 = time.monotonic()
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(interval)


class Load:
    """Load average and the host's CPU busy share between start and stop."""

    def __init__(self) -> None:
        self.load_start = os.getloadavg()
        self.busy0 = host_busy()

    def stop(self) -> dict[str, Any]:
        busy1 = host_busy()
        return {
            "loadavg_start": [round(x, 2) for x in self.load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "host_busy_percent": round(100 * (busy1[0] - self.busy0[0]) / max(1, busy1[1] - self.busy0[1]), 1),
        }


def actives(lab: Lab) -> dict[str, dict[str, Any]]:
    """Site → the value of its gateways/ key in etcd (empty when etcd did not answer)."""
    prefix = f"/crossmesh/{lab.name}/gateways/"
    done = etcdctl(lab.tag, "get", "--prefix", prefix)
    lines = done.stdout.splitlines() if done.returncode == 0 else []
    return {k[len(prefix) :]: json.loads(v) for k, v in zip(lines[::2], lines[1::2], strict=True)}


def active_is(lab: Lab, site: str, node: str) -> dict[str, Any] | None:
    value = actives(lab).get(site)
    return value if value is not None and value["active"] == node else None


@contextmanager
def running(lab: Lab, tries: int = 3) -> Iterator[Lab]:
    """`lab up --agents`, tried again when it fails (on this shared host a daemon can miss its start
    deadline under load; a failed `up` removes what it built); `lab down --mesh` and by tag after."""
    try:
        for attempt in range(1, tries + 1):
            t0 = time.monotonic()
            done = crossmesh("lab", "up", str(lab.mesh), "-o", "json", "--agents", timeout=900)
            if done.returncode == 0:
                log(
                    f"lab {lab.name} (cm-{lab.tag}) up in {time.monotonic() - t0:.1f} s (load {os.getloadavg()[0]:.1f})"
                )
                break
            why = (done.stderr.strip().splitlines() or ["?"])[-1]
            log(f"lab up of {lab.name} failed (attempt {attempt}, load {os.getloadavg()[0]:.1f}): {why}")
            if attempt == tries:
                raise RuntimeError(f"lab up failed {tries} times: {why}")
            labs.down(lab.tag)
            time.sleep(10)
        yield lab
    finally:
        bring_down(lab)


# --- the meshes ------------------------------------------------------------------------------------
PROVIDERS = ("aws", "azure", "gcp", "openstack")


def gateway_mesh(tmp: Path, sites: int, plain: Callable[[int], int], topology: str = "gateways") -> Lab:
    """`sites` sites with 2 gateways each and plain(k) plain nodes in site k, every node public
    (198.51.100.x), one cluster; `topology` as given (the gateway flags stay in a full mesh)."""

    def node(name: str, site: int, address: str, public: int, **extra: object) -> dict[str, object]:
        return {"name": name, "site": f"s{site}", "address": address, "publicAddress": f"198.51.100.{public}", **extra}

    def site(k: int) -> dict[str, object]:
        provider = PROVIDERS[k % len(PROVIDERS)]
        return {"name": f"s{k}", "provider": provider, "region": f"r{k}", "network": f"10.{k + 1}.0.0/16"}

    def make(name: str) -> tuple[Path, str]:
        d = Path(tempfile.mkdtemp(dir=tmp))
        nodes = []
        for k in range(sites):
            nodes += [node(f"gw-{k}-{g}", k, f"10.{k + 1}.0.{10 + g}", 10 * k + g, gateway=True) for g in (1, 2)]
            nodes += [node(f"node-{k}-{w + 1}", k, f"10.{k + 1}.1.{21 + w}", 10 * k + 5 + w) for w in range(plain(k))]
        spec = {
            "wireguard": {"topology": topology, "persistentKeepalive": 20},
            "sites": [site(k) for k in range(sites)],
            "clusters": [{"name": "c", "distribution": "k3s", "cni": "cilium", "nodes": nodes}],
        }
        doc = {"apiVersion": "crossmesh.io/v1alpha1", "kind": "Mesh", "metadata": {"name": name}, "spec": spec}
        (d / "mesh.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return d / "mesh.yaml", name

    mesh, name = free_name(make)
    return Lab(mesh, name)


def example(tmp: Path) -> Lab:
    def make(_: str) -> tuple[Path, str]:
        return copy_example(Path(tempfile.mkdtemp(dir=tmp)), "gateway-failover")

    mesh, name = free_name(make)
    return Lab(mesh, name)


# --- 1. loss windows -------------------------------------------------------------------------------
def ready(lab: Lab, st: labs.LabState) -> bool:
    """Every site's preferred gateway is active and the stream's path answers."""
    values = actives(lab)
    if any(values.get(site, {}).get("active") != pref for site, pref, _ in FAULTED):
        return False
    return udp_answers(st.pods[CLIENT].namespace, str(st.pods[SERVER].address), ECHO_PORT, timeout=0.3)


def apply_fault(lab: Lab, kind: str, node: str) -> None:
    st = state(lab.tag)
    if kind == "crash":
        labs.crash_node(st, node)
    elif kind == "blackhole":
        faults.stop_forwarding(st, node)
    else:
        faults.cut_uplink(st, node)


def heal(lab: Lab, kind: str, node: str) -> None:
    if kind == "crash":
        crossmesh("lab", "up", str(lab.mesh), "--agents", "-o", "json", check=True, timeout=300)
    else:
        faults.heal_node(state(lab.tag), node)


def probing_since(lab: Lab, node: str, after: float) -> float | None:
    """When the node's agent last logged that it started probing, if after `after` (unix time):
    a restarted agent's first round. The log has the time of day only; the date is `after`'s."""
    path = labs.LAB_ROOT / f"cm-{lab.tag}" / "logs" / f"agent-{node}.log"
    lines = [ln for ln in path.read_text().splitlines() if "answering and sending probes" in ln]
    if not lines:
        return None
    clock, frac = lines[-1].split()[0].split(".")
    day = time.strftime("%Y-%m-%d", time.localtime(after))
    at = time.mktime(time.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S")) + int(frac) / 1000
    return at if at >= after else None


def window(lost: list[tuple[int, float]]) -> float:
    return round(max(t for _, t in lost) - min(t for _, t in lost) + INTERVAL, 3) if lost else 0.0


def gap(lost: list[tuple[int, float]]) -> float:
    """The longest run of consecutive lost datagrams, in seconds."""
    longest, run, prev = 0, 0, None
    for n, _ in sorted(lost):
        run = run + 1 if prev is not None and n == prev + 1 else 1
        prev, longest = n, max(longest, run)
    return round(longest * INTERVAL, 3)


def trial(lab: Lab, kind: str, site: str, preferred: str, standby: str) -> dict[str, Any]:
    st = state(lab.tag)
    until(lambda: ready(lab, st), 60, "the preferred gateways active and the echo answering", 0.5)
    load = os.getloadavg()[0]
    stream = UdpStream(st.pods[CLIENT].namespace, str(st.pods[SERVER].address), ECHO_PORT)
    try:
        time.sleep(1.0)
        f0 = time.time()
        apply_fault(lab, kind, preferred)
        f1 = time.time()
        took = until(lambda: active_is(lab, site, standby), 20, f"{standby} active", 0.1)
        time.sleep(2.0)
        h0 = time.time()
        heal(lab, kind, preferred)
        h1 = time.time()
        back = until(lambda: active_is(lab, site, preferred), 60, f"{preferred} active again", 0.2)
        probing = probing_since(lab, preferred, h0)
        time.sleep(1.5)
        end = time.time()
        result = stream.stop()
    except BaseException:
        stream.kill()
        with suppress(Exception):
            heal(lab, kind, preferred)
        raise
    lost = [(n, t) for n, t in result["lost"]]
    during = [(n, t) for n, t in lost if f0 - 0.05 <= t < h0]
    after = [(n, t) for n, t in lost if t >= h0]
    return {
        "kind": kind,
        "site": site,
        "node": preferred,
        "load1": round(load, 2),
        "sent": result["sent"],
        "lost": len(lost),
        "lost_before_fault": len([1 for _, t in lost if t < f0 - 0.05]),
        "window_s": window(during),
        "gap_s": gap(during),
        "lost_during": len(during),
        "first_loss_after_fault_s": round(min(t for _, t in during) - f0, 3) if during else None,
        "fault_call_s": round(f1 - f0, 3),
        "takeover_s": round(took["since"] - f1, 3),
        "takeover_reason": took["reason"],
        "heal_call_s": round(h1 - h0, 3),
        "back_s": round(back["since"] - h1, 3),
        "back_from_heal_start_s": round(back["since"] - h0, 3),
        "back_from_restart_s": round(back["since"] - probing, 3) if probing is not None else None,
        "back_window_s": window(after),
        "back_gap_s": gap(after),
        "lost_after_heal": len(after),
        "tail_clean": not any(t >= end - 1.0 for _, t in lost),
    }


def failover(tmp: Path, kinds: list[str], trials: int) -> dict[str, Any]:
    lab = example(tmp)
    out: dict[str, Any] = {"mesh": "examples/gateway-failover", "lab": f"cm-{lab.tag}", "trials": {}}
    with running(lab):
        until(lambda: ready(lab, state(lab.tag)), 60, "lab settled", 0.5)
        for kind in kinds:
            load = Load()
            runs = []
            for i in range(trials):
                site, preferred, standby = FAULTED[i % len(FAULTED)]
                r = trial(lab, kind, site, preferred, standby)
                runs.append(r)
                log(
                    f"{kind} {i + 1}/{trials} {preferred}: window {r['window_s']:.2f} s ({r['lost_during']} lost), "
                    f"takeover {r['takeover_s']:.2f} s, back {r['back_s']:.2f} s "
                    f"({r['lost_after_heal']} lost), load {r['load1']}" + ("" if r["tail_clean"] else ", TAIL LOST")
                )
            out["trials"][kind] = runs
            out[kind] = summarize(runs) | {"load": load.stop()}
            log(f"{kind}: {json.dumps(out[kind])}")
        out["takeovers_logged"] = took_over_lines(lab)
        out["final_values"] = actives(lab)  # epochs: 1 + 2 per trial on a faulted site, 1 elsewhere
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_site = {
        site: spread([r["window_s"] for r in runs if r["site"] == site]) for site in sorted({r["site"] for r in runs})
    }
    return {
        "window_s": spread([r["window_s"] for r in runs]),
        "gap_s": spread([r["gap_s"] for r in runs]),
        "window_by_faulted_site": by_site,
        "takeover_s": spread([r["takeover_s"] for r in runs]),
        "first_loss_after_fault_s": spread(
            [r["first_loss_after_fault_s"] for r in runs if r["first_loss_after_fault_s"] is not None]
        ),
        "back_to_preferred_s": spread([r["back_s"] for r in runs]),
        "back_from_restart_s": spread([r["back_from_restart_s"] for r in runs if r["back_from_restart_s"] is not None]),
        "back_window_s": spread([r["back_window_s"] for r in runs]),
        "back_gap_s": spread([r["back_gap_s"] for r in runs]),
        "lost_at_switch_back": spread([r["lost_after_heal"] for r in runs]),
        "heal_call_s": spread([r["heal_call_s"] for r in runs]),
        "fault_call_s": spread([r["fault_call_s"] for r in runs]),
        "trials_with_loss_before_fault": sum(1 for r in runs if r["lost_before_fault"]),
        "trials_with_tail_loss": sum(1 for r in runs if not r["tail_clean"]),
    }


def took_over_lines(lab: Lab) -> dict[str, list[str]]:
    """Every takeover each gateway agent logged (a cross-check of the trials: one per fault and
    one per return, on the faulted sites only)."""
    out = {}
    for f in sorted((labs.LAB_ROOT / f"cm-{lab.tag}" / "logs").glob("agent-gw-*.log")):
        out[f.stem.removeprefix("agent-")] = [ln for ln in f.read_text().splitlines() if ": took over from " in ln]
    return out


# --- 2. at rest ------------------------------------------------------------------------------------
def ticks(path: str) -> int:
    f = Path(path).read_text().rsplit(") ", 1)[1].split()
    return int(f[11]) + int(f[12])


def threads(pid: int) -> dict[str, int]:
    """CPU ticks of the process: "probes" (its threads in another network namespace than its
    leader's: the probe thread) and "other"."""
    own = os.readlink(f"/proc/{pid}/ns/net")
    out = {"probes": 0, "other": 0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with suppress(OSError, IndexError):
            t = ticks(f"/proc/{pid}/task/{tid}/stat")
            out["probes" if os.readlink(f"/proc/{pid}/task/{tid}/ns/net") != own else "other"] += t
    return out


COUNTER_TABLE = "".join(
    [f"table inet {COUNTERS} {{\n"]
    + [
        f"  chain {hook} {{\n    type filter hook {hook} priority -400; policy accept;\n"
        f'    udp dport {probes.PROBE_PORT} counter comment "probes {verb}"\n'
        f'    udp sport {probes.PROBE_PORT} counter comment "echoes {verb}"\n  }}\n'
        for hook, verb in (("input", "received"), ("output", "sent"), ("forward", "forwarded"))
    ]
    + ["}\n"]
)


def counters(ns: str) -> dict[str, float]:
    """The counters of our table in `ns` (packets), and "t": when they were read."""
    done = netns.run(ns, ["nft", "-j", "list", "table", "inet", COUNTERS])
    out: dict[str, float] = {"t": time.monotonic()}
    for item in json.loads(done.stdout)["nftables"]:
        rule = item.get("rule")
        if rule:
            packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
            out[rule["comment"]] = packets
    return out


def udp_snmp(ns: str) -> dict[str, float]:
    """/proc/net/snmp's Udp counters in `ns`, and "t": when they were read."""
    lines = [ln.split() for ln in netns.run(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Udp:")]
    return {"t": time.monotonic(), **{k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True)}}


def rates(a: dict[str, float], b: dict[str, float], keys: list[str]) -> dict[str, float]:
    """Per second between two readings of counters (each with its "t")."""
    return {k: round((b[k] - a[k]) / (b["t"] - a["t"]), 1) for k in keys}


def sample(st: labs.LabState, agents: dict[str, int], wg: dict[str, int], gws: list[str]) -> dict[str, Any]:
    return {
        "t": time.monotonic(),  # CPU; the counters carry their own times
        "agents": {n: {"total": ticks(f"/proc/{pid}/stat"), **threads(pid)} for n, pid in agents.items()},
        "wg": {n: ticks(f"/proc/{pid}/stat") for n, pid in wg.items()},
        "counters": {n: counters(st.nodes[n]) for n in gws},
        "snmp": {n: udp_snmp(st.nodes[n]) for n in gws},
    }


def at_rest(tmp: Path, sites: int, seconds: float) -> dict[str, Any]:
    lab = gateway_mesh(tmp, sites, lambda k: 1 if k == 0 else 0)
    with running(lab):
        st = state(lab.tag)
        gws = sorted(n for n in st.nodes if n.startswith("gw-"))

        def settled() -> bool:
            values = actives(lab)
            if len(values) != sites:
                return False
            for n in gws:
                g = labs.agent_status(st, n).get("gateways") or {}
                health = g.get("health") or {}
                remotes = health.get("remotes") or {}
                if not g.get("probing") or len(remotes) != sites - 1 or not all(r["direct"] for r in remotes.values()):
                    return False
            return True

        until(settled, 120, "every gateway probing, every remote answering", 0.5)
        agents = {n: int(labs.agent_status(st, n)["pid"]) for n in st.nodes}
        wg = {}
        for ifname, entry in st.wireguard.items():
            pids = wireguard_pids(ifname)
            if pids:
                wg[entry.node] = pids[0]
        for n in gws:
            done = netns.run(st.nodes[n], ["nft", "-f", "-"], input=COUNTER_TABLE)
            if done.returncode != 0:
                raise RuntimeError(f"counter table in {st.nodes[n]}: {done.stderr}")
        try:
            for attempt in range(1, 4):
                # a takeover while the lab came up is taken back after HOLD_DOWN: measure after that
                preferred = lambda: all(v["active"].endswith("-1") for v in actives(lab).values())  # noqa: E731
                until(preferred, 120, "the preferred gateways active", 0.5)
                time.sleep(5)
                values = actives(lab)
                active = {v["active"] for v in values.values()}
                load = Load()
                before = sample(st, agents, wg, gws)
                time.sleep(seconds)
                after = sample(st, agents, wg, gws)
                load_out = load.stop()
                moved = {site: v["epoch"] for site, v in actives(lab).items() if v["epoch"] != values[site]["epoch"]}
                if not moved:
                    break
                log(f"at rest, attempt {attempt}: the active gateway moved during the sample: {moved}")
        finally:
            for n in gws:
                netns.run(st.nodes[n], ["nft", "delete", "table", "inet", COUNTERS])
        takeovers = took_over_lines(lab)
    dt = float(after["t"] - before["t"])

    def cpu(a: int, b: int) -> float:
        return round(100 * (b - a) / TICK / dt, 2)

    per: dict[str, Any] = {}
    for n in agents:
        a, b = before["agents"][n], after["agents"][n]
        role = "active" if n in active else "standby" if n in gws else "plain"
        row: dict[str, Any] = {
            "role": role,
            "agent_cpu_percent": cpu(a["total"], b["total"]),
            "probe_thread_cpu_percent": cpu(a["probes"], b["probes"]),
            "other_threads_cpu_percent": cpu(a["other"], b["other"]),
        }
        if n in wg:
            row["wireguard_go_cpu_percent"] = cpu(before["wg"][n], after["wg"][n])
        if n in gws:
            a, b = before["counters"][n], after["counters"][n]
            row["pps"] = rates(a, b, [k for k in b if k != "t"])
            row["udp_snmp_per_s"] = rates(before["snmp"][n], after["snmp"][n], ["InDatagrams", "OutDatagrams"])
        per[n] = row
    rounds = 1 / gateways.INTERVAL
    remote = sites - 1
    design = {
        "standby": {"probes sent": 2 * remote * rounds, "echoes received": 2 * remote * rounds, "probes received": 0.0},
        "active": {
            "probes sent": remote * rounds,
            "echoes received": remote * rounds,
            "probes received": 3 * remote * rounds,
            "echoes sent": 3 * remote * rounds,
            "probes forwarded": remote * rounds,  # its standby's via probes
        },
    }
    by_role: dict[str, Any] = {}
    for role in ("active", "standby", "plain"):
        rows = [r for r in per.values() if r["role"] == role]
        if not rows:
            continue
        by_role[role] = {
            "nodes": len(rows),
            "agent_cpu_percent_median": round(statistics.median(r["agent_cpu_percent"] for r in rows), 2),
            "agent_cpu_percent_max": max(r["agent_cpu_percent"] for r in rows),
            "probe_thread_cpu_percent_median": round(statistics.median(r["probe_thread_cpu_percent"] for r in rows), 2),
            "other_threads_cpu_percent_median": round(
                statistics.median(r["other_threads_cpu_percent"] for r in rows), 2
            ),
        }
        if "wireguard_go_cpu_percent" in rows[0]:
            by_role[role]["wireguard_go_cpu_percent_median"] = round(
                statistics.median(r["wireguard_go_cpu_percent"] for r in rows), 2
            )
        if "pps" in rows[0]:
            by_role[role]["pps_median"] = {
                k: round(statistics.median(r["pps"][k] for r in rows), 1) for k in rows[0]["pps"]
            }
            by_role[role]["udp_snmp_per_s_median"] = {
                k: round(statistics.median(r["udp_snmp_per_s"][k] for r in rows), 1)
                for k in ("InDatagrams", "OutDatagrams")
            }
    for role, per_round in (("active", remote), ("standby", 2 * remote)):
        if role in by_role:
            by_role[role]["rounds_per_s"] = round(by_role[role]["pps_median"]["probes sent"] / per_round, 2)
    total_sent = sum(r["pps"]["probes sent"] for r in per.values() if "pps" in r)
    return {
        "sites": sites,
        "gateways": len(gws),
        "seconds": round(dt, 1),
        "lab": f"cm-{lab.tag}",
        "load": load_out,
        "epochs_at_start": {site: v["epoch"] for site, v in values.items()},
        "sites_whose_active_moved_during_sample": moved,
        "attempts": attempt,
        "takeovers_logged": takeovers,
        "design_pps": design,
        "by_role": by_role,
        "probes_sent_per_s_whole_mesh": round(total_sent, 1),
        "design_probes_sent_per_s_whole_mesh": sites * (2 * remote + remote) * rounds,
        "nodes": per,
    }


# --- 3. throughput ---------------------------------------------------------------------------------
@contextmanager
def iperf_server(st: labs.LabState, node: str) -> Iterator[None]:
    proc = subprocess.Popen(
        netns.exec_argv(st.nodes[node], ["iperf3", "-s", "-p", str(IPERF_PORT)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def iperf(st: labs.LabState, src: str, address: str, seconds: float) -> dict[str, float]:
    done = netns.run(
        st.nodes[src], ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"], timeout=seconds + 60
    )
    end = json.loads(done.stdout)["end"]
    return {
        "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
        "retransmits": end["sum_sent"].get("retransmits", 0),
    }


def throughput(tmp: Path, seconds: float, runs: int) -> dict[str, Any]:
    plain = lambda k: 1  # noqa: E731
    labs_ = {"gateways": gateway_mesh(tmp, 2, plain, "gateways"), "full-mesh": gateway_mesh(tmp, 2, plain, "full-mesh")}
    src, dst, dst_address = "node-0-1", "node-1-1", "10.2.1.21"
    out: dict[str, Any] = {"pair": f"{src} → {dst} ({dst_address})", "seconds": seconds, "runs": []}
    with ExitStack() as stack:
        for lab in labs_.values():
            stack.enter_context(running(lab))
        states = {topo: state(lab.tag) for topo, lab in labs_.items()}
        out["labs"] = {topo: f"cm-{lab.tag}" for topo, lab in labs_.items()}
        out["route"] = {
            topo: netns.run(st.nodes[src], ["ip", "route", "get", dst_address]).stdout.split("\n")[0].strip()
            for topo, st in states.items()
        }
        for st in states.values():
            stack.enter_context(iperf_server(st, dst))
        load = Load()
        order = list(states)
        for r in range(runs):
            run: dict[str, Any] = {"load1": round(os.getloadavg()[0], 2)}
            for topo in order if r % 2 == 0 else order[::-1]:
                run[topo] = iperf(states[topo], src, dst_address, seconds)
            run["ratio"] = round(run["gateways"]["mbit_s"] / run["full-mesh"]["mbit_s"], 3)
            out["runs"].append(run)
            log(f"throughput run {r + 1}/{runs}: {json.dumps(run)}")
        out["load"] = load.stop()
    for topo in states:
        out[f"{topo}_mbit_s_median"] = round(statistics.median(r[topo]["mbit_s"] for r in out["runs"]), 1)
    out["ratio_median"] = round(statistics.median(r["ratio"] for r in out["runs"]), 3)
    return out


# --- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per fault kind")
    parser.add_argument("--faults", default="crash,blackhole,uplink")
    parser.add_argument("--rest-sites", type=int, default=8)
    parser.add_argument("--rest", type=float, default=30.0, help="seconds of the at-rest sample")
    parser.add_argument("--iperf-seconds", type=float, default=10.0)
    parser.add_argument("--iperf-runs", type=int, default=5)
    parser.add_argument("--only", default="failover,rest,throughput")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results" / "gateways.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_gateways: needs root (the lab)", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    env = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": head.stdout.strip(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": Path("/proc/loadavg").read_text().strip(),
        "other_labs_at_start": len(labs.running_labs()),
    }
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="cm-bench-gw-"))
    try:
        if "throughput" in only:
            results["throughput"] = throughput(tmp, args.iperf_seconds, args.iperf_runs)
        if "rest" in only:
            results["rest"] = at_rest(tmp, args.rest_sites, args.rest)
        if "failover" in only:
            results["failover"] = failover(tmp, args.faults.split(","), args.trials)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for part in results.values():
        part["run"] = env
    if args.output.exists():
        results = {**json.loads(args.output.read_text()), **results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.output}")
    print_summary(results)
    return 0


def print_summary(results: dict[str, Any]) -> None:
    f = results.get("failover")
    if f:
        print("\nloss window under 100 datagrams/s (s), takeover and back to the preferred gateway:")
        for kind in ("crash", "blackhole", "uplink"):
            s = f.get(kind)
            if not s:
                continue
            w, b = s["window_s"], s["back_to_preferred_s"]
            print(
                f"  {kind:9} window p50 {w['p50']:.2f} p99 {w['p99']:.2f} max {w['max']:.2f} (n={w['n']}); "
                f"takeover p50 {s['takeover_s']['p50']:.2f}; back p50 {b['p50']:.2f} max {b['max']:.2f}; "
                f"load {s['load']['loadavg_start'][0]}→{s['load']['loadavg_end'][0]}, "
                f"busy {s['load']['host_busy_percent']} %"
            )
    r = results.get("rest")
    if r:
        print(f"\nprobes at rest, {r['sites']} sites, {r['seconds']} s (load {r['load']}):")
        for role, row in r["by_role"].items():
            print(f"  {role:8} {json.dumps(row)}")
    t = results.get("throughput")
    if t:
        print(
            f"\nthroughput {t['pair']}: gateways {t['gateways_mbit_s_median']} Mbit/s, full mesh "
            f"{t['full-mesh_mbit_s_median']} Mbit/s, ratio {t['ratio_median']} (load {t['load']})"
        )


if __name__ == "__main__":
    sys.exit(main())
