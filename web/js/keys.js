// Keyboard shortcuts (every one also a button or a picker reachable with Tab).

export const SHORTCUTS = [
  ["s", "start a session with the picked stream, checkpoint and gallery"],
  ["x", "stop the focused panel's session"],
  ["1 – 4", "focus a panel"],
  ["z", "zoom the focused panel (again: back to the grid)"],
  ["r", "recorded sessions, to replay"],
  ["f", "full screen"],
  ["?", "this help"],
  ["Esc", "close a dialog, leave zoom"],
];

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

/** @param {object} actions  start, stop, focus(n), zoom, recorded, fullscreen, help, escape */
export function bindKeys(actions) {
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") { actions.escape(); return; }
    if (typing(event.target) || document.querySelector("dialog[open]")) return;
    const key = event.key;
    let done = true;
    if (key === "s") actions.start();
    else if (key === "x") actions.stop();
    else if (key >= "1" && key <= "4") actions.focus(Number(key) - 1);
    else if (key === "z") actions.zoom();
    else if (key === "r") actions.recorded();
    else if (key === "f") actions.fullscreen();
    else if (key === "?") actions.help();
    else done = false;
    if (done) event.preventDefault();
  });
}

/** The help overlay's list, from SHORTCUTS. */
export function renderHelp(list) {
  list.replaceChildren(...SHORTCUTS.flatMap(([key, what]) => {
    const dt = document.createElement("dt");
    dt.append(...key.split(" ").map((k) => (k === "–" ? " – " : Object.assign(document.createElement("kbd"), { textContent: k }))));
    const dd = document.createElement("dd");
    dd.textContent = what;
    return [dt, dd];
  }));
}
