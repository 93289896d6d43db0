"""`crossmesh observe` as a user runs it, against a lab's state file and a fake flow relay on a real
Unix socket in the lab's folder: what is printed, the exit codes, the messages for bad input and for
a lab without a relay, and Ctrl-C ending a follow."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from fake_flow_relay import FakeRelay, flow, pod, status_line
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.drivers.lab import state as lab_state
from crossmesh.drivers.lab.state import LabState, PodEntry
from crossmesh.observe.flows import DropReason, Flow, Verdict
from crossmesh.observe.wire import flow_line

SRC = Path(__file__).resolve().parents[2] / "src"
NOW = time.time()
XWING = pod("cluster1/default/x-wing-0", "10.11.0.5")
DEATHSTAR = pod("cluster2/empire/deathstar-1", "10.12.0.7")
FLOWS = [
    flow(
        NOW - 100 + i,
        XWING,
        DEATHSTAR,
        verdict=Verdict.DROPPED if i % 5 == 0 else Verdict.FORWARDED,
        drop_reason=DropReason.POLICY_DENIED if i % 5 == 0 else DropReason.NONE,
        node="c2-n1",
    )
    for i in range(30)
]
STATUS = status_line({"c1-n1": {"recorded": 30, "lost": 3}, "c2-n1": {"recorded": 5000, "lost": 0, "evicted": 904}})


@pytest.fixture
def lab_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A lab `ab12` with two pods on two nodes, its folder under a short root (a Unix socket's path is
    at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="cmobs") as d:
        root = Path(d)
        monkeypatch.setattr(lab_state, "LAB_ROOT", root)
        pods = {
            p.ref: PodEntry(
                namespace="cm-ab12-p0",
                node=node,
                node_namespace="cm-ab12-n0",
                address=IPv4Address(p.address),
                ports=((80, "TCP"),),
                cluster=p.cluster,
                pod_namespace=p.namespace,
                name=p.name,
            )
            for p, node in ((XWING, "c1-n1"), (DEATHSTAR, "c2-n1"))
        }
        LabState(
            tag="ab12",
            mesh=str(root / "rebels.yaml"),
            mesh_name="rebels",
            state_dir=str(root / "state"),
            status="ready",
            nodes={"c1-n1": "cm-ab12-n0", "c2-n1": "cm-ab12-n1"},
            pods=pods,
        ).save()
        yield root / "cm-ab12"


def observe(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["observe", *args])
    return result.exit_code, result.stdout, result.stderr


def relay(lab: Path, lines: list[bytes] | None = None, **kw: object) -> FakeRelay:
    history = [flow_line(f) for f in FLOWS] if lines is None else lines
    return FakeRelay(history, path=lab / "flows.sock", **{"status": STATUS, **kw})  # type: ignore[arg-type]


def test_the_last_20_flows_then_each_nodes_status(lab_root: Path) -> None:
    with relay(lab_root) as r:
        code, out, err = observe()
        assert r.requests == [{"since": None, "follow": False}]
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 21
    assert lines[1].split()[3:] == ["c2-n1", "cluster1/default/x-wing-0:40000", "cluster2/empire/deathstar-1:80"] + [
        "TCP",
        "DROPPED",
        "POLICY_DENIED",
    ]
    assert err.splitlines() == [
        "20 flows shown: the last 20 of 30 matching (--last N shows more)",
        "c1-n1: 30 recorded, 3 lost (the kernel's log queue overflowed: they were never recorded)",
        "c2-n1: 5000 recorded, 0 lost, 904 evicted (older flows no longer in its ring buffer)",
    ]


def test_filters_and_json_lines(lab_root: Path) -> None:
    with relay(lab_root) as r:
        # Five minutes before the flows were made (at import: a long test run may be past "5m" ago).
        since = datetime.datetime.fromtimestamp(NOW - 300, datetime.UTC).isoformat()
        code, out, err = observe("--verdict", "dropped", "--from", "default/x-wing-*", "-o", "json", "--since", since)
        assert r.requests[0]["since"] == pytest.approx(NOW - 300, abs=1)
    assert code == 0
    shown = [Flow.from_json(json.loads(line)) for line in out.splitlines()]
    assert shown == [f for f in FLOWS if f.verdict is Verdict.DROPPED]
    assert err.splitlines()[0] == "6 flows shown"


def test_names_are_checked_against_the_lab_before_the_relay_is_asked(lab_root: Path) -> None:
    with relay(lab_root) as r:
        code, out, err = observe("--from", "cluster1/default/x-wnig-0", "--to", "c3-n1", "--since", "yesterday")
        assert r.requests == []
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "error: --from 'cluster1/default/x-wnig-0': the lab has no pod 'cluster1/default/x-wnig-0' — did you mean "
        "cluster1/default/x-wing-0?",
        "error: --to 'c3-n1': the lab has no node 'c3-n1' — did you mean c2-n1 or c1-n1?",
        err.splitlines()[2],
    ]
    assert err.splitlines()[2].startswith("error: --since 'yesterday': not a duration or a time: write a duration")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "0"], "--port '0': expected a port number 1-65535"),
        (["--port", "99999"], "--port '99999': expected a port number 1-65535"),
        (["-o", "yaml"], "'yaml' is not one of 'table', 'json'"),
        (["--last", "0"], "Invalid value for '--last'"),
        (["--until", "1m", "-f"], "--until cannot be used with --follow"),
        (["--lab", "zz99"], "--lab 'zz99': no lab cm-zz99 is running (running: ab12 (rebels))"),
        (["--lab", "../etc"], "--lab '../etc': a lab tag is letters and digits"),
        (["--lab", "ab12", "--mesh", "x.yaml"], "--lab and --mesh both name the lab: give one"),
    ],
)
def test_bad_input_exits_2_with_the_fix(lab_root: Path, args: list[str], words: str) -> None:
    code, out, err = observe(*args)
    assert code == 2
    assert words in " ".join(err.replace("│", " ").split()), err
    assert "Traceback" not in err + out


def test_a_lab_without_a_relay_says_so(lab_root: Path) -> None:
    code, _, err = observe("--lab", "cm-ab12")
    assert code == 2
    assert err.startswith(
        "error: the lab `ab12` has no flow relay running (is it up? `crossmesh lab status`): "
        f"{lab_root / 'flows.sock'}: no flow relay listens there"
    )


def test_no_lab_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(lab_state, "LAB_ROOT", tmp_path)
    code, _, err = observe()
    assert code == 2 and "no lab is running — start one with `crossmesh lab up MESH`" in err


def test_a_hostile_relay_is_counted_not_obeyed(lab_root: Path) -> None:
    lines = [b"\x00" * 70000 + b"\n", b"{not json\n", flow_line(FLOWS[0]), b'{"flow": {"time": []}}\n']
    with relay(lab_root, lines):
        code, out, err = observe()
    assert code == 0 and "Traceback" not in err
    assert len(out.splitlines()) == 2
    assert "3 lines from the relay were malformed and skipped (first: a line over 65536 bytes)" in err


def test_a_relay_that_closes_before_its_status_exits_1(lab_root: Path) -> None:
    with relay(lab_root, [flow_line(FLOWS[0])], status=None, hold=False):
        code, out, err = observe()
    assert code == 1 and len(out.splitlines()) == 2
    assert "the relay sent no status line (it closed early): node counts are unknown" in err


def test_follow_alone_asks_for_new_flows_only_and_prints_them_as_they_come(lab_root: Path) -> None:
    new = [flow_line(f) for f in FLOWS[:3]]
    lost = status_line({"c1-n1": {"recorded": 40, "lost": 9}, "c2-n1": {"error": "NFLOG socket closed"}})
    with relay(lab_root, [], follow_lines=[*new, lost], hold=False) as r:
        code, out, err = observe("-f", "-o", "json")
        assert r.requests[0]["follow"] is True
        assert r.requests[0]["since"] == pytest.approx(time.time(), abs=30)
    assert [Flow.from_json(json.loads(line)) for line in out.splitlines()] == FLOWS[:3]
    assert code == 1  # the relay went away
    assert "c1-n1: 6 more flows lost (9 in all)" in err
    assert "c2-n1: flows unreadable: NFLOG socket closed" in err
    assert "the flow relay closed the stream (was the lab brought down?)" in err


def test_follow_with_last_shows_the_history_first(lab_root: Path) -> None:
    with relay(lab_root, follow_lines=[flow_line(FLOWS[0])], hold=False) as r:
        code, out, _ = observe("-f", "--last", "2", "-o", "json")
        assert r.requests[0]["since"] is None
    times = [json.loads(line)["time"] for line in out.splitlines()]
    assert times == [FLOWS[-2].time, FLOWS[-1].time, FLOWS[0].time]


def test_ctrl_c_ends_a_follow_cleanly() -> None:
    """A real process and a real SIGINT: exit 0, the footer, no traceback. `--socket` reads the fake
    relay without a lab (the names are then not checked)."""
    with FakeRelay([flow_line(f) for f in FLOWS], status=STATUS, follow_lines=[flow_line(FLOWS[0])]) as r:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crossmesh", "observe", "--socket", str(r.path), "-f", "--last", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().split()[0] == "TIME"
        proc.stdout.readline()  # the last flow of the history
        proc.stdout.readline()  # the one that followed
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "2 flows shown" in err and "c1-n1: 30 recorded, 3 lost" in err
