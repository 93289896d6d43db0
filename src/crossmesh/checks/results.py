"""Named results, the check record, and its JSON / JUnit forms (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from xml.etree import ElementTree as ET


class Result(StrEnum):
    OK = "ok"  # answered as expected (HTTP 200 from the right pod, datagram echoed)
    TIMEOUT = "timeout"  # nothing came back: dropped somewhere
    REFUSED = "refused"  # connection refused / port unreachable
    UNREACHABLE = "unreachable"  # no route
    MSG_TOO_LONG = "message-too-long"  # refused locally: bigger than the path MTU
    WRONG_ANSWER = "wrong-answer"  # something answered, but not what the plan says
    LEAK = "leak"  # the underlay carried what it must not
    CLEAN = "clean"  # the capture holds only what it may
    DROPPED = "dropped"  # stopped on purpose by a rule, seen on its counter
    FORBIDDEN = "http-403"  # the L7 proxy refused the request (Cilium's Envoy answers 403)
    RESET = "reset"  # the connection was reset: a mesh proxy refused it (mTLS, authorization)
    TOO_SLOW = "too-slow"  # it happened, later than the expectation allows (a failover's loss window)
    ERROR = "error"  # the probe itself failed
    SKIPPED = "skipped"


class Kind(StrEnum):
    """What a check checks: its group in output, JSON and JUnit (`classname`)."""

    POD_TO_POD = "pod-to-pod"
    POD_TO_SERVICE = "pod-to-service"
    SERVICE = "service"
    NODEPORT = "nodeport"
    HEADLESS = "headless"
    MTU = "mtu"
    POLICY = "policy"
    L7 = "l7"
    SECURITY = "security"
    ENCRYPTION = "encryption"
    NAT = "nat"
    FIDELITY = "fidelity"
    GATEWAY = "gateway"  # topology gateways: who carries each site, standbys, failover (issue 16)
    OBSERVE = "observe"  # flow records: what the kernel logged against what the checks did (issue 14)
    MTLS = "mtls"  # Istio's mutual TLS between workloads: encrypted, identities, STRICT, rotation (issue 11)
    AUTHZ = "authz"  # Istio's AuthorizationPolicy at the destination's proxy (issue 11)
    INGRESS = "ingress"  # the first hop: the client outside → a gateway's load balancer → backends (issue 12)
    VPN = "vpn"  # site-to-site IPsec through a hub: tunnels, what the internet sees, the path MTU, failover (issue 13)
    BGP = "bgp"  # the eBGP sessions over the tunnels and the routes each end learned (issue 13)


@dataclass(slots=True)
class Check:
    name: str
    kind: Kind
    source: str
    target: str
    port: str
    expected: Result
    actual: Result = Result.SKIPPED
    detail: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """As expected; a skipped check (expected and actual `skipped`) passes: it never fails a run."""
        return self.actual == self.expected

    @property
    def skipped(self) -> bool:
        """A case the builder could not check, planned as such with its reason in `detail`."""
        return self.expected is Result.SKIPPED

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "from": self.source,
            "to": self.target,
            "port": self.port,
            "expected": self.expected.value,
            "actual": self.actual.value,
            "passed": self.passed,
            "skipped": self.skipped,
            "detail": self.detail,
        }


def report(checks: list[Check]) -> dict[str, Any]:
    """Every check and the counts: `passed` and `failed` count the checks that ran, `skipped` the others."""
    skipped = sum(1 for c in checks if c.skipped)
    failed = sum(1 for c in checks if not c.passed)
    return {
        "checks": [c.as_json() for c in checks],
        "summary": {"passed": len(checks) - skipped - failed, "failed": failed, "skipped": skipped},
    }


def junit(checks: list[Check], suite: str) -> str:
    failed = sum(1 for c in checks if not c.passed)
    root = ET.Element("testsuites")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(checks)),
        failures=str(failed),
        skipped=str(sum(1 for c in checks if c.skipped)),
        time=f"{sum(c.seconds for c in checks):.3f}",
    )
    for c in checks:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{c.kind}", name=c.name, time=f"{c.seconds:.3f}")
        if c.skipped:
            ET.SubElement(tc, "skipped", message=c.detail)
        elif not c.passed:
            f = ET.SubElement(tc, "failure", message=f"expected {c.expected.value}, got {c.actual.value}")
            f.text = c.detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
