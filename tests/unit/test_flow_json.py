"""A flow record's JSON form: every field by name, and read back only when every field is sound."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from crossmesh.observe.flows import DropReason, Flow, FlowEndpoint, Http, Tunnel, Verdict


def full_flow() -> Flow:
    return Flow(
        time=1700000000.25,
        node="aws-01",
        verdict=Verdict.DROPPED,
        protocol="TCP",
        source=FlowEndpoint("10.240.1.2", "pod", "aws", "default", "echo-0", {"app": "echo"}, 256),
        destination=FlowEndpoint("10.242.0.2", "pod", "gcp", "default", "echo-4", {"app": "echo", "tier": "a"}, 258),
        source_port=41000,
        destination_port=8080,
        drop_reason=DropReason.POLICY_DENIED,
        direction="ingress",
        policy="gcp/default/echo-tcp-only",
        rule="spec.ingress[0]",
        service="gcp/default/echo",
        service_address="10.96.0.10:80",
        backend="gcp/default/echo-4",
        tunnel=Tunnel("gcp-01", "gcp-ew"),
        http=Http("GET", "/x", 403),
        summary="aws/default/echo-0:41000 -> gcp/default/echo-4:8080 TCP DROPPED",
    )


@pytest.mark.parametrize(
    "flow",
    [full_flow(), dataclasses.replace(full_flow(), tunnel=None, http=None, destination=FlowEndpoint("1.1.1.1"))],
)
def test_the_json_form_names_every_field_as_the_dataclass_does_and_reads_back(flow: Flow) -> None:
    data = flow.to_json()
    assert data == dataclasses.asdict(flow)
    assert list(data) == [f.name for f in dataclasses.fields(Flow)]
    assert Flow.from_json(json.loads(json.dumps(data))) == flow


def test_the_json_form_is_a_copy_changing_it_leaves_the_record_alone() -> None:
    flow = full_flow()
    flow.to_json()["source"]["labels"]["app"] = "changed"
    assert flow.source.labels == {"app": "echo"}


def test_a_bad_address_is_refused_every_time_and_a_good_one_accepted() -> None:
    data = full_flow().to_json()
    for _ in range(2):  # the second read answers from what the first remembered
        data["source"]["address"] = "10.0.0.300"
        with pytest.raises(ValueError, match=r"^source.address: '10.0.0.300' is not an IPv4 address"):
            Flow.from_json(data)
        data["source"]["address"] = "10.240.1.2"
        assert Flow.from_json(data).source.address == "10.240.1.2"


def test_an_integer_time_and_missing_optional_fields_read_as_their_defaults() -> None:
    data = {
        "time": 1700000000,
        "node": "n1",
        "verdict": "FORWARDED",
        "protocol": "UDP",
        "source": {"address": "10.0.0.1"},
        "destination": {"address": "10.0.0.2", "kind": "node", "name": "n2"},
    }
    flow = Flow.from_json(data)
    assert flow == Flow(
        1700000000.0,
        "n1",
        Verdict.FORWARDED,
        "UDP",
        FlowEndpoint("10.0.0.1"),
        FlowEndpoint("10.0.0.2", "node", name="n2"),
    )
    assert isinstance(flow.time, float)


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("destination_port",), 70000, "destination_port: expected an integer 0-65535, got 70000"),
        (("source_port",), True, "source_port: expected an integer 0-65535, got True"),
        (("time",), "now", "time: expected a number, got str"),
        (("verdict",), "MAYBE", "verdict: 'MAYBE' is not FORWARDED or DROPPED"),
        (("drop_reason",), "BECAUSE", "drop_reason: 'BECAUSE' is not a known reason"),
        (("summary",), "x" * 2000, "summary: longer than 1024 characters"),
        (("node",), None, "node: expected a string, got NoneType"),
        (("tunnel",), ["gcp-01"], "tunnel: expected an object, got list"),
        (("tunnel", "site"), 7, "site: expected a string, got int"),
        (("source", "labels", "app"), 1, "source.labels: keys and values must be strings"),
        (("source", "kind"), "alien", "source.kind: 'alien' is not pod, node or world"),
        (("destination", "identity"), -1, "destination.identity: expected a non-negative integer, got -1"),
        (("destination",), "10.0.0.2", "destination: expected an object, got str"),
    ],
)
def test_a_record_with_one_bad_field_is_refused_naming_it(path: tuple[str, ...], value: object, problem: str) -> None:
    data = full_flow().to_json()
    data["http"] = None  # the usual record: the quick check reads it unless a field is wrong
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        Flow.from_json(data)
