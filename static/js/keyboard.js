// Keyboard use of a listing, as in desktop file managers: arrows move between rows, Enter
// opens, Backspace goes up a folder, Delete moves to the trash (with Undo), F2 renames,
// Space toggles a row's selection (Shift+arrows extend it), Ctrl/Cmd+A selects all, and "/"
// jumps to the search box. Keys typed into a field or a dialog are left alone.

import { renameItem } from "./actions.js";
import { openLightbox } from "./grid.js";
import { listing } from "./listing.js";
import { rows, selectAll, selectedItems, toggle } from "./selection.js";
import { toast } from "./toast.js";
import { trashItems } from "./trash.js";

function typing(target) {
  // A ticked checkbox keeps focus: the listing's keys still apply there.
  return target.closest("input:not([type=checkbox]), textarea, select, [contenteditable], dialog[open]");
}

function current() {
  return document.activeElement?.closest?.("tr.item") || null;
}

function focusRow(tr) {
  if (!tr) return;
  for (const r of rows()) r.tabIndex = r === tr ? 0 : -1;
  tr.focus();
  tr.scrollIntoView({ block: "nearest" });
}

function open(tr) {
  const lightbox = document.getElementById("lightbox");
  if (tr.dataset.image !== undefined && lightbox) return openLightbox(tr);
  const link = tr.querySelector("a.open");
  if (!link) return;
  if (tr.dataset.kind === "file" && tr.dataset.preview) {
    window.open(`/preview/${tr.dataset.id}`, "_blank", "noopener");
  } else {
    link.click();
  }
}

function onKey(e) {
  if (!listing() || typing(e.target)) return;
  const all = rows();
  const here = current();
  const at = here ? all.indexOf(here) : -1;
  const mod = e.ctrlKey || e.metaKey;
  if (e.key === "/" && !mod) {
    e.preventDefault();
    (document.getElementById("search-page-box") || document.getElementById("search-box"))?.focus();
  } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    if (!all.length) return;
    e.preventDefault();
    const next = all[Math.max(0, Math.min(all.length - 1, at + (e.key === "ArrowDown" ? 1 : -1)))];
    if (e.shiftKey && here) toggle(next, false);
    focusRow(next);
  } else if (e.key === "Home" || e.key === "End") {
    if (!all.length) return;
    e.preventDefault();
    focusRow(e.key === "Home" ? all[0] : all[all.length - 1]);
  } else if (e.key === "Enter" && here && e.target === here) {
    e.preventDefault();
    open(here);
  } else if (e.key === " " && here && e.target === here) {
    e.preventDefault();
    toggle(here);
  } else if (e.key === "Backspace" && !mod) {
    const up = listing().querySelector("[data-up]");
    if (up) { e.preventDefault(); up.click(); }
  } else if (e.key === "Delete" && listing().dataset.role && listing().dataset.role !== "viewer") {
    const focused = here ? [{ id: here.dataset.id, name: here.dataset.name }] : [];
    const items = selectedItems().length ? selectedItems() : focused;
    if (!items.length) return;
    e.preventDefault();
    const next = all[at + 1] || all[at - 1];
    trashItems(items).then(() => focusRow(next && document.contains(next) ? next : rows()[0]));
  } else if (e.key === "F2" && here && listing().dataset.role && listing().dataset.role !== "viewer") {
    e.preventDefault();
    renameItem(here.dataset.id, here.dataset.name).catch((err) => toast(err.message));
  } else if (mod && (e.key === "a" || e.key === "A")) {
    if (!all.length) return;
    e.preventDefault();
    selectAll(true);
  }
}

export function setUpKeyboard() {
  document.addEventListener("keydown", onKey);
  // Clicking a row (not its links or buttons) makes it the keyboard's current row.
  document.addEventListener("click", (e) => {
    const tr = e.target.closest("tr.item");
    if (tr && !e.target.closest("a, button, input")) focusRow(tr);
  });
  // The first row is reachable with Tab; arrows take it from there.
  const first = () => {
    const all = rows();
    if (all.length && !all.some((r) => r.tabIndex === 0)) all[0].tabIndex = 0;
  };
  document.addEventListener("listing:updated", first);
  document.addEventListener("htmx:afterSwap", first);
  first();
}
