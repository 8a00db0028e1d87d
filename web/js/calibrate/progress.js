// Steps 2 and 3: the presentation to open, then the trials shown and the adaptation's
// epochs (validation top-5, a small chart), the interruptions and failures as the
// service words them, and its messages.

import { drawEpochs } from "./chart.js";

const $ = (id) => document.getElementById(id);

/** The presentation step: the URL to open on the person's screen. */
export function renderPresent(calibration) {
  $("session-id").textContent = calibration.session;
  $("present-url").textContent = new URL(calibration.present_url, location.href).href;
}

/** The progress step: trials, epochs, interruption, failure, messages. */
export function renderProgress(calibration) {
  const t = calibration.trials;
  const shown = t.presentation ? t.presentation.n_shown : 0;
  const total = t.presentation ? t.presentation.n_trials : t.n;
  $("progress-title").textContent = {
    presenting: "Presenting", interrupted: "Interrupted", adapting: "Adapting", failed: "Failed",
    ready: "Adapted", swapped: "Adapted", cancelled: "Cancelled",
  }[calibration.state] || calibration.state;
  $("trials-text").textContent = `${shown} of ${total} trials shown in this presentation; `
    + `${t.exp || 0} calibration and ${t.test || 0} held-out trials valid in all`
    + (calibration.presentations.length > 1 ? ` (${calibration.presentations.length} presentations)` : "");
  const adapting = ["adapting", "ready", "swapped", "failed"].includes(calibration.state) && calibration.history;
  const history = calibration.history || [];
  const epochs = calibration.request.epochs;
  let fraction = Math.min(1, history.length / Math.max(epochs, 1)); // early stopping may end it sooner
  if (calibration.state === "presenting" || calibration.state === "interrupted") fraction = shown / Math.max(total, 1);
  if (calibration.result) fraction = 1;
  $("progress-fill").style.width = `${(100 * fraction).toFixed(1)}%`;
  const last = history[history.length - 1];
  $("adapt-text").textContent = adapting
    ? `adaptation: ${calibration.phase}; epoch ${history.length} of at most ${epochs}`
      + (last && Number.isFinite(last.val_top5) ? `, validation top-5 ${last.val_top5.toFixed(3)}` : "")
      + (calibration.data ? `; ${calibration.data.by_split.train || 0} calibration trials kept` : "")
    : "";
  $("epoch-chart").style.display = history.length ? "" : "none"; // a canvas is display: block in viewer.css
  if (history.length) drawEpochs($("epoch-chart"), history, epochs);
  const interrupted = calibration.state === "interrupted";
  $("interrupted").hidden = !interrupted;
  if (interrupted) {
    $("interrupted").textContent = `${calibration.error.message}. The recording is kept: once the stream `
      + "is back, resume to show the rest (or adapt on what was recorded).";
  }
  $("resume").hidden = !interrupted;
  $("adapt-now").hidden = !interrupted;
  const failed = calibration.state === "failed";
  $("failed").hidden = !failed;
  if (failed) $("failed").textContent = errorText(calibration.error);
  renderMessages(calibration.messages);
}

export function errorText(error) {
  if (!error) return "";
  return error.expected ? `expected ${error.expected}; got ${error.got}. Fix: ${error.fix}` : error.message;
}

function renderMessages(messages) {
  const list = $("messages");
  if (list.childElementCount === messages.length) return;
  list.replaceChildren(...messages.slice().reverse().map((m) => {
    const item = document.createElement("li");
    item.className = m.level;
    item.textContent = `${new Date(m.t * 1000).toLocaleTimeString()} ${m.message}`;
    return item;
  }));
}
