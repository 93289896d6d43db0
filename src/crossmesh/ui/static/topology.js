// The topology: the server's Graphviz SVG (parsed as XML and imported, never set as HTML).
import { getJSON } from "./dom.js";

export async function loadTopology() {
  const data = await getJSON("/api/topology");
  document.getElementById("source").textContent = data.source;
  const s = data.summary;
  document.getElementById("tunnel-summary").textContent = data.healthRead
    ? `${data.tunnels.length} tunnels: ${s.up} up, ${s.stale} stale, ${s.down} down, ${s.unknown} not read`
    : `${data.tunnels.length} tunnels (no lab: health not read)`;
  const error = document.getElementById("topology-error");
  error.hidden = !data.error;
  error.textContent = data.error || "";
  if (data.svg) {
    const doc = new DOMParser().parseFromString(data.svg, "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName === "svg") {
      for (const s of svg.querySelectorAll("script, foreignObject")) s.remove();
      // Graphviz sizes the picture in points; the page scales it to the panel by its viewBox.
      svg.removeAttribute("width");
      svg.removeAttribute("height");
      document.getElementById("topology").replaceChildren(document.importNode(svg, true));
    }
  }
  return data;
}
