"""Membership changes while a site is cut off: the cut stays (add-node and remove-node
reconcile the internet router, whose end of the cut link is in its spec), and a node cannot
join the cut site (it could reach none of its peers); heal-site brings the site back."""

from __future__ import annotations

from pathlib import Path

from labkit import Lab, copy_example, crossmesh

from crossmesh.drivers.lab import faults
from crossmesh.drivers.lab import lab as labs


def test_membership_change_keeps_a_cut_site_cut(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    lab = Lab(mesh, name)
    try:
        lab.up("--agents")
        m = ("--mesh", str(mesh))
        crossmesh("lab", "cut-site", "azure-we", *m, check=True)
        st = labs.LabState.load(lab.tag)
        assert st is not None and faults.uplink_state(st, "azure-we") == "down"

        refused = crossmesh(
            "lab", "add-node", *m, "--cluster", "cluster2", "--site", "azure-we", "--name", "azure-talos-9",
            "--address", "10.1.1.9", "--public-address", "198.51.100.99",
        )  # fmt: skip
        assert refused.returncode == 2 and "heal-site azure-we" in refused.stderr, refused.stderr

        crossmesh(
            "lab", "add-node", *m, "--cluster", "cluster3", "--site", "gcp-ew", "--name", "gcp-talos-9",
            "--address", "10.2.1.9", "--public-address", "198.51.100.98",
        )  # fmt: skip
        st = labs.LabState.load(lab.tag)
        assert st is not None and "gcp-talos-9" in st.nodes
        assert faults.uplink_state(st, "azure-we") == "down", "the join brought the cut site's uplink back"
        assert st.cut_sites == ["azure-we"]

        crossmesh("lab", "heal-site", "azure-we", *m, check=True)
        st = labs.LabState.load(lab.tag)
        assert st is not None and faults.uplink_state(st, "azure-we") == "up" and st.cut_sites == []
    finally:
        lab.down()
        assert labs.leftovers(lab.tag) == []
