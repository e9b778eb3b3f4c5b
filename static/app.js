// Coffer's browser client: chunked resumable uploads (Web Crypto SHA-256, the same API as
// the sync client), row actions, the share dialog, and live updates over the WebSocket
// feed with a long-poll fallback. Pages render on the server; htmx swaps #listing.
"use strict";

const CHUNK = 4 * 1024 * 1024;
const PARALLEL = 4;
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
const me = document.querySelector('meta[name="username"]')?.content || "";

class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

async function api(method, url, body, signal) {
  const init = { method, credentials: "same-origin", signal, headers: { "X-CSRF-Token": csrf } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(url, init);
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = data.error || {};
    throw new ApiError(resp.status, err.code || "error", err.message || resp.statusText, data);
  }
  return data;
}

function listing() {
  return document.getElementById("listing");
}

function toast(message) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = document.createElement("div");
  el.className = "toast";
  el.textContent = message;
  box.appendChild(el);
  setTimeout(() => el.remove(), 6000);
}

// Live refresh: fetch the listing fragment and patch it row by row (keyed by data-id),
// so rows that did not change stay the same DOM nodes: keyboard focus, hover and scroll
// survive another user's change. Anything beyond the rows changed: replace the listing.
let refreshTimer = null;
let refreshing = null;
function refreshListing() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    refreshing = (refreshing || Promise.resolve()).then(patchListing).catch(() => {});
  }, 60);
}

async function patchListing() {
  const current = listing();
  if (!current) return;
  const url = current.dataset.shared ? "/shared" : current.dataset.trash ? "/trash"
    : location.pathname + location.search;
  const resp = await fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" });
  if (!resp.ok) return;
  const template = document.createElement("template");
  template.innerHTML = (await resp.text()).trim();
  const fresh = template.content.querySelector("#listing");
  const now = listing();  // the user may have navigated meanwhile
  if (!fresh || now !== current) return;
  const oldBody = current.querySelector("tbody");
  const newBody = fresh.querySelector("tbody");
  if (!oldBody || !newBody || frame(current) !== frame(fresh)) {
    current.replaceWith(fresh);
    if (window.htmx) htmx.process(fresh);
    return;
  }
  const kept = new Map();
  for (const tr of oldBody.children) {
    if (!tr.dataset.id) continue;
    tr.renderedAs ??= tr.outerHTML;  // rows from a full render have no highlight yet
    kept.set(tr.dataset.id, tr);
  }
  const rows = Array.from(newBody.children).map((tr) => {
    const old = tr.dataset.id && kept.get(tr.dataset.id);
    const html = tr.outerHTML;  // as the server rendered it, before any highlight
    if (old && old.renderedAs === html) return old;
    tr.renderedAs = html;
    tr.classList.add("fresh");  // new or changed: a brief highlight
    return tr;
  });
  // Insert in order, moving a node only when it is out of place (moving drops focus).
  let cursor = oldBody.firstChild;
  for (const tr of rows) {
    if (tr === cursor) { cursor = cursor.nextSibling; continue; }
    oldBody.insertBefore(tr, cursor);
    if (window.htmx && tr.classList.contains("fresh")) htmx.process(tr);
  }
  while (cursor) { const next = cursor.nextSibling; cursor.remove(); cursor = next; }
  setTimeout(() => rows.forEach((tr) => tr.classList.remove("fresh")), 1500);
}

// The listing without its rows: breadcrumbs, headers, notes. Same frame: patch rows only.
function frame(box) {
  const copy = box.cloneNode(true);
  copy.querySelector("tbody")?.replaceChildren();
  return copy.outerHTML;
}

function human(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (bytes >= 1000 && i < units.length - 1) { bytes /= 1000; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (!isFinite(seconds)) return "…";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
}

// ------------------------------------------------------------------------ uploads

const uploads = { total: 0, done: 0, started: 0, active: 0 };

function updateOverall() {
  const box = document.getElementById("overall");
  if (!box) return;
  box.hidden = uploads.total === 0;
  const pct = uploads.total ? (100 * uploads.done) / uploads.total : 0;
  box.querySelector("progress").value = pct;
  const elapsed = (performance.now() - uploads.started) / 1000;
  const speed = uploads.done / Math.max(elapsed, 0.001);
  document.getElementById("overall-text").textContent =
    `${human(uploads.done)} of ${human(uploads.total)} · ${human(speed)}/s · ` +
    `${duration((uploads.total - uploads.done) / speed)} left`;
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function uploadRow(name, size) {
  const row = document.createElement("div");
  row.className = "upload";
  row.innerHTML =
    `<div><strong class="name"></strong> <span class="muted status">hashing…</span>` +
    `<progress max="100" value="0"></progress></div>` +
    `<div><button type="button" class="secondary small cancel">Cancel</button></div>`;
  row.querySelector(".name").textContent = name;
  row.querySelector("progress").setAttribute("aria-label", `Upload of ${name}`);
  row.dataset.size = size;
  document.getElementById("uploads").prepend(row);
  return row;
}

async function ensureFolderIn(parentId, name) {
  try {
    return (await api("POST", "/api/folder", { parent_id: parentId, name })).id;
  } catch (err) {
    if (err.code !== "exists") throw err;
    const found = await api("GET", `/api/file?id=${encodeURIComponent(parentId)}&limit=1000`);
    return found.items.find((i) => i.name.toLowerCase() === name.toLowerCase()).id;
  }
}

async function targetFor(relPath) {
  const box = listing();
  const parts = relPath.split("/");
  const name = parts.pop();
  if (!box.dataset.folderId) {
    const base = box.dataset.path === "/" ? "" : box.dataset.path;
    return { path: `${base}/${relPath}` };
  }
  // A folder shared with us: not in our own path space, so walk it by ids.
  let parentId = box.dataset.folderId;
  for (const part of parts) parentId = await ensureFolderIn(parentId, part);
  return { parent_id: parentId, name };
}

async function uploadFile(file, relPath) {
  const row = uploadRow(relPath, file.size);
  const status = row.querySelector(".status");
  const bar = row.querySelector("progress");
  const abort = new AbortController();
  row.querySelector(".cancel").onclick = () => abort.abort();
  uploads.total += file.size;
  if (!uploads.active++) uploads.started = performance.now();
  let sent = 0;
  let finished = false;
  const began = performance.now();
  const show = (text) => {
    if (finished && !text) return; // a straggling worker after a failure or cancel
    const pct = file.size ? (100 * sent) / file.size : 100;
    bar.value = pct;
    const speed = sent / Math.max((performance.now() - began) / 1000, 0.001);
    status.textContent = text || `${human(sent)} of ${human(file.size)} · ${human(speed)}/s · ` +
      `${duration((file.size - sent) / speed)} left`;
  };
  try {
    // Hash one slice at a time: memory stays at one chunk whatever the file size.
    const chunks = [];
    for (let offset = 0; offset < file.size; offset += CHUNK) {
      if (abort.signal.aborted) throw new DOMException("cancelled", "AbortError");
      const slice = file.slice(offset, Math.min(offset + CHUNK, file.size));
      chunks.push({ sha256: await sha256Hex(await slice.arrayBuffer()), size: slice.size });
      status.textContent = `hashing… ${Math.round((100 * (offset + slice.size)) / file.size)}%`;
    }
    const target = await targetFor(relPath);
    let reg = await api("POST", "/api/file", { ...target, size: file.size, chunks }, abort.signal);
    // Chunks the server already has count as sent: a resumed upload starts part-way.
    const missingBytes = reg.missing.reduce((n, m) => n + m.size, 0);
    sent = file.size - missingBytes;
    uploads.done += sent;
    show();
    for (let attempt = 0; attempt < 3; attempt++) {
      const queue = [...reg.missing];
      const worker = async () => {
        while (queue.length) {
          const m = queue.shift();
          const start = m.index * CHUNK;
          const body = file.slice(start, start + m.size);
          const headers = m.headers || {};
          const resp = await fetch(m.url, { method: "PUT", body, headers, signal: abort.signal });
          if (!resp.ok) {
            const data = await resp.json().catch(() => ({}));
            throw new ApiError(resp.status, data.error?.code, data.error?.message || "upload failed");
          }
          sent += m.size;
          uploads.done += m.size;
          show();
          updateOverall();
        }
      };
      await Promise.all(Array.from({ length: Math.min(PARALLEL, queue.length) }, worker));
      try {
        await api("POST", `/api/file/${reg.file_id}/commit`, { upload_id: reg.upload_id });
        break;
      } catch (err) {
        if (err.code !== "missing_chunks" || attempt === 2) throw err;
        reg = { ...reg, missing: err.body.error.missing };
      }
    }
    sent = file.size;
    show("done");
    row.classList.add("done");
    row.querySelector(".cancel").remove();
    refreshListing();
  } catch (err) {
    finished = true;
    const cancelled = abort.signal.aborted;
    abort.abort(); // stop the other chunk transfers of this file
    status.textContent = cancelled ? "cancelled" : `failed: ${err.message}`;
    uploads.total -= file.size;
    uploads.done -= sent;
  } finally {
    uploads.active--;
    updateOverall();
    if (!uploads.active) { uploads.total = 0; uploads.done = 0; }
  }
}

function readAllEntries(reader) {
  return new Promise((resolve, reject) => {
    const all = [];
    const next = () => reader.readEntries((batch) => {
      if (!batch.length) return resolve(all);
      all.push(...batch);
      next();
    }, reject);
    next();
  });
}

async function walkEntry(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push([file, prefix + file.name]);
  } else if (entry.isDirectory) {
    for (const child of await readAllEntries(entry.createReader())) {
      await walkEntry(child, `${prefix}${entry.name}/`, out);
    }
  }
}

async function filesFromDrop(dataTransfer) {
  const out = [];
  const entries = Array.from(dataTransfer.items || [])
    .map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  if (entries.length && entries.every(Boolean)) {
    for (const entry of entries) await walkEntry(entry, "", out);
  } else {
    for (const file of dataTransfer.files) out.push([file, file.webkitRelativePath || file.name]);
  }
  return out;
}

async function uploadAll(pairs) {
  for (const [file, rel] of pairs) await uploadFile(file, rel);
}

function setUpUploads() {
  const zone = document.getElementById("dropzone");
  const picker = document.getElementById("picker");
  if (!zone) return;
  const over = (on) => (e) => { e.preventDefault(); zone.classList.toggle("over", on); };
  // The whole page accepts drops (onto the listing too), the zone shows where.
  document.addEventListener("dragover", over(true));
  document.addEventListener("dragleave", over(false));
  document.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    await uploadAll(await filesFromDrop(e.dataTransfer));
  });
  picker?.addEventListener("change", async () => {
    const pairs = Array.from(picker.files, (f) => [f, f.name]);
    picker.value = "";
    await uploadAll(pairs);
  });
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

// -------------------------------------------------------------------- row actions

async function rowAction(button) {
  const row = button.closest("tr.item");
  const { id, name } = row.dataset;
  const action = button.dataset.action;
  try {
    if (action === "delete") {
      if (!confirm(`Move ${name} to the trash?`)) return;
      await api("DELETE", `/api/file/${id}`);
    } else if (action === "rename") {
      const newName = prompt(`New name for ${name}`, name);
      if (!newName || newName === name) return;
      await api("PATCH", `/api/file/${id}`, { name: newName });
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

// ------------------------------------------------------------------- share dialog

let sharing = null;

async function loadShares() {
  const list = document.getElementById("share-list");
  const links = document.getElementById("link-list");
  const grants = await api("GET", `/api/file/${sharing.id}/share`);
  list.replaceChildren(...grants.items.map((g) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="who"></span> <select aria-label="Role"><option value="viewer">viewer</option>` +
      `<option value="editor">editor</option></select> <button type="button" class="danger small">Remove</button>`;
    li.querySelector(".who").textContent = g.username;
    const select = li.querySelector("select");
    select.value = g.role;
    select.setAttribute("aria-label", `Role of ${g.username}`);
    select.onchange = () => api("POST", `/api/file/${sharing.id}/share`, { username: g.username, role: select.value })
      .catch((err) => toast(err.message));
    li.querySelector("button").onclick = async () => {
      await api("DELETE", `/api/file/${sharing.id}/share/${encodeURIComponent(g.username)}`);
      loadShares();
    };
    return li;
  }));
  const found = await api("GET", `/api/file/${sharing.id}/links`);
  links.replaceChildren(...found.items.map((link) => {
    const li = document.createElement("li");
    li.innerHTML = `<a class="url" target="_blank" rel="noopener"></a> <span class="muted meta"></span> ` +
      `<button type="button" class="secondary small copy">Copy</button> <button type="button" class="danger small revoke">Revoke</button>`;
    li.querySelector(".url").href = link.url;
    li.querySelector(".url").textContent = link.url;
    li.querySelector(".meta").textContent = [link.has_password ? "password" : "",
      link.expires_at ? `expires ${link.expires_at.slice(0, 16).replace("T", " ")}` : "",
      link.allow_download ? "" : "no download"].filter(Boolean).join(", ");
    li.querySelector(".copy").onclick = () => navigator.clipboard.writeText(link.url).then(() => toast("Link copied"));
    li.querySelector(".revoke").onclick = async () => {
      await api("DELETE", `/api/links/${link.token}`);
      loadShares();
    };
    return li;
  }));
}

function openShareDialog(id, name) {
  sharing = { id, name };
  const dialog = document.getElementById("share-dialog");
  document.getElementById("share-title").textContent = `Share ${name}`;
  document.getElementById("share-error").hidden = true;
  dialog.showModal();
  loadShares().catch((err) => toast(err.message));
}

function setUpShareDialog() {
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
    if (expiry) body.expires_at = new Date(expiry).toISOString();
    try {
      await api("POST", `/api/file/${sharing.id}/links`, body);
      password.value = "";
      await loadShares();
    } catch (err) { fail(err); }
  });
}

// ------------------------------------------------------------------ version history

async function openVersions(id, name) {
  const dialog = document.getElementById("versions-dialog");
  document.getElementById("versions-title").textContent = `Versions of ${name}`;
  const body = document.getElementById("versions-list");
  const versions = await api("GET", `/api/file/${id}/versions`);
  body.replaceChildren(...versions.map((v, i) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td></td><td></td><td></td><td class="num"></td><td class="row-actions">` +
      `<a class="button secondary small" download>Download</a> ` +
      `<button type="button" class="secondary small">Restore</button></td>`;
    const cells = tr.querySelectorAll("td");
    cells[0].textContent = `${v.version}${i === 0 ? " (current)" : ""}${v.damaged ? " damaged" : ""}`;
    cells[1].textContent = v.modified_at.slice(0, 16).replace("T", " ");
    cells[2].textContent = v.author_device || "";
    cells[3].textContent = human(v.size);
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

// ---------------------------------------------------------------------- live feed

const feed = { cursor: null, failures: 0, mode: "socket" };

function handleEvents(events) {
  if (!events.length) return;
  for (const e of events) {
    // The owner hears of their own share too; only the recipient gets the toast.
    if (e.type === "share.added" && e.actor && e.actor !== me) {
      toast(`${e.actor} shared ${e.path.replace(/^\//, "")} with you`);
    }
  }
  refreshListing();
}

function openSocket() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/ws?cursor=${feed.cursor}`);
  let openedAt = 0;
  ws.onopen = () => { openedAt = performance.now(); };
  ws.onmessage = (msg) => {
    const event = JSON.parse(msg.data);
    feed.failures = 0;
    if (event.type === "heartbeat") { feed.cursor = event.cursor; return; }
    feed.cursor = event.seq;
    handleEvents([event]);
  };
  ws.onclose = () => {
    // A socket refused, or dropped at once, twice in a row: a proxy or firewall blocks
    // WebSockets, so long-poll (and try the socket again in a minute).
    if (!openedAt || performance.now() - openedAt < 3000) feed.failures++;
    if (feed.failures >= 2) longPoll(60000);
    else setTimeout(openSocket, 500 * feed.failures + 200);
  };
}

async function longPoll(forMs) {
  feed.mode = "poll";
  document.body.dataset.feed = "poll";
  const until = performance.now() + forMs;
  let delay = 500;
  while (performance.now() < until) {
    try {
      const body = await api("GET", `/api/file/events?cursor=${feed.cursor}&wait=25`);
      feed.cursor = body.cursor;
      handleEvents(body.events);
      delay = 500;
    } catch (err) {
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 30000);
    }
  }
  feed.failures = 0;
  feed.mode = "socket";
  document.body.dataset.feed = "socket";
  openSocket();
}

async function startFeed() {
  if (!listing()) return;
  const body = await api("GET", "/api/file/events?cursor=latest");
  feed.cursor = body.cursor;
  document.body.dataset.feed = "socket";
  openSocket();
}

document.addEventListener("click", (e) => {
  const button = e.target.closest("button[data-action]");
  if (button) rowAction(button);
});
setUpUploads();
setUpShareDialog();
document.getElementById("versions-close")?.addEventListener("click", () => {
  document.getElementById("versions-dialog").close();
});
startFeed().catch(() => longPoll(60000));
