"""The agents build full-mesh tunnels; a mesh planned with gateways is refused up front
(exit 2, a message naming the field and both ways out), before anything is built."""

from __future__ import annotations

from pathlib import Path

from labkit import Lab, copy_example, crossmesh

from crossmesh.drivers.lab import netns


def test_agents_refuse_gateways_topology(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    text = mesh.read_text().replace("topology: full-mesh", "topology: gateways", 1)
    mesh.write_text(text.replace("          site:", "          gateway: true\n          site:"))  # one node a site
    lab = Lab(mesh, name)
    try:
        done = crossmesh("lab", "up", str(mesh), "--agents")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "spec.wireguard.topology" in done.stderr and "without --agents" in done.stderr
        assert not [n for n in netns.listing() if n.startswith(f"cm-{lab.tag}-")]
    finally:
        lab.down()
