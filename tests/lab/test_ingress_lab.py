"""The ingress gateway on a real lab: the laptop outside reaches `https://rebels.example.com` on the
load balancer's address, trusting the mesh's ingress CA, and the routes decide who answers; a route
changed in the manifests reloads the gateway's HAProxy on the next `lab up`, and a Gateway removed
stops it and takes its load balancer's address away."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from collections import Counter
from pathlib import Path

import pytest
from labkit import Lab, copy_example

from crossmesh.drivers.lab import ingressd, netns
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab.desired import topology_of

HOST = "rebels.example.com"
GATEWAY = "cluster2/default/rebels"
POD = "cluster2/default/rebels-istio-0"


@pytest.mark.lab
def test_the_gateway_answers_from_outside_and_follows_its_routes(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    lab = Lab(mesh, name)
    try:
        lab.up()
        state = labs.find_lab(mesh)
        _, topo = topology_of(state)
        address = str(topo.load_balancers[GATEWAY])
        cafile = Path(state.state_dir) / "ingress-pki" / "ca.crt"

        def fetch(n: int = 1, headers: dict[str, str] | None = None) -> list[str]:
            return get(topo.local_ns, address, cafile, n, headers)

        assert fetch(1, {"X-Version": "beta"}) == ["cluster3"]
        split = Counter(fetch(200))
        assert set(split) == {"cluster2", "cluster3"} and split["cluster2"] == 180, split  # 90/10, round robin

        # The listener's key is the gateway pod's alone: 0600 in its own 0700 folder.
        folder = ingressd.folder(state, POD)
        assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
        assert oct(os.stat(folder / "https.pem").st_mode & 0o777) == "0o600"

        # A route changed: everything to GCP. `lab up` reloads HAProxy, and only HAProxy.
        routes = mesh.parent / "apps" / "cluster2" / "ingress.yaml"
        text = routes.read_text()
        routes.write_text(
            text.replace("{name: rebel-base, port: 80, weight: 90}", "{name: rebel-base, port: 80, weight: 0}")
        )
        changes = lab.up()["changes"]
        assert isinstance(changes, list)
        assert f"gateway pod {POD}: haproxy reloaded" in changes, changes
        assert set(fetch(20)) == {"cluster3"}

        # The Gateway removed: its HAProxy stops and its load balancer's address goes.
        pid = labs.LabState.read(state.dir / "lab.json").ingress[POD]  # type: ignore[union-attr]
        routes.unlink()
        lab.up()
        assert not labs.alive(pid)
        assert fetch(1)[0].startswith("error")
    finally:
        lab.down()


def get(namespace: str, address: str, cafile: Path, n: int, headers: dict[str, str] | None) -> list[str]:
    """`n` GETs of https://rebels.example.com/ from `namespace` on one connection to `address` (the name
    resolved to the load balancer, as `curl --resolve` does: SNI and Host name the host), trusting
    `cafile`; the cluster of the pod that answered each, or the error."""

    def go() -> list[str]:
        context = ssl.create_default_context(cafile=str(cafile))
        out: list[str] = []
        try:
            raw = socket.create_connection((address, 443), timeout=5)
        except OSError as err:
            return [f"error: {err}"]
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            conn = http.client.HTTPConnection(HOST, 443, timeout=5)
            conn.sock = tls
            try:
                for _ in range(n):
                    conn.request("GET", "/ingress-lab", headers=headers or {})
                    response = conn.getresponse()
                    body = response.read()
                    out.append(json.loads(body)["cluster"] if response.status == 200 else f"HTTP {response.status}")
            except (OSError, ssl.SSLError, http.client.HTTPException) as err:
                out.append(f"error: {err}")
        return out

    return netns.run_in(namespace, go)
