"""The rules of hubs and VPN connections that a schema cannot express, with AWS's reasons.

The field-level rules (an ASN in AWS's ranges, an inside CIDR a /30 of 169.254.0.0/16 and not one AWS
reserves, IKEv2, AWS's algorithm names and DH groups) are the model's (model/mesh.py); these need the
whole file: names that must exist, one tunnel pair per connection, inside CIDRs that must not collide,
route tables that must lead somewhere, and two ASNs that must differ for eBGP.
"""

from __future__ import annotations

from crossmesh.errors import Problem
from crossmesh.load.yamlpos import Document, PathKey
from crossmesh.model.mesh import Hub, Mesh, Routing
from crossmesh.plan import hubs as hub_rule
from crossmesh.validate.common import dupes

TUNNELS_PER_CONNECTION = 2  # AWS: "Each Site-to-Site VPN connection has two tunnels"


def check(mesh: Mesh, doc: Document) -> list[Problem]:
    if not mesh.spec.hubs and not mesh.spec.vpn_connections:
        return []
    problems: list[Problem] = []
    rules = (_names, _references, _tunnels, _inside_cidrs, _asns, _routing, _route_tables, _hub_paths, _one_hub)
    for rule in rules:
        problems.extend(rule(mesh, doc))
    return problems


def _names(mesh: Mesh, doc: Document) -> list[Problem]:
    spec = mesh.spec
    out = dupes(
        doc,
        ((h.name, ("spec", "hubs", i, "name")) for i, h in enumerate(spec.hubs)),
        "hub name",
        "give each hub its own name",
    )
    out += dupes(
        doc,
        ((c.name, ("spec", "vpnConnections", i, "name")) for i, c in enumerate(spec.vpn_connections)),
        "VPN connection name",
        "give each connection its own name",
    )
    sites = {s.name for s in spec.sites}
    for i, c in enumerate(spec.vpn_connections):
        if c.name in sites:
            out.append(
                doc.problem(
                    ("spec", "vpnConnections", i, "name"),
                    f"VPN connection {c.name} is named like a site: route tables name a VPC attachment by its "
                    "site and a VPN attachment by its connection — rename the connection",
                )
            )
    for hi, h in enumerate(spec.hubs):
        out += dupes(
            doc,
            ((t.name, ("spec", "hubs", hi, "routeTables", ti, "name")) for ti, t in enumerate(h.route_tables or [])),
            "route table name",
            "give each route table of the hub its own name",
        )
    return out


def _references(mesh: Mesh, doc: Document) -> list[Problem]:
    sites = sorted({s.name for s in mesh.spec.sites})
    hubs = {h.name: h for h in mesh.spec.hubs}
    out = []
    for i, h in enumerate(mesh.spec.hubs):
        if h.site not in sites:
            out.append(
                doc.problem(
                    ("spec", "hubs", i, "site"),
                    f"hub {h.name}: site {h.site!r} is not declared — name the site whose VPC attaches, "
                    f"one of: {', '.join(sites)}",
                )
            )
    pairs: dict[tuple[str, str], int] = {}
    for i, c in enumerate(mesh.spec.vpn_connections):
        base = ("spec", "vpnConnections", i)
        hub = hubs.get(c.hub)
        if hub is None:
            known = ", ".join(sorted(hubs)) or "none — declare it under spec.hubs"
            out.append(
                doc.problem(
                    (*base, "hub"),
                    f"VPN connection {c.name}: hub {c.hub!r} is not declared, so its tunnels have no peer — "
                    f"name one of spec.hubs ({known})",
                )
            )
        if c.site not in sites:
            out.append(
                doc.problem(
                    (*base, "site"),
                    f"VPN connection {c.name}: site {c.site!r} is not declared, so its tunnels have no customer "
                    f"end — name the site of the customer gateway, one of: {', '.join(sites)}",
                )
            )
        elif hub is not None and c.site == hub.site:
            out.append(
                doc.problem(
                    (*base, "site"),
                    f"VPN connection {c.name} joins site {c.site} to hub {hub.name}, whose own VPC is in that "
                    "site — a VPN connection comes from another site's customer gateway",
                )
            )
        elif hub is not None:
            first = pairs.setdefault((c.site, c.hub), i)
            if first != i:
                other = mesh.spec.vpn_connections[first].name
                out.append(
                    doc.problem(
                        base,
                        f"site {c.site} already reaches hub {c.hub} over VPN connection {other} — crossmesh plans "
                        "one connection per site and hub (its two tunnels are the redundancy): remove one",
                    )
                )
    return out


def _tunnels(mesh: Mesh, doc: Document) -> list[Problem]:
    out = []
    for i, c in enumerate(mesh.spec.vpn_connections):
        n = len(c.tunnels)
        if n != TUNNELS_PER_CONNECTION:
            where: PathKey = ("spec", "vpnConnections", i, "tunnels")
            if n > TUNNELS_PER_CONNECTION:
                where = (*where, TUNNELS_PER_CONNECTION)
            what = "tunnel has" if n == 1 else "tunnels have"
            out.append(
                doc.problem(
                    where,
                    f"VPN connection {c.name} has {n} tunnel{'s' if n != 1 else ''}: an AWS Site-to-Site VPN "
                    f"connection has exactly two, one per AWS endpoint, so {n} {what} no peer"
                    + ("" if n < TUNNELS_PER_CONNECTION else " beyond the second")
                    + " — write two tunnels, each with its own insideCIDR",
                )
            )
    return out


def _inside_cidrs(mesh: Mesh, doc: Document) -> list[Problem]:
    """Unique across the mesh: AWS requires it across the connections of one virtual private gateway and
    warns that a repeat on a transit gateway "can create a conflict on your customer gateway"."""
    claims = sorted(
        (
            (t.inside_cidr, c.name, ti + 1, ("spec", "vpnConnections", ci, "tunnels", ti, "insideCIDR"))
            for ci, c in enumerate(mesh.spec.vpn_connections)
            for ti, t in enumerate(c.tunnels)
        ),
        key=lambda x: (x[3][2], x[3][4]),
    )
    out = []
    for k, (net, conn, index, path) in enumerate(claims):
        for other_net, other_conn, other_index, _ in claims[:k]:
            if net.overlaps(other_net):
                who = (
                    f"tunnel {other_index} of this connection"
                    if other_conn == conn
                    else (f"tunnel {other_index} of VPN connection {other_conn}")
                )
                out.append(
                    doc.problem(
                        path,
                        f"inside CIDR {net} (tunnel {index} of {conn}) overlaps {who} ({other_net}) — each tunnel "
                        "needs its own /30 of 169.254.0.0/16: choose another, such as the next free one",
                    )
                )
                break
    return out


def _asns(mesh: Mesh, doc: Document) -> list[Problem]:
    hubs = {h.name: h for h in mesh.spec.hubs}
    out = []
    for i, c in enumerate(mesh.spec.vpn_connections):
        hub = hubs.get(c.hub)
        if hub is not None and c.routing is Routing.BGP and c.customer_gateway.asn == hub.amazon_side_asn:
            out.append(
                doc.problem(
                    ("spec", "vpnConnections", i, "customerGateway", "asn"),
                    f"customer gateway ASN {c.customer_gateway.asn} equals hub {hub.name}'s Amazon-side ASN: the "
                    "BGP sessions over the tunnels are eBGP and need two different ASNs — choose another "
                    "(seed 001: 65000 for the customer, 64512 for the hub)",
                )
            )
    return out


def _one_hub(mesh: Mesh, doc: Document) -> list[Problem]:
    """A warning where a site's connections go into two hubs: the lab runs one customer gateway for all of
    them, but each hub renders its own Terraform module, and neither can write one gateway's files for
    both (render/customer_gateway.py), so `render` writes none for that site."""
    out = []
    first: dict[str, str] = {}
    for i, c in enumerate(mesh.spec.vpn_connections):
        hub = first.setdefault(c.site, c.hub)
        if hub != c.hub:
            out.append(
                doc.problem(
                    ("spec", "vpnConnections", i, "hub"),
                    f"site {c.site}'s VPN connections go into hubs {hub} and {c.hub}: `render` writes no customer "
                    f"gateway files for {c.site} (each hub is its own Terraform module) — join {c.site} to one "
                    "hub, or write its gateway's configuration yourself",
                    severity="warning",
                )
            )
    return out


def _routing(mesh: Mesh, doc: Document) -> list[Problem]:
    out = []
    for i, c in enumerate(mesh.spec.vpn_connections):
        base = ("spec", "vpnConnections", i)
        if c.routing is Routing.STATIC and not c.static_routes:
            out.append(
                doc.problem(
                    (*base, "routing"),
                    f"VPN connection {c.name} has routing: static and no staticRoutes — list the customer side's "
                    "prefixes under staticRoutes, or use routing: bgp",
                )
            )
        if c.routing is Routing.BGP and c.static_routes:
            out.append(
                doc.problem(
                    (*base, "staticRoutes"),
                    f"VPN connection {c.name} has staticRoutes but routing: bgp learns its prefixes — remove "
                    "staticRoutes, or set routing: static",
                )
            )
    return out


def _attachment_names(mesh: Mesh, hub: Hub) -> list[str]:
    return [a.name for a in hub_rule.attachments(mesh, hub)]


def _route_tables(mesh: Mesh, doc: Document) -> list[Problem]:
    out = []
    for hi, hub in enumerate(mesh.spec.hubs):
        if hub.route_tables is None:
            continue
        names = _attachment_names(mesh, hub)
        known = ", ".join(names)
        associated: dict[str, PathKey] = {}
        for ti, table in enumerate(hub.route_tables):
            base: PathKey = ("spec", "hubs", hi, "routeTables", ti)
            refs: list[tuple[str, PathKey]] = [
                (a, (*base, "associations", k)) for k, a in enumerate(table.associations)
            ]
            refs += [(a, (*base, "propagations", k)) for k, a in enumerate(table.propagations)]
            refs += [(r.attachment, (*base, "routes", k, "attachment")) for k, r in enumerate(table.routes)]
            for name, path in refs:
                if name not in names:
                    out.append(
                        doc.problem(
                            path,
                            f"route table {table.name} of hub {hub.name} points at attachment {name!r}, which the hub "
                            f"does not have — name one of its attachments ({known}: its site's VPC and its VPN "
                            "connections)",
                        )
                    )
            for k, name in enumerate(table.associations):
                path = (*base, "associations", k)
                if name in associated:
                    line = doc.where(associated[name])[0]
                    out.append(
                        doc.problem(
                            path,
                            f"attachment {name} is already associated with a route table (line {line}): a transit "
                            "gateway attachment is associated with one route table — remove one association",
                        )
                    )
                elif name in names:
                    associated[name] = path
            out += dupes(
                doc,
                ((str(r.destination), (*base, "routes", k, "destination")) for k, r in enumerate(table.routes)),
                "static route destination",
                f"route table {table.name} holds one route per destination: keep one",
            )
    return out


def _hub_paths(mesh: Mesh, doc: Document) -> list[Problem]:
    """A connection must carry its site to the hub's VPC and back: otherwise the tunnels come up and
    nothing crosses them (a route table without the route, or an attachment in no table)."""
    hubs = {h.name: (i, h) for i, h in enumerate(mesh.spec.hubs)}
    sites = {s.name for s in mesh.spec.sites}
    out = []
    for c in mesh.spec.vpn_connections:
        if c.hub not in hubs or c.site not in sites or hubs[c.hub][1].site not in sites:
            continue  # reported by _references
        hi, hub = hubs[c.hub]
        if c.site == hub.site or len(c.tunnels) != TUNNELS_PER_CONNECTION:
            continue
        if c.routing is Routing.STATIC and not c.static_routes:
            continue  # reported by _routing
        atts = {a.name: a for a in hub_rule.attachments(mesh, hub)}
        tables = hub_rule.route_tables(mesh, hub)
        for src, dst in ((c.name, hub.site), (hub.site, c.name)):
            table = next((t for t in tables if src in t.associations), None)
            if table is None:
                out.append(
                    doc.problem(
                        ("spec", "hubs", hi, "routeTables"),
                        f"attachment {src} of hub {hub.name} is associated with no route table, so the hub drops "
                        f"what arrives from it — add {src} to one table's associations",
                    )
                )
                break
            if not hub_rule.reaches(mesh, hub, src, atts[dst]):
                prefixes = ", ".join(map(str, atts[dst].prefixes)) or "its prefixes"
                out.append(
                    doc.problem(
                        ("spec", "hubs", hi, "routeTables", hub.route_tables.index(table) if hub.route_tables else 0),
                        f"route table {table.name} (associated with {src}) does not route {prefixes} to attachment "
                        f"{dst}, so sites {c.site} and {hub.site} cannot reach each other through hub {hub.name} — "
                        f"add {dst} to its propagations, or a route to {dst}",
                    )
                )
                break
    return out
