// The run: one requestAnimationFrame loop draws the design on its schedule.
//
// Onset time. An image's onset is the rAF timestamp of the frame on which it was first
// drawn: the time the browser gives that frame (its begin time), the same for every
// callback of the frame and on the performance.now() timeline, so
// performance.timeOrigin + timestamp is on the clock the offset estimate maps
// (clock.js browserMs). The pixels reach the glass at the next vsync or so: a constant
// the photodiode patch can measure, not a jitter.
//
// Schedule. Trial times are absolute from the run's first frame (t0): trial i's image
// is drawn on the first frame within half a refresh period of t0 + planned_onset_ms,
// removed likewise at planned onset + image_ms. A late frame shortens what it delays
// but never shifts what follows: no drift. Every image is on for at least one frame.
//
// Stops. A hidden tab, a window that loses focus, leaving full screen, Escape, or a
// lost connection stop the run at once; the trial on screen (image or its fixation)
// is sent as invalid with the reason.

import { browserMs } from "../clock.js";

export class Run {
  /**
   * @param {object} o
   * @param {object} o.design  the presentation's design (settings, stimuli, trials)
   * @param {Map<number, ImageBitmap>} o.bitmaps  decoded images by stimulus index
   * @param {import("./draw.js").Painter} o.painter
   * @param {import("./link.js").PresentLink} o.link
   * @param {import("./sync.js").OffsetEstimator} o.estimator
   * @param {number} o.periodMs  the display's refresh period, measured before the run
   */
  constructor({ design, bitmaps, painter, link, estimator, periodMs }) {
    Object.assign(this, { design, bitmaps, painter, link, estimator, periodMs });
    this.settings = design.settings;
    this.trials = design.trials;
    this.frames = [];
    this.onsets = [];
    this.offsets = [];
    this.presses = [];
    this.phase = "idle";
    this.i = 0;
    this.t0 = null;
    this.stopReason = null;
    this.touched = [];
    this.redraw = false;
    this.lastUse = new Map(); // stimulus -> last trial showing it (its bitmap is closed after)
    this.trials.forEach((t) => this.lastUse.set(t.stimulus, t.index));
    this.listeners = [];
  }

  /** Resolves with {status: "done" | "stopped", reason, touched} when the run ends. */
  start() {
    this.phase = "lead";
    this.listen();
    return new Promise((resolve) => {
      this.finish = resolve;
      this.raf = requestAnimationFrame((ts) => this.frame(ts));
    });
  }

  listen() {
    const on = (target, type, fn) => {
      target.addEventListener(type, fn);
      this.listeners.push([target, type, fn]);
    };
    on(document, "visibilitychange", () => {
      if (document.visibilityState === "hidden") this.stop("the tab was hidden");
    });
    on(window, "blur", () => this.stop("the window lost focus"));
    on(document, "fullscreenchange", () => {
      if (!document.fullscreenElement) this.stop("the page left full screen");
    });
    on(window, "resize", () => { this.painter.resize(); this.redraw = true; });
    on(window, "keydown", (event) => this.key(event));
  }

  key(event) {
    if (event.code === "Escape") {
      this.stop("stopped with Escape");
      return;
    }
    if (event.code !== this.settings.response_key) return;
    event.preventDefault(); // Space would scroll
    if (event.repeat || this.phase === "done" || this.phase === "stopped") return;
    const epochMs = performance.timeOrigin + event.timeStamp;
    const tLsl = this.estimator.toLsl(epochMs);
    this.presses.push({ epoch_ms: epochMs, t_lsl: tLsl, trial: this.lastOnset() });
    this.link.send({ type: "response", key: event.code, t_lsl: tLsl, t_browser_ms: epochMs });
  }

  lastOnset() {
    return this.onsets.length ? this.onsets[this.onsets.length - 1].trial : null;
  }

  due(ts, plannedMs) {
    return ts >= this.t0 + plannedMs - this.periodMs / 2;
  }

  frame(ts) {
    if (this.phase === "done" || this.phase === "stopped") return;
    this.frames.push(ts);
    if (this.t0 === null) {
      this.t0 = ts;
      this.phase = "fix";
      this.painter.draw(null);
    }
    const trial = this.trials[this.i];
    if (this.phase === "fix" && this.due(ts, trial.planned_onset_ms)) {
      this.painter.draw(this.bitmaps.get(trial.stimulus));
      this.phase = "image";
      this.onset(trial, ts);
    } else if (this.phase === "image" && this.due(ts, trial.planned_onset_ms + trial.image_ms)
               && this.onsets[this.onsets.length - 1].frame_ms < ts) {
      this.painter.draw(null);
      this.offset(trial, ts);
      this.i += 1;
      this.phase = this.i < this.trials.length ? "fix" : "tail";
    } else if (this.phase === "tail" && this.due(ts, trialEnd(this.trials[this.trials.length - 1]))) {
      this.end("done", null);
      return;
    } else if (this.redraw) {
      this.painter.draw(this.phase === "image" ? this.bitmaps.get(trial.stimulus) : null);
    }
    this.redraw = false;
    this.raf = requestAnimationFrame((t) => this.frame(t));
  }

  onset(trial, ts) {
    const epochMs = performance.timeOrigin + ts;
    const est = this.estimator.estimate();
    const onset = {
      trial: trial.index, stim_id: trial.stim_id, frame_ms: ts, epoch_ms: epochMs,
      t_lsl: (epochMs + est.offset_ms) / 1000, offset_ms: est.offset_ms, uncertainty_ms: est.uncertainty_ms,
    };
    this.onsets.push(onset);
    this.link.send({
      type: "onset", trial: trial.index, stim_id: trial.stim_id, t_lsl: onset.t_lsl,
      t_browser_ms: epochMs, offset_ms: est.offset_ms, uncertainty_ms: est.uncertainty_ms,
    });
  }

  offset(trial, ts) {
    const epochMs = performance.timeOrigin + ts;
    this.offsets.push({ trial: trial.index, frame_ms: ts, epoch_ms: epochMs });
    this.link.send({ type: "offset", trial: trial.index, t_lsl: this.estimator.toLsl(epochMs), t_browser_ms: epochMs });
    if (this.lastUse.get(trial.stimulus) === trial.index) {
      const bitmap = this.bitmaps.get(trial.stimulus);
      if (bitmap) bitmap.close(); // shown for the last time: free its pixels
      this.bitmaps.delete(trial.stimulus);
    }
  }

  /** Stop now: the trial on screen is invalid (sent with the reason). */
  stop(reason) {
    if (this.phase === "done" || this.phase === "stopped" || this.phase === "idle") return;
    const last = this.lastOnset();
    this.touched = last === null ? [] : [last];
    const epochMs = browserMs();
    this.link.send({ type: "invalid", trials: this.touched, reason, t_lsl: this.estimator.toLsl(epochMs) });
    this.end("stopped", reason);
  }

  end(status, reason) {
    this.phase = status;
    this.stopReason = reason;
    cancelAnimationFrame(this.raf);
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
    for (const bitmap of this.bitmaps.values()) bitmap.close();
    this.bitmaps.clear();
    this.finish({ status, reason, touched: this.touched });
  }
}

function trialEnd(trial) {
  return trial.planned_onset_ms + trial.image_ms + trial.isi_ms;
}
