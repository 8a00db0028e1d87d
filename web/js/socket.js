// The WebSocket to the service: subscribe, reconnect with backoff, ping/pong clock.
//
// The handler only parses and hands each message to the store; drawing happens in
// the animation loop. After a drop it reconnects by itself (0.5 s doubling to 10 s,
// with jitter); the "hello" that follows says which sessions to subscribe to again.
// A binary message is a generated image: [seq uint64 LE][header length uint32 LE]
// [JSON header][JPEG bytes] (service/sessions/generation.py, encode_generated).

import { browserMs, ClockFilter } from "./clock.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
const PING_BURST = 4;          // quick pings after connecting: an offset within a second
const PING_BURST_MS = 250;
const PING_EVERY_MS = 3000;    // then a fresh sample every few seconds

/** A generated image's binary message -> {seq, header, blob}. */
export function parseGenerated(buffer) {
  const view = new DataView(buffer);
  const seq = Number(view.getBigUint64(0, true));
  const n = view.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 12, n)));
  const type = header.format === "webp" ? "image/webp" : "image/jpeg";
  return { seq, header, blob: new Blob([new Uint8Array(buffer, 12 + n)], { type }) };
}

export class Socket {
  /**
   * @param {object} options
   * @param {() => string} options.url  the /ws URL (read at every connect: the token may change)
   * @param {(msg: object) => void} options.onMessage
   * @param {(state: object) => void} options.onState  {state, retryAt, attempts}
   * @param {() => void} options.onRefused  called after a connection closed before opening
   */
  constructor({ url, onMessage, onState, onRefused }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onState = onState;
    this.onRefused = onRefused || (() => {});
    this.clock = new ClockFilter();
    this.sessions = new Set();
    this.attempts = 0;
    this.pingId = 0;
    this.ws = null;
    this.timers = [];
  }

  connect() {
    this.clearTimers();
    this.onState({ state: this.attempts ? "reconnecting" : "connecting", retryAt: 0, attempts: this.attempts });
    let opened = false;
    const ws = new WebSocket(this.url());
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.attempts = 0;
      this.clock.reset();
      this.onState({ state: "connected", retryAt: 0, attempts: 0 });
      this.sessions.clear(); // a new connection follows nothing until "hello" names the live sessions
      this.startPings();
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") {
        this.onMessage({ type: "generated", ...parseGenerated(event.data) });
        return;
      }
      const msg = JSON.parse(event.data);
      if (msg.type === "pong") this.clock.add(msg.t1, msg.t2, msg.t3, browserMs());
      else this.onMessage(msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.clearTimers();
      if (!opened) this.onRefused();
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempts);
    const delay = base * (0.8 + 0.4 * Math.random());
    this.attempts += 1;
    this.onState({ state: "reconnecting", retryAt: performance.now() + delay, attempts: this.attempts });
    this.timers.push(setTimeout(() => this.connect(), delay));
  }

  /** Reconnect now (e.g. after the user entered a token), dropping any socket. */
  restart() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    this.connect();
  }

  startPings() {
    for (let i = 0; i < PING_BURST; i++) this.timers.push(setTimeout(() => this.ping(), i * PING_BURST_MS));
    this.timers.push(setInterval(() => this.ping(), PING_EVERY_MS));
  }

  ping() {
    this.pingId += 1;
    this.send({ type: "ping", id: this.pingId, t1: browserMs() });
  }

  clearTimers() {
    for (const timer of this.timers) clearTimeout(timer); // clearTimeout clears intervals too
    this.timers = [];
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  subscribe(ids) {
    const fresh = ids.filter((id) => !this.sessions.has(id));
    if (!fresh.length) return;
    fresh.forEach((id) => this.sessions.add(id));
    this.send({ type: "subscribe", sessions: fresh });
  }

  unsubscribe(ids) {
    ids.forEach((id) => this.sessions.delete(id));
    this.send({ type: "unsubscribe", sessions: ids });
  }
}
