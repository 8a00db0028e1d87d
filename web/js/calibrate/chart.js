// The adaptation's validation top-5 per epoch (and the training loss, scaled), on a canvas.

import { colours, fit } from "../canvas.js";

/**
 * @param {HTMLCanvasElement} canvas
 * @param {Array<{epoch: number, val_top5?: number, train_loss?: number}>} history
 * @param {number} epochs  the most epochs the adaptation may run (the x axis)
 */
export function drawEpochs(canvas, history, epochs) {
  fit(canvas);
  const ctx = canvas.getContext("2d");
  const theme = colours();
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.width, h = canvas.height, pad = 6 * ratio, left = 34 * ratio;
  ctx.clearRect(0, 0, w, h);
  ctx.font = `${11 * ratio}px ${theme.font}`;
  ctx.fillStyle = theme.muted;
  ctx.strokeStyle = theme.grid;
  ctx.lineWidth = ratio;
  for (const v of [0, 0.5, 1]) {
    const y = pad + (1 - v) * (h - 2 * pad);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - pad, y); ctx.stroke();
    ctx.fillText(v.toFixed(1), 2 * ratio, y + 4 * ratio);
  }
  const n = Math.max(epochs, history.length, 2);
  const x = (epoch) => left + ((epoch - 1) / (n - 1)) * (w - left - pad);
  const y = (v) => pad + (1 - v) * (h - 2 * pad);
  // The loss over its own range (top: its highest, bottom: its lowest), to show its trend.
  const losses = history.map((r) => r.train_loss).filter(Number.isFinite);
  const low = losses.length ? Math.min(...losses) : 0, span = losses.length ? Math.max(...losses) - low : 0;
  const scaled = (loss) => (span > 0 ? 0.05 + (0.9 * (loss - low)) / span : 0.5);
  line(ctx, history.filter((r) => Number.isFinite(r.train_loss)).map((r) => [x(r.epoch), y(scaled(r.train_loss))]),
    theme.muted, ratio);
  line(ctx, history.filter((r) => Number.isFinite(r.val_top5)).map((r) => [x(r.epoch), y(r.val_top5)]),
    theme.good, 2 * ratio);
  ctx.fillStyle = theme.good;
  ctx.fillText("val top-5", w - 70 * ratio, 14 * ratio);
  ctx.fillStyle = theme.muted;
  ctx.fillText("train loss (its range)", w - 160 * ratio, h - 8 * ratio);
}

function line(ctx, points, colour, width) {
  if (!points.length) return;
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = width;
  ctx.beginPath();
  points.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
  ctx.stroke();
  for (const [px, py] of points) ctx.fillRect(px - width, py - width, 2 * width, 2 * width);
}
