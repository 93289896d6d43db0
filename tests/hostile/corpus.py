"""The hostile corpus: variants of the examples and golden meshes, generated, never stored.

A `Case` knows how to make its variant in a fresh workspace (`Workspace`: the copied project,
a folder outside it holding a secret and a victim file, and the render output folder) and
what to expect beyond the contract every command keeps (`contract.py`): `reject` — every
command that compiles the mesh must refuse it (exit 2).

Every class below is generated in full when CROSSMESH_HOSTILE_FULL=1 (every value × every
replacement × every base); by default a deterministic sample small enough for CI: the two
examples only, and a rotation that gives every value of a file one replacement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
FULL = os.environ.get("CROSSMESH_HOSTILE_FULL") == "1"
SECRET = "crossmesh-hostile-secret-7f3a"  # in a file outside the project; must never be copied out


@dataclass(frozen=True, slots=True)
class Base:
    name: str
    folder: Path
    source: str  # a pod, for --from
    target: str  # a pod or service, for --to
    port: str


BASES = {
    b.name: b
    for b in (
        Base(
            "three-clouds", REPO / "examples/three-clouds", "cluster1/default/x-wing-0", "default/rebel-base", "80/TCP"
        ),
        Base(
            "hybrid",
            REPO / "examples/hybrid-openstack-aws",
            "k3s/demo/demo-app-0",
            "k3s/microservices/tkb-service",
            "30080/TCP",
        ),
        Base(
            "golden-three-clouds",
            REPO / "tests/golden/three-clouds",
            "cluster1/default/x-wing-0",
            "cluster2/default/rebel-base-0",
            "80/TCP",
        ),
        Base("golden-hybrid", REPO / "tests/golden/hybrid", "k3s/demo/demo-app-0", "k3s/demo/tkb-service", "30080/TCP"),
        Base("golden-gateways", REPO / "tests/golden/gateways", "core/shop/api-0", "core/shop/api", "80/TCP"),
    )
}
CI_BASES = ("three-clouds", "hybrid")


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def mesh(self) -> Path:
        return self.project / "mesh.yaml"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def state(self) -> Path:
        return self.project / ".crossmesh"

    def prepare(self, base: Base) -> None:
        self.project.mkdir(parents=True)
        for p in base.folder.rglob("*"):
            rel = p.relative_to(base.folder)
            if rel.parts[0] in ("expected", "state") or not p.is_file():
                continue
            (self.project / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.project / rel).write_bytes(p.read_bytes())
        self.outside.mkdir()
        (self.outside / "victim.txt").write_text("must survive\n")
        (self.outside / "secret.yaml").write_text(
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stolen\n  namespace: default\ndata:\n  k: {SECRET}\n"
        )

    def data(self) -> Any:
        return yaml.safe_load(self.mesh.read_text())

    def write(self, data: Any, path: Path | None = None) -> None:
        (path or self.mesh).write_text(dump(data))

    def manifest_files(self) -> list[Path]:
        return sorted(p for p in (self.project / "apps").rglob("*.yaml"))


def dump(data: Any) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: 20,000 nodes in 0.3 s
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, width=1 << 30)


Make = Callable[[Workspace], None]


@dataclass(frozen=True, slots=True)
class Case:
    id: str  # "<class>/<base>/<what>", unique
    base: str
    make: Make
    expect: str = "any"  # "any": the contract only; "reject": validate, plan and render exit 2
    http: tuple[str, ...] = ()  # extra `policy trace` options (an HTTP request for L7 rules)
    args: dict[str, tuple[str, ...]] = field(default_factory=dict)  # a command's arguments, replaced
    umask: int | None = None
    slow: bool = False  # bigger than the rest (scale): a larger time limit would hide nothing

    @property
    def klass(self) -> str:
        return self.id.split("/")[0]


# --- type swaps -----------------------------------------------------------------------------------

SWAPS: dict[str, Any] = {
    "list": [1, "a"],
    "mapping": {"a": 1},
    "bool": True,
    "null": None,
    "huge-int": 10**60,
    "float": 1.5,
    "long-string": "x" * 100_000,
}


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every value in `data` (scalars and containers), depth first."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def set_at(data: Any, path: tuple[Any, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def get_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def show(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _swap_mesh(path: tuple[Any, ...], value: Any) -> Make:
    def make(ws: Workspace) -> None:
        data = ws.data()
        set_at(data, path, value)
        ws.write(data)

    return make


def _swap_manifest(rel: str, doc: int, path: tuple[Any, ...], value: Any) -> Make:
    def make(ws: Workspace) -> None:
        f = ws.project / rel
        docs = list(yaml.safe_load_all(f.read_text()))
        set_at(docs[doc], path, value)
        f.write_text("---\n".join(dump(d) for d in docs))

    return make


MANIFEST_SAMPLE = 40


def _coerced(original: Any, kind: str) -> bool:
    """A replacement that a lax parser would quietly turn into a valid value (`listenPort: true` → 1)."""
    return kind == "bool" and isinstance(original, int) and not isinstance(original, bool)


def type_swaps(full: bool) -> Iterator[Case]:
    kinds = list(SWAPS)
    for name in BASES if full else CI_BASES:
        base = BASES[name]
        mesh = yaml.safe_load((base.folder / "mesh.yaml").read_text())
        for i, path in enumerate(paths(mesh)):
            if not full and i % (3 if name == CI_BASES[0] else 8):
                continue  # CI: every third value of the first example, every eighth of the second
            for kind in kinds if full else [kinds[i % len(kinds)]]:
                original = get_at(mesh, path)
                yield Case(
                    f"type-swap/{name}/{show(path)}={kind}",
                    name,
                    _swap_mesh(path, SWAPS[kind]),
                    expect="reject" if _coerced(original, kind) else "any",
                )
        n = 0
        for f in sorted((base.folder / "apps").rglob("*.yaml")):
            rel = str(f.relative_to(base.folder))
            for d, doc in enumerate(yaml.safe_load_all(f.read_text())):
                for path in paths(doc):
                    n += 1
                    if not full and n % MANIFEST_SAMPLE:
                        continue  # CI: a sample of the manifests' values, with a rotating replacement
                    for kind in kinds if full else [kinds[(n // MANIFEST_SAMPLE) % len(kinds)]]:
                        yield Case(
                            f"type-swap/{name}/{rel}#{d}:{show(path)}={kind}",
                            name,
                            _swap_manifest(rel, d, path, SWAPS[kind]),
                        )


# --- CIDRs and addresses ----------------------------------------------------------------------------

CIDR_KEYS = ("network", "podCIDR", "serviceCIDR", "podPool", "tunnelPool")
ADDRESS_KEYS = ("address", "publicAddress")
# value → must it be refused wherever a CIDR goes? (malformed text: yes; odd but well-formed: the contract only)
CIDRS: dict[str, bool] = {
    "0.0.0.0/0": False,
    "10.0.1.5/32": False,
    "10.0.1.5/16": True,  # host bits
    "0.0.0.0/8": False,
    "255.255.255.255/32": False,
    "fd00::/64": True,
    "010.0.0.0/16": True,
    " 10.0.0.0/16": True,
    "10.0.0.0 /16": True,
    "10.0.0.0/33": True,
    "10.0.0.0/016": False,  # a decimal prefix with a leading zero: odd, unambiguous
    "10.0.0.0/8/8": True,
    "10.0.0.0": True,
    "": True,
}
# value → must it be refused as an address (a node's private or public address)?
ADDRESSES: dict[str, bool] = {
    "0.0.0.0": True,
    "255.255.255.255": True,
    "127.0.0.1": True,
    "224.0.0.1": True,
    "::1": True,
    "2001:db8::1": True,
    "010.0.1.5": True,
    " 10.0.1.5": True,
    "10.0.1.5/32": True,
    "10.0.1": True,
    "10.0.1.256": True,
    "": True,
    "localhost": True,
}


def addresses(full: bool) -> Iterator[Case]:
    turn: dict[int, int] = {}
    for name in BASES if full else CI_BASES[:1]:
        base = BASES[name]
        mesh = yaml.safe_load((base.folder / "mesh.yaml").read_text())
        fields = [p for p in paths(mesh) if p[-1] in CIDR_KEYS + ADDRESS_KEYS]
        for path in fields:
            values = CIDRS if path[-1] in CIDR_KEYS else ADDRESSES
            turn[id(values)] = turn.get(id(values), -1) + 1  # CI: the next value of the list, across bases
            for value in list(values) if full else [list(values)[turn[id(values)] % len(values)]]:
                yield Case(
                    f"address/{name}/{show(path)}={value!r}",
                    name,
                    _swap_mesh(path, value),
                    expect="reject" if values[value] else "any",
                )


# --- names ------------------------------------------------------------------------------------------

NAMES = {
    "empty": "",
    "254-chars": "a" * 254,
    "unicode": "ünïcødé-名前",
    "rich-markup": "[/x]",
    "rich-style": "[bold red]x[/bold red]",
    "newline": "a\nb",
    "nul": "a\x00b",
    "dot-dot": "../x",
    "slash": "a/b",
    "leading-dash": "-x",
}
MESH_NAME_KEYS = ("name", "site")  # DNS-1123 labels in the mesh file: every value above is refused


def names(full: bool) -> Iterator[Case]:
    for name in BASES if full else CI_BASES:
        base = BASES[name]
        mesh = yaml.safe_load((base.folder / "mesh.yaml").read_text())
        fields = [p for p in paths(mesh) if p[-1] in MESH_NAME_KEYS or "labels" in p or p[-1] == "region"]
        kinds = list(NAMES)
        for i, path in enumerate(fields):
            if not full and i % 2:
                continue
            for kind in kinds if full else [kinds[i // 2 % len(kinds)]]:
                strict = path[-1] in MESH_NAME_KEYS and "labels" not in path
                yield Case(
                    f"name/{name}/{show(path)}={kind}",
                    name,
                    _swap_mesh(path, NAMES[kind]),
                    expect="reject" if strict else "any",
                )
        n = 0
        for f in sorted((base.folder / "apps").rglob("*.yaml")):
            rel = str(f.relative_to(base.folder))
            for d, doc in enumerate(yaml.safe_load_all(f.read_text())):
                for path in paths(doc):
                    if path[-1] not in ("name", "namespace") and "labels" not in path and "matchLabels" not in path:
                        continue
                    n += 1
                    if not full and n % 12:
                        continue
                    for kind in kinds if full else [kinds[n // 12 % len(kinds)]]:
                        yield Case(
                            f"name/{name}/{rel}#{d}:{show(path)}={kind}",
                            name,
                            _swap_manifest(rel, d, path, NAMES[kind]),
                        )


# --- paths in manifests, and the mesh file itself -------------------------------------------------


def _manifests(entry: Callable[[Workspace], str]) -> Make:
    """Replace the first cluster's manifests with one hostile entry."""

    def make(ws: Workspace) -> None:
        data = ws.data()
        data["spec"]["clusters"][0]["manifests"] = [entry(ws)]
        ws.write(data)

    return make


def _link(target: Callable[[Workspace], Path], name: str = "apps/link.yaml") -> Callable[[Workspace], str]:
    def entry(ws: Workspace) -> str:
        link = ws.project / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target(ws))
        return name

    return entry


def _fifo(ws: Workspace) -> Path:
    fifo = ws.outside / "fifo.yaml"
    if not fifo.exists():
        os.mkfifo(fifo)
    return fifo


def _mesh_replaced_by(target: Callable[[Workspace], Path]) -> Make:
    def make(ws: Workspace) -> None:
        ws.mesh.unlink()
        ws.mesh.symlink_to(target(ws))

    return make


def _mesh_fifo(ws: Workspace) -> None:
    ws.mesh.unlink()
    os.mkfifo(ws.mesh)


def _mesh_dir(ws: Workspace) -> None:
    ws.mesh.unlink()
    ws.mesh.mkdir()


def _outside_dir(ws: Workspace) -> Path:
    return ws.outside


def _secret(ws: Workspace) -> Path:
    return ws.outside / "secret.yaml"


def manifest_paths(full: bool) -> Iterator[Case]:
    entries: dict[str, tuple[Callable[[Workspace], str], str]] = {
        "absolute-outside": (lambda ws: str(_secret(ws)), "reject"),
        "dot-dot-outside": (lambda ws: "../outside/secret.yaml", "reject"),
        "dot-dot-folder": (lambda ws: "../outside", "reject"),
        "symlink-out": (_link(_secret), "reject"),
        "symlinked-folder-out": (_link(_outside_dir, "apps/linked"), "reject"),
        "root-folder": (lambda ws: "/", "reject"),
        "etc-passwd": (lambda ws: "/etc/passwd", "reject"),
        "dev-zero": (lambda ws: "/dev/zero", "reject"),
        "symlink-dev-zero": (_link(lambda ws: Path("/dev/zero")), "reject"),
        "fifo": (lambda ws: str(_fifo(ws)), "reject"),
        "symlink-fifo": (_link(_fifo), "reject"),
        "proc-self": (lambda ws: "/proc/self/environ", "reject"),
        "missing": (lambda ws: "apps/nothing-here.yaml", "reject"),
        "empty-entry": (lambda ws: "", "any"),
        "own-folder": (lambda ws: ".", "any"),
        "the-mesh-itself": (lambda ws: "mesh.yaml", "any"),
        "link-loop": (_link(lambda ws: ws.project / "apps", "apps/loop"), "any"),
        "nul-in-path": (lambda ws: "apps/\x00x.yaml", "reject"),
        "huge-path": (lambda ws: "a/" * 5000 + "x.yaml", "reject"),
    }
    for name in BASES if full else CI_BASES:
        for what, (entry, expect) in entries.items():
            yield Case(f"manifest-path/{name}/{what}", name, _manifests(entry), expect=expect)
        mesh_files: dict[str, Make] = {
            "fifo": _mesh_fifo,
            "dev-zero": _mesh_replaced_by(lambda ws: Path("/dev/zero")),
            "dev-urandom": _mesh_replaced_by(lambda ws: Path("/dev/urandom")),
            "directory": _mesh_dir,
            "link-to-fifo": _mesh_replaced_by(_fifo),
        }
        if full or name == CI_BASES[0]:  # the mesh file's own kind does not depend on the example
            for what, make in mesh_files.items():
                yield Case(f"mesh-file/{name}/{what}", name, make, expect="reject")


# --- YAML features --------------------------------------------------------------------------------


def _text(edit: Callable[[str], str]) -> Make:
    def make(ws: Workspace) -> None:
        ws.mesh.write_text(edit(ws.mesh.read_text()), encoding="utf-8")

    return make


def _raw(data: Callable[[str], bytes]) -> Make:
    def make(ws: Workspace) -> None:
        ws.mesh.write_bytes(data(ws.mesh.read_text()))

    return make


def _value_of_name(value: str) -> Callable[[str], str]:
    """The mesh's metadata.name given as raw YAML text (a tag, an alias, nesting)."""

    def edit(text: str) -> str:
        head, sep, tail = text.partition("\nmetadata:\n  name: ")
        assert sep, "every base has metadata.name on its own line"
        rest = tail.split("\n", 1)[1]
        return f"{head}\nmetadata:\n  name: {value}\n{rest}"

    return edit


def _appended(extra: str) -> Callable[[str], str]:
    return lambda text: text.rstrip("\n") + "\n" + extra


def _bomb(levels: int, width: int) -> str:
    lines = ['x0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(width))}]")
    return "\n".join(lines) + "\n"


def yaml_features(full: bool) -> Iterator[Case]:
    deep = 10_000
    cases: dict[str, tuple[Make, str]] = {
        "python-object-apply": (_text(_value_of_name('!!python/object/apply:os.system ["touch ../PWNED"]')), "reject"),
        "python-name": (_text(_value_of_name("!!python/name:os.system")), "reject"),
        "python-module-root": (_text(lambda t: '--- !!python/object/new:os.system ["touch ../PWNED"]\n' + t), "reject"),
        "binary": (_text(_value_of_name("!!binary dGhyZWUtY2xvdWRz")), "accept"),  # decoded, as Kubernetes' YAML does
        "set": (_text(_value_of_name("!!set {a: null}")), "reject"),
        "timestamp": (_text(_value_of_name("2001-12-14t21:59:43.10-05:00")), "reject"),
        "custom-tag": (_text(_value_of_name("!Ref mesh")), "reject"),
        "inf": (_text(_value_of_name(".inf")), "reject"),
        "nan": (_text(_value_of_name(".nan")), "reject"),
        "int-5000-digits": (_text(_value_of_name("1" * 5000)), "reject"),
        "impossible-date": (_text(_value_of_name("2024-13-45")), "reject"),
        "alias-bomb-lists": (_text(_appended(_bomb(12, 10))), "reject"),
        "alias-bomb-maps": (
            _text(
                _appended(
                    "m0: &m0 {a: 1, b: 2}\n"
                    + "".join(
                        f"m{i}: &m{i} {{a: *m{i - 1}, b: *m{i - 1}, c: *m{i - 1}, d: *m{i - 1}}}\n"
                        for i in range(1, 14)
                    )
                )
            ),
            "reject",
        ),
        "alias-long-string": (
            _text(_appended(f'big: &big "{"x" * 3_000_000}"\nmany: [{", ".join("*big" for _ in range(2000))}]\n')),
            "reject",
        ),
        "merge-keys": (_text(_appended("extra: &e {a: 1}\nmerged:\n  <<: *e\n  b: 2\n")), "reject"),
        "merge-into-spec": (
            _text(lambda t: t.replace("\nspec:\n", "\nspec:\n  <<: {trustDomain: x.local}\n", 1)),
            "any",
        ),
        "merge-bomb": (
            _text(
                _appended(
                    "".join(
                        f"k{i}: &k{i}\n  <<: [{', '.join(f'*k{j}' for j in range(max(0, i - 8), i))}]\n  v{i}: {i}\n"
                        if i
                        else "k0: &k0 {v0: 0}\n"
                        for i in range(60)
                    )
                )
            ),
            "reject",
        ),
        "duplicate-key": (_text(lambda t: t.replace("\nkind: Mesh\n", "\nkind: Mesh\nkind: Mesh\n", 1)), "reject"),
        "two-documents": (_text(lambda t: t + "\n---\n" + t), "reject"),
        "deep-lists": (_text(_value_of_name("[" * deep + "]" * deep)), "reject"),
        "deep-maps": (_text(_value_of_name("{a: " * deep + "1" + "}" * deep)), "reject"),
        "very-deep-lists": (_text(_value_of_name("[" * 200_000 + "]" * 200_000)), "reject"),
        "deep-block": (_text(_appended("".join(f"{' ' * i}- \n" for i in range(0, 2000, 1)))), "reject"),
        "file-5MiB": (_text(_appended("#" + "x" * (5 << 20) + "\n")), "reject"),
        "scalar-3MiB": (_text(_value_of_name("x" * (3 << 20))), "reject"),
        "many-nodes": (_text(_appended("many: [" + "1, " * 1_000_000 + "]\n")), "reject"),
        "nul-byte": (_raw(lambda t: t.encode().replace(b"kind: Mesh", b"kind: Me\x00sh")), "reject"),
        "bom": (_raw(lambda t: b"\xef\xbb\xbf" + t.encode()), "any"),
        "utf16": (_raw(lambda t: t.encode("utf-16")), "reject"),
        "latin1": (_raw(lambda t: t.replace("name: ", "name: caf\xe9-", 1).encode("latin-1", "replace")), "reject"),
        "crlf": (_raw(lambda t: t.replace("\n", "\r\n").encode()), "any"),
        "lone-cr": (_raw(lambda t: t.replace("\n", "\r").encode()), "any"),
        "tabs": (_text(lambda t: t.replace("\n  ", "\n\t", 3)), "reject"),
        "empty": (_text(lambda t: ""), "reject"),
        "only-comment": (_text(lambda t: "# nothing\n"), "reject"),
        "scalar-document": (_text(lambda t: "just text\n"), "reject"),
        "list-document": (_text(lambda t: "- a\n- b\n"), "reject"),
        "control-chars": (_text(_value_of_name('"a\\x1b[31mred\\x07"')), "reject"),
        "bidi-override": (_text(_value_of_name('"abc\\u202edcba"')), "reject"),
        "huge-key": (_text(_appended("k" * 1_000_000 + ": 1\n")), "reject"),
        "directives": (_text(lambda t: "%YAML 1.1\n%TAG ! tag:evil.example,2024:\n---\n" + t), "any"),
        "yaml-1.1-bools": (
            _text(lambda t: "%YAML 1.1\n---\n" + t.replace("listenPort: 51820", "listenPort: yes")),
            "any",
        ),
    }
    heavy = ("scalar-3MiB", "huge-key", "alias-bomb-maps", "merge-bomb", "very-deep-lists")  # seconds each; full only
    for name in BASES if full else ("three-clouds",):
        for what, (make, expect) in cases.items():
            if not full and what in heavy:
                continue
            yield Case(f"yaml/{name}/{what}", name, make, expect=expect)
        # The same in a manifest file.
        for what in ("python-object-apply", "alias-bomb-lists", "deep-lists", "file-5MiB", "alias-long-string")[
            : None if full else 3
        ]:
            yield Case(f"yaml-manifest/{name}/{what}", name, _in_manifest(cases[what][0]), expect="reject")


def _in_manifest(make_mesh: Make) -> Make:
    """Apply a mesh-text edit to the first manifest file instead (it has `metadata:\n  name:` too)."""

    def make(ws: Workspace) -> None:
        target = ws.manifest_files()[0]
        shadow = Workspace(ws.root)
        original = ws.mesh.read_bytes()
        ws.mesh.write_bytes(
            target.read_bytes()
            if b"\nmetadata:\n  name: " in target.read_bytes()
            else b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
        )
        make_mesh(shadow)
        target.write_bytes(ws.mesh.read_bytes())
        ws.mesh.write_bytes(original)

    return make


# --- hostile Kubernetes objects ---------------------------------------------------------------------


def _extra_objects(objects: list[dict[str, Any]]) -> Make:
    """Add objects in a new file of the first cluster's manifests."""

    def make(ws: Workspace) -> None:
        (ws.project / "hostile").mkdir(exist_ok=True)
        (ws.project / "hostile" / "objects.yaml").write_text("---\n".join(dump(o) for o in objects))
        data = ws.data()
        data["spec"]["clusters"][0].setdefault("manifests", []).append("hostile/")
        ws.write(data)

    return make


def _deployment(
    name: str = "hostile", replicas: Any = 1, port_name: str = "http", labels: Any = None, namespace: str = "default"
) -> dict[str, Any]:
    labels = labels if labels is not None else {"app": name[:63]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "x",
                            "ports": [{"containerPort": 8080, "protocol": "TCP", "name": port_name}],
                        }
                    ]
                },
            },
        },
    }


def _service(name: str = "hostile", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"app": "hostile"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
            **spec,
        },
    }


def _cnp(name: str, rules: list[dict[str, Any]], selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": selector or {"app": "hostile"}}, "ingress": rules},
    }


def _http_rule(**http: str) -> list[dict[str, Any]]:
    return [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [http]}}]}]


def _hq_rule(path: str) -> Make:
    """three-clouds: hq-read-only's first HTTP rule gets `path`."""

    def make(ws: Workspace) -> None:
        f = ws.project / "apps/cluster2/hq.yaml"
        f.write_text(f.read_text().replace('path: "/public"}', f"path: {json.dumps(path)}}}", 1))

    return make


def kubernetes_objects(full: bool) -> Iterator[Case]:
    bomb_path = "/" + "a" * 40 + "!"
    hq = ("--to", "cluster2/default/hq-0")
    trace = ("--http-method", "GET", "--http-path", bomb_path)
    cases: list[Case] = [
        Case(
            "k8s/three-clouds/service-port-name-100k",
            "three-clouds",
            _extra_objects(
                [_deployment(), _service(ports=[{"port": 80, "targetPort": "q" * 100_000, "name": "n" * 100_000}])]
            ),
        ),
        Case("k8s/three-clouds/http-path-regex-bomb", "three-clouds", _hq_rule("/(a+)+$"), http=(*hq, *trace)),
        Case("k8s/three-clouds/http-path-regex-nested", "three-clouds", _hq_rule("/((a|a)*)*$"), http=(*hq, *trace)),
        Case(
            "k8s/three-clouds/http-path-regex-100k",
            "three-clouds",
            _hq_rule("/" + "(a)" * 30_000),
            http=(*hq, *trace),
            slow=True,
        ),
        Case(
            "k8s/three-clouds/http-method-regex-bomb",
            "three-clouds",
            _extra_objects([_deployment(), _cnp("m", _http_rule(method="(G+)+$"))]),
        ),
        Case(
            "k8s/three-clouds/http-header-100k",
            "three-clouds",
            _extra_objects([_deployment(), _cnp("h", _http_rule(path="/", headers=["X: " + "v" * 100_000]))]),
        ),
        Case(
            "k8s/three-clouds/replicas-1e9",
            "three-clouds",
            _extra_objects([_deployment(replicas=10**9)]),
            expect="reject",
        ),
        Case(
            "k8s/three-clouds/replicas-100k",
            "three-clouds",
            _extra_objects([_deployment(replicas=100_000)]),
            expect="reject",
        ),
        Case(
            "k8s/three-clouds/replicas-1e30",
            "three-clouds",
            _extra_objects([_deployment(replicas=10**30)]),
            expect="reject",
        ),
        Case(
            "k8s/three-clouds/replicas-negative",
            "three-clouds",
            _extra_objects([_deployment(replicas=-1)]),
            expect="reject",
        ),
        Case(
            "k8s/three-clouds/pod-name-over-nft-comment",
            "three-clouds",
            _extra_objects([_deployment(name="d" * 200)]),
            expect="accept",  # Kubernetes takes a 200-character Deployment name; the lab bounds its nft comment
        ),
        Case(
            "k8s/three-clouds/namespace-dot-dot",
            "three-clouds",
            _extra_objects([_deployment(namespace="../../etc")]),
            expect="reject",
        ),
        Case(
            "k8s/three-clouds/cluster-ip-outside-service-cidr",
            "three-clouds",
            _extra_objects([_deployment(), _service(clusterIP="8.8.8.8")]),
            expect="reject",
        ),
        Case(
            "k8s/three-clouds/cluster-ip-ipv6",
            "three-clouds",
            _extra_objects([_deployment(), _service(clusterIP="fd00::1")]),
            expect="reject",
        ),
        Case(
            "k8s/three-clouds/labels-10k",
            "three-clouds",
            _extra_objects([_deployment(labels={f"k{i}": "v" for i in range(10_000)})]),
            slow=True,
        ),
        Case(
            "k8s/three-clouds/policies-5k",
            "three-clouds",
            _extra_objects([_deployment()] + [_cnp(f"p{i}", _http_rule(path=f"/p{i}")) for i in range(5_000)]),
            slow=True,
        ),
        Case(
            "k8s/three-clouds/rules-20k",
            "three-clouds",
            _extra_objects(
                [
                    _deployment(),
                    _cnp("many", [{"fromEndpoints": [{"matchLabels": {"app": f"a{i}"}}]} for i in range(20_000)]),
                ]
            ),
            slow=True,
        ),
        Case(
            "k8s/three-clouds/match-expression-10k-values",
            "three-clouds",
            _extra_objects(
                [
                    _deployment(),
                    {
                        **_cnp("x", []),
                        "spec": {
                            "endpointSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "In", "values": [f"v{i}" for i in range(10_000)]}
                                ]
                            },
                            "ingress": [],
                        },
                    },
                ]
            ),
            slow=True,
        ),
        Case(
            "k8s/three-clouds/cidr-rule-zero",
            "three-clouds",
            _extra_objects([_deployment(), _cnp("c", [{"fromCIDR": ["0.0.0.0/0", "::/0", "10.0.0.1/8"]}])]),
        ),
        Case(
            "k8s/three-clouds/list-of-10k-configmaps",
            "three-clouds",
            _extra_objects(
                [
                    {
                        "apiVersion": "v1",
                        "kind": "List",
                        "items": [
                            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}}
                            for i in range(10_000)
                        ],
                    }
                ]
            ),
            slow=True,
        ),
    ]
    yield from (c for c in cases if full or not c.slow)
    for size in (20_000, 100_000):
        long = "p" * size
        objects = {
            "port-name": [_deployment(port_name=long)],
            "cilium-port-name": [
                _deployment(),
                _cnp("n", [{"toPorts": [{"ports": [{"port": long, "protocol": "TCP"}]}]}]),
            ],
        }
        for what, made in objects.items():
            yield Case(
                f"k8s/three-clouds/{what}-{size // 1000}k", "three-clouds", _extra_objects(made), expect="reject"
            )


# --- scale --------------------------------------------------------------------------------------------


def _scaled(sites: int, clusters: int, nodes_per_cluster: int, topology: str = "full-mesh") -> Make:
    def make(ws: Workspace) -> None:
        data: dict[str, Any] = {
            "apiVersion": "crossmesh.io/v1alpha1",
            "kind": "Mesh",
            "metadata": {"name": "scale"},
            "spec": {
                "wireguard": {"topology": topology},
                "ipam": {"podPool": "10.0.0.0/8", "clusterPrefix": 16, "nodePrefix": 28, "tunnelPool": "100.64.0.0/10"},
                "sites": [
                    {"name": f"s{s}", "provider": "aws", "network": f"172.{16 + s // 256}.{s % 256}.0/24"}
                    for s in range(sites)
                ],
                "clusters": [],
            },
        }
        n = 0
        for c in range(clusters):
            nodes = []
            for _ in range(nodes_per_cluster):
                s = n % sites
                nodes.append(
                    {
                        "name": f"n{n}",
                        "site": f"s{s}",
                        "address": f"172.{16 + s // 256}.{s % 256}.{n // sites % 250 + 2}",
                        "publicAddress": f"198.{18 + n // 65536}.{n // 256 % 256}.{n % 256}",
                        "gateway": n < sites,
                    }
                )
                n += 1
            data["spec"]["clusters"].append({"name": f"c{c}", "nodes": nodes})
        ws.write(data)

    return make


def scale(full: bool) -> Iterator[Case]:
    yield Case("scale/generated/12000-nodes-gateways", "hybrid", _scaled(200, 240, 50, "gateways"), slow=True)
    if full:
        yield Case("scale/generated/3000-nodes-full-mesh", "hybrid", _scaled(12, 30, 100), slow=True)
        yield Case("scale/generated/600-clusters", "hybrid", _scaled(3, 600, 1), slow=True)
        yield Case("scale/generated/2000-sites", "hybrid", _scaled(2000, 1, 2000, "gateways"), slow=True)


# --- the output folder and the state directory (render) -------------------------------------------------


def _planted_index(ws: Workspace) -> None:
    ws.out.mkdir()
    (ws.out / ".crossmesh-rendered").write_text(
        f"../outside/victim.txt\n{ws.outside / 'victim.txt'}\n../project/mesh.yaml\n"
    )


def _symlinked_nodes(ws: Workspace) -> None:
    ws.out.mkdir()
    (ws.out / "nodes").symlink_to(ws.outside)


def _symlinked_state(ws: Workspace) -> None:
    ws.state.symlink_to(ws.outside)


def _symlinked_keys(ws: Workspace) -> None:
    ws.state.mkdir()
    (ws.state / "keys").symlink_to(ws.outside)


def output_folder(full: bool) -> Iterator[Case]:
    for what, make in (
        ("planted-index", _planted_index),
        ("symlinked-nodes", _symlinked_nodes),
        ("symlinked-state", _symlinked_state),
        ("symlinked-keys", _symlinked_keys),
    ):
        yield Case(f"output/hybrid/{what}", "hybrid", make)
    yield Case("output/hybrid/umask-000", "hybrid", lambda ws: None, umask=0)


# --- hostile command-line arguments --------------------------------------------------------------------


def arguments(full: bool) -> Iterator[Case]:
    b = BASES["three-clouds"]
    flow = ("--from", b.source, "--to", b.target, "--port", b.port)
    markup = "[/x]"
    variants: dict[str, dict[str, tuple[str, ...]]] = {
        "from-markup": {
            "policy": ("--from", markup, "--to", b.target, "--port", b.port),
            "trace": ("--from", markup, "--to", b.target, "--port", b.port),
        },
        "to-markup": {
            "policy": ("--from", b.source, "--to", markup, "--port", b.port),
            "trace": ("--from", b.source, "--to", markup, "--port", b.port),
        },
        "port-markup": {"policy": (*flow[:4], "--port", markup), "trace": (*flow[:4], "--port", markup)},
        "http-path-markup": {"policy": (*flow, "--http-path", "/" + markup)},
        "http-method-markup": {"policy": (*flow, "--http-method", markup)},
        "http-header-markup": {"policy": (*flow, "--http-header", markup + ": v")},
        "http-path-long": {"policy": (*flow, "--http-path", "/" + "a" * 1_000_000)},
        "port-huge": {
            "policy": (*flow[:4], "--port", "9" * 5000 + "/TCP"),
            "trace": (*flow[:4], "--port", "99999/TCP"),
        },
        "from-newline": {"policy": ("--from", "a\nb", "--to", b.target, "--port", b.port)},
        "plan-node-markup": {"plan": ("--node", markup)},
        "output-dir-markup": {"render": ("--output-dir", "../out/" + markup)},
        "mesh-path-markup": {"mesh": ("dir" + markup + "/mesh.yaml",)},
    }
    for what, args in variants.items():
        make: Make = (lambda ws: None) if "mesh" not in args else _mesh_in("dir" + markup)
        yield Case(f"argument/three-clouds/{what}", "three-clouds", make, args=args)


def _mesh_in(folder: str) -> Make:
    """The project moved into `folder` (which may hold a `/`) of itself."""

    def make(ws: Workspace) -> None:
        moved = ws.root / "moved"
        ws.project.rename(moved)
        (ws.project / folder).parent.mkdir(parents=True)
        moved.rename(ws.project / folder)

    return make


GENERATORS = (
    type_swaps,
    addresses,
    names,
    manifest_paths,
    yaml_features,
    kubernetes_objects,
    scale,
    output_folder,
    arguments,
)


def all_cases(full: bool = FULL) -> list[Case]:
    cases = [c for g in GENERATORS for c in g(full)]
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases
