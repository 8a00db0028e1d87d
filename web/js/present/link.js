// The page's WebSocket to the service (/ws/present/{id}): clock pings and the run's events.
//
// Pongs feed the OffsetEstimator, their arrival time (t4) taken first thing in the
// handler. Replies come in the order of the requests; `request` waits for the reply of
// one type (an "error" instead rejects it). Errors the service sends are kept and shown.

import { browserMs } from "../clock.js";
import { storedToken } from "../token.js";

const PING_TIMEOUT_MS = 3000;

export class PresentLink {
  /**
   * @param {string} id  the presentation
   * @param {import("./sync.js").OffsetEstimator} estimator
   * @param {{onError?: Function, onClose?: Function, onEnded?: Function, onReply?: Function}} handlers
   */
  constructor(id, estimator, handlers = {}) {
    this.id = id;
    this.estimator = estimator;
    this.handlers = handlers;
    this.ws = null;
    this.nextPing = 0;
    this.pings = new Map(); // id -> {resolve, timer}
    this.waiters = [];
    this.errors = [];
    this.timer = null;
    this.closedByUs = false;
  }

  open() {
    const token = storedToken();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    this.ws = new WebSocket(`${scheme}://${location.host}/ws/present/${encodeURIComponent(this.id)}${query}`);
    return new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("the service refused the presentation's WebSocket"));
      this.ws.onclose = (event) => {
        reject(new Error(`the WebSocket closed (${event.code})`));
        this.stopPinging();
        for (const w of this.waiters) w.reject(new Error("the connection to the service closed"));
        this.waiters = [];
        if (!this.closedByUs && this.handlers.onClose) this.handlers.onClose(event);
      };
      this.ws.onmessage = (event) => this.receive(event);
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  receive(event) {
    const t4 = browserMs();
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "pong") {
      this.estimator.add(message.t1, message.t2, message.t3, t4);
      const pending = this.pings.get(message.id);
      if (pending) {
        clearTimeout(pending.timer);
        this.pings.delete(message.id);
        pending.resolve(true);
      }
      return;
    }
    if (message.type === "ended") { // the service ended the presentation (a cancelled calibration)
      if (this.handlers.onEnded) this.handlers.onEnded(message);
      return;
    }
    if (message.type === "error") {
      this.errors.push(message.message);
      if (this.handlers.onError) this.handlers.onError(message);
      const waiter = this.waiters.shift();
      if (waiter) waiter.reject(Object.assign(new Error(message.message), { body: message }));
      return;
    }
    const at = this.waiters.findIndex((w) => w.type === message.type);
    if (at >= 0) this.waiters.splice(at, 1)[0].resolve(message);
    if (this.handlers.onReply) this.handlers.onReply(message);
  }

  /** One ping; resolves true on its pong, false after PING_TIMEOUT_MS. */
  ping() {
    if (!this.isOpen) return Promise.resolve(false);
    const id = this.nextPing++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.pings.delete(id); resolve(false); }, PING_TIMEOUT_MS);
      this.pings.set(id, { resolve, timer });
      this.ws.send(JSON.stringify({ type: "ping", id, t1: browserMs() }));
    });
  }

  /** `n` pings one after the other, `gapMs` apart (a burst before the run). */
  async sync(n, gapMs, onEach = () => {}) {
    for (let i = 0; i < n; i++) {
      await this.ping();
      onEach(i + 1);
      await new Promise((r) => setTimeout(r, gapMs));
    }
  }

  /** A ping every `everyMs` while the run goes on: the offset is re-estimated. */
  startPinging(everyMs) {
    this.stopPinging();
    this.timer = setInterval(() => { this.ping(); }, everyMs);
  }

  stopPinging() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Send `message` and wait for the reply of `type` (rejects on an error reply or a timeout). */
  request(message, type, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const waiter = { type, resolve, reject };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no ${type} from the service within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      waiter.resolve = (m) => { clearTimeout(timer); resolve(m); };
      waiter.reject = (e) => { clearTimeout(timer); reject(e); };
      this.waiters.push(waiter);
      if (!this.send(message)) waiter.reject(new Error("the connection to the service is closed"));
    });
  }

  close() {
    this.closedByUs = true;
    this.stopPinging();
    if (this.ws) this.ws.close(1000, "done");
  }
}
