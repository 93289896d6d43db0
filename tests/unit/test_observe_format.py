"""How `crossmesh observe` prints: aligned table rows as a terminal shows them, drops in red, text
from the relay printed as itself (never as markup), JSON lines that read back as the same flows, and
the nodes' status with losses and unreadable nodes said loudly."""

from __future__ import annotations

import io
import json
from datetime import UTC

from fake_flow_relay import flow, pod
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from crossmesh.observe import format as fmt
from crossmesh.observe.flows import DropReason, Flow, FlowEndpoint, Http, Tunnel, Verdict
from crossmesh.observe.wire import NodeStatus, Status

NOW = 1_714_564_800.0
XWING = pod("cluster1/default/x-wing-0", "10.11.0.5")
DEATHSTAR = pod("cluster2/empire/deathstar-1", "10.12.0.7")
WORLD = FlowEndpoint(address="203.0.113.9")


def shown(markup: str, *, colour: bool = False) -> str:
    """What a terminal shows for `markup` (with ANSI colours if `colour`)."""
    buf = io.StringIO()
    console = Console(
        file=buf, width=400, color_system="standard" if colour else None, force_terminal=colour, highlight=False
    )
    console.print(markup, soft_wrap=True)
    return buf.getvalue().rstrip("\n")


def test_rows_are_aligned_under_the_header() -> None:
    flows = [
        flow(NOW, XWING, DEATHSTAR),
        flow(NOW + 1.5, WORLD, XWING, port=8080, node="c2-n1-long-node-name"),
        flow(NOW + 2, DEATHSTAR, WORLD, protocol="UDP", port=53, verdict=Verdict.DROPPED),
    ]
    w = fmt.widths(flows)
    lines = [shown(fmt.header(w))] + [shown(fmt.row(f, w, UTC)) for f in flows]
    starts = [[line.index(word) for word in words] for line, words in zip(lines, _cells(flows), strict=True)]
    assert all(s == starts[0] for s in starts), lines
    assert lines[1].startswith("May 01 12:00:00.000  c1-n1")
    assert lines[1].split() == [
        "May", "01", "12:00:00.000", "c1-n1", "cluster1/default/x-wing-0:40000", "cluster2/empire/deathstar-1:80",
        "TCP", "FORWARDED",
    ]  # fmt: skip
    assert lines[2].startswith("May 01 12:00:01.500")


def _cells(flows: list[Flow]) -> list[list[str]]:
    header = [["TIME", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT"]]
    return header + [
        [
            "May",
            f.node,
            fmt.endpoint_text(f.source, f.source_port),
            fmt.endpoint_text(f.destination, f.destination_port),
            f.protocol,
            f.verdict.value,
        ]
        for f in flows
    ]


def test_a_drop_is_red_and_a_forwarded_flow_is_not() -> None:
    w = fmt.Widths()
    dropped = shown(fmt.row(flow(NOW, XWING, DEATHSTAR, verdict=Verdict.DROPPED), w, UTC), colour=True)
    forwarded = shown(fmt.row(flow(NOW, XWING, DEATHSTAR), w, UTC), colour=True)
    assert dropped.startswith("\x1b[31m") and "DROPPED" in dropped
    assert "\x1b[31m" not in forwarded


def test_text_from_the_relay_is_printed_as_itself() -> None:
    hostile = FlowEndpoint(address="10.11.0.6", kind="pod", cluster="[red]c", namespace="[/]", name="x\\")
    f = flow(NOW, hostile, DEATHSTAR, summary="a -> b — [bold blink]boom[/bold blink] [link=http://x]y[/link]")
    w = fmt.widths([f])
    line = shown(fmt.row(f, w, UTC))
    assert "[red]c/[/]/x\\:40000" in line
    assert line.endswith("[bold blink]boom[/bold blink] [link=http://x]y[/link]")
    status = Status({"[b]n": NodeStatus(error="[red]oops\\")})
    assert shown("\n".join(fmt.footer(status, malformed=1, first_problem="[/x]", shown=0, matched=0, last=20))) == (
        "0 flows shown\n[b]n: flows unreadable: [red]oops\\\n"
        "1 line from the relay was malformed and skipped (first: [/x])"
    )


def test_the_summary_gives_a_drops_reason_first_then_what_the_flow_carries() -> None:
    drop = flow(
        NOW,
        XWING,
        DEATHSTAR,
        verdict=Verdict.DROPPED,
        drop_reason=DropReason.POLICY_DENIED,
        direction="ingress",
        policy="cluster2/empire/deny-rebels",
        rule="ingress[0]",
    )
    assert fmt.summary(drop) == "POLICY_DENIED at ingress (cluster2/empire/deny-rebels rule ingress[0])"
    assert fmt.summary(flow(NOW, XWING, DEATHSTAR, verdict=Verdict.DROPPED, summary="a -> b — SYN")) == "dropped; SYN"
    carried = flow(
        NOW,
        XWING,
        DEATHSTAR,
        http=Http("GET", "/v1/request-landing", 200),
        service="cluster2/empire/deathstar",
        service_address="10.96.0.10:80",
        backend="cluster2/empire/deathstar-1",
        tunnel=Tunnel(peer="c2-n1", site="aws-eu"),
    )
    assert fmt.summary(carried) == (
        "GET /v1/request-landing → 200; service cluster2/empire/deathstar (10.96.0.10:80) → "
        "cluster2/empire/deathstar-1; over WireGuard with c2-n1 (aws-eu)"
    )
    assert fmt.type_text(carried) == "TCP/HTTP"


def test_a_time_no_calendar_has_is_printed_as_a_number() -> None:
    assert fmt.time_text(float("inf"), UTC) == "inf"
    assert fmt.time_text(1e300, UTC) == "1e+300"


def test_the_footer_says_losses_and_unreadable_nodes_loudly() -> None:
    status = Status(
        {
            "c1-n1": NodeStatus(recorded=120),
            "c1-n2": NodeStatus(recorded=5000, lost=17, evicted=904),
            "c2-n1": NodeStatus(error="cannot open NFLOG group 14: Operation not permitted"),
        }
    )
    lines = fmt.footer(status, malformed=0, shown=20, matched=143, last=20)
    assert [shown(line) for line in lines] == [
        "20 flows shown: the last 20 of 143 matching (--last N shows more)",
        "c1-n1: 120 recorded, 0 lost",
        "c1-n2: 5000 recorded, 17 lost, 904 evicted (older flows no longer in its ring buffer) "
        "(the kernel's log queue overflowed: they were never recorded)",
        "c2-n1: flows unreadable: cannot open NFLOG group 14: Operation not permitted",
    ]
    assert "\x1b[1;31m17 lost" in shown(lines[2], colour=True)
    assert shown(lines[3], colour=True).startswith("\x1b[1;31m")
    assert shown(fmt.footer(None, malformed=0, shown=0, matched=0, last=None)[1]) == (
        "the relay sent no status line (it closed early): node counts are unknown"
    )


def test_while_following_only_what_changed_is_said() -> None:
    before = Status({"a": NodeStatus(recorded=1), "b": NodeStatus(recorded=5, lost=2), "c": NodeStatus(error="x")})
    assert fmt.changes(before, before) == []
    after = Status(
        {"a": NodeStatus(recorded=9, error="gone"), "b": NodeStatus(recorded=9, lost=7), "d": NodeStatus(recorded=1)}
    )
    assert [shown(line) for line in fmt.changes(before, after)] == [
        "a: flows unreadable: gone",
        "b: 5 more flows lost (7 in all)",
        "c: no longer reported by the relay",
    ]
    healed = Status({"c": NodeStatus(recorded=3)})
    assert shown(fmt.changes(Status({"c": NodeStatus(error="x")}), healed)[0]) == "c: flows readable again"


texts = st.text(max_size=30)
flows = st.builds(
    Flow,
    time=st.floats(0, 4e9),
    node=texts,
    verdict=st.sampled_from(list(Verdict)),
    protocol=st.sampled_from(["TCP", "UDP", "ICMP"]),
    source=st.builds(
        FlowEndpoint, address=st.ip_addresses(v=4).map(str), name=texts, labels=st.dictionaries(texts, texts)
    ),
    destination=st.builds(FlowEndpoint, address=st.ip_addresses(v=4).map(str), namespace=texts),
    source_port=st.integers(0, 65535),
    destination_port=st.integers(0, 65535),
    drop_reason=st.sampled_from(list(DropReason)),
    summary=texts,
    tunnel=st.none() | st.builds(Tunnel, peer=texts, site=texts),
    http=st.none() | st.builds(Http, method=texts, path=texts, status=st.integers(0, 599)),
)


@given(flows)
def test_a_json_line_is_one_line_and_reads_back_as_the_same_flow(f: Flow) -> None:
    line = fmt.json_line(f)
    assert "\n" not in line
    assert Flow.from_json(json.loads(line)) == f


@given(flows)
def test_any_flow_prints_as_one_line_of_its_own_text(f: Flow) -> None:
    printed = shown(fmt.row(f, fmt.widths([f]), UTC))
    assert "\n" not in printed and f.verdict.value in printed
    assert fmt.visible(fmt.summary(f)).strip() in printed


def test_terminal_controls_from_the_relay_are_shown_not_obeyed() -> None:
    f = flow(NOW, XWING, DEATHSTAR, node="n\x1b[2J", summary="x — a\rb\nc\u202ed\x9b")
    printed = shown(fmt.row(f, fmt.widths([f]), UTC), colour=True)
    assert "\x1b[2J" not in printed and "\r" not in printed and "\u202e" not in printed
    assert "n\\x1b[2J" in printed and printed.endswith("a\\rb\\nc\\u202ed\\x9b")
    status = Status({"n\x1b]0;pwned\x07": NodeStatus(error="\x1b[31mfine")})
    assert shown(fmt.footer(status, malformed=0, shown=0, matched=0, last=None)[1]) == (
        "n\\x1b]0;pwned\\x07: flows unreadable: \\x1b[31mfine"
    )
