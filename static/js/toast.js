// Short messages in the corner (#toasts is an aria-live region), gone after six seconds.
// A toast may carry one action (e.g. "Undo"), run at most once, which also closes it.

export function toast(message, action = null) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = document.createElement("div");
  el.className = "toast";
  el.textContent = message;
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link toast-action";
    button.textContent = action.label;
    button.onclick = () => { el.remove(); action.run(); };
    el.append(" ", button);
  }
  box.appendChild(el);
  setTimeout(() => el.remove(), action ? 10000 : 6000);
}
