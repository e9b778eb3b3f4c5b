// Rows the script adds come from <template> elements in the page (no HTML strings here):
// clone one, then fill it with textContent and attributes.

export function cloneTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}
