"""``glimpse info``'s text: the human-readable face of ``describe``'s dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _counts(c: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in c.items())


def format_description(d: Mapping[str, Any]) -> str:
    """Lines for :func:`glimpse.streaming.recordings.describe`'s dict."""
    lines = [d["path"],
             f"  format       {d['format']}",
             f"  system       {d['system'] or 'unknown'}"]
    if d.get("bids"):
        ents = " ".join(f"{k}={v}" for k, v in d["bids"].items()
                        if k != "root" and v is not None)
        lines.append(f"  BIDS         {ents} (root {d['bids']['root']})")
    lines += [f"  channels     {d['n_chans']} ({_counts(d['channel_types'])})",
              f"  sfreq        {d['sfreq']:g} Hz"]
    if d.get("line_freq"):
        lines.append(f"  mains        {d['line_freq']:g} Hz")
    lines += [f"  duration     {d['duration']:.3f} s ({d['n_times']} samples)",
              f"  recorded     {d['meas_date'] or 'unknown'}"]
    ann = d["annotations"]
    shown = _counts(ann["descriptions"])
    if ann["n_distinct"] > len(ann["descriptions"]):
        shown += f", ... ({ann['n_distinct']} distinct)"
    lines.append(f"  annotations  {ann['count']}" + (f": {shown}" if ann["count"] else ""))
    se = d["stim_events"]
    if se is None:
        lines.append("  stim events  no stim channel")
    else:
        lines.append(f"  stim events  {se['count']} on {', '.join(se['channels'])}"
                     + (f": values {_counts(se['values'])}" if se["count"] else ""))
    lines += _trial_lines(d["trials"])
    return "\n".join(lines)


def _trial_lines(tr: Mapping[str, Any]) -> list[str]:
    text = (f"  trials       {tr['count']} from {tr['source']}" if tr["source"] != "none"
            else "  trials       none (no events)")
    if tr["count"]:
        text += f": {_counts(tr['splits'])}"
    if tr["stimuli"]:
        text += f"; {tr['stimuli']} stimulus files, {tr['stimuli_missing']} missing"
        if tr["stimuli_missing"]:
            text += f" under {tr['stim_root']} (set --stim-root)"
    lines = [text]
    source = tr.get("stimuli_source")
    if source == "none":
        lines.append("  stimuli      not named: events.tsv has THINGS image numbers only "
                     "(add sourcedata/sample_attributes_P<n>.csv, or pass --mapping)")
    elif source:
        lines.append(f"  stimuli      from {source}")
    for t in tr.get("first", []):
        stim = t["stim_file"] or "-"
        mark = "" if t["stim_file"] is None or t["exists"] else "  (missing)"
        lines.append(f"    {t['onset']:9.3f} s  {t['split']:<7} {t['concept'] or '-':<16} "
                     f"{stim}{mark}")
    if len(tr.get("first", [])) < tr["count"]:
        lines.append(f"    ... and {tr['count'] - len(tr['first'])} more")
    return lines
