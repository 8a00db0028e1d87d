// Small canvas charts: latency per stage (p50 bar, p99 whisker) and sparklines of
// the last two minutes (total latency, decode rate, glass-to-glass), fed ~1/s.

import { Ring } from "./rings.js";
import { colours, fit } from "./canvas.js";

export const HISTORY = 120;

/** p-th percentile (0-100) of numbers, nearest rank; null when empty. */
export function percentile(values, p) {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function formatMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  return ms >= 100 ? `${Math.round(ms)}` : ms.toFixed(ms >= 10 ? 0 : 1);
}

/** A line chart of a few series over the last HISTORY points, its latest values written beside. */
export class Sparkline {
  constructor(canvas, { title, unit, series }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.title = title;
    this.unit = unit;
    this.series = series.map((name) => ({ name, points: new Ring(HISTORY) }));
  }

  /** One point per series (null for "no value"). */
  push(values) {
    this.series.forEach((s, i) => s.points.push(values[i] ?? null));
  }

  draw() {
    fit(this.canvas);
    const { ctx, canvas } = this;
    const theme = colours();
    const ratio = window.devicePixelRatio || 1;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const top = 16 * ratio;
    const h = canvas.height - top - 2 * ratio;
    let max = 0;
    for (const s of this.series) for (const v of s.points) if (v !== null) max = Math.max(max, v);
    max = max > 0 ? max * 1.15 : 1;
    ctx.font = `${12 * ratio}px ${theme.font}`;
    ctx.textBaseline = "top";
    const labels = [];
    this.series.forEach((s, i) => {
      ctx.strokeStyle = theme.series[i];
      ctx.lineWidth = 1.5 * ratio;
      ctx.beginPath();
      let pen = false;
      const n = s.points.length;
      for (let j = 0; j < n; j++) {
        const v = s.points.at(j);
        if (v === null) { pen = false; continue; }
        const px = ((HISTORY - n + j) / (HISTORY - 1)) * canvas.width;
        const py = top + h - (v / max) * h;
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true;
      }
      ctx.stroke();
      const last = s.points.last();
      labels.push({ text: `${s.name} ${formatMs(last)}`, colour: theme.series[i] });
    });
    // Latest values on the right; the title only where it fits beside them.
    ctx.textAlign = "right";
    let right = canvas.width;
    for (const l of labels.reverse()) {
      ctx.fillStyle = l.colour;
      ctx.fillText(l.text, right, 0);
      right -= ctx.measureText(l.text).width + 8 * ratio;
    }
    ctx.fillStyle = theme.muted;
    ctx.fillText(this.unit, right, 0);
    right -= ctx.measureText(this.unit).width + 8 * ratio;
    ctx.textAlign = "start";
    if (ctx.measureText(this.title).width < right) ctx.fillText(this.title, 0, 0);
  }
}

/** Latency per stage from a status message: a p50 bar and a p99 whisker, on one linear scale. */
export class StageBars {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.latency = null;
  }

  draw() {
    fit(this.canvas);
    const { ctx, canvas } = this;
    const theme = colours();
    const ratio = window.devicePixelRatio || 1;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const stages = this.latency ? Object.entries(this.latency).filter(([, v]) => v && v.p50 !== null) : [];
    const rowH = canvas.height / Math.max(1, stages.length);
    ctx.font = `${Math.max(9, Math.min(13, (0.8 * rowH) / ratio)) * ratio}px ${theme.font}`;
    ctx.textBaseline = "middle";
    if (!stages.length) {
      ctx.fillStyle = theme.muted;
      ctx.fillText("latency …", 0, canvas.height / 2);
      return;
    }
    const max = Math.max(...stages.map(([, v]) => v.p99 ?? v.p50)) || 1;
    const nameW = ctx.measureText("preprocess ").width;
    const valueW = ctx.measureText(" 888 / 888").width;
    const barW = canvas.width - nameW - valueW; // too narrow for bars: the figures alone
    stages.forEach(([stage, v], i) => {
      const y = i * rowH + rowH / 2;
      ctx.fillStyle = theme.muted;
      ctx.fillText(stage, 0, y);
      ctx.fillStyle = stage === "total" ? theme.accent : theme.series[1];
      if (barW > 24 * ratio) ctx.fillRect(nameW, y - rowH * 0.3, Math.max(1, (v.p50 / max) * barW), rowH * 0.6);
      if (barW > 24 * ratio && v.p99 !== null && v.p99 !== undefined) {
        ctx.fillStyle = theme.fg;
        const px = nameW + (v.p99 / max) * barW;
        ctx.fillRect(nameW + (v.p50 / max) * barW, y - 0.5 * ratio, px - nameW - (v.p50 / max) * barW, ratio);
        ctx.fillRect(px - ratio, y - rowH * 0.3, 2 * ratio, rowH * 0.6);
      }
      ctx.fillStyle = theme.fg;
      ctx.textAlign = "right";
      ctx.fillText(`${formatMs(v.p50)} / ${formatMs(v.p99)}`, canvas.width, y);
      ctx.textAlign = "start";
    });
  }
}
