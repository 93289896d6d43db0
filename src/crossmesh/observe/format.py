"""How `crossmesh observe` prints flows: a table as `hubble observe -o table` prints one, JSON lines,
and the status of each node's ring buffer.

The table's rows are rich markup: every text that came from the relay (names, labels, summaries,
errors) is escaped before it is wrapped in markup, so a pod named `[red]x` prints as itself, and its
control characters are shown as escapes (`\x1b`, `\n`, `\u202e`), so a relay cannot move the
cursor, clear the screen or reorder what the terminal shows (rich only drops a few of them). Columns
are padded on the plain text, then escaped, so they stay aligned. Drops are printed red, with the
reason first in the summary. A follow stream cannot know its widest row in advance: `widths` is
taken from the rows at hand (the history) with a floor, and a later, longer row only pushes its own
line out. JSON output is one `Flow.to_json()` per line, nothing else, for `jq` and other tools.

Pure: the time zone is an argument.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from rich.markup import escape

from crossmesh.observe.flows import Flow, FlowEndpoint, Verdict
from crossmesh.observe.wire import NodeStatus, Status

TIME_WIDTH = 19  # "May 01 12:00:00.123"
VERDICT_WIDTH = 9  # "FORWARDED"
GAP = "  "


@dataclass(frozen=True, slots=True)
class Widths:
    """Widths of the table's columns whose text varies."""

    node: int = 8
    source: int = 28
    destination: int = 28
    type: int = 5


def safe(text: str) -> str:
    """Untrusted text as markup that prints as itself, on one line, without terminal controls."""
    return escape(visible(text))


def visible(text: str) -> str:
    """`text` with every character that is not printable (controls, line breaks, bidi overrides)
    written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def json_line(flow: Flow) -> str:
    """One flow as one line of JSON (keys sorted, so lines compare as text)."""
    return json.dumps(flow.to_json(), sort_keys=True, separators=(",", ":"))


def endpoint_text(ep: FlowEndpoint, port: int) -> str:
    """CLUSTER/NAMESPACE/POD, the node's name or the world's address, with `:port` when there is one."""
    return f"{ep.ref}:{port}" if port else ep.ref


def time_text(t: float, tz: tzinfo) -> str:
    try:
        return datetime.fromtimestamp(t, tz).strftime("%b %d %H:%M:%S.%f")[:-3]
    except (ValueError, OverflowError, OSError):  # a time no calendar has (the relay is not trusted)
        return str(t)[:TIME_WIDTH]


def type_text(flow: Flow) -> str:
    return f"{flow.protocol}/HTTP" if flow.http else flow.protocol


NOTE = " — "  # in a relay's summary line, what follows is its remark on the flow (observe/enrich.py)


def summary(flow: Flow) -> str:
    """The SUMMARY column: for a drop its reason, the direction and the policy that decided first;
    then what the flow carries (HTTP, service, tunnel) and the relay's remark, if any (the rest of
    its summary line repeats the other columns)."""
    parts = []
    if flow.verdict is Verdict.DROPPED:
        why = flow.drop_reason.value or "dropped"
        if flow.direction:
            why += f" at {flow.direction}"
        decided = " ".join(x for x in (flow.policy, f"rule {flow.rule}" if flow.rule else "") if x)
        parts.append(f"{why} ({decided})" if decided else why)
    if flow.http:
        status = f" → {flow.http.status}" if flow.http.status else ""
        parts.append(f"{flow.http.method} {flow.http.path}{status}")
    if flow.service:
        via = f" ({flow.service_address})" if flow.service_address else ""
        to = f" → {flow.backend}" if flow.backend else ""
        parts.append(f"service {flow.service}{via}{to}")
    if flow.tunnel:
        parts.append(f"over WireGuard with {flow.tunnel.peer} ({flow.tunnel.site})")
    if NOTE in flow.summary:  # the relay's remark (a disagreement with policy trace, the L7 proxy)
        parts.append(flow.summary.split(NOTE, 1)[1])
    return "; ".join(parts)


def widths(flows: Iterable[Flow], floor: Widths = Widths()) -> Widths:
    """Column widths that fit every flow given, at least `floor`."""
    w = floor
    for f in flows:
        w = Widths(
            node=max(w.node, len(visible(f.node))),
            source=max(w.source, len(visible(endpoint_text(f.source, f.source_port)))),
            destination=max(w.destination, len(visible(endpoint_text(f.destination, f.destination_port)))),
            type=max(w.type, len(visible(type_text(f)))),
        )
    return w


def header(w: Widths) -> str:
    cells = ("TIME", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")
    return "[bold]" + _line(cells, w) + "[/bold]"


def row(flow: Flow, w: Widths, tz: tzinfo) -> str:
    """One flow as a table row, in rich markup; a drop is red from end to end."""
    cells = (
        time_text(flow.time, tz),
        flow.node,
        endpoint_text(flow.source, flow.source_port),
        endpoint_text(flow.destination, flow.destination_port),
        type_text(flow),
        flow.verdict.value,
        summary(flow),
    )
    text = _line(cells, w)
    if flow.verdict is Verdict.DROPPED:
        return f"[red]{text}[/red]"
    return text


def _line(cells: tuple[str, ...], w: Widths) -> str:
    sizes = (TIME_WIDTH, w.node, w.source, w.destination, w.type, VERDICT_WIDTH)
    padded = [escape(visible(c).ljust(n)) for c, n in zip(cells, sizes, strict=False)]
    # Trailing spaces go before escaping: stripped after, they could leave a user's backslash
    # last, where rich would read it as escaping the row's closing [/red]. Spaces only: a trailing
    # control character (a path ending in "\r") is shown, as its escape, not dropped.
    return GAP.join([*padded, safe(cells[-1].rstrip(" "))]).rstrip(" ")


def footer(
    status: Status | None, *, malformed: int, first_problem: str = "", shown: int, matched: int, last: int | None
) -> list[str]:
    """The lines after the flows, in rich markup: how many were shown, each node's recorded, lost
    (loudly) and evicted counts, the nodes whose flows could not be read, and the relay's malformed
    lines."""
    lines = []
    if last is not None and matched > shown:
        lines.append(f"{shown} flows shown: the last {last} of {matched} matching (--last N shows more)")
    else:
        lines.append(f"{shown} flow{'' if shown == 1 else 's'} shown")
    if status is None:
        lines.append("[red]the relay sent no status line (it closed early): node counts are unknown[/red]")
    else:
        lines.extend(node_line(name, s) for name, s in status.nodes.items())
        if not status.nodes:
            lines.append("[yellow]the relay reports no node[/yellow]")
    if malformed:
        first = f" (first: {safe(first_problem)})" if first_problem else ""
        lines.append(
            f"[bold yellow]{malformed} line{'s' if malformed != 1 else ''} from the relay "
            f"{'were' if malformed != 1 else 'was'} malformed and skipped{first}[/bold yellow]"
        )
    return lines


def node_line(name: str, s: NodeStatus) -> str:
    """A node's status, in rich markup: recorded and lost (loudly: flows the kernel dropped before they
    were read), evicted (older flows its ring no longer holds), or why its flows could not be read."""
    node = safe(name)
    if s.error:
        return f"[bold red]{node}: flows unreadable: {safe(s.error)}[/bold red]"
    evicted = f", {s.evicted} evicted (older flows no longer in its ring buffer)" if s.evicted else ""
    if s.lost:
        return (
            f"{node}: {s.recorded} recorded, [bold red]{s.lost} lost[/bold red]{evicted} "
            "[red](the kernel's log queue overflowed: they were never recorded)[/red]"
        )
    return f"{node}: {s.recorded} recorded, 0 lost{evicted}"


def changes(before: Status | None, after: Status) -> list[str]:
    """While following: what a new status line says that the last did not — flows newly lost, a node
    whose flows became unreadable or readable again, a node no longer reported."""
    old = before.nodes if before is not None else {}
    lines = []
    for name, s in after.nodes.items():
        was = old.get(name)
        node = safe(name)
        if s.error and (was is None or was.error != s.error):
            lines.append(node_line(name, s))
        elif was is not None and was.error and not s.error:
            lines.append(f"[green]{node}: flows readable again[/green]")
        if was is not None and s.lost > was.lost:
            lines.append(f"[bold red]{node}: {s.lost - was.lost} more flows lost[/bold red] ({s.lost} in all)")
        elif was is None and s.lost and before is not None:
            lines.append(node_line(name, s))
    lines.extend(
        f"[yellow]{safe(name)}: no longer reported by the relay[/yellow]" for name in old if name not in after.nodes
    )
    return lines
