"""`crossmesh agent --etcd-endpoints`: what would silently weaken the agent is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh.cli.agent import etcd_urls
from crossmesh.cli.main import app
from crossmesh.errors import UsageError

NODE = "gw-east-1"


def test_https_endpoints_with_tls() -> None:
    urls = etcd_urls(" https://10.0.1.10:2379, https://10.1.1.10 ,", tls=True, insecure=False)
    assert urls == ["https://10.0.1.10:2379", "https://10.1.1.10:2379"]
    assert etcd_urls("10.0.1.10:2380", tls=True, insecure=False) == ["https://10.0.1.10:2380"]
    assert etcd_urls("https://[2001:db8::1]:2379", tls=True, insecure=False) == ["https://[2001:db8::1]:2379"]


@pytest.mark.parametrize(
    ("text", "tls", "insecure", "message"),
    [
        ("https://10.0.1.10:2379", False, False, "is https but no client certificate was given"),
        ("http://10.0.1.10:2379", True, False, "is http:// while TLS flags are given"),
        ("http://10.0.1.10:2379", False, False, "is plaintext"),
        ("10.0.1.10:2379", False, False, "is plaintext"),
        ("ftp://10.0.1.10:2379", True, False, "is not a URL"),
        ("https://10.0.1.10:99999", True, False, "is not a URL"),
        ("https://10.0.1.10:2379/v3/kv", True, False, "is not a URL"),
        ("https://:2379", True, False, "is not a URL"),
        (" , ", True, False, "names no endpoint"),
    ],
)
def test_refused(text: str, tls: bool, insecure: bool, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        etcd_urls(text, tls=tls, insecure=insecure)


def test_plaintext_only_when_asked_for_by_name() -> None:
    assert etcd_urls("http://127.0.0.1:2379", tls=False, insecure=True) == ["http://127.0.0.1:2379"]


def test_a_node_without_a_tunnel_is_sent_to_the_operator(tmp_path: Path) -> None:
    """Under gateways a plain node's routes follow the site's active gateway, which only etcd knows."""
    mesh = Path(__file__).resolve().parents[1] / "golden" / "gateways" / "mesh.yaml"
    pem = tmp_path / "x.pem"
    pem.write_text("not used")
    result = CliRunner().invoke(
        app,
        ["agent", str(mesh), "--node", "east-worker-1", "--state", str(tmp_path / "state"),
         "--etcd-endpoints", "https://127.0.0.1:2379", "--cacert", str(pem), "--cert", str(pem), "--key", str(pem)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "has no tunnel" in result.output and "--mesh gateways" in result.output


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    mesh = Path(__file__).resolve().parents[2] / "examples" / "three-clouds" / "mesh.yaml"
    result = CliRunner().invoke(
        app,
        ["agent", str(mesh), "--node", "aws-talos-1", "--etcd-endpoints", "https://127.0.0.1:2379",
         "--cacert", str(tmp_path / "ca.crt"), "--cert", str(tmp_path / "a.crt"), "--key", str(tmp_path / "a.key")],
    )  # fmt: skip
    assert result.exit_code == 2 and f"--cacert {tmp_path / 'ca.crt'}: no such file" in result.output, result.output


def test_an_agent_makes_only_its_own_key(tmp_path: Path) -> None:
    """Each node holds only its own private key: the agent's compile makes no other node's key (two
    agents sharing a state folder raced on every node's key before)."""
    import shutil

    from crossmesh.workspace import compile_mesh

    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "three-clouds", tmp_path / "m")
    compiled = compile_mesh(tmp_path / "m" / "mesh.yaml", None, only_key="azure-talos-1")
    assert sorted(p.name for p in compiled.store.key_dir.iterdir()) == ["azure-talos-1.key", "azure-talos-1.pub"]
    peers = [p for n in compiled.plan.nodes if n.tunnel for p in n.tunnel.peers]
    assert all(p.public_key == "" for p in peers if p.node != "azure-talos-1")
    compile_mesh(tmp_path / "m" / "mesh.yaml", None, only_key="no-such-node")
    assert sorted(p.name for p in compiled.store.key_dir.iterdir()) == ["azure-talos-1.key", "azure-talos-1.pub"]


def test_a_bad_metrics_address_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["agent", "--mesh", "m", "--node", "n1", "--state", str(tmp_path / "state"),
         "--etcd-endpoints", "http://127.0.0.1:2379", "--insecure-plaintext", "--metrics-address", "node-1:9962"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--metrics-address 'node-1:9962' is not HOST:PORT, :PORT or off" in result.output
    assert "Traceback" not in result.output
