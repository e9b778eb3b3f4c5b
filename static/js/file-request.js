// The file-request page (link_upload.html, an upload-only link): whoever has the link types
// their name and picks or drops files; each file goes, one at a time, as the raw body of
// POST <data-upload-url>?name=<file name>&from=<their name> (the browser streams it from
// disk and sets Content-Length), with a progress row from the #request-row template. The
// server throttles per link and address: a 429 is waited out (Retry-After) and retried.
// The answer says only "received": this page never learns what the folder holds.

import { human } from "./format.js";
import { cloneTemplate } from "./template.js";

const box = document.getElementById("file-request");
const form = document.getElementById("request-form");
const nameField = document.getElementById("uploader");
const errorBox = document.getElementById("request-error");
const maxBytes = Number(box.dataset.maxBytes) || 0;
const queue = [];  // { file, row } waiting to be sent
let sending = false;

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = !text;
}

function uploaderName() {
  const name = nameField.value.trim();
  if (!name) {
    showError("Type your name first: the owner sees it next to your files.");
    nameField.focus();
    return null;
  }
  showError("");
  return name;
}

function addRow(file) {
  const row = cloneTemplate("request-row");
  row.querySelector(".name").textContent = file.name;
  row.querySelector("progress").setAttribute("aria-label", `Upload of ${file.name}`);
  document.getElementById("uploads").prepend(row);
  return row;
}

function finish(item, text) {
  item.row.querySelector(".status").textContent = text;
  item.row.querySelector(".cancel").remove();  // (the CSS shows buttons even when hidden)
  item.done = true;
}

function enqueue(files) {
  for (const file of files) {
    const item = { file, row: addRow(file), done: false, xhr: null };
    item.row.querySelector(".cancel").onclick = () => {
      if (item.xhr) item.xhr.abort();
      else finish(item, "cancelled");
    };
    if (maxBytes && file.size > maxBytes) {
      finish(item, `too large: at most ${human(maxBytes)} per file`);
      continue;
    }
    queue.push(item);
  }
  pump();
}

// One attempt at one file: resolves with the finished XMLHttpRequest, null when the
// connection broke, "aborted" when cancelled.
function send(item, from) {
  return new Promise((resolve) => {
    const { file, row } = item;
    const status = row.querySelector(".status");
    const bar = row.querySelector("progress");
    const query = new URLSearchParams({ name: file.name, from });
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", `${box.dataset.uploadUrl}?${query}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      bar.value = e.total ? (100 * e.loaded) / e.total : 100;
      status.textContent = `${human(e.loaded)} of ${human(file.size)}`;
    };
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => resolve(null);
    xhr.onabort = () => resolve("aborted");
    xhr.send(file);
  });
}

// The server's {"error": {"code", "message"}}, or what can be said without one.
function errorOf(xhr) {
  try {
    const { error } = JSON.parse(xhr.responseText);
    if (error?.message) return error;
  } catch { /* not JSON: a proxy's page */ }
  return { code: "", message: `error ${xhr.status}` };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function pump() {
  if (sending) return;
  sending = true;
  try {
    while (queue.length) {
      const from = uploaderName();
      if (from === null) return;  // the files wait for a name and the Send button
      const item = queue[0];
      if (item.done) { queue.shift(); continue; }
      const status = item.row.querySelector(".status");
      status.textContent = "sending…";
      const xhr = await send(item, from);
      item.xhr = null;
      if (xhr === "aborted") {
        finish(item, "cancelled");
      } else if (xhr === null) {
        finish(item, "failed: the connection broke");
      } else if (xhr.status === 201) {
        item.row.querySelector("progress").value = 100;
        finish(item, "received");
      } else if (xhr.status === 429) {
        const wait = Number(xhr.getResponseHeader("Retry-After")) || 5;
        status.textContent = `waiting ${wait} s (many files at once)…`;
        await sleep(wait * 1000);
        continue;  // the same file again
      } else {
        const error = errorOf(xhr);
        finish(item, `failed: ${error.message}`);
        if (error.code.startsWith("name_")) showError(error.message);
      }
      queue.shift();
    }
  } finally {
    sending = false;
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  pump();
});
document.getElementById("request-picker").addEventListener("change", (e) => {
  enqueue(Array.from(e.target.files));
  e.target.value = "";
});
const zone = document.getElementById("dropzone");
zone.addEventListener("dragover", (e) => {
  e.preventDefault();
  zone.classList.add("over");
});
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (e) => {
  e.preventDefault();
  zone.classList.remove("over");
  enqueue(Array.from(e.dataTransfer.files));
});
