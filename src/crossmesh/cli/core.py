"""validate, plan, render, schema."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, err, friendly, listeners_text, out
from crossmesh.drivers.files import diff_tree, write_tree
from crossmesh.model.mesh import Mesh
from crossmesh.plan import serialize
from crossmesh.render.files import RenderedFile
from crossmesh.workspace import check, compile_mesh, rendered

MESH_ARG = typer.Argument(..., help="the mesh file (apiVersion: crossmesh.io/v1alpha1, kind: Mesh)", show_default=False)
STATE_OPTION = typer.Option(None, "--state", help="state directory (default: .crossmesh/ beside the mesh file)")
SHOWN_WARNINGS = 20  # a planted list of a million entries must not flood the terminal


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(plan)
    app.command()(render)
    app.command()(schema)


@friendly
def validate(mesh: Path = MESH_ARG, output: Output = OUTPUT_OPTION, state: Path | None = STATE_OPTION) -> None:
    """Check the mesh file and its manifests against every rule; report all problems at once (exit 0 / 2).

    Writes nothing: not the state directory, not keys.
    """
    from crossmesh.state.store import StateStore

    loaded, problems = check(mesh, StateStore.beside(mesh, state))
    errors = [p for p in problems if p.severity == "error"]
    if output is not Output.TABLE:
        emit({"valid": not errors, "problems": [p.as_json() for p in problems]}, output)
    else:
        for p in problems:
            err.print(str(p), markup=False)
        if not errors and loaded is not None:
            m = loaded.mesh
            nodes = sum(len(c.nodes) for c in m.spec.clusters)
            out.print(
                f"[green]valid[/green]: {escape(str(mesh))} — {len(m.spec.sites)} sites, "
                f"{len(m.spec.clusters)} clusters, "
                f"{nodes} nodes" + (f", {len(problems)} warnings" if problems else "")
            )
        else:
            err.print(f"[red]{len(errors)} problem{'s' if len(errors) != 1 else ''}[/red]")
    if errors:
        raise typer.Exit(2)


@friendly
def plan(
    mesh: Path = MESH_ARG,
    output: Output = OUTPUT_OPTION,
    state: Path | None = STATE_OPTION,
    node: list[str] = typer.Option([], "--node", help="show only these nodes (repeatable)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="write nothing: allocations in memory, keys only where they exist already"
    ),
) -> None:
    """Show allocations and the desired network (tunnels, peers, routes, MTU) and what changed since the
    last `render` or `lab up`.

    Allocations and keys are created in the state directory on first use, so that
    the plan shown is the plan that will be applied; `--dry-run` writes nothing (a node without a key
    yet shows no public key).
    """
    compiled = compile_mesh(mesh, state, persist=not dry_run, dry_run=dry_run)
    data = serialize.plan_json(compiled.plan)
    change = serialize.diff(compiled.store.load_applied_plan(), data)
    if output is not Output.TABLE:
        emit({"plan": data, "diff": change}, output)
        return
    _print_plan(data, change, set(node))


def _table(title: str, *cols: str) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold")
    for c in cols:
        t.add_column(c, overflow="fold")
    return t


# Past this many nodes (without --node) the per-node tables become one summary line per site: a full
# mesh of 1,000 nodes has 950,000 peer rows and 2.85 million route rows, which no one reads in a table.
DETAIL_NODES = 100


def _print_plan(data: dict[str, Any], change: dict[str, Any], only: set[str]) -> None:
    nodes = [n for n in data["nodes"] if not only or n["name"] in only]
    detail = bool(only) or len(nodes) <= DETAIL_NODES
    t = _table("Clusters", "cluster", "id", "distribution", "cni", "pod CIDR", "service CIDR", "pods", "services")
    for c in data["clusters"]:
        t.add_row(
            c["name"],
            str(c["id"]),
            c["distribution"],
            c["cni"],
            c["podCIDR"],
            c["serviceCIDR"],
            str(len(c["pods"])),
            str(len(c["services"])),
        )
    out.print(t)
    _print_datapath(data["clusters"])
    if data.get("sitePairs"):
        _print_site_pairs(data)
    if detail:
        _print_nodes(nodes)
    else:
        _print_site_summary(data, nodes)
    t = _table("Services", "service", "cluster IP", "port", "node port", "global", "affinity", "backends by tier")
    for c in data["clusters"]:
        for svc in c["services"]:
            ip = "None (headless)" if svc["clusterIP"] is None else svc["clusterIP"]
            for bs in svc["backendSets"]:
                tiers = " | then | ".join(", ".join(tier) or "(none)" for tier in bs["tiers"]) or "(no backends)"
                flags = ("yes" + ("" if svc["shared"] else ", not shared")) if svc["global"] else "no"
                node_port = str(svc["nodePorts"].get(bs["port"], "-"))
                t.add_row(svc["ref"], ip, bs["port"], node_port, flags, svc["affinity"], tiers)
    out.print(t)
    if data.get("ingress"):
        t = _table("Ingress gateways (Gateway API)", "gateway", "service", "listeners", "pods", "load balancer targets")
        for g in data["ingress"]:
            listeners = listeners_text(g["listeners"])
            t.add_row(
                escape(g["gateway"]),
                escape(g["service"]),
                escape(listeners),
                escape(", ".join(g["pods"])),
                ", ".join(g["nodes"]),
            )
        out.print(t)
    if detail:
        t = _table("Routes", "node", "destination", "via", "next hop", "towards")
        for n in nodes:
            for r in [*serialize.overlay_routes(data, n), *n["routes"]]:
                t.add_row(n["name"], r["dst"], r["via"], r["gateway"] or "-", r["peer"])
        out.print(t)
    _print_change(change, detail)


def _print_datapath(clusters: list[dict[str, Any]]) -> None:
    """Who routes, encapsulates and encrypts each kind of pod pair, and its MTU (plan/datapath.py).
    Clusters with the same datapath share their rows (500 clusters are a few rows, not 2,500)."""
    groups: dict[str, list[str]] = {}
    datapaths: dict[str, dict[str, Any]] = {}
    for c in clusters:
        key = json.dumps(c["datapath"], sort_keys=True)
        groups.setdefault(key, []).append(c["name"])
        datapaths[key] = c["datapath"]
    t = _table("Datapath", "clusters", "pair", "path", "encrypted", "MTU", "arithmetic")
    for key, names in groups.items():
        d = datapaths[key]
        who = ", ".join(names) if len(names) <= 3 else f"{names[0]} … {names[-1]} ({len(names)} clusters)"
        for k in d["pairs"]:
            mtu = k["mtu"]
            t.add_row(
                who,
                k["class"],
                k["path"] if k["connected"] else f"not connected: {k['note']}",
                k["encryption"],
                str(mtu["value"]) if mtu else "-",
                mtu["arithmetic"] if mtu else "-",
            )
        pinned = "pinned by the rendered files" if d["podCIDRsPinned"] else "allocated by the cluster (not pinned)"
        u = d["underlayMTU"]
        t.add_row(
            who,
            "underlay",
            f"{d['mode']} {d['encapsulation']}; node pod CIDRs {pinned}",
            "",
            str(u["value"]),
            u["arithmetic"],
        )
    out.print(t)


def _print_site_pairs(data: dict[str, Any]) -> None:
    """With hubs: every pair of sites, its transport and MTU budget; the hubs and VPN connections."""
    t = _table("Site pairs", "sites", "transport", "path", "MTU", "pod MTU", "arithmetic")
    for p in data["sitePairs"]:
        transport = p["transport"] + (f" via hub {p['hub']} over {', '.join(p['connections'])}" if p["hub"] else "")
        pod = p["podMTU"]
        arithmetic = p["mtu"]["arithmetic"] + (f"; pods: {pod['arithmetic']}" if pod else "")
        t.add_row(
            " ⇄ ".join(p["sites"]),
            transport,
            escape(p["path"]),
            str(p["mtu"]["value"]),
            str(pod["value"]) if pod else "-",
            arithmetic,
        )
    out.print(t)
    t = _table("Hubs", "hub", "VPC of", "Amazon ASN", "route table", "associations", "routes")
    for h in data.get("hubs", []):
        for rt in h["routeTables"]:
            routes = ", ".join(
                f"{r['destination']} → {r['attachment']}" + (" (propagated)" if r["propagated"] else "")
                for r in rt["routes"]
            )
            t.add_row(h["name"], h["site"], str(h["amazonSideASN"]), rt["name"], ", ".join(rt["associations"]), routes)
    out.print(t)
    t = _table("VPN connections", "connection", "site → hub", "customer gateway", "routing", "tunnel", "inside", "IKE")
    for c in data.get("vpnConnections", []):
        cgw = c["customerGateway"]
        for tun in c["tunnels"]:
            p1, p2 = tun["phase1"], tun["phase2"]
            ike = (
                f"{tun['ikeVersion']}; phase 1 {'/'.join(p1['encryption'])} {'/'.join(p1['integrity'])} "
                f"DH {','.join(map(str, p1['dhGroups']))}; phase 2 {'/'.join(p2['encryption'])} "
                f"DH {','.join(map(str, p2['dhGroups']))}; key {tun['preSharedKey']}"
            )
            t.add_row(
                c["name"],
                f"{c['site']} → {c['hub']}",
                f"{cgw['publicAddress']} ASN {cgw['asn']}",
                c["routing"] + (f" ({', '.join(c['customerPrefixes'])})" if c["routing"] == "static" else ""),
                f"{tun['index']}" + (" (standby)" if tun["standby"] else " (active)"),
                f"{tun['insideCIDR']}: hub {tun['hubAddress']}, customer {tun['customerAddress']}",
                escape(ike),
            )
    out.print(t)


def _overlay_size(data: dict[str, Any], node: dict[str, Any]) -> int:
    """How many VXLAN routes a node has: the other members of its overlay."""
    overlay = (node.get("vxlan") or {}).get("overlay")
    return max(len(data.get("overlays", {}).get(overlay, [])) - 1, 0) if overlay else 0


def _print_site_summary(data: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
    """The per-node tables, folded into one row per site."""
    t = _table("Sites", "site", "nodes", "behind NAT", "gateways", "peers per node", "routes per node", "pod MTU")
    by_site: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        by_site.setdefault(n["site"], []).append(n)

    def spread(values: list[int]) -> str:
        low, high = min(values), max(values)
        return str(low) if low == high else f"{low}–{high}"

    for site in data["sites"]:
        members = by_site.get(site["name"], [])
        if not members:
            continue
        t.add_row(
            site["name"],
            str(len(members)),
            str(sum(1 for n in members if n["publicAddress"] is None)),
            str(sum(1 for n in members if n["gateway"])),
            spread([len((n["tunnel"] or {}).get("peers", [])) for n in members]),
            spread([len(n["routes"]) + _overlay_size(data, n) for n in members]),
            spread([n["podMTU"]["value"] for n in members]),
        )
    out.print(t)
    out.print(
        f"{len(nodes)} nodes: the nodes, MTU, peers and routes tables are shown for up to {DETAIL_NODES} nodes — "
        "pick nodes with --node NAME (repeatable), or use -o json for everything"
    )


def _print_nodes(nodes: list[dict[str, Any]]) -> None:
    t = _table("Nodes", "node", "cluster", "site", "address", "public", "pod CIDR", "tunnel address")
    for n in nodes:
        t.add_row(
            n["name"],
            n["cluster"],
            n["site"],
            n["address"],
            n["publicAddress"] or "(NAT)",
            n["podCIDR"],
            n["tunnel"]["address"] if n["tunnel"] else "-",
        )
    out.print(t)
    t = _table("MTU", "node", "path", "MTU", "arithmetic")
    for n in nodes:
        if n["tunnel"]:
            t.add_row(n["name"], "WireGuard", str(n["tunnel"]["mtu"]["value"]), n["tunnel"]["mtu"]["arithmetic"])
        if n["vxlan"]:
            t.add_row(n["name"], "VXLAN", str(n["vxlan"]["mtu"]["value"]), n["vxlan"]["mtu"]["arithmetic"])
        t.add_row(n["name"], "pods", str(n["podMTU"]["value"]), n["podMTU"]["arithmetic"])
    out.print(t)
    t = _table("Peers", "node", "peer", "endpoint", "allowed IPs", "keepalive")
    for n in nodes:
        for p in (n["tunnel"] or {}).get("peers", []):
            t.add_row(
                n["name"],
                p["node"] + (" (standby)" if p["standby"] else ""),
                p["endpoint"] or "(none: peer behind NAT dials in)",
                ", ".join(p["allowedIPs"]),
                f"{p['persistentKeepalive']}s" if p["persistentKeepalive"] else "-",
            )
    out.print(t)


def _print_change(change: dict[str, Any], detail: bool) -> None:
    if change["empty"]:
        out.print("[bold]Difference from last applied state:[/bold] none")
        return
    out.print("[bold]Difference from last applied state:[/bold]")
    if not detail:
        changed = sum(
            1 for name, c in change["nodes"].items() if not c.get("removed") and name not in change["nodesAdded"]
        )
        out.print(
            f"  {len(change['nodesAdded'])} nodes added, {len(change['nodesRemoved'])} removed, "
            f"{changed} with changed peers or routes (-o json lists them)"
        )
        return
    for name in change["nodesAdded"]:
        out.print(f"  [green]+ node {name}[/green]")
    for name in change["nodesRemoved"]:
        out.print(f"  [red]- node {name}[/red]")
    for name, c in change["nodes"].items():
        if c.get("removed") or name in change["nodesAdded"]:
            continue
        for p in c["peersAdded"]:
            out.print(f"  {name}: [green]+ peer {p}[/green]")
        for p in c["peersRemoved"]:
            out.print(f"  {name}: [red]- peer {p}[/red]")
        for p, fields in c["peersChanged"].items():
            out.print(f"  {name}: [yellow]~ peer {p} ({', '.join(fields)})[/yellow]")
        for r in c["routesAdded"]:
            out.print(f"  {name}: [green]+ route {r}[/green]")
        for r in c["routesRemoved"]:
            out.print(f"  {name}: [red]- route {r}[/red]")
        for r in c["routesChanged"]:
            out.print(f"  {name}: [yellow]~ route {r}[/yellow]")


@friendly
def render(
    mesh: Path = MESH_ARG,
    output_dir: Path = typer.Option(..., "--output-dir", "-d", help="directory to write into"),
    state: Path | None = STATE_OPTION,
    diff: bool = typer.Option(
        False, "--diff", help="write nothing: show what would be added, changed and removed (exit 1 if anything)"
    ),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Write deployable files: per node a wg-quick file or Talos documents, per cluster Cilium Helm
    values, distribution configuration and the manifests as they would be applied.

    Files holding a private key are written 0600 (their folder 0700) whatever the umask. Rendering
    twice gives identical bytes; files this command wrote before and no longer produces are
    removed. The output folder may be a link (it is followed, as `cp` does); a link or a file
    where the tree needs a folder inside it is refused before anything is written. `--diff` writes
    nothing to the folder (allocations and keys are made in the state on first use, as `plan` does)
    and exits 1 when the folder differs, as `kubectl diff` does; files holding a key are named, never shown.
    `-o` is the format of this summary, as everywhere (the folder is `--output-dir`).
    """
    compiled = compile_mesh(mesh, state)
    files = rendered(compiled)
    if diff:
        _print_tree_diff(output_dir, files, output)
        return
    warnings = write_tree(output_dir, files)
    for warning in warnings[:SHOWN_WARNINGS]:
        err.print(f"warning: {warning}", markup=False)
    if len(warnings) > SHOWN_WARNINGS:
        err.print(f"warning: {len(warnings) - SHOWN_WARNINGS} more entries left alone", markup=False)
    count, secrets = len(files), sum(1 for f in files.values() if f.secret)
    del files  # 1,000 nodes render to ~160 MB of text (twice that in memory): free it before the snapshot
    compiled.store.save_applied_plan(serialize.plan_json(compiled.plan))
    if output is not Output.TABLE:
        emit({"outputDir": str(output_dir), "files": count, "secrets": secrets, "warnings": warnings}, output)
        return
    out.print(f"wrote {count} files to {output_dir} ({secrets} hold a private key, mode 0600)", markup=False)


def _print_tree_diff(output_dir: Path, files: dict[str, RenderedFile], output: Output) -> None:
    change = diff_tree(output_dir, files)
    if output is not Output.TABLE:
        emit(
            {
                "outputDir": str(output_dir),
                "added": change.added,
                "changed": [rel for rel, _, _ in change.changed],
                "removed": change.removed,
            },
            output,
        )
        if not change.empty:
            raise typer.Exit(1)
        return
    for rel in change.added:
        out.print(f"+ {rel}", markup=False, highlight=False)
    for rel, now, mode in change.changed:
        if mode is not None:
            out.print(f"~ {rel} (mode {mode})", markup=False, highlight=False)
        elif files[rel].secret:
            out.print(f"~ {rel} (holds a private key: content not shown)", markup=False, highlight=False)
        else:
            out.print(f"~ {rel}", markup=False, highlight=False)
            lines = difflib.unified_diff(
                now.splitlines(keepends=True), files[rel].content.splitlines(keepends=True), rel, rel, n=1
            )
            out.print("".join(lines).rstrip("\n"), markup=False, highlight=False)
    for rel in change.removed:
        out.print(f"- {rel}", markup=False, highlight=False)
    if change.empty:
        out.print(f"{output_dir} is up to date: {len(files)} files", markup=False)
        return
    n = (len(change.added), len(change.changed), len(change.removed))
    out.print(f"{n[0]} to add, {n[1]} to change, {n[2]} to remove in {output_dir}", markup=False)
    raise typer.Exit(1)


@friendly
def schema() -> None:
    """Print the JSON Schema of the mesh file."""
    doc = Mesh.model_json_schema(by_alias=True)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "crossmesh Mesh (crossmesh.io/v1alpha1)"
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
