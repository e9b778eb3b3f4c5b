// The listing's Activity panel: loaded from the server when opened, and again on every
// change while it stays open (the same events that refresh the listing).

import { listing } from "./listing.js";

async function load() {
  const panel = document.getElementById("activity");
  if (!panel?.open) return;
  const resp = await fetch(panel.dataset.src, { credentials: "same-origin" });
  if (!resp.ok) return;
  const template = document.createElement("template");
  template.innerHTML = await resp.text();  // the server's own rendered fragment
  panel.querySelector(".activity-body").replaceChildren(template.content);
}

export function setUpActivity() {
  document.addEventListener("toggle", (e) => {
    if (e.target.id === "activity") load().catch(() => {});
  }, true);
  document.addEventListener("listing:updated", () => { if (listing()) load().catch(() => {}); });
}
