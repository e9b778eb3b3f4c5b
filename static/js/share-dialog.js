// The share dialog (#share-dialog in files.html): people with access and their roles, and
// public links. Its rows come from the #share-person and #share-link templates.

import { api } from "./api.js";
import { human, minute } from "./format.js";
import { cloneTemplate } from "./template.js";
import { toast } from "./toast.js";

let sharing = null;  // { id, name } of the item the dialog is open for

function personRow(grant) {
  const li = cloneTemplate("share-person");
  li.querySelector(".who").textContent = grant.username;
  const select = li.querySelector("select");
  select.value = grant.role;
  select.setAttribute("aria-label", `Role of ${grant.username}`);
  select.onchange = () => api("POST", `/api/file/${sharing.id}/share`, { username: grant.username, role: select.value })
    .catch((err) => toast(err.message));
  li.querySelector("button").onclick = async () => {
    await api("DELETE", `/api/file/${sharing.id}/share/${encodeURIComponent(grant.username)}`);
    loadShares();
  };
  return li;
}

function linkRow(link) {
  const li = cloneTemplate("share-link");
  li.querySelector(".url").href = link.url;
  li.querySelector(".url").textContent = link.url;
  li.querySelector(".meta").textContent = [link.has_password ? "password" : "",
    link.expires_at ? `expires ${minute(link.expires_at)}` : "",
    link.upload_only ? "upload-only" : (link.allow_download ? "" : "no download"),
    link.max_bytes ? `max ${human(link.max_bytes)} per file` : ""].filter(Boolean).join(", ");
  li.querySelector(".copy").onclick = () => navigator.clipboard.writeText(link.url).then(() => toast("Link copied"));
  li.querySelector(".revoke").onclick = async () => {
    await api("DELETE", `/api/links/${link.token}`);
    loadShares();
  };
  return li;
}

async function loadShares() {
  const list = document.getElementById("share-list");
  const links = document.getElementById("link-list");
  const grants = await api("GET", `/api/file/${sharing.id}/share`);
  list.replaceChildren(...grants.items.map(personRow));
  const found = await api("GET", `/api/file/${sharing.id}/links`);
  links.replaceChildren(...found.items.map(linkRow));
}

// Upload-only links (file requests) exist for folders only: `kind` defaults to the
// listing row's data-kind.
export function openShareDialog(id, name, kind = undefined) {
  sharing = { id, name };
  const dialog = document.getElementById("share-dialog");
  const row = document.querySelector(`tr.item[data-id="${CSS.escape(id)}"]`);
  const isFolder = (kind ?? row?.dataset.kind) === "folder";
  document.getElementById("link-request-options").hidden = !isFolder;
  document.getElementById("link-upload-only").checked = false;
  document.getElementById("link-max-mb").value = "";
  document.getElementById("share-title").textContent = `Share ${name}`;
  document.getElementById("share-error").hidden = true;
  dialog.showModal();
  loadShares().catch((err) => toast(err.message));
}

export function setUpShareDialog() {
  const dialog = document.getElementById("share-dialog");
  if (!dialog) return;
  const fail = (err) => {
    const box = document.getElementById("share-error");
    box.textContent = err.message;
    box.hidden = false;
  };
  document.getElementById("share-close").onclick = () => dialog.close();
  document.getElementById("share-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const user = document.getElementById("share-user");
    try {
      await api("POST", `/api/file/${sharing.id}/share`,
        { username: user.value, role: document.getElementById("share-role").value });
      user.value = "";
      document.getElementById("share-error").hidden = true;
      await loadShares();
    } catch (err) { fail(err); }
  });
  document.getElementById("link-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const password = document.getElementById("link-password");
    const expiry = document.getElementById("link-expiry").value;
    const body = { allow_download: document.getElementById("link-download").checked };
    if (password.value) body.password = password.value;
    if (!document.getElementById("link-request-options").hidden &&
        document.getElementById("link-upload-only").checked) {
      body.upload_only = true;
      const mb = Number(document.getElementById("link-max-mb").value);
      if (mb > 0) body.max_bytes = Math.round(mb * 1000 * 1000);
    }
    if (expiry) body.expires_at = new Date(expiry).toISOString();
    try {
      await api("POST", `/api/file/${sharing.id}/links`, body);
      password.value = "";
      await loadShares();
    } catch (err) { fail(err); }
  });
}
