"""`crossmesh pki`: the control plane's etcd certificates and roles, the service mesh's Istio CAs, and the
ingress CA with the gateway listeners' certificates."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.markup import escape

from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, friendly, out
from crossmesh.errors import UsageError
from crossmesh.kv import identities
from crossmesh.model.tls import CertSpec, EtcdTLS, IstioCA
from crossmesh.state import certs, pki
from crossmesh.state.store import ETCD_PKI, INGRESS_PKI, ISTIO_PKI

app = typer.Typer(
    help="The control plane's etcd PKI (certificates for its members and clients, its users and roles), "
    "the service mesh's Istio CAs, and the ingress CA of the gateway listeners.",
    no_args_is_help=True,
)

MESH_ARG = typer.Argument(..., help="the mesh file", show_default=False)
STATE_OPTION = typer.Option(None, "--state", help="state directory (default: .crossmesh/ beside the mesh file)")


@app.command("etcd")
@friendly
def etcd_certs(
    mesh: Path = MESH_ARG,
    state: Path | None = STATE_OPTION,
    server_ip: list[str] = typer.Option(
        [],
        "--server-ip",
        help="an address of the etcd members, in the server certificate (repeatable; default 127.0.0.1)",
    ),
    server_name: list[str] = typer.Option(
        [], "--server-name", help="a DNS name of the etcd members, in the server certificate (repeatable)"
    ),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-d", help="also write each identity's files here (see below)"
    ),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Issue the etcd certificates of the mesh from an etcd CA in the state directory.

    Identities: [bold]server[/bold] (the etcd members: serverAuth and clientAuth, named by --server-ip and
    --server-name), one client certificate (clientAuth, CN = the name) per node that runs an agent, and
    [bold]crossmesh-operator[/bold], [bold]crossmesh-admin[/bold] and [bold]root[/bold]. etcd with
    --client-cert-auth takes each as the user its CN names; `crossmesh pki etcd-roles` gives them their roles.

    The state directory keeps them: etcd-pki/ca.key (the etcd CA's key, 0600, never printed nor written
    elsewhere), etcd-pki/ca.crt, etcd-pki/server.key and user.<CN>.key (0600) with their .crt; folder
    0700. The CA is made once and kept; running again keeps every certificate still valid and issues anew
    those missing, changed (other --server-ip or --server-name) or with less than 30 days left. This
    writes no WireGuard key and no allocation.

    With --output-dir, one folder per identity: DIR/server/ and DIR/users/<CN>/, each holding ca.crt
    (0644), tls.crt (0644) and tls.key (0600; its folder 0700). Folders of identities the mesh no longer
    has are removed.
    """
    from crossmesh.drivers.files import write_tree
    from crossmesh.render.etcd import tls_files
    from crossmesh.workspace import compile_mesh

    ips = server_ip or list(identities.DEFAULT_SERVER_IPS)
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"--server-ip {ip!r} is not an IP address — give one per flag, e.g. 10.0.1.10") from None
    compiled = compile_mesh(mesh, state, dry_run=True)  # names only: no key, no allocation written
    now = datetime.now(UTC)
    tls = compiled.etcd_tls(now, server_ips=ips, server_names=server_name)
    if output_dir is not None:
        write_tree(output_dir, tls_files(tls))
    rows = _rows(tls, output_dir)
    if output is not Output.TABLE:
        emit(
            {"stateDir": str(compiled.store.root / ETCD_PKI), "outputDir": _text(output_dir), "identities": rows},
            output,
        )
        return
    for row in rows:
        what = "issued" if row["issued"] else "kept"
        where = f"  {row['folder']}" if row["folder"] else ""
        out.print(
            f"{what:<6} {escape(str(row['name'])):<24} CN={escape(str(row['commonName']))}, "
            f"until {str(row['notAfter'])[:10]}{escape(where)}"
        )
    fresh = sum(1 for r in rows if r["issued"])
    target = f", files in {output_dir} (keys 0600)" if output_dir is not None else ""
    out.print(f"{len(rows)} etcd identities: {fresh} issued, {len(rows) - fresh} kept{target}", markup=False)


def _rows(tls: EtcdTLS, output_dir: Path | None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for issued in tls.certs:
        cert = certs.load_cert(issued.cert_pem)
        spec = issued.spec
        rows.append(
            {
                "name": spec.secret,
                "commonName": spec.common_name,
                "kind": "server" if spec.server else "client",
                "names": [*spec.dns_names, *spec.ip_addresses],
                "notAfter": cert.not_valid_after_utc.isoformat(),
                "issued": spec.secret in tls.renewed,
                "folder": _text(output_dir / identities.folder(spec)) if output_dir is not None else None,
            }
        )
    return rows


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


@app.command("etcd-roles")
@friendly
def etcd_roles(
    mesh: Path = MESH_ARG,
    etcd_endpoints: str = typer.Option(
        ..., "--etcd-endpoints", help="comma-separated https:// client URLs of the etcd members"
    ),
    state: Path | None = STATE_OPTION,
    cacert: Path | None = typer.Option(None, "--cacert", help="the etcd CA (default: the state directory's)"),
    cert: Path | None = typer.Option(None, "--cert", help="root's certificate (default: the state directory's)"),
    key: Path | None = typer.Option(None, "--key", help="root's key (default: the state directory's)"),
) -> None:
    """Make etcd's users and roles what the mesh needs, as root, then enable auth.

    Each node's agent (user = its node name) reads the mesh and writes only its own record and status;
    crossmesh-operator and crossmesh-admin write the mesh's keys. Every role is made exactly that:
    permissions it should no longer have are revoked, and the role of a node the mesh no longer has is
    deleted. Safe to run again (it then changes nothing). Run `crossmesh pki etcd` first: by default the
    CA and root's certificate come from the state directory's etcd-pki/.
    """
    from crossmesh.cli.agent import etcd_urls, require_agent_extra
    from crossmesh.workspace import compile_mesh

    require_agent_extra()
    from crossmesh.kv.etcd import Tls, connect
    from crossmesh.kv.layout import Layout
    from crossmesh.kv.roles import ensure_roles

    compiled = compile_mesh(mesh, state, dry_run=True)
    folder = compiled.store.root / ETCD_PKI
    root = pki.etcd_stem(CertSpec(identities.ROOT_USER, identities.ROOT_USER))
    tls = Tls(cacert or folder / pki.CA_CERT, cert or folder / f"{root}.crt", key or folder / f"{root}.key")
    for flag, path in (("--cacert", tls.ca), ("--cert", tls.cert), ("--key", tls.key)):
        if not path.is_file():
            raise UsageError(f"{flag} {path}: no such file — run `crossmesh pki etcd {mesh}` first, or name it")
    endpoints = etcd_urls(etcd_endpoints, tls=True, insecure=False)
    nodes = identities.agent_nodes(compiled.plan)  # a node with a reserved name: refused by validation

    async def run() -> list[str]:
        kv = await connect(endpoints, tls)
        try:
            return await ensure_roles(kv, Layout(compiled.plan.mesh), nodes, identities.gateway_sites(compiled.plan))
        finally:
            await kv.close()

    changes = asyncio.run(run())
    for change in changes:
        out.print(escape(change))
    out.print(f"etcd users and roles of {compiled.plan.mesh}: {len(changes)} changes; auth enabled", markup=False)


@app.command("istio")
@friendly
def istio_cas(
    mesh: Path = MESH_ARG,
    state: Path | None = STATE_OPTION,
    revoke: list[str] = typer.Option(
        [], "--revoke", help="revoke this cluster's intermediate and issue it a new one (repeatable)"
    ),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Show the service mesh's Istio CAs: the mesh root and each cluster's intermediate (subject,
    serial, end), and the intermediates revoked so far. Never a key.

    The state directory keeps them in istio-pki/: root.key and intermediate.<cluster>.key (0600,
    never printed), root.crt and intermediate.<cluster>.crt; folder 0700. Made once (by this command
    or a render), read back after. --revoke CLUSTER adds the cluster's intermediate to the revoked
    list (every proxy then refuses the certificates it signed), deletes its key and issues the
    cluster a new intermediate under the same root; its workloads need new certificates.
    """
    from crossmesh.workspace import compile_mesh

    compiled = compile_mesh(mesh, state, dry_run=True)  # names only: no key, no allocation written
    if compiled.plan.istio is None:
        raise UsageError(f"{mesh} has no service mesh — add `istio: {{}}` under `spec:` to give it one")
    clusters = [c.name for c in compiled.plan.clusters]
    for cluster in revoke:
        if cluster not in clusters:
            raise UsageError(f"--revoke {cluster!r}: no such cluster — the mesh's clusters: {', '.join(clusters)}")
    now = datetime.now(UTC)
    cas = compiled.istio_cas(now)
    for cluster in dict.fromkeys(revoke):
        compiled.store.istio_revoke(cluster)
    if revoke:
        cas = compiled.istio_cas(now)
    rows = _istio_rows(compiled.plan.mesh, cas, compiled.store.istio_revocations())
    if output is not Output.TABLE:
        emit(
            {
                "stateDir": str(compiled.store.root / ISTIO_PKI),
                "trustDomain": compiled.plan.istio.trust_domain,
                "authorities": rows,
            },
            output,
        )
        return
    for row in rows:
        state_word = "revoked" if row["revoked"] else str(row["kind"])
        out.print(
            f"{state_word:<12} {escape(str(row['name'])):<20} serial {row['serial']}  "
            f"until {str(row['notAfter'])[:10]}  {escape(str(row['subject']))}"
        )
    gone = sum(1 for r in rows if r["revoked"])
    out.print(
        f"Istio root of {compiled.plan.mesh} and {len(cas)} intermediates (trust domain "
        f"{compiled.plan.istio.trust_domain}); {gone} revoked",
        markup=False,
    )


def _istio_rows(mesh: str, cas: Mapping[str, IstioCA], revoked: list[dict[str, str]]) -> list[dict[str, object]]:
    """One row per CA: the root, each cluster's intermediate, each revoked one (never a key)."""
    rows: list[dict[str, object]] = []
    first = next(iter(cas.values()), None)
    pems = [("root", mesh, first.root_cert_pem)] if first is not None else []
    pems += [("intermediate", c, ca.cert_pem) for c, ca in cas.items()]
    for kind, name, pem in pems:
        cert = certs.load_cert(pem)
        rows.append(
            {
                "kind": kind,
                "name": name,
                "subject": cert.subject.rfc4514_string(),
                "serial": f"{cert.serial_number:x}",
                "notAfter": cert.not_valid_after_utc.isoformat(),
                "revoked": False,
            }
        )
    rows += [
        {
            "kind": "intermediate",
            "name": r["cluster"],
            "subject": r["subject"],
            "serial": r["serial"],
            "notAfter": r["notAfter"],
            "revoked": True,
        }
        for r in revoked
    ]
    return rows


@app.command("ingress")
@friendly
def ingress_certs(
    mesh: Path = MESH_ARG,
    state: Path | None = STATE_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Show the mesh's ingress CA and the server certificates it issued to gateway listeners whose
    TLS is `mesh` (the Gateway annotation `crossmesh.io/certificate: mesh`): subject, DNS names,
    end. Never a key.

    The state directory keeps them in ingress-pki/: ca.key and each listener's key (0600, never
    printed), ca.crt and each listener's .crt; folder 0700. The CA is made once; a listener's
    certificate is issued when missing, when its hostnames changed or past half of its life (this
    command issues them as a render would). Clients outside trust ingress-pki/ca.crt:
    `curl --cacert <state>/ingress-pki/ca.crt https://<host>/`.
    """
    from crossmesh.workspace import compile_mesh

    compiled = compile_mesh(mesh, state, dry_run=True)  # names only: no WireGuard key, no allocation written
    issued = compiled.ingress_certs(datetime.now(UTC))
    folder = compiled.store.root / INGRESS_PKI
    if not issued:
        rows: list[dict[str, object]] = []
        ca_row = None
    else:
        ca = compiled.store.ingress_ca_cert()
        ca_row = {
            "subject": ca.subject.rfc4514_string(),
            "serial": f"{ca.serial_number:x}",
            "notAfter": ca.not_valid_after_utc.isoformat(),
            "file": str(folder / pki.CA_CERT),
        }
        rows = [
            {
                "listener": lid.ref,
                "subject": certs.load_cert(c.cert_pem).subject.rfc4514_string(),
                "names": list(c.names),
                "notAfter": c.not_after,
                "issued": c.issued,
            }
            for lid, c in issued.items()
        ]
    if output is not Output.TABLE:
        emit({"stateDir": str(folder), "ca": ca_row, "listeners": rows}, output)
        return
    if ca_row is None:
        out.print(
            f"{mesh}: no Gateway listener asks for a mesh certificate (annotate a Gateway "
            "'crossmesh.io/certificate: mesh'); no ingress CA made",
            markup=False,
        )
        return
    out.print(
        f"{'CA':<8} {escape(str(ca_row['subject']))}  serial {ca_row['serial']}  until {str(ca_row['notAfter'])[:10]}"
    )
    for row in rows:
        what = "issued" if row["issued"] else "kept"
        names = ", ".join(str(n) for n in row["names"])  # type: ignore[attr-defined]
        out.print(f"{what:<8} {escape(str(row['listener'])):<40} {escape(names)}  until {str(row['notAfter'])[:10]}")
    fresh = sum(1 for r in rows if r["issued"])
    out.print(
        f"ingress CA of {compiled.plan.mesh} and {len(rows)} listener certificates ({fresh} issued, "
        f"{len(rows) - fresh} kept); clients trust {ca_row['file']}",
        markup=False,
    )
