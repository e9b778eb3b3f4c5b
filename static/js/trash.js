// Moving items to the trash from the listing (row button, Delete key, bulk delete): no
// confirmation, an "Undo" toast instead, which brings them back from the trash.

import { api } from "./api.js";
import { refreshListing } from "./listing.js";
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
  toast(`Moved ${what} to the trash`, { label: "Undo", run: () => restoreItems(done) });
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
