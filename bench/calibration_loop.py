"""From nothing to a new simulated person decoded live: the documented calibration steps, timed; JSON.

Runs what docs/guide/calibration.rst tells a user to run, each as its own process:
``glimpse demo --modality M --out OUT`` (simulate, train the base, serve), ``glimpse
calibrate --fresh-images OUT``, ``glimpse simulate --live --world OUT`` (the new
person, subject seed 7), ``glimpse calibrate --service ...`` (1.5 minutes of
calibration images, the 48 held-out images once), and a headless Chromium that opens
the presentation and presses Start, as the person would. Prints the time at which
each step ended, from the start, and the calibration's result.

    python bench/calibration_loop.py --modality eeg --out /tmp/loop/glimpse-demo-eeg

OUT must not exist (a first run: the demo simulates and trains). Needs Chromium
(``/usr/bin/chromium``, Debian's package) and Playwright for Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

GLIMPSE = str(Path(sys.executable).with_name("glimpse"))
URL = re.compile(r"http://\S+/present\?id=\w+")


def _wait_for(log: Path, pattern: re.Pattern, proc: subprocess.Popen, what: str) -> re.Match:
    while not (found := pattern.search(log.read_text(errors="replace"))):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return found


def run(modality: str, out: Path, port: int, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    t0, steps, procs = time.monotonic(), {}, []

    def mark(step: str) -> None:
        steps[step] = round(time.monotonic() - t0, 1)
        print(f"[{steps[step]:7.1f} s] {step}", file=sys.stderr, flush=True)

    def start(args: list[str], log: Path) -> subprocess.Popen:
        procs.append(subprocess.Popen([GLIMPSE, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT))
        return procs[-1]

    logs = out.parent
    try:
        demo = start(["demo", "--modality", modality, "--out", str(out), "--no-browser", "--port", str(port)],
                     logs / f"demo-{modality}.log")
        _wait_for(logs / f"demo-{modality}.log", re.compile("viewer is at"), demo, "glimpse demo")
        mark("demo serving (simulated, base trained and evaluated)")
        subprocess.run([GLIMPSE, "calibrate", "--fresh-images", str(out)], check=True, capture_output=True)
        mark("fresh calibration images drawn")
        start(["simulate", "--live", "--world", str(out), "--name", "newcomer", "--subject-seed", "7"],
              logs / f"person-{modality}.log")
        cal_log = logs / f"calibrate-{modality}.log"
        cal = start(["calibrate", "--service", f"http://127.0.0.1:{port}", "--base", "model", "--stream",
                     "newcomer", "--images", "calibration/stimuli/fresh", "--test-images", "stimuli/test",
                     "--test-repeats", "1", "--subject", "p07", "--minutes", "1.5"], cal_log)
        url = _wait_for(cal_log, URL, cal, "glimpse calibrate").group(0)
        mark("calibration created (recording session started)")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            page.wait_for_function("window.glimpsePresent.state === 'ready'", timeout=120_000)
            mark("presentation page ready")
            page.click("#start")
            page.wait_for_function("['done', 'stopped'].includes(window.glimpsePresent.state)", timeout=900_000)
            state = page.evaluate("window.glimpsePresent.state")
            mark(f"presentation {state}")
            browser.close()
        cal.wait(900)
        mark(f"adapted and swapped (glimpse calibrate exited {cal.returncode})")
        text = cal_log.read_text(errors="replace").replace("\r", "\n")
        result = [line for line in text.splitlines() if not line.startswith(("adapting", "trials shown"))
                  and line.strip()]
        return {"bench": "calibration_loop", "modality": modality, "cpus": os.cpu_count(),
                "total_s": steps[max(steps, key=steps.get)], "steps_s": steps, "calibrate_output": result}
    finally:
        for proc in procs[::-1]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", default="meg", choices=["meg", "eeg"])
    parser.add_argument("--out", type=Path, required=True, help="the demo folder to create (must not exist)")
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: pass a new folder (the loop starts from nothing)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.modality, args.out.resolve(), args.port, args.chromium), indent=1))


if __name__ == "__main__":
    main()
