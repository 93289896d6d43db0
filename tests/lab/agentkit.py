"""Helpers for control-plane tests and benchmarks: look at a running `lab up --agents` lab
the way a user would (WireGuard peers, agent routes, pod-to-pod traffic, what etcd holds)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from crossmesh.drivers import etcd
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns

T = TypeVar("T")

# A pod that sends one datagram every 10 ms to a UDP echo port and counts the echoes; on
# SIGTERM it stops sending, waits 300 ms for stragglers and prints what came back.
UDP_STREAM = r"""
import json, signal, socket, sys, time
dst = (sys.argv[1], int(sys.argv[2]))
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
sent, got, seq = {}, set(), 0
t0 = time.monotonic()
nxt = t0
print(json.dumps({"started": time.time()}), flush=True)
def drain():
    try:
        while True:
            d = s.recv(64)
            got.add(int.from_bytes(d[:4], "big"))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        pass
while not stop:
    now = time.monotonic()
    if now >= nxt:
        try:
            s.sendto(seq.to_bytes(4, "big"), dst)
        except OSError:
            pass  # no route for a moment: counted as lost
        sent[seq] = time.time()
        seq += 1
        nxt += 0.01
    drain()
    time.sleep(0.001)
end = time.monotonic() + 0.3
while time.monotonic() < end:
    drain()
    time.sleep(0.005)
lost = sorted(set(range(seq)) - got)
out = {"sent": seq, "received": len(got & set(range(seq))), "lost": [[n, sent[n]] for n in lost]}
print(json.dumps(out), flush=True)
"""


class UdpStream:
    """The UDP stream of one pod to another pod's echo port, in the sender pod's namespace."""

    def __init__(self, namespace: str, address: str, port: int) -> None:
        self.proc = subprocess.Popen(
            netns.exec_argv(namespace, [sys.executable, "-c", UDP_STREAM, address, str(port)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.started = json.loads(self.proc.stdout.readline())["started"]

    def stop(self) -> dict[str, Any]:
        """sent, received, lost ([seq, wall time sent]) and gap: the longest run of losses in seconds."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        runs, run, prev = [], 0, None
        for n, _ in result["lost"]:
            run = run + 1 if prev is not None and n == prev + 1 else 1
            prev = n
            runs.append(run)
        result["gap"] = max(runs, default=0) * 0.01
        return result

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=5)

    def __enter__(self) -> UdpStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """A failure inside `with` kills the sender; `stop()` is the caller's on success."""
        if kind is not None:
            self.kill()


def state(tag: str) -> labs.LabState:
    st = labs.LabState.load(tag)
    assert st is not None, f"no lab cm-{tag}"
    return st


def ifname(st: labs.LabState, node: str) -> str:
    return next(i for i, d in st.wireguard.items() if d.node == node)


def peers(dev: str) -> list[str]:
    """`wg show DEV peers`, as listed (duplicates would show)."""
    done = subprocess.run(["wg", "show", dev, "peers"], capture_output=True, text=True, check=False)
    return done.stdout.split()


def agent_routes(namespace: str) -> list[str]:
    """Destinations of the routes the node's agent owns (protocol 100), as listed."""
    done = subprocess.run(
        ["ip", "-n", namespace, "route", "show", "proto", "100"], capture_output=True, text=True, check=False
    )
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def public_key(st: labs.LabState, node: str) -> str:
    from crossmesh.state import keys

    return keys.public_key((Path(st.state_dir) / "keys" / f"{node}.key").read_text().strip())


def agent_config(st: labs.LabState, node: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((labs.agent_dir(st) / f"{node}.json").read_text())
    return data


def node_record(st: labs.LabState, node: str) -> dict[str, Any]:
    """The record node `node`'s agent published in the lab's etcd."""
    done = etcdctl(st.tag, "get", agent_config(st, node)["prefix"] + node, "--print-value-only")
    assert done.returncode == 0 and done.stdout.strip(), f"no record of {node}: {done.stderr}"
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def udp_echo(st: labs.LabState, src: str, dst: str, port: int = 5353, timeout: float = 0.2) -> bool:
    """One datagram from pod `src` to pod `dst`'s echo port: did it come back?"""
    return udp_answers(st.pods[src].namespace, str(st.pods[dst].address), port, timeout)


def udp_answers(namespace: str, address: str, port: int, timeout: float = 0.2) -> bool:
    """One datagram from network namespace `namespace` to `address:port`: did it come back as sent?"""

    def probe() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.sendto(b"crossmesh-check", (address, port))
                return s.recv(64) == b"crossmesh-check"
            except OSError:
                return False

    return netns.run_in(namespace, probe)


def http_ok(st: labs.LabState, src: str, dst: str, port: int, timeout: float = 0.5) -> bool:
    address = str(st.pods[dst].address)

    def probe() -> bool:
        try:
            with socket.create_connection((address, port), timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    return netns.run_in(st.pods[src].namespace, probe)


def until(check: Callable[[], T], timeout: float, interval: float = 0.02) -> tuple[T, float]:
    """Poll `check` until it is truthy; its value and the seconds it took. Fails on timeout."""
    t0 = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout:.1f} s: {check.__doc__ or check} (last: {value!r})")
        time.sleep(interval)


def etcdctl(tag: str, *args: str, input: str | None = None, user: str = "root") -> subprocess.CompletedProcess[str]:
    """etcdctl against the lab's etcd with the certificate of `user` (etcd's root by default)."""
    endpoints = ",".join(etcd.endpoints(tag))
    me = etcd.identity(etcd.pki_dir(labs.LAB_ROOT / f"cm-{tag}"), user)
    tls = {"ETCDCTL_CACERT": str(me.ca), "ETCDCTL_CERT": str(me.cert), "ETCDCTL_KEY": str(me.key)}
    return subprocess.run(
        ["etcdctl", f"--endpoints={endpoints}", "--dial-timeout=2s", "--command-timeout=3s", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=15,
        env=dict(os.environ, ETCDCTL_API="3", **tls),
        check=False,
    )


def etcd_dump(tag: str, prefix: str = "/crossmesh/") -> dict[str, str]:
    """Every key under `prefix` (all of crossmesh's by default: records, and the operator's desired
    state, allocations, intents, statuses) and its value; etcd's JSON leaves out an empty value."""
    done = etcdctl(tag, "get", "--prefix", prefix, "-w", "json")
    assert done.returncode == 0, done.stderr
    import base64

    kvs = json.loads(done.stdout).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in kvs}


def processes(marker: str) -> list[int]:
    """Pids of processes whose command line contains `marker`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(int(entry.name))
    return out


def wireguard_go(dev: str) -> list[int]:
    return [
        p
        for p in processes(dev)
        if Path(f"/proc/{p}/comm").exists() and Path(f"/proc/{p}/comm").read_text().strip() == "wireguard-go"
    ]


def agents_of(st: labs.LabState, node: str) -> list[int]:
    return processes(f"crossmesh.agent.daemon {labs.agent_dir(st)}/{node}.json")


def lab_status(mesh: Path) -> dict[str, Any]:
    done = subprocess.run(
        ["crossmesh", "lab", "status", "--mesh", str(mesh), "-o", "json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def handshakes(st: labs.LabState, node: str, nodes: tuple[str, ...]) -> dict[str, int]:
    """The node's WireGuard peers among `nodes` (by name) → their latest handshake (epoch seconds)."""
    from crossmesh.drivers.lab import wireguard

    names = {public_key(st, n): n for n in nodes}
    stats = wireguard.peer_stats(ifname(st, node)) or {}
    return {names.get(key, key): hs for key, (hs, _, _, _) in stats.items()}


def cut_off(  # noqa: PLR0913 - what the fault needs: where, how long, the stream's ends, a probe
    st: labs.LabState,
    site: str,
    node: str,
    *,
    nodes: tuple[str, ...],
    seconds: float,
    stream: tuple[str, str],
    while_cut: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Cut `site` (holding `node`, the stream's server) of lab `st` off the internet for `seconds` with `crossmesh
    lab cut-site`, under a UDP stream (client pod, server pod; echo port 5353), then `lab heal-site`.

    `while_cut` runs right after the cut and then every 0.5 s until the heal. Times are seconds
    from issuing heal-site: `returned` (the command), `echo` (the first echo from the server),
    `resumed` (the stream's first answered datagram: the last one lost, plus its 10 ms),
    `handshakes` (every tunnel of `node` completed a handshake since the heal, seen from both
    ends; measured only for cuts over 15.5 s: shorter ones keep their sessions and nothing
    re-handshakes). `lost_cut`/`lost_after`: datagrams sent while cut / from the heal on."""
    from labkit import crossmesh

    mesh = st.mesh
    client, server = stream
    others = tuple(n for n in nodes if n != node)
    udp = UdpStream(st.pods[client].namespace, str(st.pods[server].address), 5353)
    try:
        time.sleep(1.0)
        cutting = time.time()
        crossmesh("lab", "cut-site", "--mesh", mesh, site, check=True)
        cut = time.time()
        while time.time() - cut < seconds:
            while_cut()
            time.sleep(max(0.0, min(0.5, seconds - (time.time() - cut))))
        stale = {n: handshakes(st, node, nodes)[n] for n in others}
        healing = time.time()
        crossmesh("lab", "heal-site", "--mesh", mesh, site, check=True)
        returned = time.time() - healing
        _, echo = until(lambda: udp_echo(st, client, server, timeout=0.1), 15, interval=0)
        fresh_s = None
        if seconds > 15.5:
            since = int(healing)  # whole seconds; no handshake can complete while cut

            def fresh() -> bool:
                """every tunnel of the healed node completed a handshake since the heal, at both ends"""
                return all(
                    handshakes(st, node, nodes)[n] >= since and handshakes(st, n, nodes)[node] >= since for n in others
                )

            fresh_s = until(fresh, 20, interval=0.05)[1] + returned
        time.sleep(0.5)
        result = udp.stop()
    except BaseException:
        udp.kill()
        crossmesh("lab", "heal-site", "--mesh", mesh, site)
        raise
    lost = result["lost"]
    return {
        "cut_s": healing - cut,
        "cut_command_s": cut - cutting,
        "returned": returned,
        "echo": echo + returned,
        "handshakes": fresh_s,
        "stale": stale,
        "cut": cut,
        "sent": result["sent"],
        "lost_before": sum(1 for _, t in lost if t < cutting),
        "lost_cut": sum(1 for _, t in lost if cut <= t < healing),
        "lost_after": sum(1 for _, t in lost if t >= healing),
        "resumed": max((t + 0.01 - healing for _, t in lost if t >= healing), default=0.0),
    }
