// Canvas helpers shared by the panels: device-pixel sizing, theme colours, images.

/** Size a canvas's backing store to its CSS box (x devicePixelRatio); true when it changed. */
export function fit(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width === width && canvas.height === height) return false;
  canvas.width = width;
  canvas.height = height;
  return true;
}

let theme = null;

/** The theme's colours and font (CSS variables on :root), read once. */
export function colours() {
  if (theme) return theme;
  const css = getComputedStyle(document.documentElement);
  const get = (name) => css.getPropertyValue(name).trim();
  theme = {
    bg: get("--bg"), panel: get("--panel"), fg: get("--fg"), muted: get("--muted"), grid: get("--grid"),
    good: get("--good"), near: get("--near"), bad: get("--bad"), none: get("--none"), accent: get("--accent"),
    series: [get("--s1"), get("--s2"), get("--s3"), get("--s4"), get("--s5"), get("--s6")],
    font: get("--font"),
  };
  return theme;
}

/** Gallery thumbnails for canvas drawing: loaded once, the oldest forgotten past `capacity`. */
export class ImageCache {
  constructor(capacity = 256) {
    this.capacity = capacity;
    this.images = new Map();
  }

  /** The decoded image for url, or null while it loads (or when it failed). */
  get(url) {
    let img = this.images.get(url);
    if (img) {
      this.images.delete(url); // most recently used goes last
      this.images.set(url, img);
      return img.complete && img.naturalWidth ? img : null;
    }
    img = new Image();
    img.decoding = "async";
    img.src = url;
    this.images.set(url, img);
    if (this.images.size > this.capacity) this.images.delete(this.images.keys().next().value);
    return null;
  }
}

/** Draw image `img` covering the box (x, y, w, h), cropped to its centre. */
export function drawCover(ctx, img, x, y, w, h) {
  const scale = Math.max(w / img.naturalWidth, h / img.naturalHeight);
  const sw = w / scale;
  const sh = h / scale;
  ctx.drawImage(img, (img.naturalWidth - sw) / 2, (img.naturalHeight - sh) / 2, sw, sh, x, y, w, h);
}
