// The presentation page (/present): setup, preload and clock sync, the run, the report.
//
// /present?id=ID shows the presentation ID (made by POST /api/presentations, by the
// setup form here or by a calibration flow). window.glimpsePresent holds the page's
// state for tests and tools: state, onsets (frame_ms, epoch_ms = performance.timeOrigin
// + the rAF timestamp, t_lsl as sent), sync, report, summary, errors, stop reason.

import { Api } from "../api.js";
import { restoreCookie } from "../token.js";
import { toast } from "../toast.js";
import { showSetup } from "./form.js";
import { PresentLink } from "./link.js";
import { measureRefresh, preload } from "./preload.js";
import { Painter } from "./draw.js";
import { Run } from "./run.js";
import { OffsetEstimator } from "./sync.js";
import { reportRows, timingReport } from "./report.js";

const SYNC_PINGS = 12; // before the run; then one a second during it
const PING_EVERY_MS = 1000;

const page = {
  state: "loading", id: null, presentation: null, onsets: [], offsets: [], responses: [],
  sync: null, report: null, summary: null, errors: [], stopReason: null, touched: [],
  markers_acked: 0, preload: { done: 0, total: 0 }, fullscreen: null, refresh_ms: null,
};
window.glimpsePresent = page;

const $ = (id) => document.getElementById(id);
const api = new Api({ tokenPrompts: 0, error: (message) => page.errors.push(message) });
const estimator = new OffsetEstimator();
let link = null;
let run = null;

function setState(state, text = state) {
  page.state = state;
  document.body.dataset.state = state;
  $("status").textContent = text;
}

function show(screen) {
  for (const id of ["setup-screen", "start-screen", "report-screen"]) $(id).hidden = id !== screen;
  $("screen").hidden = screen !== "screen";
  document.querySelector("header.bar").hidden = screen === "screen";
}

function fail(message) {
  page.errors.push(message);
  $("start-error").textContent = message;
  $("start-error").hidden = false;
  setState("error", "cannot start");
}

function showSync() {
  const e = estimator.estimate();
  page.sync = e;
  if (!e) return;
  $("sync").textContent = `clock ±${e.uncertainty_ms.toFixed(1)} ms (${e.n} pings)`;
  $("sync-warning").textContent = e.warning || "";
  $("sync-warning").hidden = !e.warning;
}

async function load(id) {
  page.id = id;
  const presentation = await api.get(`/api/presentations/${encodeURIComponent(id)}`);
  page.presentation = presentation;
  const design = presentation.design;
  if (presentation.state !== "created") {
    show("report-screen");
    $("report-title").textContent = `This presentation already ran (${presentation.state}).`;
    setState(presentation.state);
    return;
  }
  show("start-screen");
  $("instructions").textContent = design.catch_task;
  const seconds = design.duration_ms / 1000;
  const length = seconds < 120 ? `${Math.ceil(seconds)} s` : `${Math.ceil(seconds / 60)} min`;
  $("facts").textContent = `${design.n_trials} trials (${design.n_catch} catch), about ${length}; `
    + `markers on ${presentation.markers_stream}`;
  link = new PresentLink(id, estimator, {
    onError: (m) => { page.errors.push(m.message); toast("The service refused a message", m); },
    onEnded: (m) => { if (run) run.stop(`the service ended the presentation: ${m.reason || m.state}`); },
    onClose: () => { if (run) run.stop("lost the connection to the service"); },
    onReply: (m) => {
      if (m.type === "marker") page.markers_acked += 1;
      if (m.type === "response") page.responses.push(m);
    },
  });
  try {
    await link.open();
  } catch (err) {
    fail(`${err.message}: is the service running, and the token right?`);
    return;
  }
  setState("syncing", "estimating the clock");
  await link.sync(SYNC_PINGS, 30, showSync);
  if (!estimator.ready) {
    fail("no answer to the clock pings: the service does not respond");
    return;
  }
  setState("preloading", "loading images");
  page.preload.total = design.stimuli.length;
  const { bitmaps, failures } = await preload(design.stimuli, (done, total) => {
    page.preload.done = done;
    $("progress-fill").style.width = `${(100 * done) / total}%`;
    $("progress-text").textContent = `${done} of ${total} images decoded`;
  });
  if (failures.length) {
    fail(`${failures.length} image(s) could not be loaded or decoded: ${failures.slice(0, 5).join(", ")}`);
    return;
  }
  page.refresh_ms = await measureRefresh(30);
  setState("ready", "ready");
  $("start").disabled = false;
  $("start").focus();
  $("start").onclick = () => begin(design, bitmaps);
}

async function begin(design, bitmaps) {
  $("start").disabled = true;
  try {
    await document.documentElement.requestFullscreen({ navigationUI: "hide" });
  } catch {
    // refused (no gesture, or not allowed): the run goes on in the window, and says so
  }
  page.fullscreen = document.fullscreenElement !== null;
  show("screen");
  const painter = new Painter($("screen"), design.settings);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))); // layout settles
  painter.resize();
  painter.draw(null);
  const screen = { width: window.innerWidth, height: window.innerHeight, dpr: window.devicePixelRatio,
    refresh_ms: page.refresh_ms, user_agent: navigator.userAgent };
  try {
    await link.request({ type: "start", sync: estimator.estimate(), screen }, "started");
  } catch (err) {
    show("start-screen");
    fail(`the service did not start the run: ${err.message}`);
    return;
  }
  setState("running", "running");
  link.startPinging(PING_EVERY_MS);
  run = new Run({ design, bitmaps, painter, link, estimator, periodMs: page.refresh_ms });
  page.onsets = run.onsets;
  page.offsets = run.offsets;
  const result = await run.start();
  link.stopPinging();
  page.stopReason = result.reason;
  page.touched = result.touched;
  await finish(result);
}

async function finish(result) {
  showSync();
  const report = timingReport(run, page.sync, {
    fullscreen: page.fullscreen, markers_acked: page.markers_acked,
    screen: { width: window.innerWidth, height: window.innerHeight, dpr: window.devicePixelRatio },
  });
  page.report = report;
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  show("report-screen");
  $("report-title").textContent = result.status === "done" ? "Done." : "Stopped.";
  const touched = result.touched.join(", ") || "none";
  $("stop-reason").textContent = result.reason ? `Stopped: ${result.reason}; trial(s) ${touched} marked invalid.` : "";
  $("stop-reason").hidden = !result.reason;
  if (link.isOpen) { // else the service ended the run itself and kept its own record
    try {
      page.summary = await link.request({ type: "report", report }, "summary");
    } catch (err) {
      page.errors.push(`the report did not reach the service: ${err.message}`);
    }
  }
  renderReport(report, page.summary);
  link.close();
  setState(result.status, result.status === "done" ? "done" : "stopped");
}

function renderReport(report, summary) {
  const table = $("report-table");
  table.replaceChildren();
  for (const [label, value] of reportRows(report, summary && summary.presentation)) {
    const row = table.insertRow();
    row.insertCell().textContent = label;
    row.insertCell().textContent = value;
  }
  const service = summary && summary.presentation && summary.presentation.report;
  const warnings = service ? service.warnings : report.warnings;
  const list = $("report-warnings");
  list.replaceChildren(...warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  list.hidden = !warnings.length;
}

async function main() {
  restoreCookie();
  const id = new URLSearchParams(location.search).get("id");
  if (!id) {
    show("setup-screen");
    setState("setup", "new presentation");
    await showSetup(api, (created) => { location.search = `?id=${encodeURIComponent(created)}`; });
    return;
  }
  try {
    await load(id);
  } catch (err) {
    show("start-screen");
    fail(err.body ? err.body.message : String(err.message || err));
  }
}

main();
