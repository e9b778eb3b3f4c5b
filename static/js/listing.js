// The #listing fragment and its live refresh: fetch the fragment as htmx would and patch it
// row by row (keyed by data-id), so rows that did not change stay the same DOM nodes:
// keyboard focus, hover and scroll survive another user's change. Anything beyond the rows
// changed: replace the listing.

export function listing() {
  return document.getElementById("listing");
}

let refreshTimer = null;
let firstAsked = 0;
let refreshing = null;

// Refresh once things are quiet for 60 ms, but at most half a second after the first ask:
// a batch of a thousand events is a few renders, not a thousand, and still shows progress.
export function refreshListing() {
  const now = performance.now();
  if (refreshTimer === null) firstAsked = now;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refreshing = (refreshing || Promise.resolve()).then(patchListing).catch(() => {});
  }, Math.max(0, Math.min(60, firstAsked + 500 - now)));
}

async function patchListing() {
  const current = listing();
  if (!current) return;
  const url = current.dataset.shared ? "/shared" : current.dataset.trash ? "/trash"
    : location.pathname + location.search;
  const resp = await fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" });
  if (!resp.ok) return;
  const template = document.createElement("template");
  template.innerHTML = (await resp.text()).trim();  // the server's own rendered fragment
  const fresh = template.content.querySelector("#listing");
  const now = listing();  // the user may have navigated meanwhile
  if (!fresh || now !== current) return;
  const oldBody = current.querySelector("tbody");
  const newBody = fresh.querySelector("tbody");
  if (!oldBody || !newBody || frame(current) !== frame(fresh)) {
    stampRows(fresh);
    current.replaceWith(fresh);
    if (window.htmx) window.htmx.process(fresh);
    updated();
    return;
  }
  const kept = new Map();
  for (const tr of oldBody.children) {
    if (tr.dataset.id && tr.renderedAs) kept.set(tr.dataset.id, tr);
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
    if (window.htmx && tr.classList.contains("fresh")) window.htmx.process(tr);
  }
  while (cursor) { const next = cursor.nextSibling; cursor.remove(); cursor = next; }
  setTimeout(() => rows.forEach((tr) => tr.classList.remove("fresh")), 1500);
  updated();
}

// Remember each row as the server rendered it, before other scripts add their state to it
// (tabindex, selection): a refresh compares the server's new row with this, not with the
// live DOM, so a row whose state changed but whose data did not stays the same node.
export function stampRows(box = listing()) {
  for (const tr of box?.querySelectorAll("tbody tr[data-id]") || []) tr.renderedAs = tr.outerHTML;
}

export function setUpListing() {
  stampRows();
  // Registered before any other module's afterSwap handler: stamps come first.
  document.addEventListener("htmx:afterSwap", () => stampRows());
}

// Tell the page's other parts (selection, activity, storage meter) the rows were redrawn.
function updated() {
  document.dispatchEvent(new CustomEvent("listing:updated"));
}

// The listing without its rows: breadcrumbs, headers, notes. Same frame: patch rows only.
// The parts the script changes in place (the selection bar, the activity panel) are not
// part of the frame: replacing the listing for them would close the panel under the user.
function frame(box) {
  const copy = box.cloneNode(true);
  copy.querySelector("tbody")?.replaceChildren();
  copy.querySelector("#activity")?.remove();
  copy.querySelector("#selection-bar")?.remove();
  return copy.outerHTML;
}
