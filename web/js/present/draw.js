// The presentation screen on one canvas: background, image, fixation cross, photodiode patch.
//
// The canvas covers the window at device pixels. An image is scaled to
// `image_fraction` of the screen's shorter side (aspect kept), centred; the fixation
// cross is drawn over it too, so the eyes have one place to rest. The photodiode
// patch (a corner, `photodiode_px` CSS pixels) is white on image frames and black
// otherwise, so a sensor taped there sees each onset.

export class Painter {
  /** @param {HTMLCanvasElement} canvas  @param {object} settings  the design's settings */
  constructor(canvas, settings) {
    this.canvas = canvas;
    this.settings = settings;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.resize();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(window.innerWidth * dpr);
    const h = Math.round(window.innerHeight * dpr);
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.dpr = dpr;
  }

  /** @param {ImageBitmap|null} bitmap  null: fixation only */
  draw(bitmap) {
    const { ctx, canvas, settings: s } = this;
    const w = canvas.width;
    const h = canvas.height;
    ctx.fillStyle = s.background;
    ctx.fillRect(0, 0, w, h);
    if (bitmap) {
      const side = Math.min(w, h) * s.image_fraction;
      const scale = side / Math.max(bitmap.width, bitmap.height);
      const iw = bitmap.width * scale;
      const ih = bitmap.height * scale;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(bitmap, Math.round((w - iw) / 2), Math.round((h - ih) / 2), Math.round(iw), Math.round(ih));
    }
    this.cross();
    if (s.photodiode) this.patch(bitmap !== null);
  }

  cross() {
    const { ctx, canvas } = this;
    const arm = (this.settings.fixation_px * this.dpr) / 2;
    const cx = canvas.width / 2;
    const cy = canvas.height / 2;
    const width = Math.max(2, Math.round(arm / 4));
    // black outline under white: visible on any image and on the grey background
    for (const [colour, extra] of [["#000", 2 * this.dpr], ["#fff", 0]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = width + extra;
      ctx.beginPath();
      ctx.moveTo(cx - arm, cy);
      ctx.lineTo(cx + arm, cy);
      ctx.moveTo(cx, cy - arm);
      ctx.lineTo(cx, cy + arm);
      ctx.stroke();
    }
  }

  patch(on) {
    const { ctx, canvas } = this;
    const size = Math.round(this.settings.photodiode_px * this.dpr);
    const corner = this.settings.photodiode;
    const x = corner.endsWith("right") ? canvas.width - size : 0;
    const y = corner.startsWith("bottom") ? canvas.height - size : 0;
    ctx.fillStyle = on ? "#fff" : "#000";
    ctx.fillRect(x, y, size, size);
  }
}
