// Sharing several selected items with one person at once (#bulk-share-dialog in
// files.html): the same grant as the share dialog's, made for each item in turn.

import { api } from "./api.js";
import { toast } from "./toast.js";

let items = [];

export function openBulkShare(selected) {
  items = selected;
  const dialog = document.getElementById("bulk-share-dialog");
  document.getElementById("bulk-share-title").textContent =
    `Share ${items.length === 1 ? items[0].name : `${items.length} items`}`;
  document.getElementById("bulk-share-error").hidden = true;
  dialog.showModal();
}

export function setUpBulkShare() {
  const dialog = document.getElementById("bulk-share-dialog");
  if (!dialog) return;
  document.getElementById("bulk-share-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const username = document.getElementById("bulk-share-user").value.trim();
    const role = document.getElementById("bulk-share-role").value;
    const error = document.getElementById("bulk-share-error");
    const failed = [];
    for (const { id, name } of items) {
      try {
        await api("POST", `/api/file/${id}/share`, { username, role });
      } catch (err) { failed.push(`${name}: ${err.message}`); }
    }
    if (failed.length) {
      error.textContent = failed.join("; ");
      error.hidden = false;
      return;
    }
    dialog.close();
    toast(`Shared ${items.length} item(s) with ${username}`);
  });
  document.getElementById("bulk-share-close").addEventListener("click", () => dialog.close());
}
