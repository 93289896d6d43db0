"""The service mesh's data plane in a real lab (spec.istio; meshcapture, meshca, meshproxy): a
two-site mesh with a mesh-wide STRICT PeerAuthentication. HTTP between pods across sites works and
the server's app sees the client's SPIFFE id and address; plaintext to a STRICT pod is reset;
what crosses the node is TLS (a marker in the request and the echoed answer never shows on the
wire, captured with an AF_PACKET socket, while the same request in plaintext shows it); a
certificate rotation in the middle of a stream keeps the stream."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import Lab, crossmesh, running_lab

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns

pytestmark = pytest.mark.lab

# The example's own Istio setup (seed 001's identities, STRICT), made STRICT on every port (the
# example leaves tkb's NodePort target PERMISSIVE) and with an AuthorizationPolicy on monitoring.
STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: monitoring-readers
  namespace: demo
spec:
  selector: {matchLabels: {app: monitoring}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["cluster.local/ns/demo/sa/demo-app"]}}]
      to: [{operation: {methods: ["GET"]}}]
"""
ETH_P_ALL = 0x0003


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    def prepare(mesh: Path) -> None:
        text = mesh.read_text()
        start = text.index("  istio:")
        end = text.index("\n", text.index("workloadCertTTL", start)) + 1
        mesh.write_text(text[:start] + "  istio:\n    workloadCertTTL: 1h\n" + text[end:])
        (mesh.parent / "apps" / "istio.yaml").write_text(STRICT)

    with running_lab(tmp_path_factory.mktemp("mtls"), "tests/meshes/hybrid-wireguard", prepare) as made:
        yield made


def _state(lab: Lab) -> labs.LabState:
    st = labs.LabState.load(lab.tag)
    assert st is not None
    return st


def _http(ns: str, address: str, port: int, path: str = "/", body: bytes = b"", method: str = "POST") -> bytes:
    """One HTTP request from namespace `ns`; the whole answer (b"" when the connection was reset)."""

    def go() -> bytes:
        with socket.create_connection((address, port), timeout=5) as s:
            s.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + body
            )
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    data += chunk
            return data

    return netns.run_in(ns, go)


def _answer(raw: bytes) -> dict[str, str]:
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def _log(lab: Lab, node: str) -> str:
    return (_state(lab).dir / "logs" / f"meshproxy-{node}.log").read_text()


def test_http_across_sites_carries_the_clients_spiffe_id(lab: Lab) -> None:
    st = _state(lab)
    client, server = st.pods["k3s/demo/demo-app-0"], st.pods["k3s/microservices/tkb-0"]
    seen = _answer(_http(client.namespace, str(server.address), 3000, "/hello"))
    assert seen["pod"] == "tkb-0"
    assert seen["clientIP"] == str(client.address)  # the server's proxy kept the client's address
    by, digest, uri = seen["xfcc"].split(";")  # Envoy's By, Hash and URI
    assert (by, uri) == (
        "By=spiffe://cluster.local/ns/microservices/sa/tkb-service",
        "URI=spiffe://cluster.local/ns/demo/sa/demo-app",
    )
    assert digest.startswith("Hash=") and len(digest) == 5 + 64
    # Through the Service's ClusterIP too: the node's DNAT picks a backend, mTLS to it.
    tkb_service = "k3s/microservices/tkb-service "
    compiled_ip = next(line.split()[1] for line in _services(lab) if line.startswith(tkb_service))
    via_service = _answer(_http(client.namespace, compiled_ip, 30080, "/svc"))
    assert via_service["pod"] in ("tkb-0", "tkb-1")
    assert via_service["xfcc"].endswith(";URI=spiffe://cluster.local/ns/demo/sa/demo-app")


def _services(lab: Lab) -> list[str]:
    from crossmesh.drivers.lab.desired import compiled_of

    plan = compiled_of(_state(lab)).plan
    return [f"{s.ref} {s.cluster_ip}" for c in plan.clusters for s in c.services]


def test_plaintext_to_a_strict_pod_is_reset_and_logged(lab: Lab) -> None:
    st = _state(lab)
    server = st.pods["k3s/microservices/tkb-0"]
    # From another node's namespace: not the pod's own node (whose probes pass), not a proxy.
    assert _http(st.nodes["openstack-master"], str(server.address), 3000) == b""
    deadline = time.monotonic() + 5
    while "refused: plaintext to a STRICT workload" not in _log(lab, "aws-worker-1"):
        assert time.monotonic() < deadline, _log(lab, "aws-worker-1")
        time.sleep(0.1)
    # Its own node (the kubelet's health probes) reaches the app directly, as Istio allows.
    assert _answer(_http(st.nodes["aws-worker-1"], str(server.address), 3000))["xfcc"] == ""


def test_authorization_policy_on_principals_and_methods(lab: Lab) -> None:
    st = _state(lab)
    reader, other = st.pods["k3s/demo/demo-app-0"], st.pods["k3s/microservices/tkb-0"]
    target = st.pods["k3s/demo/monitoring-0"]
    allowed = _answer(_http(reader.namespace, str(target.address), 9090, "/metrics", method="GET"))
    assert allowed["pod"] == "monitoring-0" and allowed["xfcc"].endswith("sa/demo-app")
    for client, method in ((reader, "POST"), (other, "GET")):
        denied = _http(client.namespace, str(target.address), 9090, "/metrics", method=method)
        assert denied.startswith(b"HTTP/1.1 403") and denied.endswith(b"RBAC: access denied"), denied
    log = _log(lab, "openstack-master")
    assert (
        "(spiffe://cluster.local/ns/microservices/sa/tkb-service) refused by authorization policy: "
        "no ALLOW policy matched" in log
    )


def _capture(ns: str, stop: threading.Event, ready: threading.Event, into: bytearray) -> None:
    """Every frame on every interface of namespace `ns` (AF_PACKET, ETH_P_ALL) until `stop`."""

    def run() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
            s.settimeout(0.1)
            ready.set()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    into.extend(s.recv(65536))

    netns.run_in(ns, run)


def _wire(lab: Lab, node: str, request: object) -> bytes:
    stop, ready, seen = threading.Event(), threading.Event(), bytearray()
    thread = threading.Thread(target=_capture, args=(_state(lab).nodes[node], stop, ready, seen))
    thread.start()
    ready.wait(5)
    try:
        request()  # type: ignore[operator]
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(5)
    return bytes(seen)


def test_what_crosses_the_node_is_tls(lab: Lab) -> None:
    st = _state(lab)
    client, server = st.pods["k3s/demo/demo-app-0"], st.pods["k3s/microservices/tkb-0"]
    marker = uuid.uuid4().hex.encode()
    answers: list[bytes] = []
    wire = _wire(
        lab,
        "aws-worker-1",
        lambda: answers.append(_http(client.namespace, str(server.address), 3000, "/" + marker.decode(), marker)),
    )
    assert _answer(answers[0])["body"] == marker.decode()  # the request went through, marker and all
    assert socket.inet_aton(str(server.address)) in wire  # the capture saw the pod's packets
    assert marker not in wire
    # The capture does see a marker in plaintext: the same request from the pod's own node.
    plain = _wire(lab, "aws-worker-1", lambda: _http(st.nodes["aws-worker-1"], str(server.address), 3000, "/x", marker))
    assert marker in plain


def test_a_rotation_during_a_stream_keeps_the_stream(lab: Lab) -> None:
    st = _state(lab)
    client, server = st.pods["k3s/demo/demo-app-0"], st.pods["k3s/microservices/tkb-1"]
    body = b"x" * 4000
    before = _log(lab, "aws-worker-1").count("issued")

    def stream() -> bytes:
        with socket.create_connection((str(server.address), 3000), timeout=20) as s:
            s.sendall(f"POST /long HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            s.sendall(body[:1000])
            crossmesh("lab", "rotate-certs", "--mesh", str(lab.mesh), check=True)
            for k in range(1000, len(body), 1000):
                time.sleep(0.1)
                s.sendall(body[k : k + 1000])
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    answer = _answer(netns.run_in(client.namespace, stream))
    assert answer["body"] == body.decode()
    assert answer["xfcc"].endswith("sa/demo-app")
    assert _log(lab, "aws-worker-1").count("issued") >= before + 2  # both tkb pods got new certificates
    # New connections use the new certificates.
    assert _answer(_http(client.namespace, str(server.address), 3000))["pod"] == "tkb-1"


def test_a_failed_rotation_keeps_the_current_certificate_and_says_so(lab: Lab) -> None:
    """The mesh CA gone, `lab rotate-certs` fails (exit 1) naming each failed renewal; the proxies keep
    serving the certificates they hold (the server sees the same client certificate); `lab up` brings
    the CA back and the next rotation works."""
    st = _state(lab)
    client, server = st.pods["k3s/demo/demo-app-0"], st.pods["k3s/microservices/tkb-0"]

    def client_cert() -> str:
        return _answer(_http(client.namespace, str(server.address), 3000))["xfcc"].split(";")[1]

    before = client_cert()
    os.killpg(st.mesh_ca_pid, signal.SIGKILL)
    failed = crossmesh("lab", "rotate-certs", "--mesh", str(lab.mesh))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "certificate renewal failed for spiffe://cluster.local/ns/demo/sa/demo-app" in failed.stdout
    assert "keeping the current certificate, valid until" in failed.stdout
    assert "keep serving their current certificates" in failed.stderr
    assert client_cert() == before  # still served, still the same certificate
    lab.up()  # the CA is started again
    crossmesh("lab", "rotate-certs", "--mesh", str(lab.mesh), check=True)
    assert client_cert() != before


def test_without_spec_istio_the_capture_and_the_proxies_go(lab: Lab) -> None:
    """Last (it changes the lab): `lab up` of the mesh file without spec.istio."""
    lab.mesh.write_text(lab.mesh.read_text().replace("  istio:\n    workloadCertTTL: 1h\n", "", 1))
    changes = json.dumps(lab.up())
    st = _state(lab)
    assert "mesh CA stopped" in changes and st.mesh_proxies == {} and st.mesh_ca_pid == 0
    client, server = st.pods["k3s/demo/demo-app-0"], st.pods["k3s/microservices/tkb-0"]
    for pod in (client, server):
        tables = netns.run(pod.namespace, ["nft", "list", "tables"]).stdout
        assert "cm_mesh" not in tables
        assert "lookup 100" not in netns.run(pod.namespace, ["ip", "rule"]).stdout
    seen = _answer(_http(client.namespace, str(server.address), 3000))
    assert seen["xfcc"] == "" and seen["clientIP"] == str(client.address)
