// The last ~10 s at a glance: the true stimulus (top row) against the decoded top-1
// (bottom row), on the stream's own clock. Each run of one image is one tile; a band
// under the top-1 row says, frame by frame, whether the truth was first (green), in
// the top-k (amber), missed (red) or unknown (grey).

import { colours, drawCover, fit } from "./canvas.js";
import { label } from "./decoded.js";

export const SPAN_S = 10;
const LEAD_MAX_S = 0.5; // scroll on between frames, but never further than this past the newest

/** Runs of equal `key` over time-ordered entries: [{key, url, t0, t1}]. */
export function runs(entries, key, urlKey) {
  const out = [];
  let run = null;
  for (const e of entries) {
    const k = e[key];
    if (run && run.key === k) {
      run.t1 = e.t;
      continue;
    }
    run = { key: k, url: e[urlKey], t0: e.t, t1: e.t };
    out.push(run);
  }
  return out;
}

function rankColour(rank, theme) {
  if (rank === null) return theme.none;
  if (rank === 0) return theme.good;
  return rank > 0 ? theme.near : theme.bad;
}

export class Filmstrip {
  constructor(canvas, images) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.images = images;
  }

  /** @param {import("./state.js").SessionState} s @param {number} now  performance.now() */
  draw(s, now, hop) {
    fit(this.canvas);
    const { ctx, canvas } = this;
    const theme = colours();
    const ratio = window.devicePixelRatio || 1;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const gutter = 64 * ratio;
    const axis = 14 * ratio;
    const rowH = (canvas.height - axis) / 2;
    const plotW = canvas.width - gutter;
    ctx.font = `${12 * ratio}px ${theme.font}`;
    ctx.textBaseline = "middle";
    ctx.fillStyle = theme.muted;
    ctx.fillText("truth", 4 * ratio, rowH / 2);
    ctx.fillText("top-1", 4 * ratio, rowH * 1.5);
    if (!s.clockFrame) return;
    const tEnd = s.clockFrame.t + Math.min(LEAD_MAX_S, (now - s.clockFrame.at) / 1000);
    const tStart = tEnd - SPAN_S;
    const x = (t) => gutter + ((t - tStart) / SPAN_S) * plotW;
    const visible = [];
    for (const e of s.film) if (e.t >= tStart - hop) visible.push(e);
    ctx.save();
    ctx.beginPath();
    ctx.rect(gutter, 0, plotW, canvas.height);
    ctx.clip();
    this.drawRow(runs(visible, "truth", "truthUrl"), 0, rowH, x, hop, theme);
    this.drawRow(runs(visible, "top1", "top1Url"), rowH, rowH, x, hop, theme);
    this.drawBand(visible, rowH, x, hop, theme, ratio);
    this.drawAxis(tEnd, rowH * 2, x, theme, ratio);
    ctx.restore();
  }

  drawRow(row, y, h, x, hop, theme) {
    const ctx = this.ctx;
    const pad = 2;
    for (const run of row) {
      if (run.key === null || run.key === undefined) continue;
      const x0 = x(run.t0 - hop / 2);
      const w = x(run.t1 + hop / 2) - x0;
      ctx.fillStyle = theme.grid;
      ctx.fillRect(x0, y + pad, w - pad, h - 2 * pad);
      const img = run.url ? this.images.get(run.url) : null;
      if (w < 6 || (!img && run.url)) continue;
      ctx.save();
      ctx.beginPath();
      ctx.rect(x0, y + pad, w - pad, h - 2 * pad);
      ctx.clip();
      const size = h - 2 * pad;
      if (img) {
        drawCover(ctx, img, x0, y + pad, size, size);
      } else { // a stimulus outside the gallery: its name
        ctx.fillStyle = theme.fg;
        ctx.fillText(label(run.key), x0 + 3, y + h / 2);
      }
      ctx.restore();
    }
  }

  drawBand(visible, rowH, x, hop, theme, ratio) {
    const ctx = this.ctx;
    const h = 5 * ratio;
    const y = rowH * 2 - h - 2;
    let start = null;
    let colour = null;
    let last = null;
    const flush = () => {
      if (start === null) return;
      ctx.fillStyle = colour;
      ctx.fillRect(x(start - hop / 2), y, x(last + hop / 2) - x(start - hop / 2), h);
    };
    for (const e of visible) {
      const c = rankColour(e.rank, theme);
      if (c !== colour || e.t - last > 3 * hop) {
        flush();
        start = e.t;
        colour = c;
      }
      last = e.t;
    }
    flush();
  }

  drawAxis(tEnd, y, x, theme, ratio) {
    const ctx = this.ctx;
    ctx.fillStyle = theme.muted;
    ctx.textBaseline = "top";
    ctx.textAlign = "center";
    for (let back = 0; back < SPAN_S; back += 2) {
      const px = x(tEnd - back);
      ctx.fillRect(px, y, 1, 4 * ratio);
      ctx.fillText(back ? `−${back} s` : "now", Math.min(px, this.canvas.width - 16 * ratio), y + 2 * ratio);
    }
    ctx.textAlign = "start";
  }
}
