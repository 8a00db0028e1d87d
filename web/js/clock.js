// Browser clock -> the service's LSL clock, NTP-style over the WebSocket.
//
// Each ping carries t1 (browser ms); the pong brings t2/t3 (service LSL seconds at
// receive/send); t4 is the browser ms when the pong arrived. Of the last 8 samples
// the one with the smallest round trip wins (NTP's clock filter): its error is at
// most half its round trip.

export const SAMPLES_KEPT = 8;
// performance.now() is coarsened to 0.1 ms when the page is not cross-origin isolated.
export const TIMER_RESOLUTION_MS = 0.1;

/** The browser's monotonic clock as epoch-like milliseconds (the contract's t1). */
export function browserMs() {
  return performance.timeOrigin + performance.now();
}

/** One ping/pong exchange -> {offset_ms, rtt_ms}; lsl_ms = browser_ms + offset_ms. */
export function exchange(t1, t2, t3, t4) {
  return {
    offset_ms: ((t2 * 1000 - t1) + (t3 * 1000 - t4)) / 2,
    rtt_ms: (t4 - t1) - (t3 - t2) * 1000,
  };
}

export class ClockFilter {
  constructor() {
    this.samples = [];
  }

  /** Forget every sample: the service (and maybe its clock) changed. */
  reset() {
    this.samples = [];
  }

  add(t1, t2, t3, t4) {
    const sample = exchange(t1, t2, t3, t4);
    if (!Number.isFinite(sample.offset_ms) || sample.rtt_ms < 0) return;
    this.samples.push(sample);
    if (this.samples.length > SAMPLES_KEPT) this.samples.shift();
  }

  /** The min-round-trip sample of the last 8, or null before the first pong. */
  best() {
    let best = null;
    for (const s of this.samples) if (best === null || s.rtt_ms < best.rtt_ms) best = s;
    return best;
  }

  get ready() {
    return this.samples.length > 0;
  }

  get offsetMs() {
    const best = this.best();
    return best ? best.offset_ms : null;
  }

  get uncertaintyMs() {
    const best = this.best();
    return best ? best.rtt_ms / 2 + TIMER_RESOLUTION_MS : null;
  }

  /** Browser ms -> LSL ms (null before the first pong). */
  toLslMs(ms) {
    const offset = this.offsetMs;
    return offset === null ? null : ms + offset;
  }
}
