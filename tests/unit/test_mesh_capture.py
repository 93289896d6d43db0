"""The service mesh's capture table of a pod (meshcapture): what it redirects, what it leaves alone,
and that nft's own parser takes it (`nft --check` in a throw-away network namespace)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import meshcapture
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]  # noqa: ANN201
    m = tmp_path_factory.mktemp("m") / "m"
    shutil.copytree(ROOT / "examples/three-clouds", m, ignore=shutil.ignore_patterns(".crossmesh", "expected"))
    return compile_mesh(m / "mesh.yaml").plan


def test_outbound_goes_to_15001_inbound_to_15006_and_the_proxy_is_never_captured(plan) -> None:  # type: ignore[no-untyped-def]
    pod = plan.pods()[0]
    text = nft.render(meshcapture.capture_table(plan, pod, "cm-x-q0"))
    output, prerouting, transparent = text.split("chain ")[1:]
    assert "type nat hook output" in output and "redirect to :15001" in output
    assert "meta mark != { 1337, 273 }" in output  # PROXY_MARK, TRANSPARENT_MARK: the proxy's own sockets
    assert f"ip daddr != {pod.address}" in output  # the pod to itself
    for c in plan.clusters:
        assert str(c.service_cidr) in output and str(c.pod_cidr) in output
    assert "type nat hook prerouting" in prerouting and "redirect to :15006" in prerouting
    assert 'iifname "cm-x-q0"' in prerouting and f"ip daddr {pod.address}" in prerouting
    node = plan.node(pod.node)
    assert f"ip saddr != {{ {node.address}" in prerouting or str(node.address) in prerouting  # health probes
    assert "type route hook output" in transparent
    assert "meta mark 273 ct mark set 273" in transparent and "ct mark 273 meta mark set 273" in transparent


def test_node_addresses_are_not_destinations(plan) -> None:  # type: ignore[no-untyped-def]
    pod = plan.pods()[0]
    output = nft.render(meshcapture.capture_table(plan, pod, "cm-x-q0")).split("chain ")[1]
    for n in plan.nodes:
        assert str(n.pod_cidr.network_address + 1) in output


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None,
    reason="nft --check needs root, nft and unshare (the lab's requirements)",
)
def test_nft_accepts_every_pods_capture_table(plan) -> None:  # type: ignore[no-untyped-def]
    for k, pod in enumerate(plan.pods()):
        done = subprocess.run(
            ["unshare", "--net", "nft", "--check", "-f", "-"],
            input=nft.render(meshcapture.capture_table(plan, pod, f"cm-f0f0-q{k}")),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{pod.ref}: {done.stderr.strip()}"
