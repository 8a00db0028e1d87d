// The decoded image, large; the top-k with their scores; the true stimulus with a
// hit marker; the confidence meter, which dims frames the model is unsure of.
//
// The big image is double-buffered: the next one loads and decodes in a hidden
// <img>, then the two swap in one animation frame, so nothing flashes half-drawn.
// `takeShown()` hands back the frame that became fully visible in the previous
// animation frame: that is when its glass-to-glass time is taken.

export const LOW_CONFIDENCE = 0.4;

/** "stimuli/cello_03s.jpg" -> "cello 03s". */
export function label(id) {
  if (!id) return "";
  const base = String(id).split("/").pop();
  return base.replace(/\.[a-z0-9]+$/i, "").replace(/[_-]+/g, " ");
}

function setSrc(img, url) {
  if (url && img.getAttribute("src") !== url) img.src = url;
  else if (!url && img.hasAttribute("src")) img.removeAttribute("src");
}

export class DecodedView {
  constructor(root) {
    this.front = root.querySelector(".stage img.front");
    this.back = root.querySelector(".stage img.back");
    this.stage = root.querySelector(".stage");
    this.stageLabel = root.querySelector(".stage-label");
    this.meterFill = root.querySelector(".meter-fill");
    this.meter = root.querySelector(".meter");
    this.meterLabel = root.querySelector(".meter-label");
    this.truth = root.querySelector(".truth");
    this.truthImg = this.truth.querySelector("img");
    this.truthCaption = this.truth.querySelector("figcaption");
    this.hit = this.truth.querySelector(".hit");
    this.topk = root.querySelector(".topk");
    this.frontUrl = null;   // on screen
    this.loadingUrl = null; // decoding in the back buffer
    this.ready = false;     // the back buffer holds loadingUrl, decoded
    this.waiting = null;    // the newest frame, waiting for its image
    this.onShown = () => {}; // called in the animation frame whose paint shows a frame
    this.onImageError = () => {};
  }

  /** Write one frame into the DOM; the big image follows when decoded. */
  render(frame) {
    const top1 = frame.topk[0] || null;
    this.renderTopk(frame);
    this.renderTruth(frame);
    this.renderConfidence(frame.confidence);
    this.stageLabel.textContent = top1 ? `${label(top1.id)}  ${top1.score.toFixed(2)}` : "no match";
    const url = top1 && top1.url;
    if (url === this.frontUrl) {
      this.onShown(frame);
      this.waiting = null;
      this.loadingUrl = null; // a newer frame went back to the image on screen
      this.ready = false;
      return;
    }
    this.waiting = frame;
    if (url === this.loadingUrl) return;
    this.loadingUrl = url;
    this.ready = false;
    if (!url) {
      this.ready = true;
      return;
    }
    this.back.src = url;
    this.back.decode().then(
      () => { if (this.loadingUrl === url) this.ready = true; },
      () => {
        if (this.loadingUrl !== url) return;
        this.loadingUrl = null;
        this.waiting = null;
        this.onImageError(url);
      });
  }

  /** Show a decoded back buffer (call once per animation frame). */
  swapIfReady() {
    if (!this.ready) return;
    this.ready = false;
    if (this.loadingUrl) {
      [this.front, this.back] = [this.back, this.front];
      this.front.classList.replace("back", "front");
      this.back.classList.replace("front", "back");
    } else {
      this.front.removeAttribute("src");
    }
    this.frontUrl = this.loadingUrl;
    this.loadingUrl = null;
    if (this.waiting) this.onShown(this.waiting);
    this.waiting = null;
  }

  renderTopk(frame) {
    const items = this.topk.children;
    while (items.length < frame.topk.length) {
      const li = document.createElement("li");
      li.innerHTML = '<img alt=""><span class="score"></span>';
      this.topk.append(li);
    }
    while (items.length > frame.topk.length) this.topk.lastElementChild.remove();
    const truthId = frame.truth && frame.truth.id;
    frame.topk.forEach((entry, i) => {
      const li = items[i];
      const img = li.firstElementChild;
      setSrc(img, entry.url);
      img.alt = label(entry.id);
      li.title = `${i + 1}. ${label(entry.id)} (${entry.score.toFixed(3)})`;
      li.lastElementChild.textContent = entry.score.toFixed(2);
      li.classList.toggle("is-truth", Boolean(truthId) && entry.id === truthId);
    });
  }

  renderTruth(frame) {
    const truth = frame.truth;
    this.truth.classList.toggle("empty", !truth);
    if (!truth) {
      setSrc(this.truthImg, null);
      this.truthCaption.textContent = "no markers";
      this.hit.textContent = "";
      this.hit.className = "hit";
      return;
    }
    setSrc(this.truthImg, truth.url);
    this.truth.classList.toggle("no-image", !truth.url);
    this.truthImg.alt = label(truth.concept || truth.stim_file);
    this.truthCaption.textContent = truth.url
      ? label(truth.concept || truth.id) + (truth.id ? "" : " (not in gallery)")
      : `${label(truth.stim_file)} (not in gallery)`;
    const rank = truth.id ? frame.topk.findIndex((e) => e.id === truth.id) : -1;
    let text = "";
    let kind = "";
    if (frame.hit === true || rank >= 0) {
      text = rank === 0 ? "✓ top-1" : `✓ top-${frame.topk.length} (#${rank + 1})`;
      kind = rank === 0 ? "hit-top1" : "hit-topk";
    } else if (frame.hit === false) {
      text = "✗ miss";
      kind = "hit-miss";
    }
    this.hit.textContent = text;
    this.hit.className = `hit ${kind}`;
  }

  renderConfidence(confidence) {
    const known = typeof confidence === "number" && Number.isFinite(confidence);
    const value = known ? Math.min(1, Math.max(0, confidence)) : 0;
    this.meterFill.style.transform = `scaleY(${value})`;
    this.meter.setAttribute("aria-valuenow", known ? value.toFixed(2) : "");
    this.meterLabel.textContent = known ? `${Math.round(100 * value)}%` : "—";
    this.stage.classList.toggle("low", known && value < LOW_CONFIDENCE);
  }
}
