// The calibration page (/calibrate): step 1 picks the base and the stream, step 2 opens
// the presentation on the person's screen, step 3 follows the trials and the
// adaptation, step 4 shows held-out top-5 before and after and the live session
// switched to the adapted model. /calibrate?id=ID follows a calibration already made.
// window.glimpseCalibrate holds the page's state for tests and tools.

import { Api } from "../api.js";
import { restoreCookie } from "../token.js";
import { showSetup } from "./form.js";
import { renderPresent, renderProgress } from "./progress.js";
import { renderResult } from "./result.js";

const POLL_MS = 500;
const page = { state: "loading", id: null, calibration: null, errors: [], presentWindow: null };
window.glimpseCalibrate = page;

const $ = (id) => document.getElementById(id);
const api = new Api({ tokenPrompts: 0, error: (message) => page.errors.push(message) });

const STEP = { presenting: "present", interrupted: "adapt", adapting: "adapt", failed: "adapt", cancelled: "adapt",
  ready: "result", swapped: "result" };

function show(screens) {
  for (const id of ["setup-screen", "present-screen", "progress-screen", "result-screen"]) {
    $(id).hidden = !screens.includes(id);
  }
}

function setStep(step) {
  const order = ["setup", "present", "adapt", "result"];
  for (const item of document.querySelectorAll(".steps li")) {
    const k = order.indexOf(item.dataset.step);
    item.classList.toggle("now", item.dataset.step === step);
    item.classList.toggle("done", k < order.indexOf(step));
  }
}

function setState(state, text = state) {
  page.state = state;
  document.body.dataset.state = state;
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function render(calibration) {
  page.calibration = calibration;
  const state = calibration.state;
  setState(state, state === "presenting" && calibration.phase === "presenting" ? "presenting…" : state);
  setStep(STEP[state] || "adapt");
  const screens = ["progress-screen"];
  if (state === "presenting") screens.unshift("present-screen");
  if (state === "ready" || state === "swapped") screens.unshift("result-screen");
  show(screens);
  renderPresent(calibration);
  renderProgress(calibration);
  if (calibration.result) renderResult(calibration);
}

async function follow(id) {
  page.id = id;
  for (;;) {
    try {
      render(await api.get(`/api/calibrations/${encodeURIComponent(id)}`, { quiet: true }));
    } catch (err) {
      page.errors.push(String(err.message || err));
      if (err.status === 404) {
        setState("error", "unknown calibration");
        return;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** A button that posts to the calibration; the next poll shows what changed. */
function action(button, path, method = "post") {
  $(button).onclick = async () => {
    $(button).disabled = true;
    try {
      render(await api[method](`/api/calibrations/${encodeURIComponent(page.id)}${path}`));
    } catch {
      // the toast says why (as the service words it)
    } finally {
      $(button).disabled = false;
    }
  };
}

function openPresentation() {
  const url = page.calibration && page.calibration.present_url;
  if (url) page.presentWindow = window.open(url, "glimpse-present");
}

async function main() {
  restoreCookie();
  $("open-present").onclick = openPresentation;
  $("open-viewer").onclick = () => window.open("/", "glimpse-viewer");
  action("resume", "/resume");
  action("adapt-now", "/adapt");
  action("swap", "/swap");
  action("cancel", "", "del");
  const id = new URLSearchParams(location.search).get("id");
  if (id) {
    follow(id);
    return;
  }
  show(["setup-screen"]);
  setStep("setup");
  setState("setup", "new calibration");
  await showSetup(api, (calibration) => {
    history.replaceState(null, "", `?id=${encodeURIComponent(calibration.id)}`);
    render(calibration);
    follow(calibration.id);
  });
}

main();
