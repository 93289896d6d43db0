"""Names Kubernetes allows must not break the lab: nftables refuses comments over 128 characters."""

from __future__ import annotations

from ipaddress import IPv4Address

from crossmesh.drivers.lab.topology import spoof_comment
from crossmesh.model.plan import PodPlan
from crossmesh.nft import COMMENT_MAX


def pod(name: str, namespace: str = "default") -> PodPlan:
    return PodPlan("cluster1", namespace, name, "n1", IPv4Address("10.10.0.2"), (), ())


def test_a_short_pod_keeps_its_readable_comment() -> None:
    assert spoof_comment(pod("x-wing-0")) == "anti-spoofing cluster1/default/x-wing-0"


def test_the_longest_names_kubernetes_allows_fit_and_stay_distinct() -> None:
    namespace = "n" * 63
    first, second = pod("a" * 250 + "-01", namespace), pod("a" * 250 + "-02", namespace)
    comments = {spoof_comment(first), spoof_comment(second)}
    assert len(comments) == 2
    for comment in comments:
        assert len(comment.encode()) == COMMENT_MAX
        assert comment.startswith("anti-spoofing cluster1/" + namespace)
