// The setup form (at /present without ?id=): a design from an image folder or a gallery.
// Posts a PresentationRequest; the service's errors (an empty folder, files that are
// not images, named) show under the form as it words them.

const NUMBERS = ["image_ms", "fixation_ms", "jitter_ms", "repeats", "catch_rate", "max_images", "seed"];

/**
 * @param {import("../api.js").Api} api
 * @param {(id: string) => void} onCreated
 */
export async function showSetup(api, onCreated) {
  const form = document.getElementById("setup-form");
  const problem = document.getElementById("setup-error");
  const gallery = form.elements.gallery;
  try {
    for (const g of await api.get("/api/galleries", { quiet: true })) {
      if (g.error) continue;
      gallery.add(new Option(`${g.name} (${g.n} images)`, g.id));
    }
  } catch {
    // listed when the service answers; a folder works without it
  }
  form.onsubmit = async (event) => {
    event.preventDefault();
    problem.hidden = true;
    try {
      const created = await api.post("/api/presentations", request(form), { quiet: true });
      onCreated(created.id);
    } catch (err) {
      const body = err.body || {};
      problem.textContent = body.message || String(err.message || err);
      problem.hidden = false;
    }
  };
  form.elements.stream.focus();
}

/** The form's fields as a PresentationRequest (empty optional fields left out). */
export function request(form) {
  const f = form.elements;
  const body = { stream: f.stream.value.trim() };
  if (f.source.value === "gallery") body.gallery = f.gallery.value;
  else body.folder = f.folder.value.trim();
  for (const name of NUMBERS) {
    const text = f[name].value.trim();
    if (text !== "") body[name] = Number(text);
  }
  if (f.photodiode.value) body.photodiode = f.photodiode.value;
  return body;
}
