"""The reader of the lab's flow relay over a real Unix socket (a fake relay serving canned lines): the
request it sends, flows and statuses in order, hostile lines skipped and counted without stopping
the stream, and clear errors for a relay that is missing or silent."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path

import pytest
from fake_flow_relay import FakeRelay, flow, pod, status_line

from crossmesh.drivers.lab import relay_client
from crossmesh.drivers.lab.relay_client import NoRelay, RelayError, RelayStream
from crossmesh.observe import wire
from crossmesh.observe.flows import Flow, Verdict
from crossmesh.observe.wire import NodeStatus, Status, flow_line

NOW = 1_714_564_800.0
XWING = pod("cluster1/default/x-wing-0", "10.11.0.5")
DEATHSTAR = pod("cluster2/empire/deathstar-1", "10.12.0.7")
FLOWS = [flow(NOW + i, XWING, DEATHSTAR, verdict=Verdict.DROPPED if i % 2 else Verdict.FORWARDED) for i in range(5)]


def read_all(path: Path, **kw: object) -> tuple[list[Flow | Status], RelayStream]:
    with RelayStream(path, since=None, follow=False, **kw) as stream:  # type: ignore[arg-type]
        return list(stream), stream


def test_flows_then_the_status_and_the_request_sent() -> None:
    status = status_line(
        {"c1-n1": {"recorded": 5, "lost": 2, "evicted": 1, "error": ""}, "c2-n1": {"error": "no NFLOG"}}
    )
    with FakeRelay([flow_line(f) for f in FLOWS], status=status) as relay:
        with RelayStream(relay.path, since=NOW - 60, follow=False) as stream:
            items = list(stream)
        assert relay.requests == [{"since": NOW - 60, "follow": False}]
    assert items == [*FLOWS, Status({"c1-n1": NodeStatus(5, 2, "", 1), "c2-n1": NodeStatus(0, 0, "no NFLOG")})]
    assert stream.status == items[-1] and stream.malformed == 0


HOSTILE = [
    b"x" * (wire.MAX_LINE + 1) + b"\n",  # too long, in one piece
    b"not json\n",
    b"\xff\xfe\n",  # not UTF-8
    b"[" * 60000 + b"\n",  # nested past the parser's recursion limit
    b"[1, 2]\n",
    b"{}\n",
    b'{"flow": {"verdict": "MAYBE"}}\n',
    b'{"flow": ' + json.dumps({**FLOWS[0].to_json(), "source_port": 70000}).encode() + b"}\n",
    b'{"flow": ' + json.dumps({**FLOWS[0].to_json(), "time": "now"}).encode() + b"}\n",
    b'{"flow": ' + json.dumps({**FLOWS[0].to_json(), "summary": "s" * 5000}).encode() + b"}\n",
    b'{"flow": ' + json.dumps(FLOWS[0].to_json()).encode() + b', "extra": 1}\n',
    b'{"nodes": {"c1-n1": {"recorded": -1}}}\n',
    b'{"nodes": {"c1-n1": {"lost": true}}}\n',
    b'{"nodes": []}\n',
    b'{"nodes": {"c1-n1": "fine"}}\n',
    b'{"nodes": {"c1-n1": {"evicted": 1.5}}}\n',
]


def test_hostile_lines_are_skipped_and_counted_and_the_good_ones_still_read() -> None:
    lines = [flow_line(FLOWS[0]), *HOSTILE, flow_line(FLOWS[1])]
    with FakeRelay(lines) as relay:
        items, stream = read_all(relay.path)
    assert items[:2] == FLOWS[:2] and isinstance(items[2], Status)
    assert stream.malformed == len(HOSTILE)
    assert stream.first_problem == f"a line over {wire.MAX_LINE} bytes"


def test_an_endless_line_is_dropped_as_it_comes_and_the_stream_goes_on() -> None:
    endless = b"{" + b'"a": 1, ' * 2_000_000  # 16 MB without a newline, then one
    with FakeRelay([endless, b"\n", flow_line(FLOWS[2])]) as relay:
        started = time.monotonic()
        items, stream = read_all(relay.path)
    assert items[0] == FLOWS[2] and stream.malformed == 1
    assert time.monotonic() - started < 10


def test_a_last_line_without_its_newline_is_still_judged() -> None:
    with FakeRelay([flow_line(FLOWS[0]), flow_line(FLOWS[1])[:-1]], status=None, hold=False) as relay:
        items, stream = read_all(relay.path)
    assert items == FLOWS[:2] and stream.status is None


def test_a_relay_closing_early_leaves_no_status() -> None:
    with FakeRelay([flow_line(FLOWS[0]), b'{"flow": {"ti'], status=None, hold=False) as relay:
        items, stream = read_all(relay.path)
    assert items == FLOWS[:1] and stream.status is None and stream.malformed == 1


def test_following_reads_new_flows_and_status_lines_until_the_reader_closes() -> None:
    with FakeRelay([], follow_lines=[flow_line(f) for f in FLOWS]) as relay:
        seen: list[Flow] = []
        with RelayStream(relay.path, since=None, follow=True) as stream:
            for item in stream:
                if isinstance(item, Flow):
                    seen.append(item)
                if len(seen) == len(FLOWS):
                    break
        assert relay.requests == [{"since": None, "follow": True}]
    assert seen == FLOWS


def test_no_socket_is_no_relay() -> None:
    with tempfile.TemporaryDirectory(prefix="cmfr") as d:
        with pytest.raises(NoRelay, match=r"flows.sock: no flow relay listens there \(No such file or directory\)"):
            read_all(Path(d) / "flows.sock")
        stale = Path(d) / "stale.sock"  # a socket file whose relay died
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(stale))
        s.close()
        with pytest.raises(NoRelay, match=r"stale.sock: no flow relay listens there \(Connection refused\)"):
            read_all(stale)


def test_a_silent_relay_times_out_with_a_message() -> None:
    with tempfile.TemporaryDirectory(prefix="cmfr") as d:
        path = Path(d) / "flows.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        try:
            with pytest.raises(RelayError, match=r"the flow relay sent nothing for 0.3 s"):
                read_all(path, read_timeout=0.3)
        finally:
            server.close()


def test_a_snapshot_is_the_history_up_to_the_status_line() -> None:
    with FakeRelay([flow_line(f) for f in FLOWS] + [b"junk\n"], follow_lines=[flow_line(FLOWS[0])]) as relay:
        snap = relay_client.snapshot(relay.path, since=NOW)
        assert relay.requests == [{"since": NOW, "follow": False}]
    assert snap.flows == FLOWS and snap.malformed == 1 and snap.first_problem.startswith("not JSON")
    assert snap.status == Status({"c1-n1": NodeStatus(recorded=6)})


def test_the_socket_lives_in_the_labs_folder() -> None:
    assert relay_client.socket_path(Path("/run/crossmesh/cm-ab12")) == Path("/run/crossmesh/cm-ab12/flows.sock")


def test_the_request_line() -> None:
    assert wire.request_line(wire.Request(None, follow=True)) == b'{"since":null,"follow":true}\n'
    assert json.loads(wire.request_line(wire.Request(12.5))) == {"since": 12.5, "follow": False}
    for request in (wire.Request(), wire.Request(12.5, follow=True)):
        assert wire.parse_request(wire.request_line(request)) == request
