// Stream health as a sensor topography: each channel's signal level over the last
// second, interpolated between the sensors' 2-D positions, flagged channels marked.
//
// Inverse distance weighting is linear in the levels, so its weights (each grid
// pixel x its nearest sensors) are computed once per session; every signal message
// is then one sparse weights x levels product and a colour lookup into ImageData.

import { colours, fit } from "./canvas.js";

export const GRID = 48;
export const NEAREST = 8;
const POWER = 2;
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const MARKS = { flat: "○", saturated: "▲", missing: "×" };

/** 256 RGB entries through the STOPS (a viridis-like, perceptually ordered map). */
export function colourLut() {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const f = (i / 255) * (STOPS.length - 1);
    const j = Math.min(STOPS.length - 2, Math.floor(f));
    const u = f - j;
    for (let c = 0; c < 3; c++) lut[3 * i + c] = STOPS[j][c] + u * (STOPS[j + 1][c] - STOPS[j][c]);
  }
  return lut;
}

/**
 * The head disc around the positions and, per grid pixel inside it, its NEAREST
 * sensors and their normalised inverse-distance weights.
 * @param {number[][]} positions  [[x, y] in [0, 1]^2], y towards the nose
 */
export function idwLayout(positions, grid = GRID, nearest = NEAREST) {
  const xs = positions.map((p) => p[0]);
  const ys = positions.map((p) => p[1]);
  const cx = (Math.min(...xs) + Math.max(...xs)) / 2;
  const cy = (Math.min(...ys) + Math.max(...ys)) / 2;
  const radius = 1.08 * Math.max(1e-6, ...positions.map((p) => Math.hypot(p[0] - cx, p[1] - cy)));
  const k = Math.min(nearest, positions.length);
  const index = new Int32Array(grid * grid * k).fill(-1);
  const weight = new Float32Array(grid * grid * k);
  const dist = new Float64Array(positions.length);
  const order = positions.map((_, i) => i);
  for (let row = 0; row < grid; row++) {
    for (let col = 0; col < grid; col++) {
      const x = cx + radius * ((2 * (col + 0.5)) / grid - 1);
      const y = cy - radius * ((2 * (row + 0.5)) / grid - 1); // canvas rows go down, y goes up
      if (Math.hypot(x - cx, y - cy) > radius) continue;
      positions.forEach((p, i) => { dist[i] = Math.hypot(p[0] - x, p[1] - y); });
      order.sort((a, b) => dist[a] - dist[b]);
      const base = (row * grid + col) * k;
      let total = 0;
      for (let j = 0; j < k; j++) {
        const w = 1 / Math.max(1e-9, dist[order[j]]) ** POWER;
        index[base + j] = order[j];
        weight[base + j] = w;
        total += w;
      }
      for (let j = 0; j < k; j++) weight[base + j] /= total;
    }
  }
  return { cx, cy, radius, grid, k, index, weight };
}

/** Interpolated levels per pixel (NaN outside the head); missing sensors drop out. */
export function interpolate(layout, levels, out) {
  const { grid, k, index, weight } = layout;
  for (let p = 0; p < grid * grid; p++) {
    let sum = 0;
    let total = 0;
    for (let j = 0; j < k; j++) {
      const i = index[p * k + j];
      if (i < 0) break;
      const v = levels[i];
      if (v === null || !Number.isFinite(v)) continue;
      sum += weight[p * k + j] * v;
      total += weight[p * k + j];
    }
    out[p] = total > 0 ? sum / total : NaN;
  }
  return out;
}

export class Topography {
  constructor(canvas, legend) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.legend = legend;
    this.lut = colourLut();
    this.small = document.createElement("canvas");
    this.small.width = this.small.height = GRID;
    this.image = this.small.getContext("2d").createImageData(GRID, GRID);
    this.values = new Float32Array(GRID * GRID);
    this.layout = null;
    this.positions = null;
    this.vmax = null;
  }

  /** Once per session: the checkpoint's positions and channel names. */
  setSensors(checkpoint) {
    const positions = checkpoint && checkpoint.positions;
    if (!positions || !positions.length || positions === this.positions) return;
    this.positions = positions;
    this.chNames = checkpoint.ch_names || [];
    this.layout = idwLayout(positions);
    this.vmax = null;
  }

  /** Scale: 0 to a smoothed 95th percentile of the levels, so one bad channel does not wash it out. */
  scale(levels) {
    const finite = levels.filter((v) => v !== null && Number.isFinite(v)).sort((a, b) => a - b);
    if (!finite.length) return this.vmax || 1;
    const p95 = finite[Math.min(finite.length - 1, Math.floor(0.95 * finite.length))] * 1.1 || 1;
    this.vmax = this.vmax === null ? p95 : 0.8 * this.vmax + 0.2 * p95;
    return this.vmax;
  }

  draw(signal) {
    fit(this.canvas);
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!this.layout || !signal) return;
    const theme = colours();
    const ratio = window.devicePixelRatio || 1;
    const barW = 44 * ratio;
    const size = Math.min(canvas.height, canvas.width - barW) - 8 * ratio;
    if (size < 8) return; // hidden (a zoomed-out panel) or too small to say anything
    const r = size / 2.25;
    const cx = r * 1.1 + 2 * ratio;
    const cy = canvas.height / 2 + r * 0.06;
    const vmax = this.scale(signal.levels);
    this.paintImage(signal.levels, vmax);
    ctx.save();
    ctx.beginPath();
    ctx.arc(cx, cy, r, 0, 2 * Math.PI);
    ctx.clip();
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(this.small, cx - r, cy - r, 2 * r, 2 * r);
    ctx.restore();
    this.drawHead(cx, cy, r, theme, ratio);
    this.drawSensors(signal.flags || [], cx, cy, r, theme, ratio);
    this.drawColourBar(cx + r * 1.2 + 6 * ratio, cy - r, barW * 0.3, 2 * r, vmax, theme, ratio);
  }

  paintImage(levels, vmax) {
    interpolate(this.layout, levels, this.values);
    const data = this.image.data;
    for (let p = 0; p < this.values.length; p++) {
      const v = this.values[p];
      if (Number.isNaN(v)) { data[4 * p + 3] = 0; continue; }
      const i = 3 * Math.max(0, Math.min(255, Math.round((v / vmax) * 255)));
      data[4 * p] = this.lut[i];
      data[4 * p + 1] = this.lut[i + 1];
      data[4 * p + 2] = this.lut[i + 2];
      data[4 * p + 3] = 255;
    }
    this.small.getContext("2d").putImageData(this.image, 0, 0);
  }

  drawHead(cx, cy, r, theme, ratio) {
    const ctx = this.ctx;
    ctx.strokeStyle = theme.fg;
    ctx.lineWidth = 2 * ratio;
    ctx.beginPath();
    ctx.arc(cx, cy, r, 0, 2 * Math.PI);
    ctx.moveTo(cx - r * 0.12, cy - r * 0.99);
    ctx.lineTo(cx, cy - r * 1.1);
    ctx.lineTo(cx + r * 0.12, cy - r * 0.99);
    ctx.moveTo(cx - r, cy - r * 0.12);
    ctx.quadraticCurveTo(cx - r * 1.09, cy, cx - r, cy + r * 0.12);
    ctx.moveTo(cx + r, cy - r * 0.12);
    ctx.quadraticCurveTo(cx + r * 1.09, cy, cx + r, cy + r * 0.12);
    ctx.stroke();
  }

  drawSensors(flags, cx, cy, r, theme, ratio) {
    const ctx = this.ctx;
    const { cx: lx, cy: ly, radius } = this.layout;
    const counts = {};
    ctx.font = `bold ${15 * ratio}px ${theme.font}`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    this.positions.forEach((p, i) => {
      const px = cx + ((p[0] - lx) / radius) * r;
      const py = cy - ((p[1] - ly) / radius) * r;
      const flag = flags[i];
      if (flag && MARKS[flag]) {
        counts[flag] = counts[flag] || [];
        counts[flag].push(this.chNames[i] || `#${i}`);
        ctx.fillStyle = flag === "saturated" ? theme.bad : flag === "flat" ? theme.near : theme.fg;
        ctx.strokeStyle = theme.bg;
        ctx.lineWidth = 3 * ratio;
        ctx.strokeText(MARKS[flag], px, py);
        ctx.fillText(MARKS[flag], px, py);
      } else {
        ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
        ctx.fillRect(px - ratio, py - ratio, 2 * ratio, 2 * ratio);
      }
    });
    ctx.textAlign = "start";
    const parts = Object.entries(counts).map(([flag, names]) =>
      `${MARKS[flag]} ${flag}: ${names.slice(0, 3).join(", ")}${names.length > 3 ? ` +${names.length - 3}` : ""}`);
    this.legend.textContent = parts.length ? parts.join("  ·  ") : "all channels OK";
    this.legend.classList.toggle("warn", parts.length > 0);
  }

  drawColourBar(x, y, w, h, vmax, theme, ratio) {
    const ctx = this.ctx;
    for (let i = 0; i < h; i += ratio) {
      const j = 3 * Math.round(255 * (1 - i / h));
      ctx.fillStyle = `rgb(${this.lut[j]}, ${this.lut[j + 1]}, ${this.lut[j + 2]})`;
      ctx.fillRect(x, y + i, w, ratio + 0.5);
    }
    ctx.fillStyle = theme.muted;
    ctx.font = `${11 * ratio}px ${theme.font}`;
    ctx.textBaseline = "top";
    ctx.fillText(vmax.toPrecision(2), x + w + 3 * ratio, y);
    ctx.textBaseline = "bottom";
    ctx.fillText("0", x + w + 3 * ratio, y + h);
    ctx.textBaseline = "middle";
    ctx.save();
    ctx.translate(x + w + 10 * ratio, y + h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText("RMS, 1 s", 0, 0);
    ctx.restore();
  }
}
