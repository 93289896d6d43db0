"""A mesh file with its state directory: load → validate → allocate → keys → plan.

This is the one place that strings the pure stages together with the state store,
so every command (validate, plan, render, lab) sees the same result. `validate`
runs without touching the state; the others persist allocations and keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crossmesh.errors import Problem, SpecError, StateError, UnsafePath
from crossmesh.gateway import check as gateway_check
from crossmesh.gateway import parse as gateway_parse
from crossmesh.identity import ingress as ingress_certs
from crossmesh.identity.ingress import ListenerId
from crossmesh.identity.svid import istio_ca
from crossmesh.ipam.allocate import Allocations, allocate
from crossmesh.istio import parse as istio_parse
from crossmesh.kv import identities
from crossmesh.load.mesh import LoadedMesh, load_manifests, load_mesh_model
from crossmesh.load.yamlpos import Document
from crossmesh.model.k8s import Manifest
from crossmesh.model.mesh import Mesh
from crossmesh.model.plan import Plan
from crossmesh.model.tls import ClusterMeshTLS, EtcdTLS, IngressCert, IstioCA, clustermesh_clusters
from crossmesh.plan import ingress
from crossmesh.plan.planner import build_plan, cluster_plans
from crossmesh.plan.workloads import PlacementError
from crossmesh.policy import parse as policy_parse
from crossmesh.render.files import RenderedFile
from crossmesh.render.tree import render as render_tree
from crossmesh.state import psk
from crossmesh.state.store import StateStore
from crossmesh.validate import rules


@dataclass(slots=True)
class Compiled:
    loaded: LoadedMesh
    allocations: Allocations
    plan: Plan
    store: StateStore

    def clustermesh_tls(self, now: datetime) -> dict[str, ClusterMeshTLS]:
        """The ClusterMesh certificates of the plan's Cluster Mesh members, from the state directory
        (the mesh CA and each certificate are made there once)."""
        members = clustermesh_clusters(self.plan)
        return self.store.clustermesh_tls(self.plan.mesh, members, now) if members else {}

    def etcd_tls(
        self,
        now: datetime,
        *,
        server_ips: Sequence[str] = identities.DEFAULT_SERVER_IPS,
        server_names: Sequence[str] = (),
    ) -> EtcdTLS:
        """The certificates of every etcd identity of the plan (`kv.identities`), from the state
        directory's etcd CA (made there once); a certificate is issued anew only when it is missing,
        changed or near its end."""
        specs = identities.etcd_specs(self.plan, server_ips=server_ips, server_names=server_names)
        return self.store.etcd_tls(self.plan.mesh, specs, now)

    def istio_cas(self, now: datetime) -> dict[str, IstioCA]:
        """Each cluster's Istio plug-in CA (its `cacerts`), from the state directory's root and the
        cluster's intermediate (made there once, see `state.meshpki`); none without `spec.istio`."""
        if self.plan.istio is None:
            return {}
        clusters = [c.name for c in self.plan.clusters]
        root, cas = self.store.istio_cas(self.plan.mesh, self.plan.istio.trust_domain, clusters, now)
        return {c: istio_ca(c, root, ca) for c, ca in cas.items()}

    def tunnel_psks(self) -> dict[tuple[str, int], str]:
        """Every VPN tunnel's pre-shared key: from the state directory (made there by `compile_mesh`)
        or from the `preSharedKeyFile` beside the mesh file, as the plan's `psk` reference says."""
        base = self.loaded.path.resolve().parent
        out = {}
        for c in self.plan.vpn:
            for t in c.tunnels:
                kind, _, ref = t.psk.partition(":")
                out[c.name, t.index] = (
                    psk.read_reference(base, ref) if kind == "file" else self.store.psk(c.name, t.index)
                )
        return out

    def ingress_certs(self, now: datetime) -> dict[ListenerId, IngressCert]:
        """The server certificate of every gateway listener whose TLS is `mesh`, from the state
        directory's ingress CA (made there on first use, see `state.ingresspki`); none, and no CA,
        when no listener asks for one."""
        wanted: dict[ListenerId, tuple[str, ...]] = {}
        for cluster in self.plan.clusters:
            gateways, routes = gateway_parse.cluster_objects(self.loaded.manifests.get(cluster.name, []))
            wanted |= ingress_certs.mesh_listeners(cluster.name, gateways, routes)
        return self.store.ingress_listeners(self.plan.mesh, wanted, now) if wanted else {}


def check(
    path: Path,
    store: StateStore | None = None,
    overlay: dict[str, Any] | None = None,
    previous: Allocations | None = None,
) -> tuple[LoadedMesh | None, list[Problem]]:
    """Everything `validate` reports: schema, manifests, rules, allocation. Writes nothing.
    `overlay` holds membership changes made on a running lab; `previous`, the allocations to keep
    (default: the state directory's; the operator's come from etcd)."""
    doc, mesh, problems = load_mesh_model(path, overlay)
    if doc is None or mesh is None:
        return None, problems
    base = path.resolve().parent
    manifests, manifest_problems = load_manifests(base, doc, mesh, _check_object)
    problems = problems + manifest_problems + rules.check(mesh, doc) + _unenforced_policies(mesh, manifests)
    problems += istio_parse.conflicts(manifests) + _cilium_http_under_istio(mesh, manifests)
    problems += gateway_check.conflicts(manifests)
    problems += _psk_files(base, doc, mesh)
    if not any(p.severity == "error" for p in problems):
        problems += _add_implied(mesh, manifests)
    loaded = LoadedMesh(path=path, doc=doc, mesh=mesh, manifests=manifests)
    errors = [p for p in problems if p.severity == "error"]
    if not errors:
        if previous is None:
            previous = (store or StateStore.beside(path)).load_allocations()
        alloc, alloc_problems = allocate(mesh, previous, doc)
        problems += alloc_problems or _placement_problems(mesh, alloc, manifests)
    loaded.warnings = [p for p in problems if p.severity != "error"]
    return loaded, problems


def _psk_files(base: Path, doc: Document, mesh: Mesh) -> list[Problem]:
    """Each `preSharedKeyFile` is read as render will read it (state/psk.py), so that a missing,
    readable-by-others or malformed key file is refused by validate, at its line."""
    out = []
    for ci, c in enumerate(mesh.spec.vpn_connections):
        for ti, t in enumerate(c.tunnels):
            if t.pre_shared_key_file is None:
                continue
            try:
                psk.read_reference(base, t.pre_shared_key_file)
            except (StateError, UnsafePath) as err:
                path = ("spec", "vpnConnections", ci, "tunnels", ti, "preSharedKeyFile")
                out.append(doc.problem(path, str(err)))
    return out


def _check_object(m: Manifest) -> list[policy_parse.Issue]:
    """Problems of one manifest object beyond its schema: network policies, Istio policies and
    Gateway API objects."""
    return policy_parse.check_manifest(m) + istio_parse.check_manifest(m) + gateway_parse.check_manifest(m)


def _add_implied(mesh: Mesh, manifests: dict[str, list[Manifest]]) -> list[Problem]:
    """Adds to each cluster's manifests the Deployment and Service its Gateways imply (plan/ingress.py),
    so that everything reading the manifests — policies, Istio identities, the lab — sees the gateway's
    pods as the cluster will run them."""
    for c in mesh.spec.clusters:
        try:
            implied = ingress.implied_manifests(manifests.get(c.name, []), [n.name for n in c.nodes])
        except PlacementError as err:
            return [_placement_problem(err)]
        if implied:
            manifests[c.name] = [*manifests.get(c.name, []), *implied]
    return []


def _placement_problems(mesh: Mesh, alloc: Allocations, manifests: dict[str, list[Manifest]]) -> list[Problem]:
    """What plan would refuse about pods and services (the same code: `cluster_plans`)."""
    try:
        cluster_plans(mesh, alloc, manifests)
    except PlacementError as err:
        return [_placement_problem(err)]
    return []


def _placement_problem(err: PlacementError) -> Problem:
    line, column = err.manifest.where(err.path)
    return Problem(err.manifest.file, line, column, ".".join(err.path), str(err))


def _unenforced_policies(mesh: Mesh, manifests: dict[str, list[Manifest]]) -> list[Problem]:
    return [
        Problem(m.file, m.line, 1, "kind", message, "warning")
        for c in mesh.spec.clusters
        for m, message in policy_parse.unenforced(c.name, c.cni.value, manifests.get(c.name, []))
    ]


def _cilium_http_under_istio(mesh: Mesh, manifests: dict[str, list[Manifest]]) -> list[Problem]:
    """With spec.istio, each Cilium HTTP rule is a warning: the mesh proxies encrypt pod-to-pod
    traffic, and Cilium's L7 proxy cannot read HTTP inside mTLS (Cilium's own Istio notes); the
    requests it takes are reset, in the lab as on real nodes, unless the port is DISABLE."""
    if mesh.spec.istio is None:
        return []
    found: dict[tuple[str, int, str], Problem] = {}
    for m in (m for ms in manifests.values() for m in ms):
        spec = m.raw.get("spec") if m.kind in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy") else None
        for direction in ("ingress", "egress"):
            rules = spec.get(direction) if isinstance(spec, dict) else None
            for i, rule in enumerate(rules if isinstance(rules, list) else []):
                to_ports = rule.get("toPorts") if isinstance(rule, dict) else None
                for j, tp in enumerate(to_ports if isinstance(to_ports, list) else []):
                    if not (isinstance(tp, dict) and isinstance(tp.get("rules"), dict) and tp["rules"].get("http")):
                        continue
                    where = f"spec.{direction}[{i}].toPorts[{j}].rules.http"
                    found[(m.file, m.line, where)] = Problem(
                        m.file,
                        m.line,
                        1,
                        where,
                        f"{m.kind} {m.name} has HTTP rules in a mesh with spec.istio: Istio's mTLS encrypts the "
                        "requests, which Cilium's L7 proxy cannot read, so they would be reset — write the methods "
                        "and paths as an AuthorizationPolicy (to.operation), or set PeerAuthentication DISABLE "
                        "on that port",
                        "warning",
                    )
    return list(found.values())


NO_KEY_YET = "(made at the first plan or render)"


def compile_mesh(
    path: Path,
    state_dir: Path | None = None,
    *,
    persist: bool = True,
    overlay: dict[str, Any] | None = None,
    placements: dict[str, str] | None = None,
    only_key: str | None = None,
    dry_run: bool = False,
    active: Mapping[str, str] | None = None,
) -> Compiled:
    """Validated plan of the mesh; raises SpecError with every problem when the file is wrong.

    `dry_run`: write nothing; a node without a key yet shows NO_KEY_YET as its public key.
    `active`: topology gateways, each site's active gateway as etcd names it (`build_plan`).
    `only_key` is the node this host is (`crossmesh agent`): only its key is made or read, and the
    plan's peers carry no public keys — on a node, those come from the peers' agents (each node
    holds only its own private key)."""
    store = StateStore.beside(path, state_dir)
    loaded, problems = check(path, store, overlay)
    errors = [p for p in problems if p.severity == "error"]
    if errors or loaded is None:
        raise SpecError(errors)
    alloc, _ = allocate(loaded.mesh, store.load_allocations(), loaded.doc)
    nodes = [n.name for c in loaded.mesh.spec.clusters for n in c.nodes]
    if dry_run:  # nothing written: allocations in memory, keys only where they exist already
        keys = dict.fromkeys(nodes, NO_KEY_YET) | store.known_public_keys(nodes)
    elif only_key is not None:
        if persist:
            store.save_allocations(alloc)
        keys = dict.fromkeys(nodes, "") | (store.ensure_keys([only_key]) if only_key in nodes else {})
    elif persist:
        store.save_allocations(alloc)
        keys = store.ensure_keys(nodes)
        store.ensure_psks(_generated_psks(loaded.mesh))
    else:
        keys = store.public_keys(nodes)
    try:
        plan = build_plan(loaded.mesh, alloc, keys, loaded.manifests, placements, active)
    except PlacementError as err:
        raise SpecError([_placement_problem(err)]) from err
    except ValueError as err:
        raise SpecError([loaded.doc.problem(("spec",), str(err))]) from err
    return Compiled(loaded=loaded, allocations=alloc, plan=plan, store=store)


def _generated_psks(mesh: Mesh) -> list[tuple[str, int]]:
    """The tunnels whose pre-shared key crossmesh makes: those without a preSharedKeyFile."""
    return [
        (c.name, i)
        for c in mesh.spec.vpn_connections
        for i, t in enumerate(c.tunnels, start=1)
        if t.pre_shared_key_file is None
    ]


def plan_against(path: Path, previous: Allocations) -> tuple[LoadedMesh, Allocations, Plan]:
    """The mesh validated, allocated on top of `previous` (which never moves) and planned, without a
    state directory and without keys: what the operator publishes and `diff` compares. SpecError
    with every problem when the file is wrong."""
    loaded, problems = check(path, previous=previous)
    errors = [p for p in problems if p.severity == "error"]
    if errors or loaded is None:
        raise SpecError(errors)
    alloc, _ = allocate(loaded.mesh, previous, loaded.doc)
    keys = {n.name: "" for c in loaded.mesh.spec.clusters for n in c.nodes}
    try:
        plan = build_plan(loaded.mesh, alloc, keys, loaded.manifests)
    except (PlacementError, ValueError) as err:
        raise SpecError([loaded.doc.problem(("spec",), str(err))]) from err
    return loaded, alloc, plan


def rendered(compiled: Compiled) -> dict[str, RenderedFile]:
    """What `crossmesh render` writes for this mesh, in memory: the CLI writes it, the lab runs it,
    the fidelity checks compare the running lab with it."""
    now = datetime.now(UTC)
    tls = compiled.clustermesh_tls(now)
    cas = compiled.istio_cas(now)
    ingress_certs = compiled.ingress_certs(now)
    psks = compiled.tunnel_psks()
    return render_tree(
        compiled.plan, compiled.loaded.manifests, compiled.store.private_key, tls, cas, ingress_certs, psks
    )
