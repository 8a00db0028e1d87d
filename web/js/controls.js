// The pickers and buttons: stream (or start a replay), checkpoint, gallery, mode;
// start and stop a session; the recorded sessions, each one key away from a replay.

import { toast } from "./toast.js";

// The decoding modes a session can run in ("retrieval": gallery top-k; "generation":
// images drawn from the decoded embedding; "two_stage": drawn from the retrieved top-1,
// guided by the embedding). The generation modes need a generator, and only the
// generators conditioned on the checkpoint's embedder are offered.
export const MODES = ["retrieval", "generation", "two_stage"];

function option(value, text, title = "") {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  if (title) o.title = title;
  return o;
}

/** Fill a <select>, keeping the user's choice when it is still offered. */
function fill(select, options, emptyText) {
  const keep = select.value;
  select.replaceChildren(...(options.length ? options : [option("", emptyText)]));
  select.disabled = !options.length;
  if (options.some((o) => o.value === keep)) select.value = keep;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}

export class Controls {
  /**
   * @param {import("./api.js").Api} api
   * @param {object} hooks  onStarted(description), focused() -> session state or null
   */
  constructor(api, { onStarted, focused }) {
    this.api = api;
    this.onStarted = onStarted;
    this.focused = focused;
    this.el = (id) => document.getElementById(id);
    this.streams = [];
    this.recordings = [];
    this.checkpoints = [];
    this.generators = [];
    fill(this.el("mode"), MODES.map((m) => option(m, m)), "");
    this.el("checkpoint").addEventListener("change", () => this.fillGenerators());
    this.el("mode").addEventListener("change", () => this.pickGenerator());
    this.el("controls").addEventListener("submit", (event) => { event.preventDefault(); this.start(); });
    this.el("stop").onclick = () => this.stop();
    this.el("replay").onclick = () => this.replay(this.el("recording").value);
    this.el("refresh-streams").onclick = () => this.loadStreams();
    this.el("recorded-btn").onclick = () => this.openRecorded();
  }

  /** Every list, once at start (each failure is shown and leaves its picker empty). */
  async load() {
    const quiet = { quiet: true };
    const [checkpoints, galleries, recordings, generators] = await Promise.all([
      this.api.get("/api/checkpoints", quiet).catch(() => []),
      this.api.get("/api/galleries", quiet).catch(() => []),
      this.api.get("/api/recordings", quiet).catch(() => []),
      this.api.get("/api/generators", quiet).catch(() => []),
      this.loadStreams(quiet),
    ]);
    fill(this.el("checkpoint"), checkpoints.map((c) => option(c.id, `${c.name} (${c.modality}, ${c.model})`,
      `${c.path}\n${c.n_chans} channels at ${c.sfreq} Hz, window ${c.window_s} s, ${c.embedder}`)), "no checkpoints");
    fill(this.el("gallery"), galleries.map((g) => option(g.id, `${g.name} (${g.n})`,
      `${g.path}\n${g.embedder}, ${g.dim}-d`)), "no galleries");
    this.checkpoints = checkpoints;
    this.generators = generators.filter((g) => !g.error);
    this.fillGenerators();
    this.recordings = recordings;
    fill(this.el("recording"), recordings.map((r) => option(r.id, `${r.name} (${r.kind})`,
      `${r.path}\n${r.duration_s ? `${Math.round(r.duration_s)} s` : ""} ${megabytes(r.size_bytes || 0)}`)), "no recordings");
    this.el("recorded-count").textContent = recordings.filter((r) => r.kind === "session").length;
  }

  /** The generators whose embedder is the chosen checkpoint's, after "none". */
  fillGenerators() {
    const ckpt = this.checkpoints.find((c) => c.id === this.el("checkpoint").value);
    const fits = this.generators.filter((g) => !ckpt || (g.embedder === ckpt.embedder && g.dim === ckpt.dim));
    const select = this.el("generator");
    fill(select, [option("", fits.length ? "none" : "none fits", ckpt && !fits.length
      ? `no generator is conditioned on ${ckpt.embedder} (${ckpt.dim}-d)` : ""),
    ...fits.map((g) => option(g.id, `${g.name} (${g.kind}, ${g.size} px)`, `${g.path}\n${g.embedder}, ${g.dim}-d`))], "");
    select.disabled = !fits.length;
    this.pickGenerator();
  }

  /** A generation mode with no generator chosen takes the first that fits; retrieval hides the field. */
  pickGenerator() {
    const select = this.el("generator");
    const generating = this.el("mode").value !== "retrieval";
    this.el("generator-field").hidden = !generating; // one row of controls at 1600 px
    if (generating && !select.value && select.options.length > 1) {
      select.value = select.options[1].value;
    }
  }

  async loadStreams(options) {
    const streams = await this.api.get("/api/streams", options).catch(() => null);
    if (streams === null) return;
    this.streams = streams.filter((st) => st.type !== "Markers"); // markers travel beside a signal stream
    this.fillStreams();
  }

  fillStreams(select = null) {
    fill(this.el("stream"), this.streams.map((st, i) => option(String(i), `${st.name} (${st.type}, ${st.n_chans} ch)`,
      `source_id ${st.source_id} on ${st.hostname}, ${st.sfreq} Hz`)), "no streams found");
    if (select !== null) this.el("stream").value = String(select);
  }

  async start() {
    const stream = this.streams[Number(this.el("stream").value)];
    const checkpoint = this.el("checkpoint").value;
    const gallery = this.el("gallery").value;
    const missing = [!stream && "a stream (or start a replay)", !checkpoint && "a checkpoint", !gallery && "a gallery"]
      .filter(Boolean);
    if (missing.length) {
      toast("Cannot start a session yet", { expected: missing.join(", "), fix: "pick them in the bar above" });
      return;
    }
    const body = { streams: [{ name: stream.name, source_id: stream.source_id }], checkpoint, gallery,
      mode: this.el("mode").value };
    const generator = this.el("generator").value;
    if (generator) body.generator = generator;
    const description = await this.api.post("/api/sessions", body).catch(() => null);
    if (!description) return;
    toast(`Session ${description.id} started`, {}, "info");
    this.onStarted(description);
  }

  async stop() {
    const s = this.focused();
    if (!s || !s.desc || !["starting", "running"].includes(s.desc.state)) {
      toast("No running session to stop", { fix: "focus a running panel with 1-4 first" });
      return;
    }
    const final = await this.api.del(`/api/sessions/${encodeURIComponent(s.id)}`).catch(() => null);
    if (final) toast(`Session ${s.id} stopped`, {}, "info");
  }

  /** Start replaying a recording; its stream is picked for the next session. */
  async replay(recording) {
    if (!recording) {
      toast("Nothing to replay", { expected: "a recording", fix: "pick one in the replay list" });
      return;
    }
    const replay = await this.api.post("/api/replays", { recording }).catch(() => null);
    if (!replay) return;
    toast(`Replaying as stream ${replay.name}`, {}, "info");
    await this.loadStreams({ quiet: true });
    let index = this.streams.findIndex((st) => st.source_id === replay.source_id || st.name === replay.name);
    if (index < 0) {
      this.streams.push({ name: replay.name, source_id: replay.source_id, type: "replay", n_chans: "?",
        sfreq: "?", hostname: "this service" });
      index = this.streams.length - 1;
    }
    this.fillStreams(index);
  }

  openRecorded() {
    const dialog = this.el("recorded");
    const list = dialog.querySelector(".recorded-list");
    const sessions = this.recordings.filter((r) => r.kind === "session");
    list.replaceChildren(...sessions.map((r) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `▶ ${r.name}`;
      button.title = r.path;
      button.onclick = () => { dialog.close(); this.replay(r.id); };
      const info = document.createElement("span");
      info.className = "muted";
      info.textContent = `${r.modality || ""} · ${r.n_chans} ch · ${Math.round(r.duration_s || 0)} s · ${r.n_trials ?? 0} trials`;
      li.append(button, info);
      return li;
    }));
    if (!sessions.length) list.append(Object.assign(document.createElement("li"), { textContent: "no recorded sessions yet" }));
    dialog.showModal();
    const first = list.querySelector("button");
    if (first) first.focus();
  }
}
