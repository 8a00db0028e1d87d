"""``glimpse simulate --live``: a simulated person who watches the screen, as an LSL stream.

:class:`LivePerson` publishes the simulator's sensors (CTF-275 MEG or BioSemi-64
EEG, float32, SI units declared per channel, plus a ``SAMPLE_INDEX`` channel
last) carrying the simulator's background and artefacts (1/f brain noise, alpha
bursts, sensor and line noise, drift, EEG blinks), and follows ``<name>-markers``:
each image marker ``{"stim_file", "concept", "trial_type"}`` adds that image's
evoked response (:mod:`.person`) from the sample of the marker's timestamp on.

Clock. Sample ``i`` has the LSL timestamp ``t0 + i / sfreq`` (``t0``: the start);
every ``chunk_ms`` the samples whose time has come are pushed, so timestamps are
regular and never carry push jitter. A marker's onset sample is
``round((t_marker - t0) * sfreq)``.

Late markers. A presentation page sends an image's marker after the image came
up, so its onset sample has usually been pushed already: the part of the
response still to come is added and the marker counts in ``n_late``; ``lost_ms``
in :meth:`LivePerson.stats` says how much of the response went missing (the
early component peaks at ~100 ms, so a few ms cost nothing). A marker whose whole
response lies in the past counts in ``n_expired`` too.

Noise. The person is the offline simulator's subject ``1000 + seed`` of the
world (same noise model and SNR scaling), generated in fixed blocks
(:class:`.person.PersonSignal`), so the samples depend on the seeds only, never on
timing: :meth:`LivePerson.render` gives offline exactly what the stream carries.

Cost: one MEG person at the default world (274 channels, 1200 Hz) takes about 3%
of one core with BLAS on one thread (:func:`run_live_person` sets that; the
matmuls are small and come every chunk, so BLAS worker threads only spin).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import pylsl
from threadpoolctl import threadpool_limits

from ..errors import InputError
from ..lsl import describe, find_markers, open_inlet
from ..outlet import INDEX_CHANNEL, SignalOutlet, si_units, signal_info
from ..stop_signals import StopSignals
from .config import SimulationConfig
from .person import Evoked, PersonSignal, SimulatedPerson, World, load_world
from .stimuli import Stimulus

logger = logging.getLogger("glimpse.streaming.simulate.live")

__all__ = ["LivePerson", "format_live_summary", "run_live_person"]

MAX_PIECE_S = 0.5  # at most this much is rendered per push (catching up after a stall)
_KEPT = 10_000  # lateness figures kept for the percentiles
_RECENT = 64  # markers kept for recent_markers()


def _percentiles(values, scale: float = 1e3) -> dict[str, float | None]:
    arr = np.asarray(values, float) * scale
    if not arr.size:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p99": round(float(np.percentile(arr, 99)), 3),
            "max": round(float(arr.max()), 3)}


class LivePerson:
    """A simulated subject publishing LSL stream ``name`` and following ``name-markers``.

    Parameters
    ----------
    world : World, optional
        The world (default: :meth:`World.build` of the default config, MEG).
    subject_seed : int
        Who the person is: subject_index ``1000 + subject_seed`` of the world.
    name : str
        LSL stream name; markers are read from ``<name>-markers``.
    chunk_ms : float
        Push period (ms of wall time), 1-500.
    noise : bool
        False publishes the evoked responses alone (tests, figures).
    subject_index : int, optional
        Overrides the seed's subject_index (``k`` is the offline session's ``sub-0k``).
    source_id : str, optional
        Default ``<name>-sim-<subject_seed>``, stable across restarts.

    Notes
    -----
    Two threads (pacing, markers), joined by :meth:`stop`. BLAS threads are left as
    they are (a process-wide setting): a process of its own should keep BLAS on one
    thread, as :func:`run_live_person` does.
    """

    def __init__(self, world: World | None = None, *, subject_seed: int = 0, name: str = "glimpse-sim",
                 chunk_ms: float = 20.0, noise: bool = True, subject_index: int | None = None,
                 source_id: str | None = None):
        if not isinstance(name, str) or not name.strip() or any(c in name for c in "'\""):
            raise InputError("--name, a stream name without quotes", repr(name), "pass e.g. --name glimpse-sim")
        if not (isinstance(chunk_ms, (int, float)) and math.isfinite(chunk_ms) and 1 <= chunk_ms <= 500):
            raise InputError("--chunk-ms in [1, 500] ms", repr(chunk_ms), "pass e.g. --chunk-ms 20")
        self.world = world if world is not None else World.build()
        self.person = SimulatedPerson(self.world, subject_seed, subject_index=subject_index)
        self.name, self.chunk_ms, self.noise = name.strip(), float(chunk_ms), bool(noise)
        self.source_id = source_id or f"{self.name}-sim-{subject_seed}"
        self.t0: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._outlet: SignalOutlet | None = None
        self._signal: PersonSignal | None = None
        self._error: BaseException | None = None
        self._reset()

    # ------------------------------------------------------------------ description

    @property
    def sfreq(self) -> float:
        return self.world.sfreq

    @property
    def markers_name(self) -> str:
        return f"{self.name}-markers"

    def stream_info(self) -> pylsl.StreamInfo:
        """Signal stream info: the world's channels (label, MNE type, SI unit), SAMPLE_INDEX last."""
        info = self.world.head.info
        lsl = signal_info(self.name, self.source_id, self.sfreq, info.ch_names, info.get_channel_types(),
                          si_units(info), index="last")
        desc = lsl.desc()
        acquisition = desc.append_child("acquisition")
        acquisition.append_child_value("manufacturer", "glimpse simulate --live")
        acquisition.append_child_value("model", "CTF-275 (simulated)" if self.world.config.modality == "meg"
                                       else "BioSemi-64 (simulated)")
        sim = desc.append_child("simulation")
        for key, value in (("world_seed", self.world.config.seed), ("subject_seed", self.person.subject_seed),
                           ("subject_index", self.person.subject_index), ("snr_db", self.world.config.snr_db),
                           ("world", "" if self.world.root is None else str(self.world.root)),
                           ("noise", str(self.noise).lower())):
            sim.append_child_value(key, str(value))
        return lsl

    def sample_at(self, t: float) -> int:
        """The sample index whose timestamp is nearest LSL time ``t`` (after :meth:`start`)."""
        if self.t0 is None:
            raise RuntimeError("LivePerson.sample_at: not started; call `person.start()` first")
        return int(round((t - self.t0) * self.sfreq))

    def render(self, n_samples: int, events: list[tuple[int, dict | Stimulus]] = ()) -> np.ndarray:
        """``(n_chans, n_samples)`` float64: what the stream carries (before float32) for these events.

        ``events``: ``(onset_sample, marker dict or Stimulus)``, each added as if its marker had
        arrived before its onset was pushed. Uses a fresh copy of the noise, so the live
        stream is untouched.
        """
        sig = PersonSignal(self.person, self.noise)
        for onset, what in events:
            evoked = self.person.evoke(what) if isinstance(what, dict) else \
                Evoked(self.person.topography(what), "fresh", what.path)
            sig.add(onset, evoked.topography)
        return sig.render(0, int(n_samples))

    # ------------------------------------------------------------------ life cycle

    def start(self) -> LivePerson:
        """Create the outlet and start the pacing and markers threads."""
        if self._threads:
            raise RuntimeError("LivePerson.start: already running; stop it first with `person.stop()`")
        self._reset()
        self._stop.clear()
        self._signal = PersonSignal(self.person, self.noise)
        self._outlet = SignalOutlet(self.stream_info(), index="last", markers=False)
        self.t0 = pylsl.local_clock()
        self._threads = [threading.Thread(target=self._run, name=f"live-person-{self.name}", daemon=True),
                         threading.Thread(target=self._follow_markers, name=f"live-markers-{self.name}", daemon=True)]
        self._state = "streaming"
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> LivePerson:
        """Stop both threads and withdraw the stream; safe to call twice."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("thread %s did not stop within %s s", thread.name, timeout)
        self._threads = []
        if self._outlet is not None:
            self._outlet.close()
            self._outlet = None
        if self._state == "streaming":
            self._state = "stopped"
        return self

    @property
    def error(self) -> BaseException | None:
        """What ended the pacing thread, if it failed."""
        return self._error

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._threads[0].is_alive()

    def __enter__(self) -> LivePerson:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ stats

    def _reset(self) -> None:
        self._state, self._t_end, self._pushed = "idle", None, 0
        self._cpu_s = self._markers_cpu_s = 0.0
        self._counts = dict(n_chunks=0, n_markers=0, n_unknown=0, n_late=0, n_expired=0,
                            n_bad_markers=0, n_late_pushes=0)
        self._kinds = {"world": 0, "fresh": 0, "catch": 0, "unknown": 0}
        self._incoming: list[tuple[float, float, Evoked]] = []
        self._lateness: deque[float] = deque(maxlen=_KEPT)
        self._lost: deque[float] = deque(maxlen=_KEPT)
        self._push_late: deque[float] = deque(maxlen=_KEPT)
        self._recent: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        self._markers_connected = False

    def stats(self) -> dict[str, Any]:
        """What went out so far (json-able).

        ``marker_lateness_ms``: marker arrival minus its timestamp; ``lost_ms``: the
        part of the response of late markers that was already pushed; ``push_late_ms``:
        how long after its tick each push happened; ``cpu_fraction``: CPU time of the
        pacing and markers threads over the running time.
        """
        with self._lock:
            lateness, lost, late = list(self._lateness), list(self._lost), list(self._push_late)
            kinds = dict(self._kinds)
        end = self._t_end if self._t_end is not None else pylsl.local_clock()
        cpu = self._cpu_s + self._markers_cpu_s
        elapsed = 0.0 if self.t0 is None else end - self.t0
        world = self.world
        return {
            "state": self._state, "name": self.name, "source_id": self.source_id,
            "markers_stream": self.markers_name, "markers_connected": self._markers_connected,
            "modality": world.config.modality, "n_chans": world.n_chans, "sfreq": self.sfreq,
            "world": None if world.root is None else str(world.root), "world_seed": world.config.seed,
            "subject_seed": self.person.subject_seed, "subject_index": self.person.subject_index,
            "noise": self.noise, "n_samples": self._pushed, **self._counts,
            "n_dropped": 0 if self._signal is None else self._signal.n_dropped, "by_kind": kinds,
            "marker_lateness_ms": _percentiles(lateness), "lost_ms": _percentiles(lost),
            "push_late_ms": _percentiles(late), "elapsed_s": round(elapsed, 3),
            "cpu_s": round(cpu, 3), "cpu_fraction": round(cpu / elapsed, 4) if elapsed > 0 else None,
        }

    def recent_markers(self) -> list[dict[str, Any]]:
        """The last markers applied: onset sample, first sample added, kind, stim path, lateness."""
        with self._lock:
            return list(self._recent)

    # ------------------------------------------------------------------ pacing

    def _run(self) -> None:
        try:
            cpu0, period, sfreq = time.thread_time(), self.chunk_ms / 1e3, self.sfreq
            piece = max(1, int(round(MAX_PIECE_S * sfreq)))
            tick = self.t0
            while True:
                tick += period
                now = pylsl.local_clock()
                if now < tick:
                    if self._stop.wait(tick - now):
                        return
                    now = pylsl.local_clock()
                elif self._stop.is_set():
                    return
                with self._lock:
                    self._push_late.append(now - tick)
                if now - tick >= period:  # fell behind: merge the missed ticks into this push
                    self._counts["n_late_pushes"] += 1
                    tick += math.floor((now - tick) / period) * period
                self._apply_markers()
                due = math.floor((now - self.t0) * sfreq) + 1
                while self._pushed < due:
                    a, b = self._pushed, min(due, self._pushed + piece)
                    data = self._signal.render(a, b)
                    self._outlet.push(data.T, self.t0 + np.arange(a, b) / sfreq, a)
                    self._pushed = b
                    self._counts["n_chunks"] += 1
                self._cpu_s = time.thread_time() - cpu0
        except Exception as err:  # noqa: BLE001 - kept in .error; run_live_person raises it
            self._error, self._state = err, "failed"
            logger.exception("live person %r failed", self.name)
        finally:
            self._t_end = pylsl.local_clock()

    def _apply_markers(self) -> None:
        """Markers that came since the last tick become pending responses (pacing thread)."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
        n_resp, pushed = self.person.n_times, self._pushed
        for t_marker, lateness, evoked in incoming:
            onset = self.sample_at(t_marker)
            lost = min(max(pushed - onset, 0), n_resp)
            if lost:
                self._counts["n_late"] += 1
                self._counts["n_expired"] += lost == n_resp
            if lost < n_resp:
                self._signal.add(onset, evoked.topography)
            with self._lock:
                if lost:
                    self._lost.append(lost / self.sfreq)
                self._recent.append({"onset": onset, "first_added": max(onset, pushed) if lost < n_resp else None,
                                     "kind": evoked.kind, "stim_path": evoked.stim_path,
                                     "lateness_ms": round(lateness * 1e3, 3), "lost_ms": round(lost / self.sfreq * 1e3, 3)})

    # ------------------------------------------------------------------ markers

    def _follow_markers(self) -> None:
        """Find ``<name>-markers`` (again and again: the service may start it later or restart)."""
        inlet, waiting_logged, cpu0 = None, False, time.thread_time()
        try:
            while not self._stop.is_set():
                if inlet is None:
                    info = find_markers(self.markers_name, timeout=0.2)
                    if info is None:
                        if not waiting_logged:
                            logger.info("waiting for markers stream %r", self.markers_name)
                            waiting_logged = True
                        self._stop.wait(0.1)
                        continue
                    try:
                        inlet, _ = open_inlet(info, timeout=2.0, recover=False)
                    except InputError:
                        continue
                    self._markers_connected, waiting_logged = True, False
                    logger.info("following markers %s", describe(info))
                try:
                    sample, t = inlet.pull_sample(timeout=0.05)
                    got = [(sample, t)] if sample is not None else []
                    if got:  # a burst: take the rest without waiting
                        more, stamps = inlet.pull_chunk(timeout=0.0, max_samples=256)
                        got += list(zip(more, stamps))
                except pylsl.util.LostError:
                    inlet.close_stream()
                    inlet, self._markers_connected = None, False
                    logger.warning("markers stream %r lost; seeking it again", self.markers_name)
                    continue
                for sample, t in got:
                    self._on_marker(float(t), sample[0] if sample else "")
                self._markers_cpu_s = time.thread_time() - cpu0
        except Exception:
            logger.exception("markers thread of %r failed", self.name)
        finally:
            if inlet is not None:
                inlet.close_stream()

    def _on_marker(self, t: float, raw: str) -> None:
        arrival = pylsl.local_clock()
        try:
            marker = json.loads(raw)
        except (TypeError, ValueError):
            marker = None
        if not isinstance(marker, dict) or not ({"stim_file", "trial_type"} & set(marker)):
            self._counts["n_bad_markers"] += 1
            if self._counts["n_bad_markers"] <= 5:
                logger.warning("ignored a marker that is not a JSON image marker "
                               '{"stim_file", "concept", "trial_type"}: %.80r', raw)
            return
        evoked = self.person.evoke(marker)
        with self._lock:
            self._incoming.append((t, arrival - t, evoked))
            self._lateness.append(arrival - t)
            self._kinds[evoked.kind] += 1
        self._counts["n_markers"] += 1
        if evoked.kind == "unknown":
            self._counts["n_unknown"] += 1
            if self._counts["n_unknown"] <= 5:
                logger.info("image %r is not one the simulated world knows: generic response",
                            marker.get("stim_file"))


# --------------------------------------------------------------------------- CLI face


def run_live_person(*, name: str = "glimpse-sim", subject_seed: int = 0, config: SimulationConfig | None = None,
                    world: str | os.PathLike | None = None, modality: str | None = None,
                    duration: float | None = None, chunk_ms: float = 20.0) -> dict[str, Any]:
    """Run a live person until Ctrl-C / SIGTERM or ``duration`` s; return the final stats.

    The world: ``world`` (a simulated session root, its ``simulation.json``), else
    ``config``, else the defaults (``modality`` picks MEG or EEG). ``stats["stopped_by"]``
    says what ended it. A failure of the pacing thread is raised here. Limits BLAS to one
    thread while it runs (this is the process of ``glimpse simulate --live``).
    """
    if duration is not None and not (isinstance(duration, (int, float)) and math.isfinite(duration)
                                     and duration > 0):
        raise InputError("--duration in seconds, above 0", repr(duration),
                         "pass e.g. --duration 60, or leave it out to run until Ctrl-C")
    if world is not None:
        built = load_world(world, modality=modality)
    else:
        built = World.build(config, modality=modality)
    person = LivePerson(built, subject_seed=subject_seed, name=name, chunk_ms=chunk_ms)
    # The matmuls are small and come every chunk: OpenBLAS's worker threads would spin
    # between them (measured: 45% of a core instead of 3.5%, and 10x the push lateness).
    with threadpool_limits(1, user_api="blas"):
        return _run_until_stopped(person, built, duration)


def _run_until_stopped(person: LivePerson, built: World, duration: float | None) -> dict[str, Any]:
    with StopSignals("duration") as stop:
        try:
            config = built.config
            logger.info("simulated person: subject seed %d (subject_index %d) of the %s world (seed %d, %s); "
                        "LSL stream %r (%s, %d channels + %s at %g Hz, source_id %s) answers the images on "
                        "%r; %s", person.person.subject_seed, person.person.subject_index,
                        config.modality.upper(), config.seed,
                        f"from {built.root}" if built.root is not None else "default config",
                        person.name, config.modality.upper(), built.n_chans, INDEX_CHANNEL, person.sfreq,
                        person.source_id, person.markers_name,
                        f"for {duration:g} s" if duration else "Ctrl-C stops")
            person.start()
            deadline = None if duration is None else time.monotonic() + duration
            while not stop.requested.wait(0.1) and person.running:
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            person.stop()
    if person.error is not None:
        raise person.error
    return {**person.stats(), "stopped_by": stop.by}


def format_live_summary(stats: dict[str, Any]) -> str:
    """One line: what the person published, what they saw, how late the markers were."""
    late, lost = stats["marker_lateness_ms"], stats["lost_ms"]
    timing = (f"marker lateness p50 {late['p50']:.1f} ms, p99 {late['p99']:.1f} ms"
              if late["p50"] is not None else "no markers")
    if lost["p50"] is not None:
        timing += f", response lost p50 {lost['p50']:.1f} ms, max {lost['max']:.1f} ms"
    cpu = f"{100 * stats['cpu_fraction']:.1f}%" if stats["cpu_fraction"] is not None else "n/a"
    return (f"live person {stats['name']!r} (subject seed {stats['subject_seed']}, subject_index "
            f"{stats['subject_index']}) ended by {stats.get('stopped_by', stats['state'])}: "
            f"{stats['n_samples']} samples x {stats['n_chans']} channels at {stats['sfreq']:g} Hz over "
            f"{stats['elapsed_s']:.1f} s; {stats['n_markers']} markers ({stats['n_unknown']} unknown, "
            f"{stats['n_late']} late, {stats['n_bad_markers']} malformed); {timing}; CPU {cpu} of real time")
