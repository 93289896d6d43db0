"""`crossmesh agent` against an existing etcd with TLS client certificates, as on real nodes:
two agents, each driving a wireguard-go device in its own namespace and keeping its own key in
its own state folder, follow the intents the operator would publish and find each other through
a TLS-only etcd; without a client certificate an agent gets nowhere."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crossmesh.agent import intents
from crossmesh.drivers.lab import netns, wireguard
from crossmesh.ipam.allocate import Allocations
from crossmesh.kv.etcd import Tls, connect
from crossmesh.kv.layout import Layout
from crossmesh.operator import publish
from crossmesh.workspace import plan_against

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (apt-get install etcd-server)")

MESH = """apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata: {name: tls-agents}
spec:
  sites:
    - {name: east, provider: aws, network: 10.0.0.0/16}
    - {name: west, provider: gcp, network: 10.1.0.0/16}
  clusters:
    - name: one
      nodes:
        - {name: a, site: east, address: 10.0.0.5, publicAddress: 192.0.2.5}
        - {name: b, site: west, address: 10.1.0.5, publicAddress: 198.51.100.5}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cert(
    name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, server: bool = False, ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    crt = path.with_suffix(".crt")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = path.with_suffix(".key")
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(pem, 0o600)
    return crt, pem


def test_agents_meet_through_tls_etcd(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:4]
    ca_cert, ca_key = _cert("crossmesh test CA", None, ca=True)
    ca_crt, _ = _write(tmp_path / "ca", ca_cert, ca_key)
    srv_crt, srv_key = _write(tmp_path / "server", *_cert("etcd", (ca_cert.subject, ca_key), server=True))
    # etcd knows a client by its certificate's CN: one per node (its agent) and root (the admin).
    certs = {cn: _write(tmp_path / cn, *_cert(cn, (ca_cert.subject, ca_key))) for cn in ("a", "b", "root")}
    client_port, peer_port = _free_port(), _free_port()
    etcd = subprocess.Popen(
        [
            "etcd",
            "--name",
            "t",
            "--data-dir",
            str(tmp_path / "etcd"),
            "--listen-client-urls",
            f"https://127.0.0.1:{client_port}",
            "--advertise-client-urls",
            f"https://127.0.0.1:{client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--initial-cluster",
            f"t=http://127.0.0.1:{peer_port}",
            "--cert-file",
            str(srv_crt),
            "--key-file",
            str(srv_key),
            "--trusted-ca-file",
            str(ca_crt),
            "--client-cert-auth",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(MESH)
    spaces = {n: f"cm-{tag}-tls-{n}" for n in ("a", "b")}
    devices = {n: f"cm-{tag}-t{n}" for n in ("a", "b")}
    agents: list[subprocess.Popen[bytes]] = []
    try:
        for n in ("a", "b"):
            netns.create(spaces[n])
            wireguard.start(spaces[n], devices[n], tmp_path / f"wg-{n}.log")
        endpoint = f"https://127.0.0.1:{client_port}"

        def etcdctl(cn: str, *args: str) -> subprocess.CompletedProcess[str]:
            env = dict(os.environ, ETCDCTL_API="3", ETCDCTL_ENDPOINTS=endpoint, ETCDCTL_CACERT=str(ca_crt))
            env |= {"ETCDCTL_CERT": str(certs[cn][0]), "ETCDCTL_KEY": str(certs[cn][1])}
            return subprocess.run(["etcdctl", *args], capture_output=True, text=True, env=env, timeout=30)

        deadline = time.monotonic() + 20
        while etcdctl("root", "endpoint", "health").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        # As the operator would: the mesh's roles (each agent writes only its own record and status),
        # then one intent per node, computed from the plan, written with the admin's certificate.
        loaded, _, plan = plan_against(mesh, Allocations())
        told = publish.intents_for(plan, 1, loaded.mesh.spec.wireguard)
        asyncio.run(_publish_intents(endpoint, Tls(ca_crt, *certs["root"]), Layout("tls-agents"), told))

        base = ["crossmesh", "agent", "--mesh", "tls-agents", "--etcd-endpoints", endpoint, "--lease-ttl", "2"]
        states = {n: tmp_path / f"state-{n}" for n in ("a", "b")}  # one per node, as on real nodes
        for n in ("a", "b"):
            tls = ["--cacert", str(ca_crt), "--cert", str(certs[n][0]), "--key", str(certs[n][1])]
            agents.append(
                subprocess.Popen(
                    [*base, "--node", n, "--netns", spaces[n], "--interface", devices[n], "--state", str(states[n])]
                    + tls,
                    stdout=(tmp_path / f"agent-{n}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        keys = {n: (states[n] / "keys" / f"{n}.pub") for n in ("a", "b")}
        deadline = time.monotonic() + 30
        peers: dict[str, str] = {}
        while time.monotonic() < deadline:
            peers = {
                n: subprocess.run(["wg", "show", devices[n], "peers"], capture_output=True, text=True).stdout
                for n in ("a", "b")
            }
            if (
                all(k.exists() for k in keys.values())
                and keys["b"].read_text().strip() in peers["a"]
                and keys["a"].read_text().strip() in peers["b"]
            ):
                break
            time.sleep(0.2)
        assert keys["b"].read_text().strip() in peers["a"], (tmp_path / "agent-a.log").read_text()[-2000:]
        assert keys["a"].read_text().strip() in peers["b"], (tmp_path / "agent-b.log").read_text()[-2000:]
        status = json.loads((states["a"] / "agent-a.status.json").read_text())
        assert status["etcd"] == endpoint and status["peers"] == 1
        for n in ("a", "b"):  # each node holds its own key only
            assert sorted(p.name for p in (states[n] / "keys").iterdir()) == [f"{n}.key", f"{n}.pub"]
            assert (states[n] / "keys" / f"{n}.key").stat().st_mode & 0o777 == 0o600
        # What the agent reports to the operator: the intent revision it runs.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reported = etcdctl("root", "get", "--print-value-only", "/crossmesh/tls-agents/status/a").stdout.strip()
            if reported and intents.decode_status(reported.encode(), "a").peers == 1:
                break
            time.sleep(0.2)
        report = intents.decode_status(reported.encode(), "a")
        assert (report.revision, report.ok, report.error, report.peers) == (1, True, None, 1), report
        assert report.public_key == keys["a"].read_text().strip()

        # Node a's certificate reads every record but cannot write b's (nor a key of its own making).
        prefix = "/crossmesh/tls-agents/nodes/"
        assert etcdctl("a", "get", "--prefix", prefix, "--keys-only").stdout.split() == [prefix + "a", prefix + "b"]
        for key in (prefix + "b", prefix + "zz-intruder"):
            refused = etcdctl("a", "put", key, "{}")
            assert refused.returncode != 0 and "permission denied" in refused.stderr, refused
        assert etcdctl("a", "del", prefix + "b").returncode != 0
        # Nor b's status, nor any intent (the operator's).
        for key in ("/crossmesh/tls-agents/status/b", "/crossmesh/tls-agents/intents/a"):
            refused = etcdctl("a", "put", key, "{}")
            assert refused.returncode != 0 and "permission denied" in refused.stderr, refused
        assert keys["a"].read_text().strip() in etcdctl("root", "get", prefix + "a").stdout

        # An https:// endpoint without a client certificate would be dialled in plaintext: refused.
        plain = subprocess.run([*base, "--node", "a"], capture_output=True, text=True, timeout=30)
        assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr
        assert "is https but no client certificate was given" in plain.stderr + plain.stdout

        # A client certificate from another CA: the server refuses the agent, it never connects.
        rogue_ca = _cert("rogue CA", None, ca=True)
        rogue_crt, rogue_key = _write(tmp_path / "rogue", *_cert("agent", (rogue_ca[0].subject, rogue_ca[1])))
        lonely = subprocess.Popen(
            [
                *base,
                "--node",
                "a",
                "--netns",
                spaces["a"],
                "--interface",
                devices["a"],
                "--state",
                str(tmp_path / "other-state"),
                "--cacert",
                str(ca_crt),
                "--cert",
                str(rogue_crt),
                "--key",
                str(rogue_key),
            ],
            stdout=(tmp_path / "agent-rogue.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        agents.append(lonely)
        status_file = tmp_path / "other-state" / "agent-a.status.json"
        deadline = time.monotonic() + 20
        while not status_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        rogue = json.loads(status_file.read_text())
        assert rogue["etcd"] is None, (tmp_path / "agent-rogue.log").read_text()[-2000:]
        # An agent that never read etcd leaves the device as it found it (its key, its peer).
        device = wireguard.parse_dump(wireguard.dump(devices["a"]) or "")[0]
        assert list(device.peers) == [keys["b"].read_text().strip()]
        assert device.private_key == (states["a"] / "keys" / "a.key").read_text().strip()
    finally:
        for p in agents:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        os.killpg(etcd.pid, signal.SIGKILL)
        for n in ("a", "b"):
            for pid in _pids(devices[n]):
                os.kill(pid, signal.SIGKILL)
            (wireguard.SOCKET_DIR / f"{devices[n]}.sock").unlink(missing_ok=True)
            netns.remove(spaces[n])


async def _publish_intents(endpoint: str, root: Tls, layout: Layout, told: dict[str, intents.NodeIntent]) -> None:
    kv = await connect([endpoint], root)
    try:
        await kv.ensure_user("root", ["root"])
        for user, role in layout.users(sorted(told)).items():
            await kv.ensure_role(role)
            await kv.ensure_user(user, [role.name])
        await kv.enable_auth()
        for node, intent in told.items():
            await kv.put(layout.intent(node), intent.encode())
    finally:
        await kv.close()


def _pids(marker: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                pass
    return out
