// Folders: the "Create folder" form, and finding or making a folder by name inside a folder
// given by id (folders shared with us are not in our own path space).

import { api } from "./api.js";
import { listing, refreshListing } from "./listing.js";
import { toast } from "./toast.js";

export async function ensureFolderIn(parentId, name) {
  try {
    return (await api("POST", "/api/folder", { parent_id: parentId, name })).id;
  } catch (err) {
    if (err.code !== "exists") throw err;
    const found = await api("GET", `/api/file?id=${encodeURIComponent(parentId)}&limit=1000`);
    return found.items.find((i) => i.name.toLowerCase() === name.toLowerCase()).id;
  }
}

export function setUpNewFolder() {
  document.getElementById("new-folder")?.addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("folder-name");
    try {
      const box = listing();
      if (box.dataset.folderId) await ensureFolderIn(box.dataset.folderId, input.value);
      else await api("POST", "/api/folder", { path: `${box.dataset.path.replace(/\/$/, "")}/${input.value}` });
      input.value = "";
      refreshListing();
    } catch (err) { toast(err.message); }
  });
}
