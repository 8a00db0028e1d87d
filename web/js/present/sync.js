// The page's clock offset to the service's LSL clock, NTP-style over the WebSocket.
//
// Each ping/pong gives one sample (clock.js `exchange`): offset = LSL ms - browser ms,
// and a round trip whose half bounds that sample's error. Of the samples kept, the
// third with the smallest round trips (at least 3) is used: the offset is their
// median, the uncertainty the largest of their half round trips plus the timer's
// resolution, a bound that every sample used satisfies. Over WARN_MS is a warning.

import { TIMER_RESOLUTION_MS, exchange } from "../clock.js";

export const WARN_MS = 10;
export const KEPT = 32;

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export class OffsetEstimator {
  constructor(kept = KEPT) {
    this.kept = kept;
    this.samples = [];
    this.n_total = 0;
  }

  /** One exchange: t1, t4 browser ms; t2, t3 service LSL seconds. */
  add(t1, t2, t3, t4) {
    const s = exchange(t1, t2, t3, t4);
    // A round trip below zero by more than the timers' resolution is not a measurement.
    if (!Number.isFinite(s.offset_ms) || s.rtt_ms < -2 * TIMER_RESOLUTION_MS) return;
    this.samples.push({ offset_ms: s.offset_ms, rtt_ms: Math.max(s.rtt_ms, 0) });
    if (this.samples.length > this.kept) this.samples.shift();
    this.n_total += 1;
  }

  get ready() {
    return this.samples.length > 0;
  }

  /** {offset_ms, uncertainty_ms, n, n_used, rtt_ms: {min, median, max}, warning} or null. */
  estimate() {
    if (!this.samples.length) return null;
    const best = [...this.samples].sort((a, b) => a.rtt_ms - b.rtt_ms)
      .slice(0, Math.max(3, Math.ceil(this.samples.length / 3)));
    const rtts = this.samples.map((s) => s.rtt_ms);
    const uncertainty = Math.max(...best.map((s) => s.rtt_ms)) / 2 + TIMER_RESOLUTION_MS;
    return {
      offset_ms: median(best.map((s) => s.offset_ms)),
      uncertainty_ms: uncertainty,
      n: this.n_total,
      n_used: best.length,
      rtt_ms: { min: Math.min(...rtts), median: median(rtts), max: Math.max(...rtts) },
      warning: uncertainty > WARN_MS
        ? `clock sync uncertain: ±${uncertainty.toFixed(1)} ms (more than ${WARN_MS} ms); marker times may be off by as much`
        : null,
    };
  }

  /** Browser ms -> LSL seconds with the current estimate. */
  toLsl(browserMs) {
    const e = this.estimate();
    return e === null ? null : (browserMs + e.offset_ms) / 1000;
  }
}
