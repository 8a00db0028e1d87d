// Bounded, time-ordered buffers the socket handler writes into and the drawing reads.

/** A fixed-capacity ring of objects, oldest first when iterated. */
export class Ring {
  constructor(capacity) {
    this.items = new Array(capacity);
    this.capacity = capacity;
    this.start = 0;
    this.length = 0;
  }

  push(item) {
    this.items[(this.start + this.length) % this.capacity] = item;
    if (this.length < this.capacity) this.length += 1;
    else this.start = (this.start + 1) % this.capacity;
  }

  at(i) {
    return this.items[(this.start + i) % this.capacity];
  }

  last() {
    return this.length ? this.at(this.length - 1) : undefined;
  }

  clear() {
    this.start = 0;
    this.length = 0;
  }

  *[Symbol.iterator]() {
    for (let i = 0; i < this.length; i++) yield this.at(i);
  }
}

/**
 * The samples of a few channels on the stream's clock (seconds).
 *
 * A "trace" message holds a stretch of samples starting at t0; stretches may
 * overlap the previous one (the service sends the last second) or follow it.
 * Samples at or after t0 are replaced, so either way each instant is kept once.
 */
export class TraceBuffer {
  constructor(capacity = 8192) {
    this.capacity = capacity;
    this.reset([], 0);
  }

  reset(chNames, sfreq) {
    this.chNames = chNames;
    this.sfreq = sfreq;
    this.t = new Float64Array(this.capacity);
    this.values = chNames.map(() => new Float32Array(this.capacity));
    this.start = 0;
    this.length = 0;
  }

  /** Merge {ch_names, sfreq, t0, data} (data: one array per channel). */
  merge(trace) {
    const names = trace.ch_names || [];
    if (names.join("\u0000") !== this.chNames.join("\u0000") || trace.sfreq !== this.sfreq) {
      this.reset(names, trace.sfreq);
    }
    const n = names.length ? trace.data[0].length : 0;
    const eps = 0.25 / trace.sfreq;
    while (this.length && this.timeAt(this.length - 1) >= trace.t0 - eps) this.length -= 1;
    for (let i = 0; i < n; i++) {
      const slot = (this.start + this.length) % this.capacity;
      this.t[slot] = trace.t0 + i / trace.sfreq;
      for (let c = 0; c < names.length; c++) {
        const v = trace.data[c][i];
        this.values[c][slot] = v === null ? NaN : v;
      }
      if (this.length < this.capacity) this.length += 1;
      else this.start = (this.start + 1) % this.capacity;
    }
  }

  timeAt(i) {
    return this.t[(this.start + i) % this.capacity];
  }

  valueAt(c, i) {
    return this.values[c][(this.start + i) % this.capacity];
  }

  /** The time of the newest sample, or null. */
  newest() {
    return this.length ? this.timeAt(this.length - 1) : null;
  }
}
