// A scrolling trace of a few posterior channels, drawn against the stream's own
// clock (never the browser's: the two need not agree). Each pixel column keeps the
// first, last, min and max of its samples (M4), so lines are exact and spikes stay.

import { colours, fit } from "./canvas.js";

export const SPAN_S = 5;
const LEAD_MAX_S = 0.3;

/** Index of the first sample at or after t (binary search on the time-ordered buffer). */
function firstAtOrAfter(buffer, t) {
  let lo = 0;
  let hi = buffer.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (buffer.timeAt(mid) < t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/**
 * M4 decimation of channel c over [tStart, tEnd) into `width` columns:
 * Float32Array(4 * width) of first, min, max, last per column (NaN where empty).
 */
export function m4(buffer, c, tStart, tEnd, width) {
  const out = new Float32Array(4 * width).fill(NaN);
  const perCol = (tEnd - tStart) / width;
  for (let i = firstAtOrAfter(buffer, tStart); i < buffer.length; i++) {
    const t = buffer.timeAt(i);
    if (t >= tEnd) break;
    const v = buffer.valueAt(c, i);
    if (!Number.isFinite(v)) continue;
    const o = 4 * Math.min(width - 1, Math.floor((t - tStart) / perCol));
    if (Number.isNaN(out[o])) {
      out[o] = out[o + 1] = out[o + 2] = v;
    } else {
      if (v < out[o + 1]) out[o + 1] = v;
      if (v > out[o + 2]) out[o + 2] = v;
    }
    out[o + 3] = v;
  }
  return out;
}

export class Traces {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.amplitude = [];
  }

  /** @param {import("./state.js").SessionState} s @param {number} now  performance.now() */
  draw(s, now) {
    fit(this.canvas);
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const buffer = s.trace;
    if (!s.clockTrace || !buffer.length) return;
    const theme = colours();
    const ratio = window.devicePixelRatio || 1;
    ctx.font = `${12 * ratio}px ${theme.font}`;
    const gutter = Math.max(...buffer.chNames.map((name) => ctx.measureText(name).width)) + 6 * ratio;
    const width = Math.max(1, Math.floor((canvas.width - gutter) / ratio));
    const tEnd = s.clockTrace.t + Math.min(LEAD_MAX_S, (now - s.clockTrace.at) / 1000);
    const tStart = tEnd - SPAN_S;
    const lanes = buffer.chNames.length;
    const laneH = canvas.height / lanes;
    ctx.textBaseline = "middle";
    ctx.lineWidth = 1.25 * ratio;
    for (let c = 0; c < lanes; c++) {
      const cols = m4(buffer, c, tStart, tEnd, width);
      const mid = laneH * (c + 0.5);
      const half = this.laneScale(c, cols);
      ctx.fillStyle = theme.muted;
      ctx.fillText(buffer.chNames[c], 0, mid);
      ctx.strokeStyle = theme.series[c % theme.series.length];
      ctx.beginPath();
      let pen = false;
      for (let col = 0; col < width; col++) {
        const o = 4 * col;
        if (Number.isNaN(cols[o])) { pen = false; continue; }
        const x = gutter + col * ratio;
        for (let j = 0; j < 4; j++) {
          const y = mid - (cols[o + j] / half) * (laneH * 0.45);
          if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
          pen = true;
        }
      }
      ctx.stroke();
    }
  }

  /** Half-range of lane c: its largest |value| on screen, smoothed so it does not jitter. */
  laneScale(c, cols) {
    let peak = 0;
    for (let i = 0; i < cols.length; i++) if (Number.isFinite(cols[i])) peak = Math.max(peak, Math.abs(cols[i]));
    const prev = this.amplitude[c] || peak || 1;
    this.amplitude[c] = Math.max(peak, 0.95 * prev) || 1;
    return this.amplitude[c];
  }
}
