// Step 4: held-out top-5 before and after the adaptation against chance, the adapted
// checkpoint, and the live session switched to it (or the button that does).

import { errorText } from "./progress.js";

const $ = (id) => document.getElementById(id);

export function renderResult(calibration) {
  const result = calibration.result || {};
  const before = result.held_out_before, after = result.held_out_after;
  const bars = $("result-bars");
  bars.replaceChildren();
  if (before && after) {
    bar(bars, "before", before.top5, "before", after.chance_top5);
    bar(bars, "after", after.top5, "after", after.chance_top5);
    bar(bars, "chance", after.chance_top5, "chance", after.chance_top5);
  } else {
    bars.textContent = "No held-out images were shown: nothing to compare.";
  }
  const rows = [
    ["adapted checkpoint", calibration.checkpoint],
    ["subject", calibration.subject],
    ["calibration trials", String(result.n_train_trials ?? "")],
    ["best epoch", `${result.best_epoch ?? "n/a"} of ${result.epochs_run ?? "?"} (validation top-5 `
      + `${fmt(result.val_top5)}, chance ${fmt(result.val_chance_top5)}, ${result.n_val_trials ?? "?"} trials)`],
  ];
  if (before && after) {
    rows.push(["held-out top-1", `${fmt(before.top1)} before, ${fmt(after.top1)} after`]);
    rows.push(["held-out trials", `${after.n_trials} among ${after.n_candidates} images (± ${fmt(after.se_top5)} s.e.)`]);
  }
  rows.push(["session folder", calibration.session_folder]);
  const table = $("result-table");
  table.replaceChildren();
  for (const [label, value] of rows) {
    const row = table.insertRow();
    row.insertCell().textContent = label;
    row.insertCell().textContent = value;
  }
  const swapped = calibration.state === "swapped";
  $("swap-text").textContent = swapped
    ? `Session ${calibration.session} now decodes ${calibration.subject} with the adapted checkpoint.`
    : `Session ${calibration.session} still decodes with the base checkpoint`
      + (calibration.swap_held ? `: not switched, ${calibration.swap_held}.` : ".");
  $("swap").hidden = swapped;
  $("swap").textContent = calibration.swap_held ? "Switch anyway" : "Switch the live session to it";
  $("swap-error").hidden = !calibration.swap_error;
  $("swap-error").textContent = errorText(calibration.swap_error);
}

function bar(grid, label, value, kind, chance) {
  const name = document.createElement("span");
  name.textContent = label;
  const track = document.createElement("div");
  track.className = "bar-track";
  const fill = document.createElement("div");
  fill.className = `bar-fill ${kind}`;
  fill.style.width = `${(100 * value).toFixed(1)}%`;
  const mark = document.createElement("div");
  mark.className = "bar-chance";
  mark.style.left = `${(100 * chance).toFixed(1)}%`;
  mark.title = "chance";
  track.append(fill, mark);
  const number = document.createElement("b");
  number.textContent = fmt(value);
  number.dataset.kind = kind;
  grid.append(name, track, number);
}

function fmt(value) {
  return Number.isFinite(value) ? value.toFixed(3) : "n/a";
}
