// The generated image (generation and two-stage modes), beside the retrieved top-1 and
// the truth: a binary message's JPEG decoded with createImageBitmap (no object URL to
// revoke) and drawn on a canvas; its caption gives the mode and the image's age, from
// the window's end (LSL clock) to its paint, or the service's age at sending while the
// clock offset is unknown.

import { browserMs } from "./clock.js";
import { fit } from "./canvas.js";

export const OLD_MS = 2000; // an image older than this on screen is dimmed: generation stalled

export class GeneratedView {
  /** @param {HTMLElement} root  the panel  @param {import("./clock.js").ClockFilter} clock */
  constructor(root, clock) {
    this.figure = root.querySelector("figure.generated");
    this.canvas = this.figure.querySelector("canvas");
    this.caption = this.figure.querySelector("figcaption");
    this.clock = clock;
    this.decoding = false;
    this.shownAt = 0;
    this.onPainted = () => {};
    this.onError = () => {};
  }

  /** Shown only for sessions that have a generator. */
  show(visible) {
    this.figure.hidden = !visible;
  }

  /** Decode and draw `item` ({header, blob}); a newer one arriving meanwhile waits its turn. */
  render(item) {
    this.decoding = true;
    createImageBitmap(item.blob).then((bitmap) => {
      fit(this.canvas);
      const ctx = this.canvas.getContext("2d");
      const { width, height } = this.canvas;
      const side = Math.min(width, height);
      ctx.clearRect(0, 0, width, height);
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(bitmap, (width - side) / 2, (height - side) / 2, side, side);
      bitmap.close();
      this.decoding = false;
      this.shownAt = performance.now();
      const lslMs = this.clock.toLslMs(browserMs());
      const age = lslMs === null ? item.header.age_ms : lslMs - 1000 * item.header.t_window_end;
      const mode = item.header.mode === "two_stage" ? "two-stage" : item.header.mode;
      this.caption.textContent = `${mode} · age ${Math.round(age)} ms`;
      this.caption.title = `frame ${item.seq}; ${Math.round(item.header.generate_ms || 0)} ms to generate; `
        + "age: the window's end to this paint";
      this.figure.classList.remove("old");
      this.onPainted(age);
    }, (err) => {
      this.decoding = false;
      this.onError(err);
    });
  }

  /** Dim an image that no newer one followed for a while (call once per animation frame). */
  tick(now) {
    if (this.shownAt && now - this.shownAt > OLD_MS) this.figure.classList.add("old");
  }
}
