"""`crossmesh ui --lab` against a real lab: the tunnel colours come from the lab's WireGuard devices
(every tunnel of three-clouds has a fresh handshake and traffic after `lab up`) and backend health
from its service daemon; the relay is dialled at the lab's flows.sock."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from crossmesh.cli.ui import _load
from crossmesh.ui.server import make_app


def get_all(ui: Any, *urls: str) -> list[Any]:
    async def go() -> list[Any]:
        async with TestClient(TestServer(make_app(ui))) as client:
            out = []
            for url in urls:
                response = await client.get(url)
                assert response.status == 200, url
                out.append(await response.json())
            await asyncio.sleep(0.5)  # the relay reader has dialled by now
            out.append(ui.hub.status())
            return out

    return asyncio.run(go())


def test_ui_reads_the_lab(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("three-clouds")
    lab.up()
    ui = _load(lab.tag, None, None, None)
    assert ui.source.endswith(f"(cm-{lab.tag})")
    topology, services, relay = get_all(ui, "/api/topology", "/api/services")
    assert topology["healthRead"] and topology["error"] == ""
    assert len(topology["tunnels"]) == 3
    for t in topology["tunnels"]:
        assert t["health"] == "up", t
        assert t["rx"] > 0 and t["tx"] > 0, t
    assert 'class="edge tunnel up"' in topology["svg"]
    assert services["healthRead"]
    backends = [b for s in services["services"] for tier in s["tiers"] for b in tier]
    assert backends and all(b["healthy"] is True for b in backends)
    assert relay["socket"].endswith(f"cm-{lab.tag}/flows.sock")
