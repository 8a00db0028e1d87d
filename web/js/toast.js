// Short-lived messages in a corner: errors as the service words them
// (what was expected, what came, how to fix it), and confirmations.

const SHOWN_MS = { error: 12000, info: 4000 };

/**
 * @param {string} title
 * @param {object} [details]  {expected, got, fix} from a service error
 * @param {"error"|"info"} [kind]
 */
export function toast(title, details = {}, kind = "error") {
  const box = document.getElementById("toasts");
  const item = document.createElement("div");
  item.className = `toast ${kind}`;
  item.setAttribute("role", kind === "error" ? "alert" : "status");
  const heading = document.createElement("strong");
  heading.textContent = title;
  item.append(heading);
  for (const key of ["expected", "got", "fix"]) {
    if (!details[key]) continue;
    const line = document.createElement("div");
    line.className = `toast-${key}`;
    const label = document.createElement("span");
    label.textContent = `${key} `;
    line.append(label, String(details[key]));
    item.append(line);
  }
  const close = document.createElement("button");
  close.className = "ghost toast-close";
  close.setAttribute("aria-label", "dismiss");
  close.textContent = "×";
  close.onclick = () => item.remove();
  item.append(close);
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => item.remove(), SHOWN_MS[kind]);
}
