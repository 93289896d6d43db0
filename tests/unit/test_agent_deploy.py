"""The agents' deployment (render/agent_deploy.py) and the image's Dockerfile: which nodes and clusters
get a unit or a DaemonSet, what those run and with which rights, and that the Dockerfile builds what
they run. The schemas (Kubernetes, `systemd-analyze verify`) are checked in test_schemas.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.render import agent_deploy

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
DOCKERFILE = REPO / "Dockerfile"
BOOKWORM_PYTHON = "3.11"  # python3 of debian:bookworm-slim, the image's base
# What the agent and its pod run on the node, and the Debian package of each: `ip` (drivers/iproute.py),
# `wg` (drivers/lab/wireguard.py, kernel WireGuard), `sh` and `find` (init container, liveness probe).
COMMANDS = {"ip": "iproute2", "wg": "wireguard-tools", "python3": "python3"}
ESSENTIAL = {"sh", "find"}  # Debian's essential set, in every image


def render(case: str, tmp: Path) -> Path:
    out = tmp / case
    result = CliRunner().invoke(
        app,
        ["render", str(GOLDEN / case / "mesh.yaml"), "--output-dir", str(out), "--state", str(tmp / f"{case}-state")],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("agent-deploy")
    return {case: render(case, base) for case in ("three-clouds", "hybrid", "gateways")}


def objects(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}


def mesh_nodes(case: str) -> dict[str, tuple[str, str]]:
    """node → (cluster, distribution) as the golden mesh file states them."""
    data = yaml.safe_load((GOLDEN / case / "mesh.yaml").read_text())
    return {
        n["name"]: (c["name"], c.get("distribution", "kubeadm")) for c in data["spec"]["clusters"] for n in c["nodes"]
    }


def test_a_gateways_mesh_gets_no_agent_files(trees: dict[str, Path]) -> None:
    """The agents build full-mesh tunnels only: deploying them on a gateways mesh would break it."""
    assert not [p for p in trees["gateways"].rglob("*") if "agent" in p.name]


@pytest.mark.parametrize("case", ["three-clouds", "hybrid"])
def test_every_tunnel_node_gets_exactly_one_way_to_run_its_agent(trees: dict[str, Path], case: str) -> None:
    out = trees[case]
    for node, (cluster, distribution) in mesh_nodes(case).items():
        daemonset = objects(out / "clusters" / cluster / "crossmesh-agent.yaml")["DaemonSet"]
        (term,) = daemonset["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert term == {
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": term["matchFields"][0]["values"]}]
        }
        assert node in term["matchFields"][0]["values"]
        unit = out / "nodes" / node / "crossmesh-agent.service"
        talos_agent = out / "nodes" / node / "talos-agent.yaml"
        if distribution == "talos":  # no host service on Talos: the DaemonSet, and the patch without the link
            assert not unit.exists()
            (patch,) = yaml.safe_load_all(talos_agent.read_text())
            first, link = yaml.safe_load_all((out / "nodes" / node / "talos.yaml").read_text())
            assert patch == first and link["kind"] == "WireguardConfig"
        else:
            assert not talos_agent.exists()
            assert f"--node {node} --mesh " in unit.read_text()


@pytest.mark.parametrize("case", ["three-clouds", "hybrid"])
def test_the_daemonset_runs_on_the_host_network_with_net_admin_alone(trees: dict[str, Path], case: str) -> None:
    for path in sorted(trees[case].glob("clusters/*/crossmesh-agent.yaml")):
        docs = objects(path)
        assert docs["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
        assert docs["ServiceAccount"]["automountServiceAccountToken"] is False
        spec = docs["DaemonSet"]["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
        assert {"operator": "Exists"} in spec["tolerations"]
        for container in spec["initContainers"] + spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
            assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert container["image"] == agent_deploy.AGENT_IMAGE
        (state,) = [v for v in spec["volumes"] if v["name"] == "state"]
        assert state["hostPath"] == {"path": agent_deploy.STATE_DIR, "type": "Directory"}
        sockets = [v for v in spec["volumes"] if v["hostPath"]["path"] == agent_deploy.WIREGUARD_GO_SOCKETS]
        assert bool(sockets) == (case != "three-clouds")  # Talos has kernel WireGuard only


def agent_options() -> set[str]:
    command = typer.main.get_command(app).commands["agent"]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def test_the_rendered_command_line_is_one_crossmesh_agent_accepts() -> None:
    args = agent_deploy.agent_args("m", "n", "https://10.0.0.1:2379")
    assert {a for a in args if a.startswith("--")} <= agent_options()


def test_the_rendered_command_line_is_what_the_unit_and_the_daemonset_run(trees: dict[str, Path]) -> None:
    out = trees["hybrid"]
    unit = (out / "nodes" / "aws-worker-1" / "crossmesh-agent.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    expected = agent_deploy.agent_args("hybrid-openstack-aws", "aws-worker-1", "${CROSSMESH_ETCD_ENDPOINTS}")
    assert exec_start.split() == [agent_deploy.EXECUTABLE, "agent", *expected]
    daemonset = objects(out / "clusters" / "k3s" / "crossmesh-agent.yaml")["DaemonSet"]
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["args"] == agent_deploy.agent_args("hybrid-openstack-aws", "$(NODE_NAME)", "$(ETCD_ENDPOINTS)")
    assert {e["name"] for e in container["env"]} == {"NODE_NAME", "ETCD_ENDPOINTS"}


@pytest.mark.parametrize(
    ("word", "written"),
    [
        ("aws-worker-1", "aws-worker-1"),
        ("/var/lib/crossmesh", "/var/lib/crossmesh"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("100%", '"100%%"'),  # a specifier otherwise
        ("$HOME", '"$$HOME"'),  # a variable otherwise
        ("back\\slash", '"back\\\\slash"'),
    ],
)
def test_unit_arguments_are_quoted_as_systemd_reads_them(word: str, written: str) -> None:
    assert agent_deploy.systemd_word(word) == written


def test_only_the_endpoints_variable_is_left_for_systemd_to_expand() -> None:
    assert agent_deploy.systemd_word(agent_deploy.Expanded("${X}")) == "${X}"
    assert agent_deploy.systemd_word("${X}") == '"$${X}"'
