// The store: the socket handler writes here (latest-wins slots, bounded rings) and
// never touches the DOM; the one requestAnimationFrame loop reads the newest state.

import { Ring, TraceBuffer } from "./rings.js";

export const LIVE_STATES = new Set(["starting", "running", "stopping"]);
export const FILM_FRAMES = 400;     // ~20 s at 20 frames/s: the filmstrip shows the last ~10 s
export const G2G_TAKE_MAX = 100000; // measurements kept for takeG2G() between two calls (the bench)
export const G2G_KEPT = 240;        // glass-to-glass samples kept for stats() and the charts
export const ERRORS_KEPT = 50;
// Stream states (streaming.acquisition) that need no banner; "lost" does.
const HEALTHY_STREAM = new Set(["streaming", "stopped"]);

/** Where the truth sits among a frame's top-k: rank (0-based), -1 absent, null without truth. */
export function truthRank(frame) {
  const id = frame.truth && frame.truth.id;
  if (!id) return null;
  return frame.topk.findIndex((entry) => entry.id === id);
}

export class SessionState {
  constructor(id) {
    this.id = id;
    this.desc = null;           // the "session" message body
    this.descVersion = 0;       // bumped on every description, so panels redraw once
    this.status = null;
    this.statusVersion = 0;
    this.pendingFrame = null;   // newest frame not painted yet
    this.pendingGenerated = null; // newest generated image not painted yet: {seq, header, blob, at}
    this.generated = { received: 0, painted: 0, skipped: 0, ages: new Ring(G2G_KEPT) }; // ages: ms, window end to paint
    this.signal = null;
    this.signalVersion = 0;
    this.film = new Ring(FILM_FRAMES);
    this.trace = new TraceBuffer();
    this.clockFrame = null;     // {t: stream seconds, at: performance.now()} of the newest frame
    this.clockTrace = null;     // the same for the newest trace sample
    this.banners = new Map();   // kind -> text ("worker", "stream")
    this.bannersVersion = 0;
    this.received = 0;
    this.painted = 0;
    this.skipped = 0;
    this.g2g = new Ring(G2G_KEPT);
    this.gone = false;          // the service no longer knows it (it restarted)
    this.seenLive = false;      // live while this page watched: only such sessions get a panel
  }

  setBanner(kind, text) {
    if (text) this.banners.set(kind, text);
    else this.banners.delete(kind);
    this.bannersVersion += 1;
  }
}

export class Store {
  constructor() {
    this.sessions = new Map();
    this.conn = { state: "connecting", retryAt: 0, attempts: 0 };
    this.totals = { received: 0, painted: 0, skipped: 0 };
    this.g2g = new Ring(G2G_KEPT);
    this.g2gTaken = []; // every measurement since the last takeG2G()
    this.errors = [];
    this.tokenPrompts = 0;
    this.onSessionsChanged = () => {};
  }

  session(id) {
    let s = this.sessions.get(id);
    if (!s) {
      s = new SessionState(id);
      this.sessions.set(id, s);
      this.onSessionsChanged();
    }
    return s;
  }

  forget(id) {
    if (this.sessions.delete(id)) this.onSessionsChanged();
  }

  error(text) {
    this.errors.push(text);
    if (this.errors.length > ERRORS_KEPT) this.errors.shift();
  }

  /** One server message (already parsed); returns nothing, draws nothing. */
  handle(msg) {
    switch (msg.type) {
      case "frame": return this.frame(msg);
      case "generated": return this.generatedImage(msg);
      case "status": return this.status(msg);
      case "signal": return this.signal(msg);
      case "session": return this.describe(msg.session);
      case "event": return this.event(msg);
      case "error": return this.error(`service: ${msg.message} (expected ${msg.expected}, got ${msg.got})`);
      default: return undefined;
    }
  }

  frame(msg) {
    const s = this.sessions.get(msg.session);
    if (!s) return;
    s.received += 1;
    this.totals.received += 1;
    if (s.pendingFrame) {
      s.skipped += 1;
      this.totals.skipped += 1;
    }
    s.pendingFrame = msg;
    const top1 = msg.topk[0] || null;
    s.film.push({
      t: msg.t_window_end,
      top1: top1 && top1.id, top1Url: top1 && top1.url,
      truth: msg.truth && (msg.truth.id || msg.truth.stim_file),
      truthUrl: msg.truth && msg.truth.url,
      rank: truthRank(msg),
    });
    s.clockFrame = { t: msg.t_window_end, at: performance.now() };
  }

  /** A generated image: the newest waits for the animation frame; one it replaces is counted. */
  generatedImage(msg) {
    const s = this.sessions.get(msg.header.session);
    if (!s) return;
    s.generated.received += 1;
    if (s.pendingGenerated) s.generated.skipped += 1;
    s.pendingGenerated = { seq: msg.seq, header: msg.header, blob: msg.blob, at: performance.now() };
  }

  status(msg) {
    const s = this.sessions.get(msg.session);
    if (!s) return;
    s.status = msg;
    s.statusVersion += 1;
    if (s.desc && msg.state && s.desc.state !== msg.state) {
      s.desc = { ...s.desc, state: msg.state };
      s.descVersion += 1;
    }
    const worker = msg.worker && msg.worker.state;
    if (worker === "restarting" || worker === "down") {
      s.setBanner("worker", worker === "down" ? "worker down" : "worker restarting…");
    } else if (worker === "running" && s.banners.has("worker")) {
      s.setBanner("worker", null);
    }
    const lost = (msg.streams || []).filter((st) => st.state && !HEALTHY_STREAM.has(st.state));
    if (lost.length) s.setBanner("stream", `stream ${lost.map((st) => `${st.stream_id} ${st.state}`).join(", ")}`);
    else if (s.banners.has("stream")) s.setBanner("stream", null);
  }

  signal(msg) {
    const s = this.sessions.get(msg.session);
    if (!s) return;
    s.signal = msg;
    s.signalVersion += 1;
    if (msg.trace && msg.trace.data && msg.trace.data.length) {
      s.trace.merge(msg.trace);
      s.clockTrace = { t: s.trace.newest(), at: performance.now() };
    }
  }

  describe(desc) {
    const s = this.session(desc.id);
    s.desc = desc;
    s.gone = false;
    if (LIVE_STATES.has(desc.state) && !s.seenLive) {
      s.seenLive = true;
      this.onSessionsChanged();
    }
    s.descVersion += 1;
  }

  event(msg) {
    const s = this.sessions.get(msg.session);
    if (!s) return;
    switch (msg.event) {
      case "worker_crashed": s.setBanner("worker", `worker restarting: ${msg.message}`); break;
      case "worker_restarted": s.setBanner("worker", null); break;
      case "stream_lost": s.setBanner("stream", msg.message || "stream lost"); break;
      case "stream_back": s.setBanner("stream", null); break;
      case "session_failed": s.setBanner("worker", `session failed: ${msg.message}`); break;
      case "generation_failed": s.setBanner("generation", msg.message || "generation failed"); break;
      case "generator_ready": case "mode_changed": s.setBanner("generation", null); break;
      default: break;
    }
  }

  /** A g2g measurement (ms) of a painted frame. */
  recordG2g(s, ms) {
    s.g2g.push(ms);
    this.g2g.push(ms);
    if (this.g2gTaken.length < G2G_TAKE_MAX) this.g2gTaken.push(ms);
  }
}
