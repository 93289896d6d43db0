"""`crossmesh observe`: the flows every node of the lab saw, read through the lab's flow relay and
filtered as `hubble observe` filters them."""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from datetime import datetime, tzinfo
from enum import StrEnum
from pathlib import Path

import typer
from rich.markup import escape

from crossmesh.cli.common import err, friendly, out
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import relay_client
from crossmesh.errors import UsageError
from crossmesh.observe import filters
from crossmesh.observe import format as fmt
from crossmesh.observe.flows import Flow, router_node
from crossmesh.observe.wire import Status

DEFAULT_LAST = 20  # as hubble observe: with no --last, --since, --until or --follow
_TAG = re.compile(r"^(?:cm-)?([A-Za-z0-9]{1,16})$")


class FlowOutput(StrEnum):
    TABLE = "table"
    JSON = "json"


HELP = """Show the flows the lab's nodes saw: each new connection and each dropped packet, as the kernel
logged them, read from every node through the lab's flow relay.

[bold]Filters[/bold] (as hubble observe: a flag repeated means either value; different flags must all hold):

  --from/--to  CLUSTER/NAMESPACE/POD, NAMESPACE/POD (any cluster), a name prefix ending in * (default/x-wing-*),
               a node name (c1-n1, or c1-*), an IPv4 address or CIDR (10.11.0.0/16), or world.
               Pod and node names must be the lab's: a typo is an error with the close names.
  --namespace  either end's namespace;  --port  either end's port (or the service port it was sent to);
  --verdict FORWARDED|DROPPED;  --protocol tcp|udp|icmp|sctp;  --node  the node that recorded the flow
               (router/SITE: what the site router's firewall dropped);
  --since/--until  30s, 5m, 2h, 1d, 1h30m back from now, or a time: 2024-05-01T12:00:00Z
               (without an offset: local time).

Without --last, --since, --until or --follow, the last 20 matching flows are shown; with --follow
alone, only new flows. After the flows, each node is reported on stderr: flows recorded, lost (the
kernel's log queue overflowed), evicted (no longer in its ring buffer), or why its flows could not
be read. Ctrl-C ends --follow (exit 0); exit 1 when the relay closes early.

[bold]Examples[/bold]

  crossmesh observe --verdict dropped
  crossmesh observe --from cluster1/default/x-wing-0 --to default/deathstar-* --port 80
  crossmesh observe --namespace default --since 5m -o json | jq .destination.name
  crossmesh observe -f --verdict DROPPED --lab 3f2a
"""


@friendly
def observe(
    sources: list[str] = typer.Option(
        [], "--from", metavar="ENDPOINT", help="source endpoint (repeatable: any of them)"
    ),
    destinations: list[str] = typer.Option(
        [], "--to", metavar="ENDPOINT", help="destination endpoint (repeatable: any of them)"
    ),
    namespaces: list[str] = typer.Option(
        [], "--namespace", "-n", metavar="NAMESPACE", help="either end's namespace (repeatable)"
    ),
    verdicts: list[str] = typer.Option(
        [], "--verdict", metavar="VERDICT", help="FORWARDED or DROPPED, any case (repeatable)"
    ),
    ports: list[str] = typer.Option([], "--port", metavar="PORT", help="either end's port, 1-65535 (repeatable)"),
    protocols: list[str] = typer.Option(
        [], "--protocol", metavar="PROTOCOL", help="tcp, udp, icmp or sctp (repeatable)"
    ),
    nodes: list[str] = typer.Option(
        [], "--node", metavar="NODE", help="the node that recorded the flow, or router/SITE (repeatable)"
    ),
    since: str | None = typer.Option(
        None, "--since", metavar="WHEN", help="flows from: 30s, 5m, 2h, 1d back, or an RFC 3339 time"
    ),
    until: str | None = typer.Option(
        None, "--until", metavar="WHEN", help="flows up to (same forms as --since; not with -f)"
    ),
    last: int | None = typer.Option(
        None, "--last", min=1, metavar="N", help="the N most recent matching flows (default 20)"
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new flows until Ctrl-C"),
    output: FlowOutput = typer.Option(
        FlowOutput.TABLE,
        "-o",
        "--output",
        metavar="table|json",
        help="table for people; json: one flow per line (Flow.to_json)",
    ),
    lab: str | None = typer.Option(
        None, "--lab", metavar="TAG", help="the lab's tag, as `lab status` shows it (cm-TAG or TAG)"
    ),
    mesh: Path | None = typer.Option(
        None, "--mesh", metavar="MESH", help="the lab's mesh file (default: the only running lab)"
    ),
    socket: Path | None = typer.Option(
        None,
        "--socket",
        metavar="PATH",
        help="read this relay socket instead of the lab's /run/crossmesh/cm-TAG/flows.sock; "
        "pod and node names are then checked only if --lab or --mesh is given",
    ),
) -> None:
    if until is not None and follow:
        raise UsageError("--until cannot be used with --follow: a stream that follows has no end; drop one")
    if lab is not None and mesh is not None:
        raise UsageError("--lab and --mesh both name the lab: give one")
    state = _lab(lab, mesh) if socket is None or lab is not None or mesh is not None else None
    if state is not None and not state.flow_logs:
        raise UsageError(f"flow logs are off for this lab: `crossmesh lab up {state.mesh} --flow-logs`")
    known = (
        filters.Known(
            pods=frozenset(state.pods),
            nodes=frozenset(state.nodes),
            routers=frozenset(router_node(site) for site in state.sites),
        )
        if state
        else None
    )
    now, tz = time.time(), _local_zone()
    try:
        wanted = filters.parse(
            sources=sources,
            destinations=destinations,
            namespaces=namespaces,
            verdicts=verdicts,
            ports=ports,
            protocols=protocols,
            nodes=nodes,
            since=since,
            until=until,
            now=now,
            tz=tz,
            known=known,
        )
    except filters.FilterError as e:
        for problem in e.problems:
            err.print(f"[red]error:[/red] {escape(problem)}")
        raise typer.Exit(2) from None
    if last is None and not (since or until or follow):
        last = DEFAULT_LAST
    # --follow alone: only what comes next; otherwise the relay's history from --since on.
    start = wanted.since if wanted.since is not None else (now if follow and last is None else None)
    path = socket if socket is not None else relay_client.socket_path(state.dir) if state else None
    if path is None:  # not reached: a lab is looked up whenever no --socket is given
        raise UsageError("no lab and no --socket: name the lab with --lab TAG")
    stream = relay_client.RelayStream(path, since=start, follow=follow)
    try:
        stream.connect()
    except relay_client.NoRelay as e:
        if state is None:
            raise
        raise UsageError(
            f"the lab `{state.tag}` has no flow relay running (is it up? `crossmesh lab status`): {e}"
        ) from None
    printer = _Printer(output, tz)
    with stream:
        try:
            complete = _show(stream, wanted, printer, last=last, follow=follow)
        except KeyboardInterrupt:
            if not follow:
                raise
            stream.close()  # how a follow ends: say where things stand, exit 0
            printer.footer(stream, matched=printer.shown, last=None)
            return
    if not complete:
        raise typer.Exit(1)


def _lab(tag: str | None, mesh: Path | None) -> labs.LabState:
    if tag is None:
        return labs.find_lab(mesh)
    m = _TAG.match(tag)
    if not m:
        raise UsageError(f"--lab {tag!r}: a lab tag is letters and digits, as `crossmesh lab status` shows: cm-3f2a")
    state = labs.LabState.load(m.group(1))
    if state is None:
        running = ", ".join(f"{s.tag} ({s.mesh_name})" for s in labs.running_labs()) or "none"
        raise UsageError(f"--lab {tag!r}: no lab cm-{m.group(1)} is running (running: {running})")
    return state


def _local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    if zone is None:  # not on any platform crossmesh runs on
        raise UsageError("the local time zone is unknown: set TZ")
    return zone


def _show(
    stream: relay_client.RelayStream,
    wanted: filters.FlowFilter,
    printer: _Printer,
    *,
    last: int | None,
    follow: bool,
) -> bool:
    """Print the history (the last `last` matching flows) and the nodes' status, then, if following,
    each new matching flow and each change of status. False when the relay closed early."""
    history: deque[Flow] = deque(maxlen=last)
    matched = 0
    items = iter(stream)
    for item in items:
        if isinstance(item, Status):
            break
        if wanted.matches(item):
            matched += 1
            history.append(item)
    printer.history(list(history))
    printer.footer(stream, matched=matched, last=last)
    if not follow or stream.status is None:
        return stream.status is not None
    seen = stream.status
    for item in items:
        if isinstance(item, Status):
            for line in fmt.changes(seen, item):
                err.print(line)
            seen = item
        elif wanted.matches(item):
            printer.flow(item)
    err.print("[red]the flow relay closed the stream[/red] (was the lab brought down?)")
    printer.footer(stream, matched=printer.shown, last=None)
    return False


class _Printer:
    """Flows to stdout (a table or JSON lines); the status footer to stderr, so stdout stays flows."""

    def __init__(self, output: FlowOutput, tz: tzinfo) -> None:
        self.output, self.tz = output, tz
        self.widths = fmt.Widths()
        self.headed = False
        self.shown = 0

    def history(self, flows: list[Flow]) -> None:
        self.widths = fmt.widths(flows)
        for f in flows:
            self.flow(f)

    def flow(self, flow: Flow) -> None:
        self.shown += 1
        if self.output is FlowOutput.JSON:
            sys.stdout.write(fmt.json_line(flow) + "\n")
            sys.stdout.flush()
            return
        if not self.headed:
            out.print(fmt.header(self.widths))
            self.headed = True
        out.print(fmt.row(flow, self.widths, self.tz))

    def footer(self, stream: relay_client.RelayStream, *, matched: int, last: int | None) -> None:
        for line in fmt.footer(
            stream.status,
            malformed=stream.malformed,
            first_problem=stream.first_problem,
            shown=self.shown,
            matched=matched,
            last=last,
        ):
            err.print(line)
