"""`crossmesh trace --from local --to https://rebels.example.com/x` on a running lab of three-clouds: the
real request from the laptop outside, every hop confirmed by its counter (the router's load-balancer rule,
the gateway node, HAProxy's frontend, rule backend and server, the mesh identity the pod saw, the veths,
VXLAN and WireGuard), and the answer. Its own lab, brought down by its tag."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from labkit import Lab, crossmesh, running_lab

URL = "https://rebels.example.com/x"
IDENTITY = "spiffe://cluster.local/ns/default/sa/rebels-istio"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("trace-ingress"), "three-clouds") as made:
        yield made


def trace(lab: Lab, *args: str) -> tuple[int, dict[str, object]]:
    done = crossmesh("trace", str(lab.mesh), "--from", "local", "--to", *args, "-o", "json")
    return done.returncode, json.loads(done.stdout)


@pytest.mark.lab
def test_the_beta_request_is_confirmed_hop_by_hop_to_cluster3(lab: Lab) -> None:
    code, data = trace(lab, URL, "-H", "X-Version: beta")
    assert code == 0, data
    assert (data["rule"], data["backend_ref"]) == ("beta", "default/rebel-base-gcp:80")
    backend = str(data["backend"])
    assert backend.startswith("cluster3/default/rebel-base-")  # either of cluster3's pods (Service NAT)
    hops: list[dict[str, str]] = data["hops"]  # type: ignore[assignment]
    unconfirmed = [(h["step"], h["device"], h["confirmed"]) for h in hops if not h["confirmed"].startswith("yes")]
    assert unconfirmed == []
    devices = [h["device"] for h in hops]
    assert {"lb", "nodeport", "gateway", "route", "weights", "mesh", "wireguard", "mesh-in"} <= set(devices)
    wg = [h for h in hops if h["device"] == "wireguard"]
    assert "gcp-talos-1" in wg[0]["action"] and wg[1]["at"] == "gcp-talos-1"
    assert "server rebel-base-gcp:80 +1" in next(h for h in hops if h["device"] == "weights")["confirmed"]
    probe: dict[str, object] = data["probe"]  # type: ignore[assignment]
    answer: dict[str, str] = probe["answer"]  # type: ignore[assignment]
    assert probe["status"] == 200 and f"URI={IDENTITY}" in answer["xfcc"]
    assert f"{answer['cluster']}/{answer['namespace']}/{answer['pod']}" == backend  # the leg shown is the pod's
    assert probe["tls"] == "certificate verified against the mesh's ingress CA"


@pytest.mark.lab
def test_without_the_header_the_canary_rule_and_its_weights_are_shown(lab: Lab) -> None:
    code, data = trace(lab, URL)
    assert code == 0, data
    assert data["rule"] == "canary"
    assert [(w["backend_ref"], w["weight"]) for w in data["weights"]] == [  # type: ignore[attr-defined]
        ("default/rebel-base:80", 90),
        ("default/rebel-base-gcp:80", 10),
    ]
    weights = next(h for h in data["hops"] if h["device"] == "weights")  # type: ignore[attr-defined]
    assert "weight 90 (90%)" in weights["action"] and "weight 10 (10%)" in weights["action"]
    assert weights["confirmed"].startswith("yes: server rebel-base")
    # the backend the weights picked is the cluster the answer came from
    cluster = "cluster3" if data["backend_ref"] == "default/rebel-base-gcp:80" else "cluster2"
    assert data["probe"]["answer"]["cluster"] == cluster  # type: ignore[index]
    assert all(h["confirmed"].startswith("yes") for h in data["hops"])  # type: ignore[attr-defined]


@pytest.mark.lab
def test_a_port_the_load_balancer_does_not_publish_is_dropped_at_the_router(lab: Lab) -> None:
    code, data = trace(lab, "https://rebels.example.com:80/x")
    assert code == 1
    last = data["hops"][-1]  # type: ignore[index]
    assert last["verdict"] == "dropped" and last["confirmed"].startswith("yes")
    assert data["probe"]["status"] == 0 and "timed out" in data["probe"]["line"]  # type: ignore[index]
