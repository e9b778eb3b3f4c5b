// Moving items to the trash from the listing (row button, Delete key, bulk delete): no
// confirmation, an "Undo" toast instead, which brings them back from the trash (for the
// owner; a share editor's deletions are the owner's to restore).

import { api } from "./api.js";
import { listing, refreshListing } from "./listing.js";
import { toast } from "./toast.js";

export async function trashItems(items) {
  const done = [];
  for (const { id, name } of items) {
    try {
      await api("DELETE", `/api/file/${id}`);
      done.push({ id, name });
    } catch (err) {
      toast(`${name}: ${err.message}`);
    }
  }
  refreshListing();
  if (!done.length) return;
  const what = done.length === 1 ? done[0].name : `${done.length} items`;
  // Only the owner can restore from the trash: an editor of a shared folder gets no Undo.
  const undo = listing()?.dataset.role === "owner"
    ? { label: "Undo", run: () => restoreItems(done) } : null;
  toast(`Moved ${what} to the trash`, undo);
}

async function restoreItems(items) {
  for (const { id, name } of items) {
    try {
      await api("POST", `/api/trash/${id}/restore`);
    } catch (err) {
      toast(`${name}: ${err.message}`);
    }
  }
  refreshListing();
}
