"""The control plane under real faults: etcd members, agents and wireguard-go killed for real.

One lab for the module (examples/three-clouds under a unique name, `lab up --agents
--lease-ttl 2`), torn down at the end whatever happens. Each test leaves the lab as it
found it (`lab up` brings back what it broke), asserts what a user would notice — peers,
routes, pod-to-pod traffic, `lab status` — and prints its recovery time (pytest -s).

The example denies by default and allows no UDP across clusters; its copy here also lets
cluster1's x-wing reach cluster2's rebel-base on the UDP echo port (5353), so that a UDP
stream can cross sites (x-wing-0 on aws-talos-1 → rebel-base-0 on azure-talos-1).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import (
    UdpStream,
    agent_config,
    agent_routes,
    agents_of,
    cut_off,
    etcd_dump,
    etcdctl,
    http_ok,
    ifname,
    lab_status,
    node_record,
    peers,
    public_key,
    state,
    udp_echo,
    until,
    wireguard_go,
)
from labkit import Lab, copy_example, crossmesh

from crossmesh.drivers import etcd
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import wireguard
from crossmesh.state import keys as wgkeys

TTL = 2
NODES = ("aws-talos-1", "azure-talos-1", "gcp-talos-1")
CLIENT, SERVER = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0"  # aws → azure
OTHER = ("cluster2/default/rebel-base-1", "cluster3/default/relay-0", 8080)  # azure → gcp, HTTP


def allow_udp_echo(mesh: Path) -> None:
    policy = mesh.parent / "apps" / "cluster2" / "rebel-base.yaml"
    text = policy.read_text()
    http = '            - {port: "80", protocol: TCP}\n'
    assert text.count(http) >= 1  # the first: x-wing's allow (then the ingress gateway's)
    policy.write_text(text.replace(http, http + '            - {port: "5353", protocol: UDP}\n', 1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mesh, name = copy_example(tmp_path_factory.mktemp("agents"), "three-clouds")
    allow_udp_echo(mesh)
    lab = Lab(mesh, name)
    try:
        t0 = time.monotonic()
        lab.up("--agents", "--lease-ttl", str(TTL))
        print(f"\n[agents] lab up --agents: {time.monotonic() - t0:.1f} s")
        yield lab
    finally:
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"


def traffic(st: labs.LabState) -> bool:
    """Cross-site pod→pod: UDP aws→azure and HTTP azure→gcp."""
    return udp_echo(st, CLIENT, SERVER) and http_ok(st, *OTHER)


def converged(lab: Lab) -> bool:
    """Every agent runs, talks to etcd, has both peers; every device has exactly the current keys."""
    st = state(lab.tag)
    for node in NODES:
        status = labs.agent_status(st, node)
        if not labs.alive(int(status.get("pid", 0))) or not status.get("etcd") or status.get("peers") != 2:
            return False
        want = sorted(public_key(st, n) for n in NODES if n != node)
        if sorted(peers(ifname(st, node))) != want:
            return False
    return True


def test_up_with_agents(lab: Lab) -> None:
    t0 = time.monotonic()
    code, report = lab.test()
    print(f"\n[agents] crossmesh test: {report['summary']} in {time.monotonic() - t0:.1f} s")
    assert code == 0, [c["name"] for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]

    again = lab.up()
    assert again["changes"] == [], again["changes"]

    st = state(lab.tag)
    dump = etcd_dump(lab.tag)
    prefix = agent_config(st, NODES[0])["prefix"]
    assert sorted(k for k in dump if k.startswith(prefix)) == sorted(prefix + n for n in NODES)
    # Beside the records: what the operator and `apply` keep (desired, allocations, intents, rollout,
    # the leader) and each agent's status — every key under the mesh's own prefix.
    root = prefix.removesuffix("nodes/")
    assert all(k.startswith(root) for k in dump)
    assert {k.split("/")[3] for k in dump} == {"desired", "ipam", "intents", "rollout", "operator", "nodes", "status"}
    secrets = [p.read_text().strip() for p in (Path(st.state_dir) / "keys").glob("*.key")]
    assert len(secrets) == len(NODES)
    text = json.dumps(dump)
    for secret in secrets:
        assert secret not in text, "a private key is in etcd"
    for node in NODES:
        record = json.loads(dump[prefix + node])
        assert record["public_key"] == public_key(st, node)
        assert not any("private" in k.lower() for k in record)

    status = lab_status(lab.mesh)
    assert [m["healthy"] for m in status["etcd"]] == [True, True, True], status["etcd"]
    for a in status["agents"]:
        assert a["running"] and a["etcd"] and a["peers"] == 2 and a["rejected"] == {}, a
        assert a["leaseAge"] is not None and a["leaseAge"] <= TTL, a


def test_a_node_certificate_cannot_write_another_nodes_record(lab: Lab) -> None:
    """etcd runs with client certificates and roles (issue 15): the certificate the lab gave node b's
    agent can read the mesh and write b's keys, and etcd refuses it a's record, a's status, the
    operator's intents and the admin's desired state. A transaction whose compare fails proves the
    permission without writing: etcd checks every operation of a transaction before comparing."""
    from crossmesh.kv.api import Compare, KvDenied, Put
    from crossmesh.kv.etcd import Tls, connect
    from crossmesh.kv.layout import Layout

    st = state(lab.tag)
    a, b = NODES[0], NODES[1]
    tls = agent_config(st, b)["tls"]
    assert tls["cert"].endswith(f"/users/{b}/tls.crt") and all(Path(v).is_file() for v in tls.values()), tls
    assert all(u.startswith("https://") for u in agent_config(st, b)["etcd"])
    layout = Layout(st.mesh_name)

    async def main() -> tuple[list[bytes], list[bytes]]:
        kv = await connect(etcd.endpoints(lab.tag), Tls(Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"])))
        allowed, refused = [], []
        try:
            assert [e.key for e in (await kv.range(layout.nodes)).entries] == [layout.node(n) for n in NODES]
            for key in (layout.node(b), layout.status(b), layout.node(a), layout.status(a), layout.intent(a)):
                try:
                    done = await kv.txn([Compare(key, "version", 999_999)], [Put(key, b"hijack")])
                    assert not done.succeeded
                    allowed.append(key)
                except KvDenied as err:
                    assert "permission denied" in str(err), err
                    refused.append(key)
            for key in (layout.node(a), layout.desired):
                with pytest.raises(KvDenied, match="permission denied"):
                    await kv.put(key, b"hijack")
        finally:
            await kv.close()
        return allowed, refused

    allowed, refused = asyncio.run(main())
    assert allowed == [layout.node(b), layout.status(b)]
    assert refused == [layout.node(a), layout.status(a), layout.intent(a)]
    assert json.loads(etcd_dump(lab.tag)[layout.node(a).decode()])["public_key"] == public_key(st, a)
    # etcdctl with the same certificate, as a user would see the refusal
    done = etcdctl(lab.tag, "put", layout.node(a).decode(), "{}", user=b)
    assert done.returncode != 0 and "permission denied" in done.stderr, done


def test_crash_node(lab: Lab) -> None:
    st = state(lab.tag)
    victim, survivors = "aws-talos-1", ("azure-talos-1", "gcp-talos-1")
    key = public_key(st, victim)
    cfg = node_record(st, victim)
    gone = {f"{cfg['tunnel_address']}/32", f"{cfg['address']}/32"}  # node addresses: pods ride the VXLAN
    for n in survivors:
        assert key in peers(ifname(st, n)) and gone <= {_net(r) for r in agent_routes(st.nodes[n])}
    try:
        crossmesh("lab", "crash-node", "--mesh", str(lab.mesh), victim, check=True)
        crashed = time.monotonic()

        def withdrawn() -> bool:
            """every survivor dropped the crashed node's peer and routes"""
            return all(
                key not in peers(ifname(st, n)) and not gone & {_net(r) for r in agent_routes(st.nodes[n])}
                for n in survivors
            )

        until(withdrawn, TTL + 5)
        took = time.monotonic() - crashed
        print(f"\n[agents] crash-node {victim}: peers and routes withdrawn on every other node {took:.2f} s after it")
        assert took <= TTL + 1, f"withdrawn {took:.2f} s after the crash (lease TTL {TTL} s)"
        assert http_ok(st, *OTHER), "the survivors' own traffic stopped"
    finally:
        t0 = time.monotonic()
        lab.up()
    code, report = lab.test("--test", "cross-cluster")
    print(f"[agents] lab up brought {victim} back; cross-cluster passes {time.monotonic() - t0:.1f} s after `lab up`")
    assert code == 0, [c["name"] for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]
    assert converged(lab)


def _net(route: str) -> str:
    return route if "/" in route else f"{route}/32"


def test_wireguard_go_killed(lab: Lab) -> None:
    st = state(lab.tag)
    node = "azure-talos-1"  # the server's node
    dev = ifname(st, node)
    before = int(labs.agent_status(st, node).get("wireguardRestarts", 0))
    pids = wireguard_go(dev)
    assert len(pids) == 1 and traffic(st)
    os.kill(pids[0], signal.SIGKILL)
    t0 = time.monotonic()
    until(lambda: udp_echo(st, CLIENT, SERVER, timeout=0.1), 15, interval=0)
    took = time.monotonic() - t0
    print(f"\n[agents] wireguard-go of {node} killed: UDP {CLIENT} → {SERVER} answers again after {took:.2f} s")
    assert int(labs.agent_status(st, node).get("wireguardRestarts", 0)) == before + 1
    assert len(wireguard_go(dev)) == 1
    until(lambda: traffic(st), 5)
    until(lambda: converged(lab), 5)


def test_agent_killed(lab: Lab) -> None:
    st = state(lab.tag)
    node = "gcp-talos-1"
    old = labs.agent_status(st, node)
    os.kill(int(old["pid"]), signal.SIGKILL)
    t0 = time.monotonic()

    def back() -> bool:
        """a new agent of the node runs, is connected and has reconciled"""
        s = labs.agent_status(st, node)
        return (
            s.get("pid") != old["pid"]
            and labs.alive(int(s.get("pid", 0)))
            and bool(s.get("etcd"))
            and s.get("lastReconcile", 0) > old["updated"]
        )

    until(back, 15)
    took = time.monotonic() - t0
    print(
        f"\n[agents] agent of {node} SIGKILLed: restarted by the supervisor, connected and reconciled in {took:.2f} s"
    )
    until(lambda: converged(lab), 5)
    time.sleep(1)  # a second agent started by a race would show by now
    assert len(agents_of(st, node)) == 1, "more than one agent for the node"
    for n in NODES:
        listed = peers(ifname(st, n))
        assert len(listed) == len(set(listed)) == 2, f"{n}: {listed}"
        routes = agent_routes(st.nodes[n])
        assert len(routes) == len(set(routes)) == 4, f"{n}: {routes}"
    assert traffic(st)


def test_one_etcd_member_killed(lab: Lab) -> None:
    st = state(lab.tag)
    used = labs.agent_status(st, NODES[0])["etcd"]
    member = next(m for m in etcd.members(lab.tag) if m.endpoint == used)
    pid = st.etcd_pids[member.name]
    assert labs.alive(pid)
    # Watch peers and traffic throughout: nothing may blink.
    try:
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        failures, checks, moved = 0, 0, None
        while time.monotonic() - t0 < 2 * TTL + 1:
            checks += 1
            # One probe lost on a loaded host is not an outage (CI runs beside other labs); a probe and
            # its immediate retry both lost are. The peers below must not blink at all.
            failures += not (traffic(st) or traffic(st))
            for n in NODES:
                assert len(peers(ifname(st, n))) == 2, f"{n} lost a peer while one etcd member was down"
            if moved is None and all(
                labs.agent_status(st, n).get("etcd") not in (None, used)
                and labs.agent_status(st, n).get("leaseRefreshed", 0) > time.time() - TTL
                for n in NODES
            ):
                moved = time.monotonic() - t0
            time.sleep(0.05)
        print(
            f"\n[agents] etcd member {member.name} (the agents' endpoint) killed: {failures}/{checks} traffic checks "
            f"failed; agents on another member after {moved if moved is None else round(moved, 2)} s"
        )
        assert failures == 0
        assert moved is not None, "agents did not move to another member"
        status = lab_status(lab.mesh)
        assert sorted(m["healthy"] for m in status["etcd"]) == [False, True, True]
        assert all(a["etcd"] and a["running"] and a["peers"] == 2 for a in status["agents"]), status["agents"]
    finally:
        lab.up()
    assert [m["healthy"] for m in lab_status(lab.mesh)["etcd"]] == [True, True, True]
    until(lambda: converged(lab), 5)


def test_all_etcd_stopped(lab: Lab) -> None:
    st = state(lab.tag)
    try:
        for pid in st.etcd_pids.values():
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()

        def disconnected() -> bool:
            """every agent noticed that etcd is gone"""
            return all(labs.agent_status(st, n).get("etcd") is None for n in NODES)

        until(disconnected, 3 * TTL + 5)
        # A key rotated now cannot reach the peers: the agent must keep the old key on its device.
        rotated = "azure-talos-1"
        old_key = public_key(st, rotated)
        os.kill(int(labs.agent_status(st, rotated)["pid"]), signal.SIGUSR1)
        until(lambda: public_key(st, rotated) != old_key, 5)
        # Past the lease TTL nothing can refresh; the data plane must still forward as it was.
        time.sleep(max(0.5, TTL + 1 - (time.monotonic() - t0)))
        assert traffic(st), "traffic stopped with etcd down"
        assert all(old_key in peers(ifname(st, n)) for n in NODES if n != rotated)
        for n in NODES:
            assert len(peers(ifname(st, n))) == 2 and len(agent_routes(st.nodes[n])) == 4, n
        status = lab_status(lab.mesh)
        assert not any(m["healthy"] for m in status["etcd"])
        assert all(a["running"] and a["etcd"] is None for a in status["agents"]), status["agents"]
        print(f"\n[agents] all etcd members killed: data plane forwarding {time.monotonic() - t0:.1f} s later")
    finally:
        t0 = time.monotonic()
        lab.up()
        up_s = time.monotonic() - t0
    _, took = until(lambda: converged(lab), 15)  # with the key rotated during the outage
    print(
        f"[agents] lab up restarted etcd; agents resynced and the key rotated during the outage went live: "
        f"`lab up` took {up_s:.1f} s, converged {took:.2f} s after it returned"
    )
    status = lab_status(lab.mesh)
    assert [m["healthy"] for m in status["etcd"]] == [True, True, True]
    assert all(a["etcd"] for a in status["agents"]), status["agents"]
    assert traffic(st)


def devices(st: labs.LabState) -> dict[str, object]:
    """What the data plane holds: every device's peers (key → endpoint, allowed IPs) and every
    node's agent routes."""
    out: dict[str, object] = {}
    for node in NODES:
        dump = wireguard.dump(ifname(st, node))
        assert dump is not None
        conf = wireguard.parse_dump(dump)[0]
        out[node] = (
            {k: (p.endpoint, p.allowed_ips) for k, p in conf.peers.items()},
            sorted(agent_routes(st.nodes[node])),
        )
    return out


def test_bad_records_rejected(lab: Lab) -> None:
    """Hostile records put straight into etcd (issue 18): the three that hijacked a lab before —
    an endpoint smuggling a [Peer] section with another node's key and AllowedIPs 0.0.0.0/0, a pod
    CIDR of 128.0.0.0/1 under a real node's key, listen_port null under a key that sorts first —
    and a malformed key, a node the mesh does not have, a copy of a real node's public key. No
    device or route changes at any moment; each is rejected with its reason in `lab status`."""
    st = state(lab.tag)
    prefix = agent_config(st, NODES[0])["prefix"]
    azure = node_record(st, "azure-talos-1")
    gcp = node_record(st, "gcp-talos-1")
    gcp_key = public_key(st, "gcp-talos-1")
    fresh = wgkeys.public_key(wgkeys.generate_private_key())
    # Names that sort before every real node: a rule "first name wins" would let them in.
    hostile = {
        "aaa-bad-key": {**azure, "name": "aaa-bad-key", "public_key": "not-a-wireguard-key"},
        "aaa-intruder": {**azure, "name": "aaa-intruder", "public_key": fresh, "endpoint": "203.0.113.201:51820"},
        "aaa-hijack": {
            **azure,
            "name": "aaa-hijack",
            "public_key": fresh,
            "endpoint": f"203.0.113.66:51820\n\n[Peer]\nPublicKey = {gcp_key}\nAllowedIPs = 0.0.0.0/0",
        },
        "aaa": {**azure, "name": "aaa", "listen_port": None},
        "aaa-copy": {**azure, "name": "aaa-copy", "public_key": gcp_key},
    }
    reasons = {  # (start, end) of each reason
        "aaa-bad-key": ("public key 'not-a-wireguard-key' is not a 32-byte base64 WireGuard key", ""),
        "aaa-intruder": ("node aaa-intruder is not in the mesh", ""),
        "aaa-hijack": ("endpoint '203.0.113.66:51820\\n\\n[Peer]\\nPublicKey = ", " is not IPv4-address:port"),
        "aaa": ("listen_port is None, not an integer", ""),
        "aaa-copy": ("node aaa-copy is not in the mesh", ""),
    }
    before = devices(st)
    try:
        for name, rec in hostile.items():
            done = etcdctl(lab.tag, "put", prefix + name, json.dumps(rec, sort_keys=True))
            assert done.returncode == 0, done.stderr
        # A real node's key overwritten with a pod CIDR covering every peer's endpoint: the peers
        # keep its last good record, and its agent puts its own record back.
        done = etcdctl(lab.tag, "put", prefix + "gcp-talos-1", json.dumps({**gcp, "pod_cidr": "128.0.0.0/1"}))
        assert done.returncode == 0, done.stderr
        t0 = time.monotonic()

        def rejected() -> bool:
            """every agent rejects every hostile record"""
            return all(set(hostile) <= set(labs.agent_status(st, n).get("rejected", {})) for n in NODES)

        until(rejected, 10)
        print(f"\n[agents] hostile records rejected by every agent within {time.monotonic() - t0:.2f} s")
        for _ in range(20):  # the data plane never moved, at any moment
            assert devices(st) == before, "a hostile record changed a device or a route"
            time.sleep(0.1)
        assert json.loads(etcd_dump(lab.tag)[prefix + "gcp-talos-1"])["pod_cidr"] == gcp["pod_cidr"]
        status = lab_status(lab.mesh)
        for a in status["agents"]:
            got = {k: v for k, v in a["rejected"].items() if k in hostile}
            assert set(got) == set(reasons), got
            assert all(v.startswith(reasons[k][0]) and v.endswith(reasons[k][1]) for k, v in got.items()), got
            log = (st.dir / "logs" / f"agent-{a['node']}.log").read_text()
            assert "rejected record of aaa-bad-key: public key" in log
            if a["node"] != "gcp-talos-1":
                assert "rejected record of gcp-talos-1: pod_cidr '128.0.0.0/1' is not the mesh's" in log
        assert converged(lab), "a bad record changed the peers"
        assert all(a["running"] and a["etcd"] for a in status["agents"]), status["agents"]
        code, report = lab.test("--test", "cross-cluster")
        assert code == 0, [c["name"] for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]
    finally:
        etcdctl(lab.tag, "del", prefix + "aaa", "--prefix")
    until(lambda: all(not labs.agent_status(st, n).get("rejected") for n in NODES), 5)
    assert devices(st) == before


def test_join_and_leave_follow_the_mesh(lab: Lab) -> None:
    """A node added with `lab add-node` is in the mesh the agents hold records to (the lab's intent
    file): every other-site agent takes its record; once removed, its record is gone from every
    device and nobody is left rejecting anything."""
    st = state(lab.tag)
    m = ("--mesh", str(lab.mesh))
    t0 = time.monotonic()
    crossmesh(
        "lab", "add-node", *m, "--cluster", "cluster3", "--site", "gcp-ew", "--name", "gcp-talos-7",
        "--address", "10.2.1.7", "--public-address", "198.51.100.77", check=True,
    )  # fmt: skip
    print(f"\n[agents] add-node with the intent reloaded by every agent: {time.monotonic() - t0:.2f} s")
    st = state(lab.tag)
    newcomer = public_key(st, "gcp-talos-7")
    for node in ("aws-talos-1", "azure-talos-1"):
        assert newcomer in peers(ifname(st, node)), node
        assert labs.agent_status(st, node).get("rejected") == {}, labs.agent_status(st, node)
    crossmesh("lab", "remove-node", *m, "gcp-talos-7", check=True)
    st = state(lab.tag)
    until(lambda: converged(lab), 10)
    assert all(labs.agent_status(st, n).get("rejected") == {} for n in NODES)


def test_rotate_keys_under_udp_stream(lab: Lab) -> None:
    st = state(lab.tag)
    old = {n: public_key(st, n) for n in NODES}
    versions = {n: labs.agent_status(st, n)["keyVersion"] for n in NODES}
    stream = UdpStream(st.pods[CLIENT].namespace, str(st.pods[SERVER].address), 5353)
    try:
        time.sleep(1.0)
        asked = time.time()
        crossmesh("lab", "rotate-keys", "--mesh", str(lab.mesh), check=True)
        returned = time.time()
        time.sleep(1.0)
        result = stream.stop()
    except BaseException:
        stream.kill()
        raise
    lost = result["lost"]
    before = [n for n, t in lost if t < asked]
    print(
        f"\n[agents] rotate-keys (all {len(NODES)} nodes) under a UDP stream {CLIENT} → {SERVER}, 1 per 10 ms: "
        f"{len(lost)}/{result['sent']} lost (longest gap {result['gap'] * 1000:.0f} ms); "
        f"rotate-keys returned after {returned - asked:.2f} s"
    )
    assert result["sent"] > 150 and not before, result
    assert result["gap"] < 1.0, "traffic stopped for a handshake retry (5 s) or worse"
    new = {n: public_key(st, n) for n in NODES}
    for n in NODES:
        assert new[n] != old[n], n
        assert labs.agent_status(st, n)["keyVersion"] > versions[n]
    until(lambda: converged(lab), 5)
    for n in NODES:  # every peer has the new key and has completed a handshake with it
        for other in NODES:
            if other != n:
                assert new[other] in peers(ifname(st, n))
    records = etcd_dump(lab.tag, agent_config(st, NODES[0])["prefix"])
    assert set(json.loads(v)["public_key"] for v in records.values()) == set(new.values())
    code, report = lab.test("--test", "cross-cluster")
    assert code == 0, [c["name"] for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]
    # The agents have the new keys already: `lab up` restarts none of them.
    again = lab.up()
    assert not [c for c in again["changes"] if "agent" in c], again["changes"]


def test_site_cut_off_and_healed(lab: Lab) -> None:
    """The server's site loses its link to the internet router for 17 s, then gets it back.

    While cut, the site's nodes reach no other site: the stream gets no echoes and WireGuard's
    handshake initiations go unanswered. The agents keep their etcd leases — etcd runs on
    loopback in the host namespace, which the cut does not touch — so nobody withdraws the
    cut nodes: a partition of the data plane only, as when a region's uplink fails and its
    control-plane connection does not (or, on real nodes, before the lease expires).

    17 s is longer than WireGuard's KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s): a peer that sent
    data and heard nothing back for that long starts a new handshake and retries it every
    REKEY_TIMEOUT (5 s, plus up to 1/3 s of jitter), so after the heal each tunnel that carried
    traffic re-handshakes at its next retry. Data does not wait for it: the sessions are valid
    for REJECT_AFTER_TIME (180 s), and the first datagram after the routes are back is answered.
    """
    st = state(lab.tag)
    site, node = "azure-we", st.pods[SERVER].node  # the server's site
    assert node == "azure-talos-1" and traffic(st)
    probes = []

    def while_cut() -> None:
        if not probes:
            sites = {s["site"]: s for s in lab_status(lab.mesh)["sites"]}
            assert sites[site]["cut"] and sites[site]["uplink"] == "down", sites
            assert all(s["uplink"] == "up" and not s["cut"] for name, s in sites.items() if name != site), sites
            # Both tunnels of the site carry data into the cut: the stream (aws→azure), HTTP azure→gcp.
            probes.append(udp_echo(st, CLIENT, SERVER, timeout=0.5) or http_ok(st, *OTHER))
        assert converged(lab), "a data-plane cut withdrew nodes from the mesh"

    m = cut_off(st, site, node, nodes=NODES, seconds=17.0, stream=(CLIENT, SERVER), while_cut=while_cut)
    print(
        f"\n[agents] site {site} cut off for {m['cut_s']:.1f} s under a UDP stream {CLIENT} → {SERVER}: "
        f"{m['lost_cut']} datagrams lost while cut; heal-site returned in {m['returned']:.2f} s, the stream "
        f"answered again {m['resumed']:.2f} s, a probe {m['echo']:.2f} s and a fresh handshake on every tunnel "
        f"of the site {m['handshakes']:.2f} s after it was issued ({m['lost_after']} datagrams lost after it)"
    )
    assert probes == [False], "traffic crossed a cut link"
    assert all(0 < hs <= m["cut"] for hs in m["stale"].values()), f"a handshake across the cut: {m['stale']}"
    assert m["lost_before"] == 0 and m["lost_cut"] >= 0.8 * m["cut_s"] * 100, m  # 1 per 10 ms, all lost
    # The first echo comes once the routes are back: the command's own time, about 1 s here
    # (Python, the plan, two namespaces), and 5 s for a loaded 2-CPU machine.
    assert m["resumed"] <= m["returned"] + 0.5, "the stream resumed only after heal-site had returned"
    assert m["echo"] < 5.0, f"no echo until {m['echo']:.2f} s after heal-site"
    # WireGuard retries unanswered handshakes every 5 s + jitter: the next retry after the link is
    # back succeeds. Both ends count; 10 s leaves room for the command.
    assert m["handshakes"] < 10.0, f"tunnels re-handshook {m['handshakes']:.2f} s after heal-site"
    sites = {s["site"]: s for s in lab_status(lab.mesh)["sites"]}
    assert sites[site]["uplink"] == "up" and not sites[site]["cut"], sites
    assert traffic(st) and converged(lab)
    # heal-site brought the two namespaces exactly back to the plan: `lab up` has nothing to do.
    again = lab.up()
    assert again["changes"] == [], again["changes"]
