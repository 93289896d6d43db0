// The live flow stream (Server-Sent Events from the relay); a dropped flow opens its policy trace.
import { el, getJSON, row } from "./dom.js";

const MAX_ROWS = 300;
let shown = 0;

function endpoint(e, port) {
  const name = e.kind === "pod" ? `${e.cluster}/${e.namespace}/${e.name}` : (e.name || e.address);
  return port ? `${name}:${port}` : name;
}

function traceTarget(e) {
  return e.kind === "pod" ? `${e.cluster}/${e.namespace}/${e.name}` : (e.name || e.address);
}

function clock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// The policies a flow names as deciding: one rule's policy, or for a default deny every policy that
// makes the direction default-deny ("Kind c/ns/a, Kind c/ns/b"), each on its own line of the trace.
function deciders(policy) {
  return (policy || "").split(", ").filter(Boolean);
}

async function showTrace(flow, tr) {
  for (const s of document.querySelectorAll("#flows tr.selected")) s.classList.remove("selected");
  tr.classList.add("selected");
  const panel = document.getElementById("trace-panel");
  const pre = document.getElementById("trace");
  panel.hidden = false;
  document.getElementById("trace-flow").textContent =
    `${endpoint(flow.source)} → ${endpoint(flow.destination, flow.destination_port)}/${flow.protocol}`;
  pre.textContent = "tracing…";
  const q = new URLSearchParams({
    from: traceTarget(flow.source), to: traceTarget(flow.destination),
    port: String(flow.destination_port), proto: flow.protocol,
  });
  try {
    const data = await getJSON(`/api/trace?${q}`);
    const named = deciders(flow.policy);
    pre.replaceChildren(...data.lines.map((line) => {
      const padded = ` ${line.trim()} `;
      const deciding = named.some((p) => padded.includes(` ${p} `));
      return el("span", line + "\n", deciding ? "deciding" : "");
    }));
  } catch (err) {
    pre.textContent = `no trace: ${err.message}`;
  }
}

const POLICY_DROPS = new Set(["POLICY_DENIED", "POLICY_DENY"]);

function addFlow(flow) {
  const dropped = flow.verdict === "DROPPED";
  const why = dropped ? [flow.drop_reason, flow.policy].filter(Boolean).join(": ") : (flow.service || "");
  const tr = row([
    clock(flow.time), flow.node, flow.verdict,
    endpoint(flow.source, flow.source_port), endpoint(flow.destination, flow.destination_port),
    flow.protocol, why,
  ], (dropped ? "dropped " : "") + "fresh");
  tr.dataset.verdict = flow.verdict;
  // Only a policy's drop has a policy trace that explains it (not an MTU, route or firewall drop).
  if (dropped && POLICY_DROPS.has(flow.drop_reason)) {
    tr.tabIndex = 0;
    tr.title = "show the policy trace of this flow";
    tr.addEventListener("click", () => showTrace(flow, tr));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") showTrace(flow, tr); });
  }
  const body = document.querySelector("#flows tbody");
  body.prepend(tr);
  while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
  shown++;
  document.getElementById("flow-count").textContent = `${shown} seen, newest first`;
}

function relayStatus(r) {
  const pill = document.getElementById("relay");
  pill.className = `pill ${r.state}`;
  const failing = Object.entries(r.nodes || {}).filter(([, n]) => n.error).map(([name]) => name);
  const lost = Object.values(r.nodes || {}).reduce((sum, n) => sum + (Number(n.lost) || 0), 0);
  let text = `flows: ${r.state}`;
  if (r.error) text += ` (${r.error})`;
  if (lost) text += `, ${lost} lost`;
  if (failing.length) text += `, unreadable: ${failing.join(", ")}`;
  pill.textContent = text;
}

let relay = { state: "connecting", error: "", nodes: {} };

export function followFlows() {
  const source = new EventSource("/api/flows");
  source.onmessage = (event) => {
    const m = JSON.parse(event.data);
    if (m.flow) addFlow(m.flow);
    else if (m.relay) { relay = m.relay; relayStatus(relay); }
    else if (m.nodes) { relay = { ...relay, nodes: m.nodes }; relayStatus(relay); }
  };
  source.onerror = () => relayStatus({ ...relay, state: "unreachable", error: "the UI server went away" });
  return source;
}
