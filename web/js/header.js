// The status line: connection to the service (connected / reconnecting in N s),
// the clock offset and its uncertainty, and a one-line summary of the sessions.

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

export class Header {
  constructor(store, clock) {
    this.store = store;
    this.clock = clock;
    this.conn = document.getElementById("conn");
    this.clockEl = document.getElementById("clock");
    this.summary = document.getElementById("summary");
  }

  draw(now) {
    const { state, retryAt } = this.store.conn;
    let text = state;
    if (state === "reconnecting" && retryAt > now) text = `reconnecting in ${Math.ceil((retryAt - now) / 1000)} s`;
    else if (state === "reconnecting") text = "reconnecting…";
    setText(this.conn, text);
    this.conn.dataset.state = state;
    const offset = this.clock.offsetMs;
    setText(this.clockEl, offset === null ? "clock: measuring" : `clock ± ${this.clock.uncertaintyMs.toFixed(1)} ms`);
    if (offset !== null) this.clockEl.title = `LSL ms = browser ms ${offset >= 0 ? "+" : "−"} ${Math.abs(offset).toFixed(1)}`
      + " (NTP-style offset over the WebSocket; ± half the best round trip of the last 8 pings)";
    const sessions = [...this.store.sessions.values()];
    const running = sessions.filter((s) => s.desc && s.desc.state === "running").length;
    const parts = [`${running} running`];
    const workers = sessions.filter((s) => s.banners.has("worker")).length;
    const lost = sessions.filter((s) => s.banners.has("stream")).length;
    if (workers) parts.push(`${workers} worker${workers > 1 ? "s" : ""} restarting`);
    if (lost) parts.push(`${lost} with a lost stream`);
    setText(this.summary, parts.join(" · "));
    this.summary.classList.toggle("warn", workers + lost > 0);
  }
}
