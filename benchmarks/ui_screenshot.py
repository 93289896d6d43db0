"""The README's picture of `crossmesh ui` (docs/ui.png), taken from a running lab with real flows.

    cd COPY/three-clouds && crossmesh lab up mesh.yaml --tag TAG --state DIR   # root; then within 3 min:
    python3 REPO/benchmarks/ui_screenshot.py --lab TAG [--out REPO/docs/ui.png]

Run it from the mesh's folder: the trace names policy files relative to the working directory.

Serves `crossmesh ui --lab TAG` on a free port, opens it in headless Chromium (tests/ui/browser.py),
sends real requests in the lab from x-wing's pod (three-clouds: allowed HTTP to cluster2's
rebel-base and hq, a UDP datagram to cluster3's rebel-base that policy denies), clicks the drop
for its policy trace and saves the page, 1320×1180 at 85 % zoom: under 300 KB. Take it within
three minutes of `lab up`, while every tunnel's handshake is fresh (green).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "ui")]

from browser import chromium, missing, ui_server, wait  # noqa: E402

from crossmesh.checks import probes  # noqa: E402
from crossmesh.drivers.lab import lab as labs  # noqa: E402

CLIENT = "cluster1/default/x-wing-0"
SIZE = {"width": 1320, "height": 1180, "deviceScaleFactor": 1, "mobile": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", required=True, help="the running three-clouds lab's tag")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui.png")
    args = parser.parse_args()
    if why := missing():
        print(f"ui_screenshot: {why}", file=sys.stderr)
        return 2
    st = labs.LabState.load(args.lab.removeprefix("cm-"))
    if st is None:
        print(f"ui_screenshot: --lab {args.lab}: no such lab is running", file=sys.stderr)
        return 2
    ns = st.pods[CLIENT].namespace

    def address(pod: str) -> str:
        return str(st.pods[pod].address)

    with ui_server("--lab", st.tag) as url, chromium() as driver:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", SIZE)  # type: ignore[attr-defined]
        driver.get(url)  # type: ignore[attr-defined]
        wait(driver, "document.body.dataset.loaded === 'true' && !!document.querySelector('#topology svg')")
        wait(driver, "document.querySelector('#relay').textContent.includes('connected')")
        probes.http(ns, address("cluster2/default/rebel-base-0"), 80)
        probes.http(ns, address("cluster2/default/hq-0"), 80)
        probes.udp_echo(ns, address("cluster3/default/rebel-base-0"), 4444, timeout=0.3)
        probes.http(ns, address("cluster2/default/rebel-base-0"), 80)
        wait(driver, "!!document.querySelector('#flows tr.dropped')")
        driver.execute_script("document.body.style.zoom = 0.85")  # type: ignore[attr-defined]
        time.sleep(1.0)
        driver.execute_script("document.querySelector('#flows tr.dropped').click();")  # type: ignore[attr-defined]
        wait(driver, "document.querySelector('#trace').textContent.includes('denied')")
        time.sleep(1.6)  # the new-row highlight fades
        args.out.write_bytes(driver.get_screenshot_as_png())  # type: ignore[attr-defined]
    print(f"ui_screenshot: {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
