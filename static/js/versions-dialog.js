// The version history dialog (#versions-dialog in files.html): one row per version from the
// #version-row template, newest first, each downloadable and all but the current restorable.

import { api } from "./api.js";
import { human, minute } from "./format.js";
import { refreshListing } from "./listing.js";
import { cloneTemplate } from "./template.js";
import { toast } from "./toast.js";

export async function openVersions(id, name) {
  const dialog = document.getElementById("versions-dialog");
  document.getElementById("versions-title").textContent = `Versions of ${name}`;
  const body = document.getElementById("versions-list");
  const versions = await api("GET", `/api/file/${id}/versions`);
  body.replaceChildren(...versions.map((v, i) => {
    const tr = cloneTemplate("version-row");
    const field = (key) => tr.querySelector(`[data-field="${key}"]`);
    field("version").textContent = `${v.version}${i === 0 ? " (current)" : ""}${v.damaged ? " damaged" : ""}`;
    field("saved").textContent = minute(v.modified_at);
    field("device").textContent = v.author_device || "";
    field("size").textContent = human(v.size);
    const link = tr.querySelector("a");
    link.href = `/api/file/${id}/content?version=${v.version}`;
    link.setAttribute("aria-label", `Download version ${v.version}`);
    const restore = tr.querySelector("button");
    restore.setAttribute("aria-label", `Restore version ${v.version}`);
    if (i === 0) restore.remove();
    else restore.onclick = async () => {
      try {
        await api("POST", `/api/file/${id}/versions/${v.version}/restore`);
        dialog.close();
        toast(`Restored version ${v.version} of ${name}`);
        refreshListing();
      } catch (err) { toast(err.message); }
    };
    return tr;
  }));
  dialog.showModal();
}

export function setUpVersionsDialog() {
  document.getElementById("versions-close")?.addEventListener("click", () => {
    document.getElementById("versions-dialog").close();
  });
}
