// The list/grid toggle (remembered per user on the server, so every browser shows the same),
// thumbnails that are still being made (the server answers 202 until the worker is done),
// and the lightbox that pages through a folder's images.

import { api } from "./api.js";
import { listing, refreshListing } from "./listing.js";
import { toast } from "./toast.js";

const RETRIES = 8;

async function setView(view) {
  try {
    await api("PUT", "/api/me/preferences", { view });
    refreshListing();
  } catch (err) { toast(err.message); }
}

// A thumbnail not made yet (202) or failed (404) does not decode: try again a few times,
// slower each time, then show the file's badge instead.
function thumbFailed(img) {
  const tries = Number(img.dataset.tries || 0);
  if (tries >= RETRIES) {
    img.replaceWith(Object.assign(document.createElement("span"), {
      className: "icon big", textContent: "IMG",
    }));
    return;
  }
  img.dataset.tries = String(tries + 1);
  setTimeout(() => {
    const url = new URL(img.src, location.href);
    url.searchParams.set("try", String(tries + 1));
    img.src = url.pathname + url.search;
  }, 500 * 2 ** Math.min(tries, 4));
}

let images = [];
let shown = 0;

function imageRows() {
  return Array.from(listing()?.querySelectorAll("tr.item[data-image]") || []);
}

function show(index) {
  images = imageRows();
  if (!images.length) return;
  shown = (index + images.length) % images.length;
  const tr = images[shown];
  // Browsers cannot show HEIC: its large thumbnail (a WebP) stands in for it.
  const heic = /\.hei[cf]$/i.test(tr.dataset.name);
  document.getElementById("lightbox-image").src = heic
    ? `/api/file/${tr.dataset.id}/thumbnail?size=1024&v=${tr.dataset.image}`
    : `/preview/${tr.dataset.id}`;
  document.getElementById("lightbox-image").alt = tr.dataset.name;
  document.getElementById("lightbox-title").textContent = tr.dataset.name;
  document.getElementById("lightbox-position").textContent = `${shown + 1} of ${images.length}`;
}

export function openLightbox(tr) {
  const dialog = document.getElementById("lightbox");
  if (!dialog) return;
  show(imageRows().indexOf(tr));
  if (!dialog.open) dialog.showModal();
}

export function setUpGrid() {
  document.addEventListener("click", (e) => {
    const toggle = e.target.closest("button[data-view]");
    if (toggle) return setView(toggle.dataset.view);
    const thumb = e.target.closest("img.thumb");
    if (thumb) { e.preventDefault(); openLightbox(thumb.closest("tr.item")); }
  });
  // Image load errors do not bubble: listen in the capture phase.
  document.addEventListener("error", (e) => {
    if (e.target instanceof HTMLImageElement && e.target.classList.contains("thumb")) thumbFailed(e.target);
  }, true);
  const dialog = document.getElementById("lightbox");
  if (!dialog) return;
  document.getElementById("lightbox-prev").onclick = () => show(shown - 1);
  document.getElementById("lightbox-next").onclick = () => show(shown + 1);
  document.getElementById("lightbox-close").onclick = () => dialog.close();
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") { e.preventDefault(); show(shown - 1); }
    if (e.key === "ArrowRight") { e.preventDefault(); show(shown + 1); }
  });
}
