// Short messages in the corner (#toasts is an aria-live region), gone after six seconds.

export function toast(message) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = document.createElement("div");
  el.className = "toast";
  el.textContent = message;
  box.appendChild(el);
  setTimeout(() => el.remove(), 6000);
}
