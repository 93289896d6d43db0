// Services: each port's backends by tier, the serving tier marked, each backend's health.
import { el, getJSON, row } from "./dom.js";

export async function loadServices() {
  const data = await getJSON("/api/services");
  document.getElementById("services-note").textContent = data.healthRead ? "" : "(backend health not read)";
  const body = document.querySelector("#services tbody");
  const rows = data.services.map((s) => {
    const tiers = el("div");
    s.tiers.forEach((tier, i) => {
      const line = el("div", "", "tier" + (i === s.serving ? " serving" : ""));
      const label = s.tiers.length > 1 ? `tier ${i + 1}` : "backends";
      line.append(el("span", label + (i === s.serving ? " — serving" : ""), "tier-name"));
      if (tier.length === 0) line.append(el("span", "(none)"));
      for (const b of tier) {
        const state = b.healthy === null ? "unknown" : b.healthy ? "healthy" : "unhealthy";
        line.append(el("span", `${b.pod}:${b.port}`, `backend ${state}`));
      }
      tiers.append(line);
    });
    const name = s.service + (s.global ? " (global)" : "");
    return row([name, s.port, s.affinity, tiers]);
  });
  body.replaceChildren(...rows);
  return data;
}
