"""The agents' deployment (render/agent_deploy.py) and the image's Dockerfile: which nodes and clusters
get a unit or a DaemonSet (under gateways: tunnel agents on the gateways, route-only agents elsewhere),
what those run and with which rights, and that the Dockerfile builds what they run. The schemas
(Kubernetes, `systemd-analyze verify`) are checked in test_schemas.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.kv import identities
from crossmesh.render import agent_deploy
from crossmesh.workspace import compile_mesh

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
    """The file's documents by kind, DaemonSets by name (a cluster may have two)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    out = {d["metadata"]["name"] if d["kind"] == "DaemonSet" else d["kind"]: d for d in docs}
    assert len(out) == len(docs), f"{path}: two documents of one kind or name"
    return out


def daemonsets(path: Path) -> dict[str, dict[str, Any]]:
    return {name: d for name, d in objects(path).items() if d["kind"] == "DaemonSet"}


def scheduled(daemonset: dict[str, Any]) -> list[str]:
    """The Node names a DaemonSet runs on, checking that it selects by name and nothing else."""
    (term,) = daemonset["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    (field,) = term["matchFields"]
    assert term == {"matchFields": [field]} and field["key"] == "metadata.name" and field["operator"] == "In"
    return list(field["values"])


def unit_entries(text: str) -> dict[str, dict[str, str]]:
    """A unit file as systemd reads its sections (comments and blank lines skipped; no key repeats here)."""
    out: dict[str, dict[str, str]] = {}
    section = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        assert section is not None, line
        key, value = line.split("=", 1)
        assert key not in section, line
        section[key] = value
    return out


def mesh_nodes(case: str) -> dict[str, tuple[str, str]]:
    """node → (cluster, distribution) as the golden mesh file states them."""
    data = yaml.safe_load((GOLDEN / case / "mesh.yaml").read_text())
    return {
        n["name"]: (c["name"], c.get("distribution", "kubeadm")) for c in data["spec"]["clusters"] for n in c["nodes"]
    }


GATEWAYS_TUNNEL = ["gw-east-1", "gw-east-2", "gw-west"]  # the golden gateways mesh's gateway nodes
GATEWAYS_ROUTE_ONLY = {"core": ["east-worker-1", "west-worker-1"], "edge": ["edge-1", "edge-2"]}


@pytest.mark.parametrize("case", ["three-clouds", "hybrid", "gateways"])
def test_every_agent_node_gets_exactly_one_way_to_run_its_agent(trees: dict[str, Path], case: str) -> None:
    out = trees[case]
    for node, (cluster, distribution) in mesh_nodes(case).items():
        runs_on = [name for name, d in daemonsets(out / "clusters" / cluster / "crossmesh-agent.yaml").items()
                   if node in scheduled(d)]  # fmt: skip
        assert len(runs_on) == 1, (node, runs_on)
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


def test_every_node_with_an_etcd_identity_gets_its_agent(trees: dict[str, Path], tmp_path: Path) -> None:
    """One rule (kv.identities): the nodes `pki etcd` issues certificates to are the nodes the rendered
    files run an agent on — under gateways every node, under a full mesh those with a tunnel."""
    for case, out in trees.items():
        compiled = compile_mesh(GOLDEN / case / "mesh.yaml", tmp_path / case, dry_run=True)
        deployed = {n for path in out.glob("clusters/*/crossmesh-agent.yaml")
                    for d in daemonsets(path).values() for n in scheduled(d)}  # fmt: skip
        assert sorted(deployed) == identities.agent_nodes(compiled.plan), case
        if case == "gateways":
            assert sorted(deployed) == sorted(mesh_nodes(case))


def test_under_gateways_the_gateways_run_the_tunnel_agent_and_the_other_nodes_a_route_only_one(
    trees: dict[str, Path],
) -> None:
    out = trees["gateways"]
    core = daemonsets(out / "clusters" / "core" / "crossmesh-agent.yaml")
    edge = daemonsets(out / "clusters" / "edge" / "crossmesh-agent.yaml")  # no gateway: route-only nodes alone
    assert set(core) == {agent_deploy.NAME, agent_deploy.ROUTES_NAME} and set(edge) == {agent_deploy.ROUTES_NAME}
    assert scheduled(core[agent_deploy.NAME]) == GATEWAYS_TUNNEL
    assert scheduled(core[agent_deploy.ROUTES_NAME]) == GATEWAYS_ROUTE_ONLY["core"]
    assert scheduled(edge[agent_deploy.ROUTES_NAME]) == GATEWAYS_ROUTE_ONLY["edge"]
    # The tunnel agents' pods make the device when it is missing and reach wireguard-go's socket.
    tunnel = core[agent_deploy.NAME]["spec"]["template"]["spec"]
    (device,) = tunnel["initContainers"]
    assert device["command"][-1] == "wg-crossmesh" and "type wireguard" in device["command"][2]
    assert agent_deploy.WIREGUARD_GO_SOCKETS in [m["mountPath"] for m in tunnel["containers"][0]["volumeMounts"]]
    # A route-only pod makes no device and mounts nothing but the state folder.
    for daemonset in (core[agent_deploy.ROUTES_NAME], edge[agent_deploy.ROUTES_NAME]):
        spec = daemonset["spec"]["template"]["spec"]
        assert "initContainers" not in spec
        assert [v["hostPath"]["path"] for v in spec["volumes"]] == [agent_deploy.STATE_DIR]
        (container,) = spec["containers"]
        assert [m["mountPath"] for m in container["volumeMounts"]] == [agent_deploy.STATE_DIR]
        assert container["args"] == tunnel["containers"][0]["args"]  # the same etcd-fed command line
    # The two DaemonSets never select each other's pods.
    selectors = [d["spec"]["selector"]["matchLabels"] for d in core.values()]
    for daemonset in core.values():
        template = daemonset["spec"]["template"]["metadata"]["labels"]
        assert [all(template.get(k) == v for k, v in s.items()) for s in selectors].count(True) == 1


def test_a_route_only_unit_needs_no_wireguard(trees: dict[str, Path]) -> None:
    out = trees["gateways"]
    for node in GATEWAYS_TUNNEL:
        unit = unit_entries((out / "nodes" / node / "crossmesh-agent.service").read_text())
        assert unit["Unit"]["After"] == "network-online.target wg-quick@wg-crossmesh.service" == unit["Unit"]["Wants"]
        assert unit["Service"]["ReadWritePaths"] == f"{agent_deploy.STATE_DIR} -{agent_deploy.WIREGUARD_GO_SOCKETS}"
    for node in [n for nodes in GATEWAYS_ROUTE_ONLY.values() for n in nodes]:
        text = (out / "nodes" / node / "crossmesh-agent.service").read_text()
        unit = unit_entries(text)
        assert unit["Unit"]["After"] == "network-online.target" == unit["Unit"]["Wants"]
        assert unit["Service"]["ReadWritePaths"] == agent_deploy.STATE_DIR
        assert "wg-quick" not in text.replace("No wg-quick,", "") and agent_deploy.WIREGUARD_GO_SOCKETS not in text
        assert unit["Service"]["ExecStart"].split()[2:4] == ["--node", node]
        assert unit["Service"]["CapabilityBoundingSet"] == "CAP_NET_ADMIN"  # its routes


def test_a_node_without_a_tunnel_runs_an_agent_under_gateways_only(tmp_path: Path) -> None:
    plan = compile_mesh(GOLDEN / "gateways" / "mesh.yaml", tmp_path, dry_run=True).plan
    worker = plan.node("east-worker-1")
    assert worker.tunnel is None
    assert "routes only" in agent_deploy.systemd_unit(plan, worker)
    full_mesh = dataclasses.replace(plan, topology="full-mesh")  # the same node, were it a full mesh's
    with pytest.raises(ValueError, match="runs no agent"):
        agent_deploy.systemd_unit(full_mesh, worker)
    (core,) = [c for c in full_mesh.clusters if c.name == "core"]
    assert [n.name for n in agent_deploy.agent_nodes(full_mesh, core)] == GATEWAYS_TUNNEL


ONE_SITE_TALOS = """
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata: {name: one-site}
spec:
  wireguard: {topology: gateways}
  ipam: {podPool: 10.200.0.0/13, clusterPrefix: 16, nodePrefix: 24, tunnelPool: 100.96.0.0/24}
  sites: [{name: a, provider: baremetal, region: x, network: 10.30.0.0/16}]
  clusters:
    - name: t
      distribution: talos
      cni: cilium
      serviceCIDR: 10.96.0.0/16
      nodes:
        - {name: gw, site: a, address: 10.30.0.10, publicAddress: 192.0.2.11, gateway: true}
        - {name: w, site: a, address: 10.30.0.11}
"""


def test_a_route_only_talos_node_keeps_its_talos_yaml(tmp_path: Path) -> None:
    """Talos nodes route via a gateway only where there is no other site (validate refuses the rest):
    with no tunnel, their talos.yaml has no WireguardConfig to leave out, so no talos-agent.yaml."""
    (tmp_path / "mesh.yaml").write_text(ONE_SITE_TALOS)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["render", str(tmp_path / "mesh.yaml"), "--output-dir", str(out), "--state", str(tmp_path / "state")]
    )
    assert result.exit_code == 0, result.output
    (daemonset,) = daemonsets(out / "clusters" / "t" / "crossmesh-agent.yaml").items()
    assert daemonset[0] == agent_deploy.ROUTES_NAME and scheduled(daemonset[1]) == ["gw", "w"]
    for node in ("gw", "w"):
        (patch,) = yaml.safe_load_all((out / "nodes" / node / "talos.yaml").read_text())  # no WireguardConfig
        assert "kind" not in patch
        assert not (out / "nodes" / node / "talos-agent.yaml").exists()


@pytest.mark.parametrize("case", ["three-clouds", "hybrid", "gateways"])
def test_the_daemonset_runs_on_the_host_network_with_net_admin_alone(trees: dict[str, Path], case: str) -> None:
    for path in sorted(trees[case].glob("clusters/*/crossmesh-agent.yaml")):
        docs = objects(path)
        assert docs["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
        assert docs["ServiceAccount"]["automountServiceAccountToken"] is False
        for name, daemonset in daemonsets(path).items():
            spec = daemonset["spec"]["template"]["spec"]
            assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
            assert {"operator": "Exists"} in spec["tolerations"]
            for container in spec.get("initContainers", []) + spec["containers"]:
                ctx = container["securityContext"]
                assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
                assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
                assert ctx["readOnlyRootFilesystem"] is True
                assert container["image"] == agent_deploy.AGENT_IMAGE
            (state,) = [v for v in spec["volumes"] if v["name"] == "state"]
            assert state["hostPath"] == {"path": agent_deploy.STATE_DIR, "type": "Directory"}
            sockets = [v for v in spec["volumes"] if v["hostPath"]["path"] == agent_deploy.WIREGUARD_GO_SOCKETS]
            # Talos has kernel WireGuard only; a route-only agent has no device at all
            assert bool(sockets) == (case != "three-clouds" and name == agent_deploy.NAME)


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
    daemonset = daemonsets(out / "clusters" / "k3s" / "crossmesh-agent.yaml")[agent_deploy.NAME]
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
