"""Mesh file → `Mesh` model plus the cluster manifests, with every problem positioned.

Loading never stops at the first problem: schema errors from pydantic, manifest
errors and (later) semantic rules are all collected so a user fixes a file in one pass.
"""

from __future__ import annotations

import copy
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from crossmesh.errors import Problem
from crossmesh.load.yamlpos import Document, PathKey, dotted, parse_documents, read_text
from crossmesh.model import k8s
from crossmesh.model.mesh import MAX_CLUSTERS, MAX_NODES, MAX_SITES, Mesh


@dataclass(slots=True)
class LoadedMesh:
    path: Path
    doc: Document
    mesh: Mesh
    manifests: dict[str, list[k8s.Manifest]] = field(default_factory=dict)  # cluster name → objects
    warnings: list[Problem] = field(default_factory=list)


def shown_path(path: Path) -> str:
    try:
        return str(_real(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for suggestions)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        hit = None
        for name, info in current.model_fields.items():
            if part in (name, info.alias):
                hit = info.annotation
                break
        current = _inner_model(hit)
    return current


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType) or origin is typing.Annotated:
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def pydantic_problems(
    err: ValidationError, doc: Document, model: type[BaseModel], *, base: PathKey = ()
) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Union members and validators appear as loc parts that are not data keys; keep data keys only.
        path = (*base, *_data_path(doc.data, base, loc))
        kind = e["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            known = _field_names(owner) if owner else []
            # Compared without case: `podCidr` for `podCIDR` is the commonest slip.
            by_lower = {name.lower(): name for name in known}
            near = difflib.get_close_matches(str(loc[-1]).lower(), list(by_lower), n=1)
            hint = f"did you mean {by_lower[near[0]]!r}?" if near else "remove it"
            msg = f"unknown field {loc[-1]!r} — {hint}" + (f" (known: {', '.join(known)})" if known else "")
        elif kind == "missing":
            msg = f"required field {loc[-1]!r} is missing — add it"
        elif kind == "literal_error":
            text = e["msg"]  # "Input should be 'Mesh'": lower the first letter only, the literal keeps its case
            msg = f"found {_brief(e.get('input'))}; {text[:1].lower()}{text[1:]}"
        elif kind in ("list_type", "dict_type", "model_type", "model_attributes_type"):
            expected = {
                "list_type": "a list",
                "dict_type": "a mapping",
            }.get(kind, "a mapping")
            msg = f"found {_brief(e.get('input'))}, expected {expected}"
        else:
            text = e["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msg = f"{text} (found {_brief(e.get('input'))})"
        problems.append(doc.problem(path, msg))
    return problems


def _data_path(data: Any, base: PathKey, loc: tuple[Any, ...]) -> PathKey:
    """Drop loc parts that pydantic adds for union branches (`int`, `str`, tagged names)."""
    node: Any = data
    for part in base:
        node = node[part] if isinstance(node, dict | list) and _has(node, part) else None  # type: ignore[index]
    out: list[str | int] = []
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str):
            out.append(part)  # a missing or unknown key: still the field the user should look at
            node = None
    return tuple(out)


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def parse_mesh_document(path: Path) -> tuple[Document | None, list[Problem]]:
    shown = shown_path(path)
    text, problem = read_text(path, shown)
    if problem is not None or text is None:
        return None, [problem] if problem else []
    docs, problems = parse_documents(text, shown)
    if problems:
        return None, problems
    docs = [d for d in docs if d.data is not None]
    if not docs:
        return None, [
            Problem(
                shown, 1, 1, "", "empty file — a mesh file starts with apiVersion: crossmesh.io/v1alpha1, kind: Mesh"
            )
        ]
    if len(docs) > 1:
        return None, [
            Problem(
                shown,
                docs[1].start_line,
                1,
                "",
                "a mesh file holds one YAML document; found several — keep one, move manifests to the manifests: paths",
            )
        ]
    if not isinstance(docs[0].data, dict):
        return None, [
            docs[0].problem(
                (), f"found {type(docs[0].data).__name__}, expected a mapping with apiVersion, kind, metadata, spec"
            )
        ]
    return docs[0], []


def load_mesh_model(
    path: Path, overlay: dict[str, Any] | None = None
) -> tuple[Document | None, Mesh | None, list[Problem]]:
    doc, problems = parse_mesh_document(path)
    if doc is None:
        return None, None, problems
    if overlay:
        problems = apply_overlay(doc, overlay)
        if problems:
            return doc, None, problems
    problems = _limits(doc)
    if problems:
        return doc, None, problems
    try:
        return doc, Mesh.model_validate(doc.data), []
    except ValidationError as err:
        problems = pydantic_problems(err, doc, Mesh)
        # Problems in fields that can be dropped — unknown fields, and fields with a default
        # (an `id: 0`, an `mtu: 20`) — do not stop the semantic rules: drop them and go on,
        # so that one slip does not hide an overlap further down the file.
        if all(_droppable(e["loc"], e["type"]) for e in err.errors()):
            data = copy.deepcopy(doc.data)
            for e in err.errors():
                _drop(data, e["loc"])
            try:
                return doc, Mesh.model_validate(data), problems
            except ValidationError:
                pass
        return doc, None, problems


def _limits(doc: Document) -> list[Problem]:
    """Counts past the documented limits, read from the raw data so that nothing bigger is validated."""
    spec = doc.data.get("spec")
    if not isinstance(spec, dict):
        return []
    out = []
    for key, limit in (("sites", MAX_SITES), ("clusters", MAX_CLUSTERS)):
        items = spec.get(key)
        if isinstance(items, list) and len(items) > limit:
            out.append(
                doc.problem(
                    ("spec", key, limit),
                    f"{len(items)} {key}: crossmesh handles at most {limit} {key} in one mesh — split the mesh",
                )
            )
    clusters = spec.get("clusters")
    nodes = [
        ("spec", "clusters", ci, "nodes", ni)
        for ci, c in enumerate(clusters if isinstance(clusters, list) else [])
        if isinstance(c, dict) and isinstance(c.get("nodes"), list)
        for ni in range(len(c["nodes"]))
    ]
    if len(nodes) > MAX_NODES:
        out.append(
            doc.problem(
                nodes[MAX_NODES],
                f"{len(nodes)} nodes: crossmesh handles at most {MAX_NODES} nodes in one mesh "
                f"(this is node {MAX_NODES + 1}) — split the mesh",
            )
        )
    return out


def apply_overlay(doc: Document, overlay: dict[str, Any]) -> list[Problem]:
    """Membership changes made on a running lab (`lab add-node`, `remove-node`) on top of the
    file: {"add": [{"cluster": C, "node": {...}}], "remove": [name, ...]}."""
    problems: list[Problem] = []
    spec = doc.data.get("spec") if isinstance(doc.data, dict) else None
    clusters = spec.get("clusters") if isinstance(spec, dict) else None
    if not isinstance(clusters, list):
        return [doc.problem(("spec",), "the mesh has no clusters to add nodes to")]
    for name in overlay.get("remove", []):
        found = False
        for c in clusters:
            nodes = c.get("nodes") if isinstance(c, dict) else None
            if isinstance(nodes, list):
                kept = [n for n in nodes if not (isinstance(n, dict) and n.get("name") == name)]
                found = found or len(kept) != len(nodes)
                c["nodes"] = kept
        if not found:
            problems.append(doc.problem(("spec", "clusters"), f"no node {name!r} to remove"))
    for entry in overlay.get("add", []):
        cluster = next((c for c in clusters if isinstance(c, dict) and c.get("name") == entry["cluster"]), None)
        if cluster is None:
            known = ", ".join(str(c.get("name")) for c in clusters if isinstance(c, dict))
            problems.append(doc.problem(("spec", "clusters"), f"no cluster {entry['cluster']!r} — one of: {known}"))
            continue
        cluster.setdefault("nodes", []).append(dict(entry["node"]))
    return problems


def _droppable(loc: tuple[Any, ...], kind: str) -> bool:
    if kind == "extra_forbidden":
        return True
    fields = [p for p in loc if isinstance(p, str)]
    if not fields:
        return False
    owner = _model_at(Mesh, loc[: max(i for i, p in enumerate(loc) if isinstance(p, str))])
    if owner is None:
        return False
    name = fields[-1]
    info = next((f for n, f in owner.model_fields.items() if name in (n, f.alias)), None)
    return info is not None and not info.is_required() and loc[-1] == name


def _drop(data: Any, loc: tuple[Any, ...]) -> None:
    node = data
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, dict):
        node.pop(loc[-1], None)


# --- manifests -------------------------------------------------------------------------------

YAML_SUFFIXES = (".yaml", ".yml", ".json")
MAX_MANIFEST_ENTRIES = 10_000  # files and folders looked at under one manifests entry


def manifest_files(base: Path, entry: str) -> tuple[list[Path], str | None]:
    """The manifest files that one `manifests:` entry names, or why it names none.

    `base` is the mesh file's folder, resolved. A manifest is rendered verbatim into the output,
    so a path that leads outside the project (absolute, `..`, or a link at any depth) would copy
    whatever it points at: such a path is refused, not followed. Links that stay inside are fine;
    a folder reached twice (a link cycle) is walked once.
    """
    base = base.resolve()
    rule = f"manifest paths must stay inside {base}: copy the file into the project"
    if "\0" in entry:
        return [], f"manifest path {_brief(entry)} holds a NUL character — fix the path"
    if Path(entry).is_absolute():
        return [], f"manifest path {_brief(entry)} is absolute; {rule}"
    try:
        target = _real(base / entry)
        if not target.is_relative_to(base):
            return [], f"manifest path {_brief(entry)} leads to {target}, outside the mesh file's folder; {rule}"
        if target.is_dir():
            return _walk(base, target, entry, rule)
        if os.path.lexists(target):
            return [target], None  # not a regular file: reading it says so
    except OSError as err:
        return [], f"manifest path {_brief(entry)} cannot be read: {err.strerror} — fix the path"
    return [], (
        f"manifest path {_brief(entry)} does not exist (relative to {shown_path(base)}) — fix the path or remove it"
    )


def _real(path: Path) -> Path:
    """Where `path` leads. Unlike Path.resolve, a link loop is no exception: its path comes back,
    and reading it then reports the loop."""
    return Path(os.path.realpath(path))


def _walk(base: Path, top: Path, entry: str, rule: str) -> tuple[list[Path], str | None]:
    found: set[Path] = set()
    walked = {top}
    pending = [top]
    looked = 0
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as listing:
            items = sorted(listing, key=lambda e: e.name)
        for item in items:
            if item.name.startswith("."):
                continue  # hidden: the state folder (.crossmesh, whose JSON is no manifest), .git, editors' files
            looked += 1
            if looked > MAX_MANIFEST_ENTRIES:
                return [], (
                    f"manifest folder {_brief(entry)} holds more than {MAX_MANIFEST_ENTRIES} files and folders — "
                    "point at the folder that holds only the manifests"
                )
            path = Path(item.path)
            real = _real(path) if item.is_symlink() else path
            is_dir = real.is_dir()
            if not is_dir and path.suffix not in YAML_SUFFIXES:
                continue
            if not real.is_relative_to(base):
                shown = path.relative_to(base).as_posix()
                return [], (
                    f"{shown} (under manifest path {_brief(entry)}) is a link to {real}, outside the mesh file's "
                    f"folder; {rule}"
                )
            if is_dir:
                if real not in walked:
                    walked.add(real)
                    pending.append(real)
            elif os.path.lexists(real):
                found.add(real)
    return sorted(found), None


# A check of one typed object beyond its schema (policy specs): (path in the object, message, severity).
ObjectCheck = Callable[[k8s.Manifest], Iterable[tuple[PathKey, str, str]]]


def load_manifest_file(
    path: Path, check: ObjectCheck | None = None, *, named_at: str = ""
) -> tuple[list[k8s.Manifest], list[Problem]]:
    """The objects of one manifest file. `named_at` (mesh.yaml:LINE:COL) is where the mesh file
    names it, added to a refusal to read it so the user sees which entry brought it in."""
    shown = shown_path(path)
    text, problem = read_text(path, shown)
    if problem is not None or text is None:
        if problem is not None and named_at:
            problem = replace(problem, message=f"{problem.message} (named at {named_at})")
        return [], [problem] if problem else []
    docs, problems = parse_documents(text, shown)
    out: list[k8s.Manifest] = []
    for doc in docs:
        if doc.data is None:
            continue
        if not isinstance(doc.data, dict):
            problems.append(doc.problem((), "a Kubernetes object must be a mapping with apiVersion and kind"))
            continue
        items: list[tuple[PathKey, Any]] = [((), doc.data)]
        if doc.data.get("kind") == "List" and isinstance(doc.data.get("items"), list):
            items = [(("items", i), item) for i, item in enumerate(doc.data["items"])]
        for base, obj_data in items:
            m, probs = _typed_manifest(doc, base, obj_data)
            problems.extend(probs)
            if m is not None:
                out.append(m)
                if check is not None:
                    problems.extend(doc.problem((*base, *p), msg, severity=sev) for p, msg, sev in check(m))
    return out, problems


def _typed_manifest(doc: Document, base: PathKey, data: Any) -> tuple[k8s.Manifest | None, list[Problem]]:
    if not isinstance(data, dict):
        return None, [doc.problem(base, "a Kubernetes object must be a mapping with apiVersion and kind")]
    kind = data.get("kind")
    missing = [f for f in ("apiVersion", "kind", "metadata") if f not in data]
    if missing:
        them = "it" if len(missing) == 1 else "them"
        return None, [doc.problem(base, f"Kubernetes object lacks {', '.join(missing)} — add {them}")]
    meta: dict[str, Any] = data["metadata"] if isinstance(data.get("metadata"), dict) else {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "default")
    line = doc.where(base)[0]
    model = k8s.model_for(str(kind), data.get("apiVersion"))
    if model is None:
        warning = doc.problem(
            (*base, "kind"),
            f"kind {kind!r} is not modelled by crossmesh; it is rendered through unchanged",
            severity="warning",
        )
        return k8s.Manifest(doc.file, line, str(kind), name, namespace, data, None, doc.positions, base), [warning]
    try:
        obj = model.model_validate(data)
    except ValidationError as err:
        return None, pydantic_problems(err, doc, model, base=base)
    if kind == "CiliumClusterwideNetworkPolicy" or kind == "Namespace":
        namespace = ""
    return k8s.Manifest(doc.file, line, str(kind), name, namespace, data, obj, doc.positions, base), []


def load_manifests(
    base: Path, doc: Document, mesh: Mesh, check: ObjectCheck | None = None
) -> tuple[dict[str, list[k8s.Manifest]], list[Problem]]:
    problems: list[Problem] = []
    cache: dict[Path, list[k8s.Manifest]] = {}

    def read_entries(entries: list[str], path: PathKey) -> list[k8s.Manifest]:
        got: list[k8s.Manifest] = []
        for i, entry in enumerate(entries):
            files, why = manifest_files(base, entry)
            if why is not None:
                problems.append(doc.problem((*path, i), why))
                continue
            line, column = doc.where((*path, i))
            for f in files:
                if f not in cache:
                    cache[f], probs = load_manifest_file(f, check, named_at=f"{doc.file}:{line}:{column}")
                    problems.extend(probs)
                got.extend(cache[f])
        return got

    common = read_entries(mesh.spec.manifests, ("spec", "manifests"))
    out: dict[str, list[k8s.Manifest]] = {}
    reported: set[tuple[str, int]] = set()
    for ci, cluster in enumerate(mesh.spec.clusters):
        objects = common + read_entries(cluster.manifests, ("spec", "clusters", ci, "manifests"))
        out[cluster.name] = _one_per_name(objects, problems, reported)
    return out, problems


def _one_per_name(
    objects: list[k8s.Manifest], problems: list[Problem], reported: set[tuple[str, int]]
) -> list[k8s.Manifest]:
    """A cluster holds one object per kind, namespace and name, as the API server does.

    The same object read twice (a file listed itself and through its folder) counts once.
    Two different objects with one name are an error: `kubectl apply` would silently keep
    the last, and crossmesh would plan two pods `web-0`.
    """
    first: dict[tuple[str, str, str], k8s.Manifest] = {}
    kept: list[k8s.Manifest] = []
    for m in objects:
        key = (m.kind, m.namespace, m.name)
        prev = first.get(key)
        if prev is None or not m.name:
            first.setdefault(key, m)
            kept.append(m)
        elif prev.raw != m.raw and (m.file, m.line) not in reported:
            reported.add((m.file, m.line))
            where = f"{m.namespace}/{m.name}" if m.namespace else m.name
            problems.append(
                Problem(
                    m.file,
                    m.line,
                    1,
                    "metadata.name",
                    f"{m.kind} {where} is already defined at {prev.file}:{prev.line} — rename one or remove one",
                )
            )
    return kept


def dotted_path(path: PathKey) -> str:
    return dotted(path)
