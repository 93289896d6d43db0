"""`crossmesh ui` in headless Chromium: the page as a user sees it, against a fake flow relay on a
real Unix socket. The page loads, the topology names every node, a flow the relay sends shows
within 2 s, a drop is red and a click on it shows the policy trace naming the deciding policy,
and a hostile name in a flow is shown as text, never run."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import chromium, missing, png_pixels, ui_server, wait
from fakerelay import FakeRelay, flow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
X_WING = ("cluster1", "default", "x-wing-0", "10.10.0.3")
HQ = ("cluster2", "default", "hq-0", "10.11.0.2")
REBEL = ("cluster3", "default", "rebel-base-0", "10.12.0.2")
DEFAULT_DENY = "NetworkPolicy cluster1/default/default-deny"

pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "ok")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ui")
    mesh = tmp / "three-clouds"
    shutil.copytree(EXAMPLE, mesh)
    canned = flow(X_WING, HQ, 80, at=time.time() - 5)
    with (
        FakeRelay(tmp / "flows.sock", [canned]) as relay,
        ui_server("--mesh", str(mesh / "mesh.yaml"), "--relay", str(tmp / "flows.sock")) as url,
        chromium() as driver,
    ):
        driver.get(url)  # type: ignore[attr-defined]
        wait(driver, "document.body.dataset.loaded === 'true' && !!document.querySelector('#topology svg')", 30)
        yield {"driver": driver, "relay": relay, "mesh": mesh, "url": url, "tmp": tmp}


def test_the_topology_shows_every_node(world: dict[str, Any]) -> None:
    driver = world["driver"]
    script = "return [...document.querySelectorAll('#topology svg text')].map(t => t.textContent);"
    shown = set(driver.execute_script(script))
    doc = yaml.safe_load((world["mesh"] / "mesh.yaml").read_text())
    nodes = {n["name"] for c in doc["spec"]["clusters"] for n in c["nodes"]}
    assert nodes <= shown
    assert {f"site {s['name']}" for s in doc["spec"]["sites"]} <= shown
    assert "3 tunnels" in driver.find_element("id", "tunnel-summary").text


def test_services_show_tiers(world: dict[str, Any]) -> None:
    text = world["driver"].find_element("id", "services").text
    assert "cluster1/default/relay" in text and "cluster1/default/relay-0:8080" in text


def test_a_screenshot_is_a_drawn_picture(world: dict[str, Any]) -> None:
    png = world["driver"].get_screenshot_as_png()
    (world["tmp"] / "ui.png").write_bytes(png)
    width, height, pixels = png_pixels(png)
    assert width >= 800 and height >= 600
    assert len(set(pixels)) > 20, "the screenshot is blank"


def test_the_canned_flow_and_relay_state_show(world: dict[str, Any]) -> None:
    driver = world["driver"]
    wait(driver, "document.querySelector('#relay').textContent.includes('connected')", 5)
    wait(driver, "[...document.querySelectorAll('#flows tbody tr')].some(r => r.textContent.includes('hq-0:80'))", 5)
    assert world["relay"].requests[0]["follow"] is True


def test_a_pushed_flow_appears_within_two_seconds(world: dict[str, Any]) -> None:
    driver = world["driver"]
    record = flow(X_WING, HQ, 80)
    record["source_port"] = 41234
    world["relay"].push(record)
    took = wait(driver, "document.querySelector('#flows tbody').textContent.includes('x-wing-0:41234')", 2.0)
    assert took < 2.0


def test_a_drop_is_red_and_a_click_shows_its_trace(world: dict[str, Any]) -> None:
    driver = world["driver"]
    record = flow(X_WING, REBEL, 80, verdict="DROPPED", policy=DEFAULT_DENY, reason="POLICY_DENIED")
    record["source_port"] = 42424
    world["relay"].push(record)
    wait(driver, "document.querySelector('#flows tbody').textContent.includes('x-wing-0:42424')", 2.0)
    row = next(r for r in driver.find_elements("css selector", "#flows tbody tr") if "x-wing-0:42424" in r.text)
    assert "dropped" in row.get_attribute("class")
    red, green, blue = (int(v) for v in row.value_of_css_property("color").split("(")[1].split(",")[:3])
    assert red > 150 and green < 100 and blue < 100, "a dropped flow is not highlighted in red"
    row.click()
    wait(driver, "document.querySelector('#trace').textContent.includes('denied')", 5)
    trace = driver.find_element("id", "trace").text
    assert "cluster1/default/x-wing-0 (10.10.0.3) → cluster3/default/rebel-base-0 (10.12.0.2) 80/TCP: denied" in trace
    assert DEFAULT_DENY in trace
    deciding = driver.find_elements("css selector", "#trace .deciding")
    assert deciding and all(DEFAULT_DENY in d.text for d in deciding)


def test_a_drop_no_policy_made_is_red_but_offers_no_policy_trace(world: dict[str, Any]) -> None:
    driver = world["driver"]
    record = flow(X_WING, REBEL, 9999, verdict="DROPPED", reason="FRAG_NEEDED")
    record["source_port"] = 43434
    world["relay"].push(record)
    wait(driver, "document.querySelector('#flows tbody').textContent.includes('x-wing-0:43434')", 2.0)
    row = next(r for r in driver.find_elements("css selector", "#flows tbody tr") if "x-wing-0:43434" in r.text)
    assert "dropped" in row.get_attribute("class") and "FRAG_NEEDED" in row.text
    assert row.get_attribute("title") == "" and row.get_attribute("tabindex") is None


def test_a_hostile_name_is_text_not_markup(world: dict[str, Any]) -> None:
    driver = world["driver"]
    evil = '<img src=x onerror="document.body.dataset.owned=1"><b id="injected">x</b>'
    record = flow(("cluster1", "default", evil, "10.10.0.9"), HQ, 80)
    world["relay"].push(record)
    wait(driver, "document.querySelector('#flows tbody').textContent.includes('onerror')", 2.0)
    time.sleep(0.3)
    assert driver.execute_script("return document.getElementById('injected') === null && !document.body.dataset.owned;")
    assert evil in driver.find_element("id", "flows").text
