"""The plan as a Graphviz picture (DOT text), as Kilo's `kgctl graph` draws its topology.

Sites are boxes (Graphviz clusters) labelled with their provider and network; inside each, the
Kubernetes clusters' share of the site and their nodes. Gateways are hexagons, nodes behind NAT
are drawn dashed. WireGuard tunnels are the solid edges between nodes — every pair the plan makes
peers, so a full mesh shows every cross-site pair and topology gateways only gateway pairs, with
standby tunnels dotted; past BUNDLE_OVER tunnels, one edge per pair of sites with the count —
and a node that leaves its site through a gateway has a dashed edge to it. The internet is one
node outside every site with a dotted link to each: the tunnels run directly between nodes, not
through any hub.

With tunnel health (`observe.health`), each tunnel is coloured by it and carries its traffic.

Every name in the picture comes from the mesh file, so every one is quoted by `quote`: a name
cannot end a string, start an attribute or become an HTML-like label. Output is sorted by name
so the same plan gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from crossmesh.model.plan import NodePlan, Plan, RouteVia
from crossmesh.observe.health import Health, Pair, TunnelHealth, human_bytes, tunnel_pairs

COLOURS = {
    Health.UP: "#2e7d32",
    Health.STALE: "#ef6c00",
    Health.DOWN: "#c62828",
    Health.UNKNOWN: "#546e7a",
}
# Past this many tunnels, one edge per pair of sites stands for all the tunnels between them (with
# their count by health): a 30-node full mesh has 360 tunnels, and 360 edges bury the picture.
BUNDLE_OVER = 40
WORST_FIRST = (Health.DOWN, Health.STALE, Health.UNKNOWN, Health.UP)


def quote(text: str) -> str:
    """`text` as a DOT double-quoted string that shows exactly `text`.

    Backslash starts Graphviz's label escapes (\\N, \\G, \\l …) and is doubled; a double quote would
    end the string; `&` starts an entity in labels (`&lt;` would show `<`); line breaks and other
    control characters become spaces (a name is one line)."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "&":
            out.append("&amp;")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(" ")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _label(*lines: str) -> str:
    """A multi-line label: each line quoted as above, joined by DOT's centred line break."""
    return "\\n".join(quote(line)[1:-1] for line in lines)


def _attrs(**attrs: str) -> str:
    """DOT attributes; a value already quoted by `quote`/`_label` is wrapped, never re-escaped."""
    return "[" + ", ".join(f'{k}="{v}"' for k, v in sorted(attrs.items())) + "]"


def node_id(name: str) -> str:
    return quote(f"node:{name}")[1:-1]


def dot(plan: Plan, health: Mapping[Pair, TunnelHealth] | None = None) -> str:
    """The DOT text of `plan`; `health`: each tunnel pair's (absent pairs: unknown), or None when no
    lab was read (tunnels drawn plain)."""
    lines = [
        f"graph {quote(plan.mesh)} {{",
        "  graph "
        + _attrs(
            compound="true",
            fontname="Helvetica",
            label=_label(f"mesh {plan.mesh}", f"topology: {plan.topology.value}"),
            labelloc="t",
            nodesep="0.4",
            ranksep="1.0",
        )
        + ";",
        "  node " + _attrs(fontname="Helvetica", fontsize="11", shape="box", style="rounded") + ";",
        "  edge " + _attrs(fontname="Helvetica", fontsize="9") + ";",
        "  "
        + quote("internet")
        + " "
        + _attrs(
            id="internet",
            label=_label("internet", "(no hub: tunnels go node to node)"),
            shape="ellipse",
            style="dashed",
        )
        + ";",
    ]
    nodes_by_site: dict[str, list[NodePlan]] = {}
    for n in plan.nodes:
        nodes_by_site.setdefault(n.site, []).append(n)
    anchors: dict[str, str] = {}  # site cluster id → a node inside it (where edges to the site end)
    site_ids: dict[str, str] = {}
    for i, site in enumerate(sorted(plan.sites, key=lambda s: s.name)):
        members = sorted(nodes_by_site.get(site.name, []), key=lambda n: n.name)
        sid = f"cluster_site_{i}"
        lines.append(f"  subgraph {sid} {{")
        label = _label(f"site {site.name}", f"{site.provider.value} {site.region}".strip(), str(site.network))
        site_id = quote(f"site:{site.name}")[1:-1]
        lines.append(f'    graph [id="{site_id}", label="{label}", style="rounded", color="#455a64"];')
        by_cluster: dict[str, list[NodePlan]] = {}
        for n in members:
            by_cluster.setdefault(n.cluster, []).append(n)
        for j, (cluster, cnodes) in enumerate(sorted(by_cluster.items())):
            lines.append(f"    subgraph {sid}_k8s_{j} {{")
            c = plan.cluster(cluster)
            clabel = _label(f"cluster {cluster}", f"{c.distribution.value} / {c.cni.value}")
            kid = quote(f"site:{site.name}/cluster:{cluster}")[1:-1]  # not the site's id, which it would inherit
            lines.append(f'      graph [id="{kid}", label="{clabel}", style="dashed", color="#90a4ae"];')
            for n in cnodes:
                lines.append("      " + _node(n))
            lines.append("    }")
        lines.append("  }")
        if members:
            anchors[sid] = members[0].name
            site_ids[site.name] = sid
    for sid, anchor in anchors.items():
        lines.append(
            f'  "internet" -- "{node_id(anchor)}" '
            + _attrs(color="#b0bec5", lhead=sid, style="dotted", tooltip="the site's link to the internet")
            + ";"
        )
    if len(tunnel_pairs(plan)) > BUNDLE_OVER:
        lines.extend(_site_bundles(plan, health, site_ids, anchors))
    else:
        lines.extend(_tunnels(plan, health))
    lines.extend(_gateway_links(plan))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node(n: NodePlan) -> str:
    marks = []
    if n.gateway:
        marks.append("gateway" + (", preferred" if n.preferred else ""))
    marks.append("behind NAT" if n.natted else f"public {n.public_address}")
    attrs = {
        "id": node_id(n.name),
        "label": _label(n.name, str(n.address), *marks),
        "tooltip": _label(f"{n.name} ({n.cluster}, site {n.site})"),
        "class": "node" + (" gateway" if n.gateway else "") + (" nat" if n.natted else ""),
    }
    if n.gateway:
        attrs |= {"shape": "hexagon", "style": "bold"}
    if n.natted:
        attrs["style"] = "dashed,bold" if n.gateway else "dashed,rounded"
    return f'"{node_id(n.name)}" ' + _attrs(**attrs) + ";"


def _tunnels(plan: Plan, health: Mapping[Pair, TunnelHealth] | None) -> list[str]:
    out = []
    for (a, b), standby in tunnel_pairs(plan):
        h = None if health is None else health.get((a, b))
        state = Health.UNKNOWN if h is None else h.health
        text = f"{a} ↔ {b}: WireGuard" + (" (standby)" if standby else "")
        attrs = {
            "id": quote(f"tunnel:{a}|{b}")[1:-1],
            "class": f"tunnel {state.value}" + (" standby" if standby else ""),
            "penwidth": "1" if standby else "2",
        }
        if standby:
            attrs["style"] = "dotted"
        if health is not None:
            attrs["color"] = COLOURS[state]
        if h is not None:
            age = "never" if h.handshake_age is None else f"{int(h.handshake_age)} s ago"
            traffic = f"rx {human_bytes(h.rx)} tx {human_bytes(h.tx)}"
            text += f", {state.value}: handshake {age}, {traffic}"
            attrs["label"] = _label(human_bytes(h.rx + h.tx))
            attrs["fontcolor"] = COLOURS[state]
        elif health is not None:
            text += ": not read"
        attrs["tooltip"] = _label(text)
        out.append(f'  "{node_id(a)}" -- "{node_id(b)}" ' + _attrs(**attrs) + ";")
    return out


def _site_bundles(
    plan: Plan, health: Mapping[Pair, TunnelHealth] | None, site_ids: Mapping[str, str], anchors: Mapping[str, str]
) -> list[str]:
    """One edge per pair of sites for all the tunnels between them: their number by health, coloured by
    the worst (one tunnel down makes the pair red), traffic summed."""
    site = {n.name: n.site for n in plan.nodes}
    bundles: dict[tuple[str, str], list[Health]] = {}
    traffic: dict[tuple[str, str], int] = {}
    for (a, b), _ in tunnel_pairs(plan):
        key = (min(site[a], site[b]), max(site[a], site[b]))
        h = None if health is None else health.get((a, b))
        bundles.setdefault(key, []).append(Health.UNKNOWN if h is None else h.health)
        traffic[key] = traffic.get(key, 0) + (0 if h is None else h.rx + h.tx)
    out = []
    for (sa, sb), states in sorted(bundles.items()):
        worst = next(w for w in WORST_FIRST if w in states)
        by_state = ", ".join(f"{states.count(w)} {w.value}" for w in WORST_FIRST if w in states)
        text = f"{len(states)} tunnels" + (f": {by_state}" if health is not None else "")
        if health is not None:
            text += f", {human_bytes(traffic[(sa, sb)])}"
        ta, tb = site_ids[sa], site_ids[sb]
        attrs = {
            "id": quote(f"tunnels:{sa}|{sb}")[1:-1],
            "class": f"tunnels {worst.value if health is not None else Health.UNKNOWN.value}",
            "label": _label(text),
            "ltail": ta,
            "lhead": tb,
            "penwidth": "3",
            "tooltip": _label(f"site {sa} ↔ site {sb}: {text}"),
        }
        if health is not None:
            attrs |= {"color": COLOURS[worst], "fontcolor": COLOURS[worst]}
        out.append(f'  "{node_id(anchors[ta])}" -- "{node_id(anchors[tb])}" ' + _attrs(**attrs) + ";")
    return out


def _gateway_links(plan: Plan) -> list[str]:
    """Each node without a tunnel of its own to the gateway its cross-site routes go through."""
    links = sorted(
        {(n.name, r.peer) for n in plan.nodes for r in n.routes if r.via is RouteVia.GATEWAY and r.peer != n.name}
    )
    return [
        f'  "{node_id(a)}" -- "{node_id(g)}" '
        + _attrs(
            id=quote(f"via:{a}|{g}")[1:-1],
            color="#78909c",
            style="dashed",
            tooltip=_label(f"{a} reaches other sites via gateway {g}"),
            **{"class": "via-gateway"},
        )
        + ";"
        for a, g in links
    ]
