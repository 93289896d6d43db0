"""The positioned YAML loader and manifest reading, through the Python API.

Positions are what turn a pydantic error path into `mesh.yaml:14:5`, so they are
checked at the depths users hit: list items inside lists, flow collections, several
documents per file, `kind: List`, and manifest folders read in a stable order.
"""

from __future__ import annotations

from pathlib import Path

from crossmesh.load.mesh import load_manifest_file, load_manifests, load_mesh_model, manifest_files
from crossmesh.load.yamlpos import MAX_NODES, parse_documents, read_text

NESTED = """\
# a comment first, so the document does not start on line 1
spec:
  clusters:
    - name: one
      nodes:
        - name: a
          address: 10.0.0.1
        - {name: b, address: 10.0.0.2}
    - name: two
      nodes:
        -   name: c
            labels: [x, y]
"""


def test_positions_of_nested_list_items() -> None:
    docs, problems = parse_documents(NESTED, "m.yaml")

    assert problems == []
    (doc,) = docs
    assert doc.start_line == 2
    pos = doc.positions
    assert pos[("spec", "clusters")] == (3, 3)
    assert pos[("spec", "clusters", 0)] == (4, 7)
    assert pos[("spec", "clusters", 0, "nodes", 0)] == (6, 11)
    assert pos[("spec", "clusters", 0, "nodes", 0, "address")] == (7, 11)
    # flow mapping: each key has its own column
    assert pos[("spec", "clusters", 0, "nodes", 1, "name")] == (8, 12)
    assert pos[("spec", "clusters", 0, "nodes", 1, "address")] == (8, 21)
    # extra spaces after the dash move the item's column
    assert pos[("spec", "clusters", 1, "nodes", 0)] == (11, 13)
    assert pos[("spec", "clusters", 1, "nodes", 0, "labels", 1)] == (12, 25)


def test_where_falls_back_to_the_nearest_ancestor() -> None:
    (doc,), _ = parse_documents(NESTED, "m.yaml")

    # a field that is not in the file (a required one, missing) points at its parent
    assert doc.where(("spec", "clusters", 1, "nodes", 0, "address")) == (11, 13)
    assert doc.where(("nowhere",)) == (2, 1)
    problem = doc.problem(("spec", "clusters", 1, "nodes", 0, "name"), "bad")
    assert (problem.file, problem.line, problem.column) == ("m.yaml", 11, 13)
    assert problem.path == "spec.clusters[1].nodes[0].name"
    assert str(problem) == "m.yaml:11:13: spec.clusters[1].nodes[0].name: bad"


def test_scalars_become_plain_python_values() -> None:
    (doc,), _ = parse_documents("a: &t true\nb: *t\nc: 0x10\nd: 1.5\ne: 'x'\nf: null\n", "m.yaml")

    assert doc.data == {"a": True, "b": True, "c": 16, "d": 1.5, "e": "x", "f": None}
    assert [type(v) for v in doc.data.values()] == [bool, bool, int, float, str, type(None)]


def test_several_documents_keep_their_own_start_lines() -> None:
    text = "a: 1\n---\n\n# comment\nb: 2\n---\n---\n- x\n"

    docs, problems = parse_documents(text, "m.yaml")

    assert problems == []
    assert [d.data for d in docs] == [{"a": 1}, {"b": 2}, None, ["x"]]
    assert [d.start_line for d in docs if d.data is not None] == [1, 5, 8]


def test_malformed_yaml_is_a_problem_with_a_position() -> None:
    docs, problems = parse_documents("a:\n  b: [1, 2\nc: 3\n", "m.yaml")

    assert docs == []
    (problem,) = problems
    assert (problem.line, problem.column) == (3, 2)
    assert "malformed YAML" in problem.message
    assert "starts at line 2" in problem.message


def test_duplicate_keys_are_refused() -> None:
    docs, problems = parse_documents("a: 1\nb: 2\na: 3\n", "m.yaml")

    assert docs == []
    assert [(p.line, p.column) for p in problems] == [(3, 1)]
    assert 'duplicate key "a"' in problems[0].message


def test_alias_bomb_stops_at_the_node_limit() -> None:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")

    docs, problems = parse_documents("\n".join(lines) + "\n", "m.yaml")

    assert docs == []
    assert len(problems) == 1
    assert f"more than {MAX_NODES} YAML nodes" in problems[0].message


def test_read_text_reports_bad_encoding_at_its_line(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_bytes(b"a: 1\nb: caf\xe9\n")

    text, problem = read_text(f, "m.yaml")

    assert text is None and problem is not None
    assert (problem.line, problem.column) == (2, 7)
    assert "not UTF-8" in problem.message


def test_read_text_normalises_line_endings(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_bytes(b"a: 1\r\nb: 2\r\n")

    text, problem = read_text(f, "m.yaml")

    assert problem is None
    assert text == "a: 1\nb: 2\n"


# --- manifests ---------------------------------------------------------------------------------

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: main
          ports: [{{containerPort: 8080}}]
"""


def deployment(name: str, *, namespace: str = "default", replicas: int = 1) -> str:
    return DEPLOYMENT.format(name=name, namespace=namespace, replicas=replicas)


def test_multi_document_manifest_file(tmp_path: Path) -> None:
    f = tmp_path / "apps.yaml"
    f.write_text(
        "# leading comment\n"
        + deployment("web", replicas=2)
        + "---\n---\n"  # an empty document is skipped, as kubectl does
        + "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
    )

    objects, problems = load_manifest_file(f)

    assert problems == []
    assert [(m.kind, m.name, m.namespace, m.line) for m in objects] == [
        ("Deployment", "web", "default", 2),
        ("Namespace", "shop", "", 15),
    ]


def test_list_kind_is_unpacked_and_items_keep_their_lines(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - apiVersion: v1\n    kind: Namespace\n    metadata: {name: one}\n"
        "  - apiVersion: v1\n    kind: Service\n    metadata: {name: svc, namespace: one}\n"
        "    spec:\n      ports:\n        - port: 99999\n"
    )

    objects, problems = load_manifest_file(f)

    assert [(m.kind, m.name, m.line) for m in objects] == [("Namespace", "one", 4)]
    (problem,) = problems
    assert (problem.line, problem.column, problem.path) == (12, 11, "items[1].spec.ports[0].port")


def test_folder_manifests_are_read_in_sorted_order(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    (apps / "b-sub").mkdir(parents=True)
    (apps / "common").mkdir()
    # written in an order that is neither sorted nor reverse-sorted
    (apps / "c.yaml").write_text(deployment("c"))
    (apps / "a.yml").write_text(deployment("a"))
    (apps / "b-sub" / "x.yaml").write_text(deployment("bx"))
    (apps / "b.json").write_text('{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bjson"}}')
    (apps / "README.md").write_text("not a manifest\n")
    (apps / "common" / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: common}\n")
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(
        "apiVersion: crossmesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n"
        "  sites: [{name: s, provider: aws, network: 10.0.0.0/16}]\n"
        "  clusters:\n"
        "    - name: one\n"
        "      nodes: [{name: n1, site: s, address: 10.0.0.5}]\n"
        "      manifests: [apps/a.yml, apps/]\n"
        "  manifests: [apps/common]\n"
    )

    found, why = manifest_files(tmp_path, "apps/")
    assert why is None
    assert [p.relative_to(apps).as_posix() for p in found] == [
        "a.yml",
        "b-sub/x.yaml",
        "b.json",
        "c.yaml",
        "common/ns.yaml",
    ]

    doc, mesh, problems = load_mesh_model(mesh_file)
    assert problems == [] and doc is not None and mesh is not None
    manifests, problems = load_manifests(tmp_path, doc, mesh)
    assert problems == []
    # common manifests first, then the cluster's entries in the order written, each folder sorted;
    # a file reached twice (a.yml itself and through apps/, ns.yaml through both entries) counts once
    assert [m.name for m in manifests["one"]] == ["common", "a", "bx", "bjson", "c"]


def test_two_objects_with_one_name_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "one.yaml").write_text(deployment("web", replicas=1))
    (tmp_path / "apps" / "two.yaml").write_text("# the same name again\n" + deployment("web", replicas=3))
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(
        "apiVersion: crossmesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n"
        "  sites: [{name: s, provider: aws, network: 10.0.0.0/16}]\n"
        "  clusters:\n"
        "    - {name: one, nodes: [{name: n1, site: s, address: 10.0.0.5}]}\n"
        "    - {name: two, nodes: [{name: n2, site: s, address: 10.0.0.6}]}\n"
        "  manifests: [apps/]\n"
    )
    doc, mesh, _ = load_mesh_model(mesh_file)
    assert doc is not None and mesh is not None

    manifests, problems = load_manifests(tmp_path, doc, mesh)

    # reported once, although both clusters receive the common manifests
    assert [(Path(p.file).name, p.line, p.path) for p in problems] == [("two.yaml", 2, "metadata.name")]
    assert "Deployment default/web is already defined at" in problems[0].message
    assert [m.file for m in manifests["one"]] == [m.file for m in manifests["two"]]
    assert len(manifests["one"]) == 1


def test_missing_manifest_path_points_at_the_entry(tmp_path: Path) -> None:
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(
        "apiVersion: crossmesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec:\n"
        "  sites: [{name: s, provider: aws, network: 10.0.0.0/16}]\n"
        "  clusters:\n"
        "    - name: one\n"
        "      nodes: [{name: n1, site: s, address: 10.0.0.5}]\n"
        "      manifests:\n"
        "        - apps/\n"
    )
    doc, mesh, _ = load_mesh_model(mesh_file)
    assert doc is not None and mesh is not None

    _, problems = load_manifests(tmp_path, doc, mesh)

    (problem,) = problems
    assert (problem.line, problem.column, problem.path) == (10, 11, "spec.clusters[0].manifests[0]")
    assert "'apps/' does not exist" in problem.message
