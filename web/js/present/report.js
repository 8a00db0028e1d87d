// The timing report: what the run achieved against its plan, on the page's own clock.
//
// refresh rate: from the median rAF interval; missed frames: intervals over 1.5 x that
// period (frames_dropped counts the periods they lost); onset error: each onset's
// frame time minus its planned time from the run's first frame; duration error: the
// image's frames on screen minus image_ms; SOA error: onset-to-onset minus planned.
// Times in ms. The clock sync (offset, uncertainty, round trips) comes with it; an
// uncertainty over 10 ms is a warning here and in the service's report.

export const MISSED_FACTOR = 1.5;

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const round = (x, digits = 3) => (x === null || x === undefined ? null : Number(x.toFixed(digits)) + 0);

export function stats(values) {
  if (!values.length) return { n: 0, mean: null, sd: null, median: null, max_abs: null };
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const sd = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
  return {
    n: values.length, mean: round(mean), sd: round(sd), median: round(median(values)),
    max_abs: round(Math.max(...values.map(Math.abs))),
  };
}

/**
 * @param {import("./run.js").Run} run  after it ended
 * @param {object} sync  OffsetEstimator.estimate() at the end
 * @param {object} extra  {fullscreen, screen, markers_acked}
 */
export function timingReport(run, sync, extra) {
  const intervals = run.frames.slice(1).map((t, i) => t - run.frames[i]);
  const period = median(intervals) ?? run.periodMs;
  const late = intervals.filter((iv) => iv > MISSED_FACTOR * period);
  const planned = (o) => run.trials[o.trial].planned_onset_ms;
  const onsetError = run.onsets.map((o) => o.frame_ms - run.t0 - planned(o));
  const byTrial = new Map(run.onsets.map((o) => [o.trial, o]));
  const durationError = run.offsets.map((off) => off.frame_ms - byTrial.get(off.trial).frame_ms
    - run.trials[off.trial].image_ms);
  const soaError = run.onsets.slice(1).map((o, k) => {
    const before = run.onsets[k];
    return (o.frame_ms - before.frame_ms) - (planned(o) - planned(before));
  });
  const warnings = [];
  if (sync && sync.warning) warnings.push(sync.warning);
  if (late.length) {
    warnings.push(`${late.length} missed frame(s): intervals over ${MISSED_FACTOR} x the refresh period`);
  }
  if (!extra.fullscreen) warnings.push("not full screen: the browser refused it");
  return {
    refresh_hz: round(1000 / period, 2),
    refresh_period_ms: round(period),
    n_frames: run.frames.length,
    missed_frames: late.length,
    frames_dropped: late.reduce((n, iv) => n + Math.round(iv / period) - 1, 0),
    max_frame_interval_ms: round(intervals.length ? Math.max(...intervals) : null),
    onset_error_ms: stats(onsetError),
    duration_error_ms: stats(durationError),
    soa_error_ms: stats(soaError),
    sync,
    n_trials: run.trials.length,
    n_shown: run.onsets.length,
    n_responses: run.presses.length,
    markers_acked: extra.markers_acked,
    fullscreen: extra.fullscreen,
    screen: extra.screen,
    stopped: run.stopReason,
    touched: run.touched,
    warnings,
  };
}

const ms = (s) => (s.n ? `${s.mean} ± ${s.sd} ms (max |${s.max_abs}| ms, n=${s.n})` : "—");

/** Rows [label, value] for the report table on the page. */
export function reportRows(report, summary) {
  const sync = report.sync || {};
  const counts = summary && summary.summary;
  const c = counts ? counts.catch : null;
  const catchLine = c ? `${c.hits} hit(s), ${c.misses} miss(es), ${c.false_alarms} false alarm(s) of ${c.n}` : "—";
  const sign = sync.offset_ms < 0 ? "−" : "+";
  const syncLine = sync.offset_ms === undefined ? "—"
    : `± ${sync.uncertainty_ms.toFixed(2)} ms over ${sync.n} pings `
      + `(LSL = browser ${sign} ${Math.abs(sync.offset_ms / 1000).toFixed(4)} s)`;
  const rtt = sync.rtt_ms;
  return [
    ["trials shown", `${report.n_shown} of ${report.n_trials}`],
    ["valid trials", counts ? String(counts.n_valid) : "—"],
    ["catch trials", catchLine],
    ["refresh rate", `${report.refresh_hz} Hz (${report.refresh_period_ms} ms)`],
    ["missed frames", `${report.missed_frames} of ${report.n_frames} `
      + `(longest interval ${report.max_frame_interval_ms} ms)`],
    ["onset error", ms(report.onset_error_ms)],
    ["image duration error", ms(report.duration_error_ms)],
    ["onset-to-onset error", ms(report.soa_error_ms)],
    ["clock sync", syncLine],
    ["round trip", rtt ? `min ${rtt.min.toFixed(2)}, median ${rtt.median.toFixed(2)}, max ${rtt.max.toFixed(2)} ms` : "—"],
    ["markers acknowledged", `${report.markers_acked} of ${report.n_shown}`],
    ["full screen", report.fullscreen ? "yes" : "no"],
  ];
}
