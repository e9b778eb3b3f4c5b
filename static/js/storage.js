// The storage meter in the header (used / quota), kept current as files change.

import { api } from "./api.js";
import { human } from "./format.js";

let pending = null;

export async function refreshStorage() {
  if (pending) return pending;
  pending = (async () => {
    const box = document.getElementById("storage");
    if (!box) return;
    const me = await api("GET", "/api/me");
    const meter = box.querySelector("meter");
    if (meter && me.quota_bytes) { meter.max = me.quota_bytes; meter.value = me.usage_bytes; }
    box.querySelector(".storage-text").textContent = me.quota_bytes
      ? `${human(me.usage_bytes)} of ${human(me.quota_bytes)} used` : `${human(me.usage_bytes)} used`;
    box.dataset.usage = String(me.usage_bytes);
  })().finally(() => { pending = null; });
  return pending;
}

export function setUpStorage() {
  document.addEventListener("listing:updated", () => refreshStorage().catch(() => {}));
}
