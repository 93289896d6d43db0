"""Validator rules through the Python API (`crossmesh.workspace.check`), and pod expansion.

The command-line corpus in tests/bad/ covers one problem per file; these tests cover
what a corpus case cannot say well: that valid meshes stay valid, that rules do not
fire where they should not, that problems cascade no further than their cause, and
that pod names and placement are deterministic.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crossmesh.errors import Problem
from crossmesh.load.mesh import LoadedMesh, load_manifest_file
from crossmesh.plan.workloads import expand_pods
from crossmesh.state.store import StateStore
from crossmesh.validate.rules import MAX_PAIR_REPORTS
from crossmesh.workspace import check

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEADER = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: test
spec:
"""


def run_check(
    tmp_path: Path, text: str, files: dict[str, str] | None = None
) -> tuple[LoadedMesh | None, list[Problem]]:
    for rel, content in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(text)
    return check(mesh, StateStore(tmp_path / "no-state"))


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def sites(*names: str) -> str:
    return "  sites:\n" + "".join(
        f"    - {{name: {n}, provider: baremetal, network: 10.{i}.0.0/16}}\n" for i, n in enumerate(names)
    )


def node(name: str, site: str, address: str, public: str | None = None, *, gateway: bool = False) -> str:
    out = f"        - name: {name}\n          site: {site}\n          address: {address}\n"
    if public:
        out += f"          publicAddress: {public}\n"
    if gateway:
        out += "          gateway: true\n"
    return out


def cluster(name: str, *nodes: str) -> str:
    return f"    - name: {name}\n      nodes:\n" + "".join(nodes)


# One site, one cluster of one node; the cluster's fields can be appended.
SMALL = HEADER + sites("a") + "  clusters:\n" + cluster("one", node("a-1", "a", "10.0.0.5"))


# --- the examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["three-clouds", "hybrid-openstack-aws"])
def test_examples_validate_clean_and_write_nothing(tmp_path: Path, example: str) -> None:
    copy = tmp_path / example
    shutil.copytree(EXAMPLES / example, copy, ignore=shutil.ignore_patterns(".crossmesh"))
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))

    loaded, problems = check(copy / "mesh.yaml")

    assert problems == []
    assert loaded is not None
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_examples_in_place_validate_clean() -> None:
    for mesh in ("three-clouds/mesh.yaml", "hybrid-openstack-aws/mesh.yaml"):
        _, problems = check(EXAMPLES / mesh, StateStore(EXAMPLES / "no-such-state-dir"))
        assert problems == [], mesh


# --- positions -----------------------------------------------------------------------------------


def test_problem_in_a_nested_list_item_has_its_line_and_column(tmp_path: Path) -> None:
    text = (
        HEADER
        + sites("a", "b")
        + "  clusters:\n"
        + cluster("one", node("a-1", "a", "10.0.0.5", "203.0.113.1"))
        + cluster(
            "two",
            node("a-2", "a", "10.0.0.6", "203.0.113.2"),
            node("b-1", "b", "10.1.0.5", "203.0.113.3"),
            node("b-2", "b", "10.7.0.5", "203.0.113.4"),  # outside site b
        )
    )

    _, problems = run_check(tmp_path, text)

    (problem,) = problems
    assert (problem.line, problem.column) == (28, 11)
    assert problem.path == "spec.clusters[1].nodes[2].address"
    assert text.splitlines()[problem.line - 1] == "          address: 10.7.0.5"


def test_all_semantic_problems_at_once(tmp_path: Path) -> None:
    text = (
        HEADER
        + sites("a", "b")
        + "  clusters:\n"
        + cluster("one", node("a-1", "a", "10.0.0.5", "203.0.113.1"), node("a-1", "a", "10.0.0.5", "203.0.113.1"))
        + cluster("two", node("b-1", "b", "10.9.0.5", "203.0.113.3"))
        + "      id: 0\n"
    )

    _, with_bad_id = run_check(tmp_path, text)
    # a schema error in a field with a default (id 0) does not hide the semantic rules
    assert with_bad_id[0].path == "spec.clusters[1].id"
    assert len(with_bad_id) == 5

    _, problems = run_check(tmp_path, text.replace("      id: 0\n", ""))
    assert sorted(str(p) for p in problems) == sorted(str(p) for p in with_bad_id[1:])

    assert sorted(p.message.split(" (")[0] for p in problems) == [
        "10.9.0.5 is outside site b's network 10.1.0.0/16 — use an address in 10.1.0.0/16",
        "duplicate node address 10.0.0.5 in site a",
        "duplicate node name a-1",
        "duplicate public address 203.0.113.1",
    ]


# --- rules that must not fire --------------------------------------------------------------------


def test_nodes_behind_nat_in_one_site_need_no_public_address(tmp_path: Path) -> None:
    text = (
        HEADER
        + sites("a")
        + "  clusters:\n"
        + cluster("one", node("a-1", "a", "10.0.0.5"), node("a-2", "a", "10.0.0.6"))
    )

    _, problems = run_check(tmp_path, text)

    assert problems == []


def test_one_public_end_is_enough_for_a_tunnel(tmp_path: Path) -> None:
    text = (
        HEADER
        + sites("a", "b", "c")
        + "  clusters:\n"
        + cluster(
            "one",
            node("a-1", "a", "10.0.0.5", "192.0.2.1"),
            node("b-1", "b", "10.1.0.5", "198.51.100.1"),
            node("c-1", "c", "10.2.0.5", "203.0.113.1"),
            node("c-2", "c", "10.2.0.6"),  # NAT, but every other node can be dialled
        )
    )

    _, problems = run_check(tmp_path, text)

    assert problems == []


def test_gateways_topology_needs_public_gateways_only(tmp_path: Path) -> None:
    text = (
        HEADER.replace("spec:\n", "spec:\n  wireguard: {topology: gateways}\n")
        + sites("a", "b")
        + "  clusters:\n"
        + cluster(
            "one",
            node("a-gw", "a", "10.0.0.5", "203.0.113.1", gateway=True),
            node("a-1", "a", "10.0.0.6"),
            node("b-gw", "b", "10.1.0.5", "203.0.113.2", gateway=True),
            node("b-1", "b", "10.1.0.6"),
        )
    )

    _, problems = run_check(tmp_path, text)

    assert problems == []


def test_full_mesh_nat_pairs_are_capped(tmp_path: Path) -> None:
    a_nodes = [node(f"a-{i}", "a", f"10.0.0.{i + 10}") for i in range(6)]
    b_nodes = [node(f"b-{i}", "b", f"10.1.0.{i + 10}") for i in range(6)]
    text = HEADER + sites("a", "b") + "  clusters:\n" + cluster("one", *a_nodes, *b_nodes)

    _, problems = run_check(tmp_path, text)

    pairs = [p for p in problems if "both lack a publicAddress" in p.message]
    assert len(pairs) == MAX_PAIR_REPORTS
    assert problems[-1].path == "spec.wireguard.topology"
    assert problems[-1].message.startswith(f"{36 - MAX_PAIR_REPORTS} more node pairs")


# --- problems stay with their cause --------------------------------------------------------------


def test_duplicate_site_name_is_reported_once_without_a_cascade(tmp_path: Path) -> None:
    text = (
        HEADER
        + "  sites:\n"
        + "    - {name: a, provider: aws, network: 10.0.0.0/16}\n"
        + "    - {name: a, provider: gcp, network: 10.1.0.0/16}\n"
        + "  clusters:\n"
        + cluster("one", node("a-1", "a", "10.0.0.5", "203.0.113.1"))
    )

    _, problems = run_check(tmp_path, text)

    assert [(p.line, p.path) for p in problems] == [(8, "spec.sites[1].name")]


def test_unknown_field_does_not_hide_semantic_problems(tmp_path: Path) -> None:
    text = (
        HEADER
        + sites("a", "b")
        + "  clusters:\n"
        + cluster("one", node("a-1", "a", "10.0.0.5"), node("b-1", "b", "10.1.0.5"))
        + "      podCidr: 10.10.0.0/16\n"
    )

    _, problems = run_check(tmp_path, text)

    assert [p.path for p in problems] == ["spec.clusters[0].podCidr", "spec.clusters[0].nodes[1].publicAddress"]
    assert "did you mean 'podCIDR'?" in problems[0].message


def test_literal_values_keep_their_case_in_messages(tmp_path: Path) -> None:
    _, problems = run_check(tmp_path, HEADER.replace("kind: Mesh", "kind: mesh") + sites("a"))

    kind = next(p for p in problems if p.path == "kind")
    assert kind.message == "found 'mesh'; input should be 'Mesh'"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.10.1.0/16", "host bits set — did you mean 10.10.0.0/16?"),
        ("10.10.0.0/40", "the prefix length must be 0..32"),
        ("10.10.0.0", "no prefix length"),
        ("10", "expected an IPv4 CIDR as text"),
        ("fd00::/64", "IPv4 only"),
        ("ten/8", "not an IPv4 CIDR"),
    ],
)
def test_cidr_messages_say_what_is_wrong(tmp_path: Path, value: str, message: str) -> None:
    text = SMALL + f"      podCIDR: {value}\n"

    _, problems = run_check(tmp_path, text)

    (problem,) = problems
    assert problem.path == "spec.clusters[0].podCIDR"
    assert message in problem.message


def test_service_annotation_problem_points_at_the_annotation(tmp_path: Path) -> None:
    service = (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  annotations:\n"
        '    service.cilium.io/global: "yes"\n    service.cilium.io/affinity: local\n'
        "spec:\n  ports: [{port: 80}]\n"
    )
    text = SMALL + "  manifests: [svc.yaml]\n"

    _, problems = run_check(tmp_path, text, {"svc.yaml": service})

    (problem,) = problems
    assert (Path(problem.file).name, problem.line, problem.column) == ("svc.yaml", 6, 5)
    assert problem.path == "metadata.annotations.service.cilium.io/global"
    assert problem.message == "must be true or false (found 'yes')"


def test_pool_exhaustion_is_reported_after_the_rules_pass(tmp_path: Path) -> None:
    text = (
        HEADER
        + "  ipam: {podPool: 10.240.0.0/15, clusterPrefix: 16}\n"
        + sites("a")
        + "  clusters:\n"
        + "".join(cluster(f"c{i}", node(f"n{i}", "a", f"10.0.0.{i + 10}")) for i in range(3))
    )

    _, problems = run_check(tmp_path, text)

    assert [(p.path, p.line) for p in problems] == [("spec.ipam.podPool", 6)]
    assert "no free /16 left for cluster c2" in problems[0].message


# --- pods ------------------------------------------------------------------------------------------

WORKLOAD = """\
apiVersion: apps/v1
kind: {kind}
metadata: {{name: {name}, namespace: shop}}
spec:
  replicas: {replicas}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      {extra}containers: [{{name: main, ports: [{{containerPort: 80}}]}}]
"""


def workload(name: str, replicas: int, *, kind: str = "Deployment", node_name: str = "") -> str:
    extra = f"nodeName: {node_name}\n      " if node_name else ""
    return WORKLOAD.format(kind=kind, name=name, replicas=replicas, extra=extra)


def pods(tmp_path: Path, text: str, nodes: list[str]) -> list[tuple[str, str]]:
    f = tmp_path / "apps.yaml"
    f.write_text(text)
    manifests, problems = load_manifest_file(f)
    assert problems == []
    return [(p.name, n) for p, n in expand_pods("one", manifests, nodes)]


def test_replicas_are_named_from_zero(tmp_path: Path) -> None:
    got = pods(tmp_path, workload("web", 3) + "---\n" + workload("db", 2, kind="StatefulSet"), ["n1", "n2", "n3"])

    assert [name for name, _ in got] == ["db-0", "db-1", "web-0", "web-1", "web-2"]


def test_placement_is_deterministic_and_spreads_replicas(tmp_path: Path) -> None:
    nodes = ["n1", "n2", "n3"]
    first = pods(tmp_path, workload("web", 3), nodes)

    assert pods(tmp_path, workload("web", 3), nodes) == first
    assert pods(tmp_path, workload("web", 3), list(reversed(nodes))) == first  # node order does not matter
    assert sorted(n for _, n in first) == nodes  # three replicas on three nodes: one each
    # other workloads do not move it
    with_others = pods(tmp_path, workload("api", 4) + "---\n" + workload("web", 3), nodes)
    assert [t for t in with_others if t[0].startswith("web-")] == first


def test_node_name_pins_every_replica(tmp_path: Path) -> None:
    got = pods(tmp_path, workload("web", 3, node_name="n2"), ["n1", "n2", "n3"])

    assert got == [("web-0", "n2"), ("web-1", "n2"), ("web-2", "n2")]
