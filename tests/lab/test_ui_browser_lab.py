"""`crossmesh ui --lab` on a real three-clouds lab, in headless Chromium, as a user sees it.

The page shows the lab's three nodes and their three tunnels up (green, from the WireGuard devices'
handshakes). Then real packets in the lab: an allowed HTTP request from x-wing (cluster1) to
cluster2's rebel-base shows as FORWARDED rows, and a UDP datagram from x-wing to cluster3's
rebel-base, which policy denies, shows within 2 s of being sent as a red DROPPED row — recorded by
the kernel's log rule, read from NFLOG by the lab's flow daemon, through its relay and the UI's
server to the page. Clicking it opens the policy trace naming the same policies as `crossmesh
policy trace`. A screenshot of the page is saved in the test's tmp folder (the README's picture is
made the same way by benchmarks/ui_screenshot.py).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labkit import Lab, copy_example, crossmesh

from crossmesh.checks import probes
from crossmesh.checks.results import Result
from crossmesh.drivers.lab import lab as labs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ui"))
from browser import chromium, missing, png_pixels, ui_server, wait  # noqa: E402

pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "ok")

CLIENT = "cluster1/default/x-wing-0"
ALLOWED = "cluster2/default/rebel-base-0"  # admits x-wing on TCP 80
DENIED = "cluster3/default/rebel-base-0"  # default deny: x-wing's egress allows nothing to it
DENIED_PORT = 4444  # UDP: only this test sends there
NODES = ("aws-talos-1", "azure-talos-1", "gcp-talos-1")
GREEN = "rgb(46, 125, 50)"  # --up in style.css, #2e7d32


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A three-clouds lab, `crossmesh ui --lab TAG --port 0` serving it, and Chromium on the page;
    the lab is torn down by its mesh afterwards, also on failure."""
    tmp = tmp_path_factory.mktemp("ui-lab")
    mesh, name = copy_example(tmp, "three-clouds")
    lab = Lab(mesh, name, tag=f"d3{secrets.token_hex(1)}")
    try:
        lab.up()
        st = labs.LabState.load(lab.tag)
        assert st is not None
        with ui_server("--lab", lab.tag) as url, chromium() as driver:
            driver.get(url)  # type: ignore[attr-defined]
            wait(driver, "document.body.dataset.loaded === 'true' && !!document.querySelector('#topology svg')", 30)
            wait(driver, "document.querySelector('#relay').textContent.includes('connected')", 10)
            yield {"driver": driver, "lab": lab, "state": st, "tmp": tmp}
    finally:
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"


def rows(driver: Any, verdict: str, destination: str) -> str:
    """A JavaScript condition: some flow row has `verdict` and is sent to `destination`."""
    return (
        "[...document.querySelectorAll('#flows tbody tr')].some(r => "
        f"r.dataset.verdict === {json.dumps(verdict)} && r.cells[4].textContent === {json.dumps(destination)})"
    )


def test_the_topology_shows_three_nodes_with_green_tunnels(page: dict[str, Any]) -> None:
    driver = page["driver"]
    shown = set(
        driver.execute_script("return [...document.querySelectorAll('#topology svg text')].map(t => t.textContent);")
    )
    assert set(NODES) <= shown
    assert driver.find_element("id", "tunnel-summary").text.startswith("3 tunnels: 3 up, 0 stale, 0 down")
    tunnels = driver.execute_script(
        "return [...document.querySelectorAll('#topology svg g.tunnel')]"
        ".map(g => [g.getAttribute('class'), getComputedStyle(g.querySelector('path')).stroke]);"
    )
    assert len(tunnels) == 3
    for classes, stroke in tunnels:
        assert "up" in classes.split() and stroke == GREEN, (classes, stroke)


def test_an_allowed_request_shows_forwarded(page: dict[str, Any]) -> None:
    driver, st = page["driver"], page["state"]
    result, _, detail = probes.http(st.pods[CLIENT].namespace, str(st.pods[ALLOWED].address), 80)
    assert result is Result.OK, detail
    wait(driver, rows(driver, "FORWARDED", f"{ALLOWED}:80"), 2.0)
    forwarded = [
        r.text
        for r in driver.find_elements("css selector", "#flows tbody tr[data-verdict='FORWARDED']")
        if f"{ALLOWED}:80" in r.text
    ]
    nodes = {text.split()[1] for text in forwarded}
    assert {"aws-talos-1", "azure-talos-1"} <= nodes  # the sender's egress, the receiver's ingress


def test_a_denied_request_shows_dropped_within_two_seconds_and_its_trace(page: dict[str, Any]) -> None:
    driver, st, lab = page["driver"], page["state"], page["lab"]
    destination = f"{DENIED}:{DENIED_PORT}"
    sent = time.monotonic()
    result, _ = probes.udp_echo(st.pods[CLIENT].namespace, str(st.pods[DENIED].address), DENIED_PORT, timeout=0.2)
    assert result is Result.TIMEOUT  # dropped: nothing comes back
    wait(driver, rows(driver, "DROPPED", destination), 2.0)
    took = time.monotonic() - sent
    assert took < 2.0, f"the drop showed {took:.2f} s after the request"

    row = next(r for r in driver.find_elements("css selector", "#flows tbody tr.dropped") if destination in r.text)
    red, green, blue = (int(v) for v in row.value_of_css_property("color").split("(")[1].split(",")[:3])
    assert red > 150 and green < 100 and blue < 100, "a dropped flow is not highlighted in red"

    trace = crossmesh(
        "policy", "trace", str(lab.mesh), "--from", CLIENT, "--to", DENIED, "--port", f"{DENIED_PORT}/UDP", "-o", "json"
    )
    assert trace.returncode == 1, trace.stderr  # denied
    egress = json.loads(trace.stdout)["egress"]
    isolating = [p["policy"] for p in egress["policies"] if p["default_deny"]]
    assert egress["reason"] == "default-deny" and isolating
    assert "POLICY_DENIED: " + ", ".join(isolating) in row.text  # the row names them

    row.click()
    wait(driver, "document.querySelector('#trace').textContent.includes('denied')", 5)
    text = driver.find_element("id", "trace").text
    assert text.startswith(f"{CLIENT} ({st.pods[CLIENT].address}) → {DENIED} ({st.pods[DENIED].address}) ")
    assert f"{DENIED_PORT}/UDP: denied" in text.splitlines()[0]
    deciding = sorted(d.text.strip().split(" (")[0] for d in driver.find_elements("css selector", "#trace .deciding"))
    assert deciding == sorted(isolating)  # exactly the policies policy trace says make the egress deny

    screenshot(driver, page["tmp"] / "ui-lab.png")


def screenshot(driver: Any, path: Path) -> None:
    time.sleep(1.6)  # the new-row highlight fades
    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    width, height, pixels = png_pixels(png)
    assert width >= 800 and height >= 600 and len(set(pixels)) > 20, "the screenshot is blank"
