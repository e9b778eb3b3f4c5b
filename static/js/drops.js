// Choosing what to upload: files dropped anywhere on the page (folders too, walked with the
// entries API so their structure is kept) or picked with the "Upload files" button.

import { uploadAll } from "./uploads.js";

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

export function setUpDrops() {
  const zone = document.getElementById("dropzone");
  const picker = document.getElementById("picker");
  const folderPicker = document.getElementById("folder-picker");
  if (!zone) return;  // no write access here
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
  // A chosen folder: each file's webkitRelativePath starts with the folder's own name.
  folderPicker?.addEventListener("change", async () => {
    const pairs = Array.from(folderPicker.files, (f) => [f, f.webkitRelativePath || f.name]);
    folderPicker.value = "";
    await uploadAll(pairs);
  });
}
