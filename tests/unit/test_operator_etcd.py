"""The operator and `apply | diff | status` against a real etcd, as a user runs them: two operator
replicas elect one leader and the other takes over when it is killed (time measured against the
lease TTL); revisions, conflicts and bad input exit as documented; allocations never move across
applies that add and remove nodes (property-tested through etcd transactions)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from etcdkit import EtcdServer, etcd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossmesh.kv.etcd import connect
from crossmesh.kv.layout import Layout
from crossmesh.operator import apply as apply_mod
from crossmesh.operator import ipam
from crossmesh.operator.run import Operator

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
TTL = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with etcd(tmp_path_factory.mktemp("etcd-operator")) as s:
        yield s


def _mesh(tmp: Path, name: str) -> Path:
    shutil.copytree(EXAMPLE, tmp / name)
    path = tmp / name / "mesh.yaml"
    path.write_text(path.read_text().replace("name: three-clouds", f"name: {name}", 1))
    return path


def _cli(server: EtcdServer, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--etcd-endpoints", server.endpoint, "--insecure-plaintext"]
    return subprocess.run(["crossmesh", *args, *flags], capture_output=True, text=True, timeout=60)


def _leader(server: EtcdServer, mesh: str) -> str | None:
    async def read() -> str | None:
        kv = await connect([server.endpoint], None)
        try:
            got = await kv.get(Layout(mesh).leader)
            return None if got is None else str(json.loads(got.value)["id"])
        finally:
            await kv.close()

    return asyncio.run(read())


def _wait(predicate: object, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def test_apply_status_diff_and_a_leader_failover(server: EtcdServer, tmp_path: Path) -> None:
    path = _mesh(tmp_path, "op-cli")
    first = _cli(server, "apply", str(path))
    assert first.returncode == 0 and "applied revision 1" in first.stdout, first.stderr
    assert "unchanged" in _cli(server, "apply", str(path)).stdout

    logs = {n: (tmp_path / f"{n}.log").open("wb") for n in ("op-a", "op-b")}
    flags = ["--etcd-endpoints", server.endpoint, "--insecure-plaintext", "--lease-ttl", str(TTL)]
    replicas = {}
    try:
        for name in ("op-a", "op-b"):
            replicas[name] = subprocess.Popen(
                ["crossmesh", "operator", "--mesh", "op-cli", "--id", name, *flags],
                stdout=logs[name],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if name == "op-a":
                _wait(lambda: _leader(server, "op-cli") == "op-a", 20)
        status = _cli(server, "status", "--mesh", "op-cli", "-o", "json")
        report = json.loads(status.stdout)
        # No agent runs: published, not converged (exit 1), every node named with the reason.
        assert status.returncode == 1 and report["rollout"]["revision"] == 1 and report["leader"] == "op-a"
        assert len(report["nodes"]) == 3 and all(not n["online"] for n in report["nodes"])

        replicas["op-a"].send_signal(signal.SIGKILL)  # no goodbye: the lease must run out
        took = _wait(lambda: _leader(server, "op-cli") == "op-b", TTL + 8)
        assert took <= TTL + 3, f"failover took {took:.1f} s with a {TTL} s lease"
        print(f"operator failover after SIGKILL: {took:.2f} s (lease TTL {TTL} s)")

        doc = yaml.safe_load(path.read_text())
        doc["spec"]["clusters"][0]["nodes"].append({"name": "late", "site": "aws-sg", "address": "10.0.1.77"})
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        changed = _cli(server, "diff", str(path))
        assert changed.returncode == 1 and "node late added" in changed.stdout
        assert _cli(server, "apply", str(path)).returncode == 0
        waited = _cli(server, "status", "--mesh", "op-cli", "--wait", "--timeout", "2", "-o", "json")
        assert waited.returncode == 1 and json.loads(waited.stdout)["rollout"]["revision"] == 2
        assert len(json.loads(waited.stdout)["nodes"]) == 4

        replicas["op-b"].send_signal(signal.SIGTERM)  # a clean stop hands over at once
        replicas["op-b"].wait(10)
        assert _leader(server, "op-cli") is None
    finally:
        for p in replicas.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for fh in logs.values():
            fh.close()


def test_bad_input_leaves_the_applied_revision_alone(server: EtcdServer, tmp_path: Path) -> None:
    path = _mesh(tmp_path, "op-bad")
    assert _cli(server, "apply", str(path)).returncode == 0
    path.write_text(path.read_text().replace("network: 10.0.0.0/16", "network: 10.0.0.0/33"))
    bad = _cli(server, "apply", str(path))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "mesh.yaml:" in bad.stderr
    status = json.loads(_cli(server, "status", "--mesh", "op-bad", "-o", "json").stdout)
    assert status["desired"]["revision"] == 1
    https = subprocess.run(
        ["crossmesh", "apply", str(path), "--etcd-endpoints", server.endpoint.replace("http:", "https:")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert https.returncode == 2 and "no client certificate was given" in https.stderr


NAMES = [f"n{i}" for i in range(6)]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sets(st.sampled_from(NAMES), min_size=1), min_size=2, max_size=4))
def test_allocations_never_move_through_etcd(
    server: EtcdServer, tmp_path_factory: pytest.TempPathFactory, steps: list[set[str]]
) -> None:
    """Apply a sequence of node sets; after each reconcile, a node that stayed keeps its pod CIDR and
    tunnel address exactly, and no two nodes share either."""
    tmp = tmp_path_factory.mktemp("prop")
    mesh = f"prop-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    path = _mesh(tmp, mesh)
    doc = yaml.safe_load(path.read_text())
    cluster = doc["spec"]["clusters"][0]
    template = cluster["nodes"][0]

    async def run() -> None:
        kv = await connect([server.endpoint], None)
        op = Operator(lambda: connect([server.endpoint], None), mesh, "prop", say=lambda _: None)
        lease = await kv.grant(10)
        await op._campaign(kv, lease)
        seen: dict[str, tuple[str, str]] = {}
        try:
            for names in steps:
                cluster["nodes"] = [template] + [
                    {"name": n, "site": template["site"], "address": f"10.0.1.{10 + NAMES.index(n)}"}
                    for n in sorted(names)
                ]
                path.write_text(yaml.safe_dump(doc, sort_keys=False))
                await apply_mod.apply(kv, await apply_mod.propose(kv, path), "prop")
                await op.reconcile(kv)
                alloc, _ = await ipam.read(kv, Layout(mesh))
                now = {n: (str(a.pod_cidr), str(a.tunnel_address)) for n, a in alloc.nodes.items()}
                for n in now.keys() & seen.keys():
                    assert now[n] == seen[n], f"{n} moved"
                assert len({v[0] for v in now.values()}) == len(now) == len({v[1] for v in now.values()})
                seen = {**{n: v for n, v in seen.items() if n in now}, **now}
        finally:
            await kv.revoke(lease.id)
            await kv.close()

    asyncio.run(run())


def test_an_etcd_that_refuses_the_certificate_exits_2(tmp_path: Path) -> None:
    """A client certificate from another CA: etcd refuses the handshake; apply says so, exit 2."""
    from crossmesh.kv.testing import make_cert, write_cert

    path = _mesh(tmp_path, "op-rogue")
    (tmp_path / "tls").mkdir()
    with etcd(tmp_path / "tls", tls=True) as tls_server:
        assert tls_server.ca_path is not None
        crt, key = write_cert(tmp_path / "rogue", make_cert("crossmesh-admin", make_cert("rogue CA", None)))
        flags = ["--etcd-endpoints", tls_server.endpoint, "--cacert", str(tls_server.ca_path)]
        done = subprocess.run(
            ["crossmesh", "apply", str(path), *flags, "--cert", str(crt), "--key", str(key)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert "refused the TLS handshake" in done.stderr and "Traceback" not in done.stderr
