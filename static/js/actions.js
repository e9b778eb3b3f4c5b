// The buttons on listing rows (button[data-action] inside tr.item, which carries data-id and
// data-name): delete, rename, move, share, versions; restore and purge in the trash; leave
// in "Shared with me". One delegated click handler, so rows swapped in by htmx or the live
// refresh need no wiring. A row's buttons sit in a popover menu on narrow screens: it closes
// once an action is chosen.

import { api } from "./api.js";
import { listing, refreshListing } from "./listing.js";
import { openShareDialog } from "./share-dialog.js";
import { toast } from "./toast.js";
import { trashItems } from "./trash.js";
import { openVersions } from "./versions-dialog.js";

export async function renameItem(id, name) {
  const newName = prompt(`New name for ${name}`, name);
  if (!newName || newName === name) return;
  await api("PATCH", `/api/file/${id}`, { name: newName });
  refreshListing();
}

async function rowAction(button) {
  const row = button.closest("tr.item");
  const { id, name } = row.dataset;
  const action = button.dataset.action;
  try { button.closest("[popover]")?.hidePopover(); } catch { /* not open: nothing to close */ }
  try {
    if (action === "delete") {
      return await trashItems([{ id, name }]);
    } else if (action === "rename") {
      return await renameItem(id, name);
    } else if (action === "leave") {
      if (!confirm(`Leave ${name}? You will no longer see it; it stays with its owner.`)) return;
      await api("DELETE", `/api/shared/${id}`);
      toast(`You left ${name}`);
    } else if (action === "move") {
      const dest = prompt(`Move ${name} to which folder?`, listing().dataset.path);
      if (!dest) return;
      await api("PATCH", `/api/file/${id}`, { path: `${dest.replace(/\/$/, "")}/${name}` });
    } else if (action === "share") {
      return openShareDialog(id, name);
    } else if (action === "versions") {
      return openVersions(id, name);
    } else if (action === "restore") {
      const restored = await api("POST", `/api/trash/${id}/restore`);
      toast(`Restored ${restored.path}`);
    } else if (action === "purge") {
      if (!confirm(`Delete ${name} forever? This cannot be undone.`)) return;
      await api("DELETE", `/api/trash/${id}`);
    }
    refreshListing();
  } catch (err) {
    toast(err.message);
  }
}

export function setUpRowActions() {
  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (button) rowAction(button);
  });
}
