// Step 1: the base checkpoint, the stream (or a running session), the person, the images.
// Posts a CalibrationRequest; the service's refusals (too few trials for the minutes, a
// base of another modality or channel set, a folder that is not there) show under the
// form as it words them. The last values typed are kept in localStorage.

const KEPT = "glimpse_calibrate";
const NUMBERS = ["minutes", "test_repeats", "epochs"];
const TIMING = ["image_ms", "fixation_ms", "jitter_ms"];
const TEXTS = ["subject", "images", "test_images", "layers"];
const MIN_TRIALS = 30; // the service's minimum; it says so itself when refused

/**
 * @param {import("../api.js").Api} api
 * @param {(calibration: object) => void} onCreated
 */
export async function showSetup(api, onCreated) {
  const form = document.getElementById("setup-form");
  const problem = document.getElementById("setup-error");
  restore(form);
  await Promise.all([listCheckpoints(api, form), listStreams(api, form), listSessions(api, form)]);
  document.getElementById("refresh").onclick = () => listStreams(api, form);
  form.oninput = () => {
    problem.hidden = true; // a refusal stands for the values it was about
    estimate(form);
  };
  estimate(form);
  form.onsubmit = async (event) => {
    event.preventDefault();
    problem.hidden = true;
    const body = request(form);
    if (!body.stream && !body.session) return show(problem, "Pick a stream (or a running session).");
    keep(form);
    form.querySelector("button[type=submit]").disabled = true;
    try {
      onCreated(await api.post("/api/calibrations", body, { quiet: true }));
    } catch (err) {
      const detail = err.body || {};
      show(problem, detail.message || String(err.message || err));
    } finally {
      form.querySelector("button[type=submit]").disabled = false;
    }
  };
}

function show(node, text) {
  node.textContent = text;
  node.hidden = false;
}

async function listCheckpoints(api, form) {
  const select = form.elements.base;
  const list = await api.get("/api/checkpoints", { quiet: true }).catch(() => []);
  select.replaceChildren();
  for (const c of list.filter((c) => c.model === "brain_encoder" && !c.error)) {
    const subjects = (c.subjects || []).length;
    select.add(new Option(`${c.name} — ${c.modality || "?"}, ${c.n_chans} channels, ${subjects} subject(s)`, c.id));
  }
  if (!select.options.length) select.add(new Option("no brain_encoder checkpoint in the data roots", ""));
}

async function listStreams(api, form) {
  const select = form.elements.stream;
  const list = await api.get("/api/streams", { quiet: true }).catch(() => []);
  select.replaceChildren(new Option("(the session's)", ""));
  for (const s of list.filter((s) => s.channel_format !== "string")) {
    const option = new Option(`${s.name} (${s.type || "?"}, ${s.n_chans} ch, ${s.sfreq} Hz)`,
      JSON.stringify({ name: s.name, source_id: s.source_id }));
    select.add(option);
  }
  if (select.options.length > 1) select.selectedIndex = 1;
}

async function listSessions(api, form) {
  const select = form.elements.session;
  const list = await api.get("/api/sessions", { quiet: true }).catch(() => []);
  for (const d of list.filter((d) => d.state === "running" && d.record)) {
    const streams = d.streams.map((s) => s.name || s.source_id).join(", ");
    select.add(new Option(`session ${d.id} on ${streams} (${d.checkpoint.name || d.checkpoint.id})`, d.id));
  }
}

/** The form as a CalibrationRequest (empty optional fields left out). */
export function request(form) {
  const f = form.elements;
  const body = { base: f.base.value, subject: f.subject.value.trim(), images: f.images.value.trim(),
    layers: f.layers.value, swap: f.swap.checked };
  if (f.session.value) body.session = f.session.value;
  else if (f.stream.value) body.stream = JSON.parse(f.stream.value);
  if (f.test_images.value.trim()) body.test_images = f.test_images.value.trim();
  for (const name of NUMBERS) {
    if (f[name].value.trim() !== "") body[name] = Number(f[name].value);
  }
  const presentation = {};
  for (const name of TIMING) {
    if (f[name].value.trim() !== "") presentation[name] = Number(f[name].value);
  }
  body.presentation = presentation;
  return body;
}

/** Trials the minutes give at the form's pace, against the minimum the service asks. */
function estimate(form) {
  const f = form.elements;
  const trialMs = Number(f.image_ms.value || 500) + Number(f.fixation_ms.value || 1000);
  const n = Math.floor((Number(f.minutes.value) * 60000) / Math.max(trialMs, 1));
  const line = document.getElementById("estimate");
  const held = f.test_images.value.trim() ? `, plus each held-out image ×${f.test_repeats.value || 1}` : "";
  line.textContent = `≈ ${n} calibration trials at ${trialMs} ms each${held}`
    + (n < MIN_TRIALS ? ` — at least ${MIN_TRIALS} are needed to adapt` : "");
  line.classList.toggle("warn", n < MIN_TRIALS);
}

function keep(form) {
  const values = {};
  for (const name of [...TEXTS, ...NUMBERS, ...TIMING]) values[name] = form.elements[name].value;
  localStorage.setItem(KEPT, JSON.stringify(values));
}

function restore(form) {
  let values = {};
  try { values = JSON.parse(localStorage.getItem(KEPT) || "{}"); } catch { values = {}; }
  for (const [name, value] of Object.entries(values)) {
    if (form.elements[name] && value !== "") form.elements[name].value = value;
  }
}
