// One session's panel: its header, the decoded view, filmstrip, accuracy, charts,
// topography and traces. `draw(now)` runs in the animation loop and redraws only
// what changed since the last call (plus the scrolling canvases).

import { browserMs } from "./clock.js";
import { DecodedView } from "./decoded.js";
import { Filmstrip } from "./filmstrip.js";
import { GeneratedView } from "./generated.js";
import { MODES } from "./controls.js";
import { percentile, Sparkline, StageBars } from "./charts.js";
import { Topography } from "./topo.js";
import { Traces } from "./traces.js";

const SECOND_MS = 1000;
// The scrolling canvases move at the frame rate (20/s), not the screen's: on a wall
// screen with four panels, raster time is the budget that runs out first.
const SCROLL_MS = 50;

export class Panel {
  /**
   * @param {import("./state.js").SessionState} session
   * @param {import("./state.js").Store} store
   * @param {import("./clock.js").ClockFilter} clock
   * @param {import("./canvas.js").ImageCache} images
   * @param {(id: string, mode: string) => void} setMode  asks the service to switch the session's mode
   */
  constructor(session, store, clock, images, setMode = () => {}) {
    this.session = session;
    this.store = store;
    this.clock = clock;
    const node = document.getElementById("panel-template").content.firstElementChild.cloneNode(true);
    this.root = node;
    node.dataset.session = session.id;
    this.q = (selector) => node.querySelector(selector);
    this.decoded = new DecodedView(node);
    this.decoded.onShown = (frame) => setTimeout(() => this.measureG2g(frame), 0);
    this.decoded.onImageError = (url) => store.error(`image failed to load: ${url}`);
    this.generated = new GeneratedView(node, clock);
    this.generated.onPainted = (age) => {
      session.generated.painted += 1;
      session.generated.ages.push(age);
    };
    this.generated.onError = (err) => store.error(`generated image: ${err}`);
    const modeSelect = this.q(".panel-mode-select");
    modeSelect.replaceChildren(...MODES.map((m) => new Option(m.replace("_", "-"), m)));
    modeSelect.onchange = () => setMode(session.id, modeSelect.value);
    this.filmstrip = new Filmstrip(this.q("canvas.filmstrip"), images);
    this.stages = new StageBars(this.q("canvas.stages"));
    this.latency = new Sparkline(this.q("canvas.spark-latency"), { title: "latency", unit: "ms", series: ["p50", "p99"] });
    this.rate = new Sparkline(this.q("canvas.spark-rate"), { title: "decode rate", unit: "/s", series: ["rate"] });
    this.g2gChart = new Sparkline(this.q("canvas.spark-g2g"), { title: "glass-to-glass", unit: "ms", series: ["p50", "p99"] });
    this.topo = new Topography(this.q("canvas.topo"), this.q(".topo-legend"));
    this.traces = new Traces(this.q("canvas.traces"));
    this.seen = { desc: -1, status: 0, signal: 0, banners: -1 };
    this.nextSecond = 0;
    this.scrolledAt = -Infinity;
    this.resized = true;
    new ResizeObserver(() => { this.resized = true; }).observe(node);
  }

  /** One animation frame. */
  draw(now) {
    const s = this.session;
    const frame = s.pendingFrame;
    if (frame) {
      s.pendingFrame = null;
      this.decoded.render(frame);
      s.painted += 1;
      this.store.totals.painted += 1;
      this.lastFrameAt = now;
    }
    this.decoded.swapIfReady();
    if (s.pendingGenerated && !this.generated.decoding) {
      this.generated.render(s.pendingGenerated);
      s.pendingGenerated = null;
    }
    this.generated.tick(now);
    this.root.classList.toggle("stale", !s.gone && s.received > 0 && now - (this.lastFrameAt || 0) > 2 * SECOND_MS);
    if (s.descVersion !== this.seen.desc) this.renderHeader();
    if (s.bannersVersion !== this.seen.banners) this.renderBanners();
    const statusChanged = s.statusVersion !== this.seen.status;
    if (statusChanged) this.renderStatus();
    if (now >= this.nextSecond) this.everySecond(now);
    if (statusChanged || this.resized) this.stages.draw();
    if (this.resized) for (const chart of [this.latency, this.rate, this.g2gChart]) chart.draw();
    if (s.signalVersion !== this.seen.signal || this.resized) {
      this.seen.signal = s.signalVersion;
      this.topo.draw(s.signal);
    }
    if (now - this.scrolledAt >= SCROLL_MS || this.resized) {
      this.scrolledAt = now;
      this.filmstrip.draw(s, now, (s.desc && s.desc.hop) || 0.05);
      this.traces.draw(s, now);
    }
    this.resized = false;
  }

  /** LSL now minus the frame's window end, taken just after the paint that shows it: a
   * task queued from an animation frame runs once that frame is rendered. */
  measureG2g(frame) {
    const lslMs = this.clock.toLslMs(browserMs());
    if (lslMs === null || typeof frame.t_window_end !== "number") return;
    this.store.recordG2g(this.session, lslMs - 1000 * frame.t_window_end);
  }

  renderHeader() {
    const s = this.session;
    this.seen.desc = s.descVersion;
    const d = s.desc;
    if (!d) return;
    this.topo.setSensors(d.checkpoint);
    const state = s.gone ? "gone" : d.state;
    const pill = this.q(".panel-state");
    pill.textContent = state;
    pill.dataset.state = state;
    this.root.dataset.state = state;
    this.q(".panel-title").textContent = `${d.checkpoint ? d.checkpoint.name : "?"} → ${d.gallery ? d.gallery.name : "?"}`;
    this.q(".panel-streams").textContent = (d.streams || []).map((st) => st.name).join(", ");
    this.q(".panel-mode").textContent = `k=${d.k}`;
    const modeSelect = this.q(".panel-mode-select");
    for (const option of modeSelect.options) option.disabled = option.value !== "retrieval" && !d.generator;
    modeSelect.value = d.mode;
    modeSelect.disabled = !["starting", "running"].includes(state);
    modeSelect.title = d.generator ? `generator ${d.generator.name} (${d.generator.kind}, ${d.generator.size} px)`
      : "retrieval only: start the session with a generator to generate";
    this.generated.show(Boolean(d.generator));
  }

  renderBanners() {
    const s = this.session;
    this.seen.banners = s.bannersVersion;
    const banner = this.q(".banner");
    const text = [...s.banners.values()].join(" · ");
    banner.textContent = text;
    banner.hidden = !text;
  }

  renderStatus() {
    const s = this.session;
    this.seen.status = s.statusVersion;
    const status = s.status;
    this.stages.latency = status.latency_ms;
    const acc = status.accuracy;
    const box = this.q(".accuracy");
    if (!acc || !acc.frames_with_truth) {
      box.classList.add("empty");
      this.q(".acc-value").textContent = "—";
      this.q(".acc-label").textContent = "hit rate (no markers yet)";
      return;
    }
    box.classList.remove("empty");
    const pct = (v) => `${Math.round(100 * v)}%`;
    this.q(".acc-label").textContent = `top-${acc.k} hit rate`;
    this.q(".acc-value").textContent = pct(acc.topk);
    this.q(".acc-chance").textContent = `chance ${pct(acc.chance_topk)} · top-1 ${pct(acc.top1)} (chance ${pct(acc.chance_top1)})`;
    this.q(".acc-bar-fill").style.width = pct(acc.topk);
    this.q(".acc-bar-chance").style.left = pct(acc.chance_topk);
    this.q(".acc-n").textContent = `${acc.frames_with_truth} frames with truth`;
  }

  /** Once a second: one point on each sparkline, and the g2g figures. */
  everySecond(now) {
    this.nextSecond = now + SECOND_MS;
    const s = this.session;
    const total = s.status && s.status.latency_ms && s.status.latency_ms.total;
    this.latency.push(total ? [total.p50, total.p99] : [null, null]);
    this.rate.push([s.status ? s.status.decode_rate : null]);
    const recent = [...s.g2g].slice(-40);
    const p50 = percentile(recent, 50);
    const p99 = percentile(recent, 99);
    this.g2gChart.push([p50, p99]);
    for (const chart of [this.latency, this.rate, this.g2gChart]) chart.draw();
    const g2g = this.q(".g2g");
    const unc = this.clock.uncertaintyMs;
    g2g.textContent = p50 === null ? "—"
      : `${Math.round(p50)} ms p50 · ${Math.round(p99)} p99 ±${unc === null ? "?" : unc.toFixed(1)}`;
    g2g.title = "window's newest sample (LSL time) to the frame on screen; ± the clock offset's uncertainty (ms)";
  }
}
