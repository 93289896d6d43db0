"""Every nftables ruleset the lab would load — inet, routers, nodes (anti-spoofing, service NAT,
node ports, policy) — is accepted by nft's own parser and the kernel's checks (`nft --check`, in a
network namespace of its own that is thrown away), for every example: a wrong quote or a bad set is
found here, not at `lab up`. Needs root and nft (the lab's own requirements); skipped, with the
reason, without them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import topology
from crossmesh.drivers.lab.desired import policy_index
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
CASES = ["examples/three-clouds", "examples/hybrid-openstack-aws", "tests/golden/gateways"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None,
    reason="nft --check needs root, nft and unshare (the lab's requirements)",
)


@pytest.mark.parametrize("case", CASES)
def test_every_ruleset_passes_nft_check(case: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / case, tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh", "expected"))
    compiled = compile_mesh(tmp_path / "m" / "mesh.yaml")
    topo = topology.build(compiled.plan, "f0f0", policy=policy_index(compiled))
    checked = 0
    for ns in topo.namespaces:
        if ns.nft is None:
            continue
        done = subprocess.run(
            ["unshare", "--net", "nft", "--check", "-f", "-"],
            input=nft.render(ns.nft),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{ns.name} ({ns.role} {ns.owner}): {done.stderr.strip()}"
        checked += 1
    assert checked >= len(compiled.plan.nodes) + len(compiled.plan.sites)  # every node and router at least


def test_the_check_catches_a_broken_ruleset() -> None:
    done = subprocess.run(
        ["unshare", "--net", "nft", "--check", "-f", "-"],
        input='table ip crossmesh {\n  chain c {\n    ip saddr { 10.0.0.1, } comment "x\n  }\n}\n',
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0


@pytest.mark.parametrize("case", CASES)
def test_the_kernel_holds_the_rules_the_model_holds(case: str, tmp_path: Path) -> None:
    """Loaded, then listed as JSON (what `crossmesh test` reads counters from): every chain has
    the model's rules, with the model's comments, in the model's order."""
    shutil.copytree(ROOT / case, tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh", "expected"))
    compiled = compile_mesh(tmp_path / "m" / "mesh.yaml")
    topo = topology.build(compiled.plan, "f0f0", policy=policy_index(compiled))
    for ns in topo.namespaces:
        if ns.nft is None:
            continue
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", f"nft -f - && nft -j list table ip {ns.nft.name}"],
            input=nft.render(ns.nft),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{ns.name}: {done.stderr.strip()}"
        listed: dict[str, list[str | None]] = {}
        for item in json.loads(done.stdout)["nftables"]:
            if "rule" in item:
                listed.setdefault(item["rule"]["chain"], []).append(item["rule"].get("comment"))
        chains = [c for c in ns.nft.items if isinstance(c, nft.Chain)]
        want = {c.name: [None if r.comment is None else nft.comment(r.comment) for r in c.rules] for c in chains}
        assert listed == {n: w for n, w in want.items() if w}, ns.name
