// Uploads, the same protocol as the sync client. Small files (up to 1 MiB) go up in
// batches: up to 1,000 of them with their bytes in one POST /api/batch/upload, two batches
// in flight, one progress row for the whole drop (a folder of 1,000 files is a couple of
// requests, not 3,000). Larger files one by one: hash in 4 MiB chunks (Web Crypto SHA-256),
// register, PUT the chunks the server lacks (4 at a time, each with the headers the server
// gave for it), then commit. Chunks the server already has count as sent, so an interrupted
// upload resumes part-way. One progress row per large file (from the #upload-row template)
// and an overall bar; every row can be cancelled.

import { api, ApiError } from "./api.js";
import { ensureFolderIn } from "./folders.js";
import { duration, human } from "./format.js";
import { listing, refreshListing } from "./listing.js";
import { cloneTemplate } from "./template.js";

const CHUNK = 4 * 1024 * 1024;
const PARALLEL = 4;
// The server's batch limits (settings batch_inline_max_bytes, batch_max_files,
// batch_inline_total_bytes): files this small travel inline, so many per request.
let inlineMax = 1024 * 1024;  // lowered to the server's own limit if it says so
const BATCH_FILES = 1000;
const BATCH_BYTES = 16 * 1024 * 1024;
const BATCHES_IN_FLIGHT = 2;

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
  const row = cloneTemplate("upload-row");
  row.querySelector(".name").textContent = name;
  row.querySelector("progress").setAttribute("aria-label", `Upload of ${name}`);
  row.dataset.size = size;
  document.getElementById("uploads").prepend(row);
  return row;
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

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// Where a file of a batch goes: a path in our own tree, or (in a folder shared with us,
// which is not in our path space) a name under the folder's id; the server makes the
// folders on the way either way.
function batchTarget(relPath) {
  const box = listing();
  if (box.dataset.folderId) return { parent_id: box.dataset.folderId, name: relPath };
  const base = box.dataset.path === "/" ? "" : box.dataset.path;
  return { path: `${base}/${relPath}` };
}

function groupsOf(pairs) {
  const groups = [];
  let current = [];
  let bytes = 0;
  for (const pair of pairs) {
    if (current.length && (current.length >= BATCH_FILES || bytes + pair[0].size > BATCH_BYTES)) {
      groups.push(current);
      current = [];
      bytes = 0;
    }
    current.push(pair);
    bytes += pair[0].size;
  }
  if (current.length) groups.push(current);
  return groups;
}

// Small files in batches behind one progress row: files and bytes done, rate, time left.
async function uploadBatches(pairs) {
  const totalBytes = pairs.reduce((n, [file]) => n + file.size, 0);
  const count = pairs.length;
  const row = uploadRow(`${count} files`, totalBytes);
  row.classList.add("batch");
  const status = row.querySelector(".status");
  const bar = row.querySelector("progress");
  const abort = new AbortController();
  row.querySelector(".cancel").onclick = () => abort.abort();
  uploads.total += totalBytes;
  if (!uploads.active++) uploads.started = performance.now();
  const began = performance.now();
  let doneFiles = 0;
  let doneBytes = 0;
  const failures = [];
  const deferred = [];  // for the one-file path after all
  const show = () => {
    bar.value = totalBytes ? (100 * doneBytes) / totalBytes : (100 * doneFiles) / count;
    const speed = doneBytes / Math.max((performance.now() - began) / 1000, 0.001);
    const rate = doneFiles / Math.max((performance.now() - began) / 1000, 0.001);
    status.textContent = `${doneFiles} of ${count} files · ${human(doneBytes)} of ` +
      `${human(totalBytes)} · ${human(speed)}/s · ${duration((count - doneFiles) / rate)} left`;
    updateOverall();
  };
  const fail = (group, message) => {
    for (const [, rel] of group) failures.push(`${rel}: ${message}`);
    const bytes = group.reduce((n, [file]) => n + file.size, 0);
    uploads.total -= bytes;
  };
  const send = async (group) => {
    if (abort.signal.aborted) return fail(group, "cancelled");
    const files = [];
    for (const [file, rel] of group) {
      const bytes = new Uint8Array(await file.arrayBuffer());
      const chunks = file.size ? [{ sha256: await sha256Hex(bytes), size: file.size }] : [];
      files.push({ ...batchTarget(rel), size: file.size, chunks, data: base64(bytes) });
    }
    let answer;
    try {
      answer = await api("POST", "/api/batch/upload", { files }, abort.signal);
    } catch (err) {
      const limit = err.body?.error?.max_inline_bytes;
      if (err.code === "inline_too_large" && limit) {
        // The server takes less inline than we thought: send this group the chunked way.
        inlineMax = Math.min(inlineMax, limit);
        uploads.total -= group.reduce((n, [file]) => n + file.size, 0);
        deferred.push(...group);
        return;
      }
      return fail(group, abort.signal.aborted ? "cancelled" : err.message);
    }
    answer.results.forEach((result, i) => {
      const [file, rel] = group[i];
      if (result.status === "committed") {
        doneFiles++;
        doneBytes += file.size;
        uploads.done += file.size;
      } else {
        fail([group[i]], result.error?.message || "not uploaded");
      }
    });
    show();
    refreshListing();
  };
  show();
  const queue = groupsOf(pairs);
  const worker = async () => { while (queue.length) await send(queue.shift()); };
  await Promise.all(Array.from({ length: Math.min(BATCHES_IN_FLIGHT, queue.length) }, worker));
  row.querySelector(".cancel").remove();
  if (failures.length) {
    status.textContent = `${doneFiles} of ${count} files uploaded; ${failures.length} failed: ` +
      failures.slice(0, 3).join("; ") + (failures.length > 3 ? "; …" : "");
    row.classList.add("failed");
  } else if (deferred.length) {
    status.textContent = `${doneFiles} of ${count} files done; ${deferred.length} follow one by one`;
    row.classList.add("done");
  } else {
    bar.value = 100;
    status.textContent = `${count} files done`;
    row.classList.add("done");
  }
  uploads.active--;
  updateOverall();
  if (!uploads.active) { uploads.total = 0; uploads.done = 0; }
  return deferred;
}

// [file, path relative to the current folder] pairs: the small ones in batches, then the
// large ones one after the other.
export async function uploadAll(pairs) {
  const small = pairs.filter(([file]) => file.size <= inlineMax);
  const large = pairs.filter(([file]) => file.size > inlineMax);
  if (small.length > 1) large.push(...(await uploadBatches(small)));
  else large.unshift(...small);
  for (const [file, rel] of large) await uploadFile(file, rel);
}
