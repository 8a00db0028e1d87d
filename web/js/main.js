// The viewer's entry point: wires the store, the socket, the API and the panels,
// and runs the one animation loop that draws the newest state.

import { ImageCache } from "./canvas.js";
import { Api } from "./api.js";
import { Controls } from "./controls.js";
import { Header } from "./header.js";
import { bindKeys, renderHelp } from "./keys.js";
import { Panel } from "./panel.js";
import { Socket } from "./socket.js";
import { LIVE_STATES, Store } from "./state.js";
import { toast } from "./toast.js";
import { restoreCookie, storedToken } from "./token.js";

export const MAX_PANELS = 4;
const POLL_SESSIONS_MS = 5000;

const store = new Store();
const api = new Api(store);
const images = new ImageCache();
const panels = new Map();       // session id -> Panel
const dismissed = new Set();    // panels closed by the user
let focusIndex = 0;

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const token = storedToken();
  return `${scheme}://${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`;
}

const socket = new Socket({
  url: wsUrl,
  onMessage: (msg) => (msg.type === "hello" ? hello(msg) : (calibrationNote(msg), store.handle(msg))),
  onState: (state) => Object.assign(store.conn, state),
  onRefused: () => api.get("/api/health", { quiet: true }).catch(() => null), // a 401 asks for the token
});
const header = new Header(store, socket.clock);

/** A calibration's steps on a session (presenting, adapted, swapped): a short note. */
function calibrationNote(msg) {
  if (msg.type === "event" && msg.event === "calibration") toast(msg.message, {}, "info");
}

/** The service (re)connected: follow its sessions; ours that it forgot are gone. */
function hello(msg) {
  for (const s of store.sessions.values()) {
    if (!msg.sessions.includes(s.id) && !s.gone) {
      s.gone = true;
      s.descVersion += 1;
    }
  }
  follow(msg.sessions);
}

function follow(ids) {
  const fresh = ids.filter((id) => !dismissed.has(id));
  fresh.forEach((id) => store.session(id));
  socket.subscribe(fresh);
}

/** Sessions started elsewhere (another screen, the CLI) appear within a few seconds. */
async function pollSessions() {
  if (store.conn.state === "connected") {
    const list = await api.get("/api/sessions", { quiet: true }).catch(() => null);
    if (list) follow(list.map((d) => d.id));
  }
  setTimeout(pollSessions, POLL_SESSIONS_MS);
}

/** Sessions that may have a panel: seen live here (not old stopped ones), not closed. */
function eligible() {
  return [...store.sessions.values()].filter((s) => s.seenLive && !dismissed.has(s.id));
}

/** The sessions on screen: live ones first, newest first, at most four. */
function chosen() {
  const rank = (s) => (s.gone ? 2 : LIVE_STATES.has(s.desc.state) ? 0 : 1);
  return eligible()
    .sort((a, b) => rank(a) - rank(b) || ((b.desc && b.desc.created) || 0) - ((a.desc && a.desc.created) || 0))
    .slice(0, MAX_PANELS);
}

function layout() {
  const grid = document.getElementById("panels");
  const want = chosen();
  for (const [id, panel] of panels) {
    if (!want.includes(panel.session)) {
      panel.root.remove();
      panels.delete(id);
    }
  }
  want.forEach((s, i) => {
    let panel = panels.get(s.id);
    if (!panel) {
      panel = new Panel(s, store, socket.clock, images, setMode);
      panel.q(".panel-close").onclick = () => dismiss(s.id);
      panel.root.addEventListener("focusin", () => setFocus(panelList().indexOf(panel.root)));
      panels.set(s.id, panel);
    }
    panel.q(".panel-key").textContent = String(i + 1);
    grid.append(panel.root); // in order
  });
  grid.dataset.count = String(want.length);
  document.getElementById("empty").hidden = want.length > 0;
  const more = eligible().length - want.length;
  document.getElementById("more").textContent = more > 0 ? `+${more} more` : "";
  setFocus(Math.min(focusIndex, Math.max(0, want.length - 1)));
}

/** Switch a session's mode; the "session" message that follows redraws its panel (a refusal: a toast). */
function setMode(id, mode) {
  api.post(`/api/sessions/${encodeURIComponent(id)}/mode`, { mode })
    .catch(() => { const s = store.sessions.get(id); if (s) s.descVersion += 1; }); // back to the mode it has
}

function dismiss(id) {
  dismissed.add(id);
  socket.unsubscribe([id]);
  store.forget(id);
}

function panelList() {
  return [...document.querySelectorAll("#panels > .panel")];
}

function setFocus(index) {
  focusIndex = index;
  panelList().forEach((node, i) => node.classList.toggle("focused", i === index));
}

function focusedSession() {
  const node = panelList()[focusIndex];
  return node ? store.sessions.get(node.dataset.session) || null : null;
}

function toggleZoom(force) {
  const grid = document.getElementById("panels");
  const zoomed = force === undefined ? !grid.classList.contains("zoomed") : force;
  grid.classList.toggle("zoomed", zoomed);
}

const controls = new Controls(api, {
  onStarted: (description) => {
    dismissed.delete(description.id);
    store.describe(description);
    socket.subscribe([description.id]);
    setFocus(chosen().findIndex((s) => s.id === description.id));
  },
  focused: focusedSession,
});

function frame(now) {
  for (const panel of panels.values()) panel.draw(now);
  header.draw(now);
  requestAnimationFrame(frame);
}

/** For tests and the bench: honest counters, nothing made up. */
window.glimpse = {
  stats() {
    const sessions = {};
    for (const s of store.sessions.values()) {
      sessions[s.id] = { frames_received: s.received, frames_painted: s.painted, frames_skipped: s.skipped,
        g2g_ms: [...s.g2g], state: s.desc ? s.desc.state : null, mode: s.desc ? s.desc.mode : null,
        generated_received: s.generated.received, generated_painted: s.generated.painted,
        generated_skipped: s.generated.skipped, generated_age_ms: [...s.generated.ages] };
    }
    return {
      frames_received: store.totals.received, frames_painted: store.totals.painted,
      frames_skipped: store.totals.skipped, g2g_ms: [...store.g2g],
      offset_ms: socket.clock.offsetMs, offset_uncertainty_ms: socket.clock.uncertaintyMs,
      errors: [...store.errors], connection: store.conn.state, token_prompts: store.tokenPrompts, sessions,
    };
  },
  /** Every glass-to-glass measurement (ms) since the previous call (bench/viewer.py). */
  takeG2G() {
    const taken = store.g2gTaken;
    store.g2gTaken = [];
    return taken;
  },
};

window.addEventListener("error", (event) => store.error(`page: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => store.error(`page: ${event.reason}`));

async function boot() {
  renderHelp(document.querySelector("#help dl"));
  document.getElementById("help-btn").onclick = () => document.getElementById("help").showModal();
  store.onSessionsChanged = layout;
  bindKeys({
    start: () => controls.start(),
    stop: () => controls.stop(),
    focus: (i) => { if (i < panels.size) { setFocus(i); panelList()[i].focus(); } },
    zoom: () => toggleZoom(),
    recorded: () => controls.openRecorded(),
    fullscreen: () => (document.fullscreenElement ? document.exitFullscreen() : document.documentElement.requestFullscreen())
      .catch((err) => store.error(`full screen: ${err.message}`)),
    help: () => document.getElementById("help").showModal(),
    escape: () => toggleZoom(false),
  });
  restoreCookie();
  await api.get("/api/health", { quiet: true }).catch(() => null); // asks for the token first if needed
  socket.connect();
  layout();
  requestAnimationFrame(frame);
  controls.load();
  setTimeout(pollSessions, POLL_SESSIONS_MS);
}

boot();
