// Selecting rows of a folder listing and acting on all of them: checkboxes, shift-click for
// a range, "select all", and the bar above the table (download as zip, move, share, delete).
// The selection is a set of ids, so it survives the live refresh redrawing rows.

import { api } from "./api.js";
import { listing, refreshListing } from "./listing.js";
import { openBulkShare } from "./bulk-share.js";
import { toast } from "./toast.js";
import { trashItems } from "./trash.js";

const chosen = new Set();
let anchor = null;  // the row a shift-click range starts from

export function rows() {
  return Array.from(listing()?.querySelectorAll("tbody tr.item[data-id]") || []);
}

export function selectedItems() {
  return rows().filter((tr) => chosen.has(tr.dataset.id))
    .map((tr) => ({ id: tr.dataset.id, name: tr.dataset.name }));
}

export function setSelected(tr, on) {
  if (on) chosen.add(tr.dataset.id); else chosen.delete(tr.dataset.id);
}

export function selectAll(on = true) {
  for (const tr of rows()) setSelected(tr, on);
  render();
}

export function toggle(tr, range = false) {
  const all = rows();
  if (range && anchor && all.includes(anchor)) {
    const [from, to] = [all.indexOf(anchor), all.indexOf(tr)].sort((x, y) => x - y);
    const on = !chosen.has(tr.dataset.id) || chosen.has(anchor.dataset.id);
    for (const r of all.slice(from, to + 1)) setSelected(r, on);
  } else {
    setSelected(tr, !chosen.has(tr.dataset.id));
    anchor = tr;
  }
  render();
}

// Checkboxes, the bar and "select all" follow `chosen` (ids no longer listed drop out).
export function render() {
  const all = rows();
  const listed = new Set(all.map((tr) => tr.dataset.id));
  for (const id of chosen) if (!listed.has(id)) chosen.delete(id);
  for (const tr of all) {
    const on = chosen.has(tr.dataset.id);
    tr.classList.toggle("selected", on);
    tr.setAttribute("aria-selected", on ? "true" : "false");
    const box = tr.querySelector("input.pick");
    if (box) box.checked = on;
  }
  const all_ = document.getElementById("select-all");
  if (all_) {
    all_.checked = all.length > 0 && chosen.size === all.length;
    all_.indeterminate = chosen.size > 0 && chosen.size < all.length;
  }
  const bar = document.getElementById("selection-bar");
  if (bar) {
    bar.hidden = chosen.size === 0;
    document.getElementById("selection-count").textContent =
      chosen.size === 1 ? "1 selected" : `${chosen.size} selected`;
  }
}

async function downloadZip(items) {
  const here = listing().dataset.path.split("/").filter(Boolean).pop() || "Coffer";
  const ticket = await api("POST", "/api/zip", { ids: items.map((i) => i.id), name: here });
  const a = document.createElement("a");
  a.href = ticket.url;
  a.download = "";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

async function moveItems(items) {
  const dest = prompt(`Move ${items.length} item(s) to which folder?`, listing().dataset.path);
  if (!dest) return;
  for (const { id, name } of items) {
    try {
      await api("PATCH", `/api/file/${id}`, { path: `${dest.replace(/\/$/, "")}/${name}` });
    } catch (err) { toast(`${name}: ${err.message}`); }
  }
  refreshListing();
}

async function bulk(action) {
  const items = selectedItems();
  if (action === "clear") { chosen.clear(); return render(); }
  if (!items.length) return;
  try {
    if (action === "zip") await downloadZip(items);
    else if (action === "move") await moveItems(items);
    else if (action === "share") openBulkShare(items);
    else if (action === "delete") { chosen.clear(); render(); await trashItems(items); }
  } catch (err) { toast(err.message); }
}

export function setUpSelection() {
  document.addEventListener("click", (e) => {
    const box = e.target.closest("input.pick");
    if (box) {
      // No preventDefault: a cancelled click puts the box back after render() set it.
      toggle(box.closest("tr.item"), e.shiftKey);
      return;
    }
    if (e.target.id === "select-all") {
      selectAll(chosen.size !== rows().length);
      return;
    }
    const button = e.target.closest("button[data-bulk]");
    if (button) bulk(button.dataset.bulk);
  });
  document.addEventListener("listing:updated", render);
  document.addEventListener("htmx:afterSwap", () => { chosen.clear(); anchor = null; render(); });
}
