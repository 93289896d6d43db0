"""Per-distribution files (issue 10: the rendered files install as they are): Talos documents against
the Talos schema, the WireGuard routes Talos needs, no wg-quick or script for Talos nodes, K3s and
kubeadm files and pin-pod-cidrs.sh. What a distribution cannot do is refused by `crossmesh validate`:
tests/bad/74-* and 75-* (run by test_bad_inputs.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml
from test_schemas import problems, talos_validator

from crossmesh.identity.svid import istio_ca
from crossmesh.model.plan import Datapath, Mtu, Plan
from crossmesh.model.tls import clustermesh_clusters
from crossmesh.render import common, k3s, kubeadm, podcidrs, talos
from crossmesh.render.files import RenderedFile
from crossmesh.render.tree import render
from crossmesh.state.store import StateStore
from crossmesh.workspace import compile_mesh

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


NOW = datetime(2026, 12, 6, tzinfo=UTC)


def plan_of(mesh: Path, tmp: Path, *, pinned: bool | None = None) -> Plan:
    plan = compile_mesh(mesh, tmp / "state").plan  # a fresh state of its own: new keys
    if pinned is None:
        return plan
    mtu = Mtu(1380, "test")
    datapath = Datapath("tunnel", "vxlan", 8472, mtu, Mtu(1330, "test"), pinned, ())
    return dataclasses.replace(plan, clusters=tuple(dataclasses.replace(c, datapath=datapath) for c in plan.clusters))


def render_plan(plan: Plan) -> dict[str, RenderedFile]:
    """The tree, with test ClusterMesh certificates made in memory-backed temporary state."""
    with tempfile.TemporaryDirectory() as tmp:
        members = clustermesh_clusters(plan)
        store = StateStore(Path(tmp) / ".crossmesh")
        tls = store.clustermesh_tls(plan.mesh, members, NOW) if members else {}
        cas = {}
        if plan.istio is not None:  # spec.istio: each cluster's cacerts, from the same test state
            root, authorities = store.istio_cas(
                plan.mesh, plan.istio.trust_domain, [c.name for c in plan.clusters], NOW
            )
            cas = {c: istio_ca(c, root, a) for c, a in authorities.items()}
        return render(plan, {}, lambda n: f"key-of-{n}", tls, cas)


def tree(plan: Plan) -> dict[str, str]:
    return {rel: f.content for rel, f in render_plan(plan).items()}


def test_talos_nodes_get_only_their_documents_which_validate(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES / "three-clouds" / "mesh.yaml", tmp_path, pinned=True)
    files = render_plan(plan)
    patch_schema = talos_validator("v1alpha1.Config", partial=True)
    wg_schema = talos_validator("network.WireguardConfigV1Alpha1", partial=False)
    for node in plan.nodes:
        base = f"nodes/{node.name}"
        # talos-agent.yaml: the same patch without the link, for the agents' DaemonSet (no key: 0644).
        assert sorted(rel for rel in files if rel.startswith(base + "/")) == [
            f"{base}/talos-agent.yaml",
            f"{base}/talos.yaml",
        ]
        assert files[f"{base}/talos.yaml"].mode == 0o600 and files[f"{base}/talos.yaml"].secret
        assert files[f"{base}/talos-agent.yaml"].mode == 0o644 and not files[f"{base}/talos-agent.yaml"].secret
        patch, wg = yaml.safe_load_all(files[f"{base}/talos.yaml"].content)
        assert list(yaml.safe_load_all(files[f"{base}/talos-agent.yaml"].content)) == [patch]
        assert problems(patch_schema, patch) == []
        assert problems(wg_schema, wg) == []
        machine, cluster = patch["machine"], patch["cluster"]
        assert machine["features"]["kubePrism"] == {"enabled": True, "port": 7445}
        assert machine["kubelet"]["nodeIP"]["validSubnets"] == [str(plan.site(node.site).network)]
        assert cluster["controllerManager"]["extraArgs"] == {
            "node-cidr-mask-size": "24",
            "allocate-node-cidrs": "false",
        }
        assert cluster["network"]["cni"] == {"name": "none"} and cluster["proxy"] == {"disabled": True}
        # Talos does not route AllowedIPs: one route per allowed IP of every peer, as wg-quick would.
        assert node.tunnel is not None
        allowed = [str(a) for p in node.tunnel.peers for a in p.allowed_ips]
        assert [r["destination"] for r in wg["routes"]] == allowed
        assert wg["mtu"] == node.tunnel.mtu.value
        assert wg["addresses"] == [{"address": f"{node.tunnel.address}/32"}]


def test_forwarding_gateways_get_ip_forward_in_their_talos_patch(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES / "three-clouds" / "mesh.yaml", tmp_path)
    cluster = plan.clusters[0]
    node = plan.node(cluster.nodes[0])
    assert "sysctls" not in talos.machine_patch(plan, cluster, node)["machine"]
    gateway = dataclasses.replace(node, gateway=True)
    assert talos.machine_patch(plan, cluster, gateway)["machine"]["sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert problems(talos_validator("v1alpha1.Config", partial=True), talos.machine_patch(plan, cluster, gateway)) == []


def test_unpinned_clusters_let_the_controller_manager_allocate(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES / "three-clouds" / "mesh.yaml", tmp_path, pinned=False)
    files = tree(plan)
    assert not [rel for rel in files if rel.endswith("pin-pod-cidrs.sh")]
    for cluster in plan.clusters:
        assert common.controller_manager_args(plan, cluster) == {"node-cidr-mask-size": "24"}


def test_k3s_files_carry_cidrs_node_ip_and_pinning(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml", tmp_path, pinned=True)
    files = tree(plan)
    cluster = plan.clusters[0]
    assert cluster.distribution == "k3s" and cluster.cni == "cilium"
    server = yaml.safe_load(files[f"clusters/{cluster.name}/k3s-server.yaml"])
    assert server == {
        "cluster-cidr": str(cluster.pod_cidr),
        "service-cidr": str(cluster.service_cidr),
        "flannel-backend": "none",
        "disable-network-policy": True,
        "disable-kube-proxy": True,
        "kube-controller-manager-arg": ["node-cidr-mask-size=24", "allocate-node-cidrs=false"],
    }
    flannel = k3s.server_config(plan, dataclasses.replace(cluster, cni="flannel"))
    assert flannel["flannel-backend"] == "vxlan" and "disable-network-policy" not in flannel
    for name in cluster.nodes:
        node = plan.node(name)
        assert yaml.safe_load(files[f"nodes/{name}/k3s-config.yaml"]) == {
            "node-ip": str(node.address),
            "node-name": name,
        }
        assert f"nodes/{name}/wg-crossmesh.conf" in files  # not Talos: wg-quick installs the tunnel


def test_k3s_with_cilium_disables_flannel_and_keeps_kube_proxy(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml", tmp_path, pinned=False)
    cluster = dataclasses.replace(plan.clusters[0], cni="cilium")
    server = k3s.server_config(plan, cluster)
    assert server["flannel-backend"] == "none" and server["disable-network-policy"] is True
    assert server["disable-kube-proxy"] is True  # Cilium replaces it through K3s's API load balancer
    assert server["kube-controller-manager-arg"] == ["node-cidr-mask-size=24"]


def test_kubeadm_files(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml", tmp_path, pinned=True)
    plan = dataclasses.replace(
        plan, clusters=tuple(dataclasses.replace(c, distribution="kubeadm", cni="cilium") for c in plan.clusters)
    )
    files = tree(plan)
    cluster = plan.clusters[0]
    config = yaml.safe_load(files[f"clusters/{cluster.name}/kubeadm-config.yaml"])
    assert config["apiVersion"] == "kubeadm.k8s.io/v1beta4" and config["kind"] == "ClusterConfiguration"
    assert config["networking"] == {"podSubnet": str(cluster.pod_cidr), "serviceSubnet": str(cluster.service_cidr)}
    assert config["controllerManager"]["extraArgs"] == [
        {"name": "node-cidr-mask-size", "value": "24"},
        {"name": "allocate-node-cidrs", "value": "false"},
    ]
    assert "proxy" not in config  # kube-proxy stays: no replacement outside Talos
    for name in cluster.nodes:
        env = files[f"nodes/{name}/kubelet.env"]
        assert f"KUBELET_EXTRA_ARGS=--node-ip={plan.node(name).address}\n" in env
    assert kubeadm.cluster_config(plan, dataclasses.replace(cluster, distribution="talos"))["proxy"] == {
        "disabled": True
    }


def test_pin_script_patches_only_an_empty_pod_cidr(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml", tmp_path, pinned=True)
    cluster = plan.clusters[0]
    text = podcidrs.script(plan, cluster)
    assert text is not None and text == tree(plan)[f"clusters/{cluster.name}/pin-pod-cidrs.sh"]
    for name in cluster.nodes:
        assert f"pin {name} {plan.node(name).pod_cidr} || status=1" in text
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    # Run it against a fake kubectl: node a empty, b already right, c different, d missing.
    fake = tmp_path / "kubectl"
    log = tmp_path / "log"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'if [ "$1" = get ]; then\n'
        '  case "$3" in\n'
        f'    {cluster.nodes[0]}) echo "" ;;\n'
        f'    {cluster.nodes[1]}) echo "{plan.node(cluster.nodes[1]).pod_cidr}" ;;\n'
        f'    {cluster.nodes[2]}) echo "10.99.0.0/24" ;;\n'
        "  esac\n"
        "fi\n"
    )
    fake.chmod(0o755)
    run = subprocess.run(
        ["sh"], input=text, text=True, capture_output=True, env={"KUBECTL": str(fake), "PATH": "/usr/bin:/bin"}
    )
    assert run.returncode == 1
    assert f"node {cluster.nodes[2]} has podCIDR 10.99.0.0/24 but the mesh file states" in run.stderr
    patches = [line for line in log.read_text().splitlines() if line.startswith("patch")]
    assert patches == [
        f'patch node {cluster.nodes[0]} --type merge -p {{"spec":{{"podCIDR":"{plan.node(cluster.nodes[0]).pod_cidr}",'
        f'"podCIDRs":["{plan.node(cluster.nodes[0]).pod_cidr}"]}}}}'
    ]


def test_no_pin_script_without_a_datapath_or_pinning(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml", tmp_path)
    assert plan.clusters[0].datapath is not None and plan.clusters[0].datapath.pod_cidrs_pinned  # the planner's
    assert podcidrs.script(dataclasses.replace(plan), dataclasses.replace(plan.clusters[0], datapath=None)) is None
    plan = plan_of(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml", tmp_path, pinned=False)
    assert podcidrs.script(plan, plan.clusters[0]) is None


def test_managed_clusters_get_no_distribution_file(tmp_path: Path) -> None:
    plan = plan_of(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml", tmp_path)
    plan = dataclasses.replace(plan, clusters=tuple(dataclasses.replace(c, distribution="eks") for c in plan.clusters))
    names = {rel.rsplit("/", 1)[1] for rel in tree(plan)}
    assert not names & {"k3s-server.yaml", "k3s-config.yaml", "kubeadm-config.yaml", "kubelet.env", "talos.yaml"}
