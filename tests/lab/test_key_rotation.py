"""Scheduled key rotation for real: examples/three-clouds with `spec.wireguard.keyRotation: 1m` (the
documented minimum), `lab up --agents`, and every node's agent re-keying on its own about a minute
after its key was made — each at its own jittered moment — while a UDP stream crosses sites
(x-wing-0 on aws-talos-1 → rebel-base-0 on azure-talos-1: both ends of the stream's tunnel rotate).

No test-only knob shortens the period: the test waits for the real minute (about 70 s in all).
Its own lab, torn down by its tag whatever happens. Prints the loss (pytest -s).
"""

from __future__ import annotations

import time
from pathlib import Path

from agentkit import UdpStream, agent_config, ifname, peers, public_key, state, until
from labkit import Lab, copy_example
from test_agents import CLIENT, NODES, SERVER, allow_udp_echo

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import wireguard

PERIOD = 60  # keyRotation: 1m


def test_agents_rotate_their_keys_on_schedule_under_a_udp_stream(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    allow_udp_echo(mesh)
    text = mesh.read_text()
    keepalive = "    persistentKeepalive: 25\n"
    assert text.count(keepalive) == 1
    mesh.write_text(text.replace(keepalive, keepalive + "    keyRotation: 1m\n"))
    lab = Lab(mesh, name)
    try:
        lab.up("--agents", "--lease-ttl", "2")
        st = state(lab.tag)
        key_files = {n: Path(agent_config(st, n)["privateKeyPath"]) for n in NODES}

        def scheduled() -> dict[str, float] | None:
            """every agent follows its intent and shows its next rotation"""
            status = {n: labs.agent_status(st, n) for n in NODES}
            if not all(s.get("nextKeyRotation") and s.get("keyVersion") == 1 for s in status.values()):
                return None
            return {n: float(s["nextKeyRotation"]) for n, s in status.items()}

        planned, _ = until(scheduled, 30)
        periods = {n: float(labs.agent_status(st, n)["keyRotationPeriod"]) for n in NODES}
        for n in NODES:  # the key file's age, this node's period jittered within ±10 %
            assert 0.9 * PERIOD <= periods[n] <= 1.1 * PERIOD, periods
            assert abs(planned[n] - (key_files[n].stat().st_mtime + periods[n])) < 0.5, (n, planned[n])
        assert len(set(periods.values())) == len(NODES), "two nodes share a period"
        old = {n: public_key(st, n) for n in NODES}

        with UdpStream(st.pods[CLIENT].namespace, str(st.pods[SERVER].address), 5353) as stream:
            rotated: dict[str, float] = {}

            def all_rotated() -> bool:
                """every agent rotated its key on its own"""
                for n in NODES:
                    if n not in rotated and labs.agent_status(st, n).get("keyVersion", 1) >= 2:
                        rotated[n] = time.time()
                return len(rotated) == len(NODES)

            until(all_rotated, max(planned.values()) - time.time() + 15, interval=0.05)

            def handshaken() -> bool:
                """every peer has every node's new key and has completed a handshake with it"""
                new = {n: public_key(st, n) for n in NODES}
                for n in NODES:
                    stats = wireguard.peer_stats(ifname(st, n)) or {}
                    want = {new[o] for o in NODES if o != n}
                    if set(stats) != want or any(stats[k][0] < int(min(rotated.values())) for k in want):
                        return False
                return True

            until(handshaken, 10)
            time.sleep(1.0)
            result = stream.stop()
        lost = result["lost"]
        late = {n: round(rotated[n] - planned[n], 2) for n in NODES}
        print(
            "\n[rotation] keyRotation 1m: the agents rotated on their own at "
            + ", ".join(f"{n} {periods[n]:.1f} s (+{late[n]:.2f} s after due)" for n in NODES)
            + f" under a UDP stream {CLIENT} → {SERVER}, 1 per 10 ms: {len(lost)}/{result['sent']} lost "
            f"(longest gap {result['gap'] * 1000:.0f} ms)"
        )
        for n in NODES:
            assert public_key(st, n) != old[n], n
            # each at its own time: polled every 0.5 s by the agent and every 0.05 s here
            assert -0.1 <= late[n] < 2.0, late
            assert labs.agent_status(st, n)["keyVersion"] == 2, n  # once per period, not every round
            assert sorted(peers(ifname(st, n))) == sorted(public_key(st, o) for o in NODES if o != n)
        assert result["sent"] > 1000, result
        assert result["gap"] < 1.0, "traffic stopped for a handshake retry (5 s) or worse"
        assert len(lost) <= 0.01 * result["sent"], result
    finally:
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"
