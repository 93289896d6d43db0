// crossmesh ui: plain ES modules, no build step. The server does the thinking; this draws it.
import { loadServices } from "./services.js";
import { loadTopology } from "./topology.js";
import { followFlows } from "./flows.js";

const REFRESH_MS = 5000;

function report(where, err) {
  const p = document.getElementById("topology-error");
  p.hidden = false;
  p.textContent = `${where}: ${err.message}`;
}

async function refresh() {
  await Promise.all([
    loadTopology().catch((e) => report("topology", e)),
    loadServices().catch((e) => report("services", e)),
  ]);
  if (!document.body.dataset.loaded) performance.mark("crossmesh:shown"); // first topology and services drawn
  document.body.dataset.loaded = "true";
}

followFlows();
refresh().finally(() => setInterval(refresh, REFRESH_MS));
