// Every stimulus fetched and decoded before the run starts, with progress.
//
// An image becomes an ImageBitmap (createImageBitmap on the fetched blob): decoded
// once, and kept decoded. An <img> after img.decode() is decoded too, but the browser
// may drop its pixels under memory pressure and decode again when it is drawn, which
// would cost a frame exactly at an onset. Fetch carries the token header; a 401 is
// a failure here (the page asked for the token when it loaded the design).

import { storedToken } from "../token.js";

const PARALLEL = 4;

/**
 * @param {Array<{index: number, id: string, url: string}>} stimuli
 * @param {(done: number, total: number) => void} onProgress
 * @returns {Promise<{bitmaps: Map<number, ImageBitmap>, failures: string[]}>}
 */
export async function preload(stimuli, onProgress = () => {}) {
  const bitmaps = new Map();
  const failures = [];
  const queue = [...stimuli];
  let done = 0;
  const headers = {};
  const token = storedToken();
  if (token) headers.Authorization = `Bearer ${token}`;

  async function worker() {
    for (let stimulus = queue.shift(); stimulus; stimulus = queue.shift()) {
      try {
        const response = await fetch(stimulus.url, { headers, credentials: "same-origin" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        bitmaps.set(stimulus.index, await createImageBitmap(await response.blob()));
      } catch (err) {
        failures.push(`${stimulus.id} (${err.message || err})`);
      }
      done += 1;
      onProgress(done, stimuli.length);
    }
  }

  await Promise.all(Array.from({ length: Math.min(PARALLEL, stimuli.length) }, worker));
  return { bitmaps, failures };
}

/** Median interval between `n` animation frames: the display's refresh period (ms). */
export function measureRefresh(n = 60) {
  return new Promise((resolve) => {
    const stamps = [];
    const step = (ts) => {
      stamps.push(ts);
      if (stamps.length > n) {
        const intervals = stamps.slice(1).map((t, i) => t - stamps[i]).sort((a, b) => a - b);
        resolve(intervals[intervals.length >> 1]);
      } else {
        requestAnimationFrame(step);
      }
    };
    requestAnimationFrame(step);
  });
}
