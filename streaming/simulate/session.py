"""``simulate_session``: stimuli, physics and noise, streamed into a BIDS dataset."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import InputError
from .config import SIMULATOR_VERSION, SimulationConfig
from .design import TRIGGER_CODES, TRIGGER_DURATION, Schedule, build_catalogue, make_schedule
from .figure import BASELINE, average_epochs, lowpass, plot_evoked
from .noise import ARTEFACTS, NoiseStream, build_noise_model
from .physics import COMPONENTS, MOMENTS, STIM_CHANNEL, WIDTHS, HeadModel, ResponseModel, build_head_model, build_response_model, sensor_info, source_groups
from .stimuli import Stimulus, write_stimuli
from .writer import BrainVisionWriter, Float32Store, block_slices, n_blocks, write_fif
from ..version import glimpse_version

logger = logging.getLogger("glimpse.streaming.simulate")

TASK = "things"
CLEAN_DIR = "derivatives/clean"
SNR_DEFINITION = (
    "snr_db = 10*log10(S/N). S: mean square of the noise-free evoked signal over the "
    "posterior sensors and the window [0, stim_duration + offset_latency) s after "
    "image onset (0-600 ms by default), averaged over all trials of the session. "
    "N: mean square, over the same sensors, of the SNR-governed noise (1/f brain "
    "background + alpha bursts + white sensor noise, mixed as noise_mix). Line "
    "noise, drift and blinks are added at fixed physical amplitudes and excluded."
)
SYSTEM = {
    "meg": "simulated CTF-275 axial gradiometers (glimpse, sphere forward model)",
    "eeg": "simulated BioSemi 64-channel 10-20 cap (glimpse, 4-shell sphere forward model)",
}
RESPONSE_TAIL = 0.1  # s of response kept after the offset component's peak
EVENT_COLUMNS = {
    "image_path": "Stimulus image, relative to the dataset root (stimuli/...).",
    "concept": "Concept of the image (shape family_variant); test concepts never occur in exp trials.",
    "image_nr": "Row of stimuli/stimuli.tsv (1-based), where the image's properties are listed.",
    "exemplar_nr": "Exemplar of the concept (1-based).",
}


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate_session` wrote; :meth:`summary` is what the CLI prints."""

    bids_root: Path
    stimuli_dir: Path
    figure_path: Path
    simulation_json: Path
    modality: str
    subjects: tuple[str, ...]
    n_trials: dict[str, int]  # per trial type, for each subject
    duration_s: dict[str, float]  # per subject
    data_files: dict[str, Path]  # per subject, the recording inside the BIDS tree
    n_files: int
    total_bytes: int
    timings_s: dict[str, float] = field(default_factory=dict)
    measured: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "bids_root": str(self.bids_root),
            "stimuli": str(self.stimuli_dir),
            "figure": str(self.figure_path),
            "simulation_json": str(self.simulation_json),
            "modality": self.modality,
            "subjects": list(self.subjects),
            "n_trials_per_subject": dict(self.n_trials),
            "duration_s": {k: round(v, 1) for k, v in self.duration_s.items()},
            "data_files": {k: str(v) for k, v in self.data_files.items()},
            "n_files": self.n_files,
            "total_mb": round(self.total_bytes / 1e6, 1),
            "timings_s": {k: round(v, 2) for k, v in self.timings_s.items()},
            "measured": self.measured,
        }




def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("a folder for --out", f"{out} is a file", "choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            n = sum(1 for _ in out.iterdir())
            raise InputError(
                "a new or empty output folder",
                f"{out} already holds {n} entries",
                "pass --overwrite (overwrite=True) to replace it, or choose another --out",
            )
        resolved, cwd = out.resolve(), Path.cwd().resolve()
        if resolved == Path(resolved.anchor) or resolved == Path.home().resolve() or cwd == resolved or resolved in cwd.parents:
            raise InputError("an output folder that is safe to delete", f"{out} (the root, home or current folder)", "choose a dedicated --out folder")
        logger.info("removing %s (overwrite=True)", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _write_dataset_files(root: Path, config: SimulationConfig, stimuli: list[Stimulus]) -> None:
    mne_bids.make_dataset_description(
        path=root,
        name=f"glimpse simulated THINGS-like {config.modality.upper()} session",
        dataset_type="raw",
        authors=["glimpse simulate"],
        generated_by=[{"Name": "glimpse simulate", "Version": glimpse_version(), "Description": "physics-based MEG/EEG simulator"}],
        overwrite=True,
        verbose=False,
    )
    (root / "README").write_text(
        "Simulated THINGS-like dataset written by `glimpse simulate`.\n\n"
        "Every parameter and derived fact is in simulation.json; the same file and\n"
        "glimpse version regenerate identical files. Stimuli are in stimuli/\n"
        "(stimuli/stimuli.tsv lists the properties that drive the simulated\n"
        "responses); noise-free responses are in derivatives/clean/.\n",
        encoding="utf-8",
    )
    (root / ".bidsignore").write_text("figures/\nsimulation.json\n", encoding="utf-8")
    pd.DataFrame([s.row() for s in stimuli]).to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False, lineterminator="\n")


def _signal_power(response: ResponseModel, schedule: Schedule, posterior: list[int], n_window: int) -> float:
    """Mean square of the clean response at posterior sensors in the SNR window, over trials."""
    tc = response.time_courses[:, :n_window]
    per_image = {row: float(np.mean((response.topographies[row][posterior] @ tc) ** 2)) for row in set(schedule.rows.tolist())}
    return float(np.mean([per_image[row] for row in schedule.rows.tolist()]))


def _annotations(schedule: Schedule, stimuli: list[Stimulus], config: SimulationConfig) -> mne.Annotations:
    extras = []
    for row in schedule.rows.tolist():
        stim = stimuli[row]
        extras.append({"image_path": stim.path, "concept": stim.concept, "image_nr": stim.image_nr, "exemplar_nr": stim.exemplar_nr})
    return mne.Annotations(
        onset=schedule.onsets / schedule.sfreq,
        duration=np.full(len(schedule.onsets), config.stim_duration),
        description=schedule.trial_types,
        orig_time=None,
        extras=extras,
    )


def _simulate_subject(
    config: SimulationConfig,
    subject: str,
    subject_index: int,
    head: HeadModel,
    groups: dict[str, np.ndarray],
    info: mne.Info,
    stimuli: list[Stimulus],
    schedule: Schedule,
    root: Path,
    scratch: Path,
    bar: tqdm,
) -> dict[str, object]:
    sfreq = config.resolved_sfreq
    response = build_response_model(
        head, groups, stimuli, seed=config.seed, subject_index=subject_index,
        variability=config.subject_variability, latencies=config.latencies, sfreq=sfreq,
        response_duration=config.latencies["offset"] + RESPONSE_TAIL,
    )
    n_window = int(round((config.stim_duration + config.offset_latency) * sfreq))
    signal_power = _signal_power(response, schedule, head.posterior, n_window)
    noise_seed = [config.seed, 401, subject_index]
    model = build_noise_model(
        head, groups, sfreq=sfreq, line_freq=config.line_freq, signal_power=signal_power,
        snr_db=config.snr_db, mix=config.noise_mix, rng=np.random.default_rng(noise_seed), n_times=schedule.n_times,
    )
    stream = NoiseStream(model, np.random.default_rng([config.seed, 402, subject_index]), head.posterior)

    sink, codes = _write_signal(config, subject, head, info, response, stream, schedule, scratch, bar)
    written = _write_bids(config, subject, sink, info, schedule, stimuli, codes, root, scratch)

    clean = root / CLEAN_DIR
    np.save(clean / f"sub-{subject}_topographies.npy", response.topographies.astype(np.float32))
    np.save(clean / f"sub-{subject}_timecourses.npy", response.time_courses.astype(np.float32))
    realized = 10 * np.log10(signal_power / (stream.posterior_sumsq / stream.posterior_count))
    logger.info("sub-%s: %d trials, %.0f s, realised SNR %.2f dB", subject, len(schedule.onsets), schedule.n_times / sfreq, realized)
    return {
        "subject": subject,
        "data_file": str(written.fpath.relative_to(root)),
        "weights_seed": response.weights_seed,
        "schedule_seed": [config.seed, 201, subject_index],
        "noise_seeds": [noise_seed, [config.seed, 402, subject_index]],
        "latencies_s": {k: round(v, 6) for k, v in response.latencies.items()},
        "n_trials": schedule.counts,
        "n_times": schedule.n_times,
        "duration_s": schedule.n_times / sfreq,
        "signal_power_posterior": signal_power,
        "noise_scales": model.scales,
        "alpha_freqs_hz": [round(float(f), 3) for f in model.alpha_freqs],
        "n_blinks": int(len(model.blink_onsets)),
        "realized_snr_db": round(float(realized), 3),
    }


def _write_signal(config: SimulationConfig, subject: str, head: HeadModel, info: mne.Info,
                  response: ResponseModel, stream: NoiseStream, schedule: Schedule, scratch: Path,
                  bar: tqdm) -> tuple[object, np.ndarray]:
    """Noise plus evoked responses (plus the trigger channel), block by block, to scratch.

    Returns the sink (open: :func:`_write_bids` closes it) and each trial's trigger code.
    """
    sfreq = config.resolved_sfreq
    n_data = len(head.info.ch_names)
    meg = config.modality == "meg"
    if meg:
        sink = Float32Store(scratch / f"sub-{subject}.f32", n_data + 1)
    else:
        sink = BrainVisionWriter(scratch, f"sub-{subject}", head.info.ch_names, sfreq, info["meas_date"])
    n_resp = response.time_courses.shape[1]
    n_trig = max(1, int(round(TRIGGER_DURATION * sfreq)))
    codes = np.array([TRIGGER_CODES[t] for t in schedule.trial_types])
    block = int(round(config.block_duration * sfreq))
    # Two buffers: a writer thread stores one block (transpose, cast, disk) while
    # this thread generates the next; numpy and file I/O release the GIL.
    buffers = [np.empty((n_data + meg, block)) for _ in range(2)]
    pending: list[Future | None] = [None, None]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="glimpse-sim-writer") as pool:
        for i, (start, stop) in enumerate(block_slices(schedule.n_times, block)):
            n, slot = stop - start, i % 2
            if pending[slot] is not None:
                pending[slot].result()  # re-raises a failed write here
            data = buffers[slot][:, :n]
            stream.next(n, out=data)
            first, last = np.searchsorted(schedule.onsets, [start - n_resp, stop])
            for k in range(first, last):
                onset = int(schedule.onsets[k])
                lo, hi = max(onset, start), min(onset + n_resp, stop)
                if lo < hi:
                    data[:n_data, lo - start : hi - start] += response.topographies[schedule.rows[k]] @ response.time_courses[:, lo - onset : hi - onset]
            if meg:
                data[n_data] = 0
                for k in range(first, last):
                    onset = int(schedule.onsets[k])
                    lo, hi = max(onset, start), min(onset + n_trig, stop)
                    if lo < hi:
                        data[n_data, lo - start : hi - start] = codes[k]
            pending[slot] = pool.submit(sink.append, data)
            bar.update(1)
        for future in pending:
            if future is not None:
                future.result()
    return sink, codes


def _write_bids(config: SimulationConfig, subject: str, sink, info: mne.Info, schedule: Schedule,
                stimuli: list[Stimulus], codes: np.ndarray, root: Path,
                scratch: Path) -> mne_bids.BIDSPath:
    """The scratch signal as this subject's BIDS recording and sidecars; scratch removed."""
    meg = config.modality == "meg"
    bids_path = mne_bids.BIDSPath(subject=subject, task=TASK, datatype=config.modality, root=root)
    annotations = _annotations(schedule, stimuli, config)
    present = {t: c for t, c in TRIGGER_CODES.items() if t in set(schedule.trial_types)}
    if meg:
        sink.close()
        fif = scratch / f"sub-{subject}_meg.fif"
        write_fif(sink, info, fif, annotations)
        sink.path.unlink()  # the float32 scratch is twice the FIF; free it at once
        raw = mne.io.read_raw_fif(fif, verbose=False)
        raw.set_annotations(annotations)  # FIF stores float32 onsets; events.tsv gets the exact ones
        # Our FIF is already what mne-bids would write (int16, annotations inside),
        # so let mne-bids link it and move the file over the link, instead of
        # re-saving 0.4 GB per subject. A split FIF (> 2 GB) takes the copying path.
        link = len(raw.filenames) == 1
        written = mne_bids.write_raw_bids(raw, bids_path, event_id=present, extra_columns_descriptions=EVENT_COLUMNS, symlink=link, overwrite=True, verbose=False)
        del raw
        if link:
            os.replace(fif, written.fpath)
    else:
        vhdr = sink.close([(int(s), int(c)) for s, c in zip(schedule.onsets, codes)])
        raw = mne.io.read_raw_brainvision(vhdr, verbose=False)
        raw.set_montage(mne.channels.make_standard_montage("biosemi64"), verbose=False)
        raw.info["line_freq"] = config.line_freq
        raw.set_annotations(annotations)
        written = mne_bids.write_raw_bids(raw, bids_path, event_id=present, extra_columns_descriptions=EVENT_COLUMNS, overwrite=True, verbose=False)
        del raw
    # mne-bids guesses the maker from the file format (FIF -> Elekta); say what it is.
    sidecar = {"Manufacturer": "n/a", "ManufacturersModelName": SYSTEM[config.modality]}
    if not meg:
        sidecar["EEGReference"] = "average"
    mne_bids.update_sidecar_json(written.copy().update(extension=".json"), sidecar, verbose=False)
    for path in scratch.glob(f"sub-{subject}*"):
        path.unlink()

    return written


def _evoked_figure(config: SimulationConfig, root: Path, head: HeadModel, subjects: list[str], out: Path) -> dict[str, dict[str, float]]:
    """Read every subject back with mne-bids; average posterior sensors; plot."""
    sfreq = config.resolved_sfreq
    picks = [head.info.ch_names[i] for i in head.posterior]
    n_pre, n_post = int(round(BASELINE * sfreq)), int(round((config.latencies["offset"] + 0.2) * sfreq))
    times = np.arange(-n_pre, n_post) / sfreq
    scale, unit = (1e15, "fT") if config.modality == "meg" else (1e6, "µV")
    rms, measured = {}, {"early_peak_s": {}, "post_pre_rms_ratio": {}, "n_trials_averaged": {}}
    early = config.latencies["early"]
    for subject in subjects:
        bids_path = mne_bids.BIDSPath(subject=subject, task=TASK, datatype=config.modality, root=root)
        raw = mne_bids.read_raw_bids(bids_path, verbose=False)
        ann = raw.annotations
        keep = np.isin(ann.description, ["exp", "test"])
        onsets = np.round((ann.onset[keep] - raw.first_time) * raw.info["sfreq"]).astype(int)
        evoked = lowpass(average_epochs(raw, picks, onsets, n_pre, n_post, chunk=int(30 * sfreq)), sfreq)
        curve = np.sqrt((evoked**2).mean(0)) * scale
        rms[subject] = curve
        window = (times > early - 0.04) & (times < early + 0.04)
        measured["early_peak_s"][subject] = round(float(times[window][np.argmax(curve[window])]), 4)
        post = (times > 0.05) & (times < config.late_latencies[1] + 0.1)
        measured["post_pre_rms_ratio"][subject] = round(float(np.sqrt(np.mean(curve[post] ** 2) / np.mean(curve[times < 0] ** 2))), 2)
        measured["n_trials_averaged"][subject] = int(len(onsets))
    plot_evoked(
        out, times, rms, config.latencies, config.stim_duration, unit=unit,
        title=f"{config.modality.upper()}: evoked response at {len(picks)} posterior sensors "
        f"(exp + test trials, {BASELINE * 1000:.0f} ms baseline, {40:.0f} Hz low-pass)",
    )
    return measured


def simulate_session(config: SimulationConfig, out_dir: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> SimulationResult:
    """Write a simulated THINGS-like session to ``out_dir`` (a BIDS root); see the package docstring."""
    if not isinstance(config, SimulationConfig):
        raise InputError("a SimulationConfig", type(config).__name__, "build one with SimulationConfig(...)")
    config.validate()
    root = Path(out_dir)
    _prepare_out_dir(root, overwrite)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    stimuli = build_catalogue(config)
    write_stimuli(stimuli, root, config.image_size)
    _write_dataset_files(root, config, stimuli)
    timings["stimuli"] = time.perf_counter() - t0

    sfreq = config.resolved_sfreq
    info = sensor_info(config.modality, sfreq, config.line_freq)
    head = build_head_model(info, config.modality, config.source_spacing_mm)
    groups = source_groups(head, config.seed)
    timings["forward"] = head.forward_seconds

    numbers = range(config.first_subject, config.first_subject + config.subjects)
    subjects = [f"{k:02d}" for k in numbers]
    schedules = [make_schedule(config, stimuli, k) for k in numbers]
    block = int(round(config.block_duration * sfreq))
    scratch = root / ".glimpse-scratch"
    scratch.mkdir()
    (root / CLEAN_DIR).mkdir(parents=True)
    t1 = time.perf_counter()
    facts = []
    try:
        with tqdm(total=sum(n_blocks(s.n_times, block) for s in schedules), desc="simulate", unit="block", disable=not progress) as bar:
            for k, subject, schedule in zip(numbers, subjects, schedules):
                bar.set_postfix_str(f"sub-{subject}")
                facts.append(_simulate_subject(config, subject, k, head, groups, info, stimuli, schedule, root, scratch, bar))
    finally:
        # Scratch files are up to twice a subject's FIF; never leave them behind.
        shutil.rmtree(scratch, ignore_errors=True)
    timings["simulate_and_write"] = time.perf_counter() - t1

    _write_clean_index(root, config, head, stimuli)
    t2 = time.perf_counter()
    figure_path = root / "figures" / "evoked.png"
    measured = _evoked_figure(config, root, head, subjects, figure_path)
    timings["read_back_and_figure"] = time.perf_counter() - t2

    simulation_json = root / "simulation.json"
    record = _simulation_record(config, head, groups, stimuli, facts, measured)
    simulation_json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    files = [p for p in root.rglob("*") if p.is_file()]
    timings["total"] = time.perf_counter() - t0
    result = SimulationResult(
        bids_root=root,
        stimuli_dir=root / "stimuli",
        figure_path=figure_path,
        simulation_json=simulation_json,
        modality=config.modality,
        subjects=tuple(subjects),
        n_trials=facts[0]["n_trials"],
        duration_s={f["subject"]: f["duration_s"] for f in facts},
        data_files={f["subject"]: root / f["data_file"] for f in facts},
        n_files=len(files),
        total_bytes=sum(p.stat().st_size for p in files),
        timings_s=timings,
        measured=measured,
    )
    logger.info("wrote %s: %d files, %.1f MB in %.1f s", root, result.n_files, result.total_bytes / 1e6, timings["total"])
    return result


def _simulation_record(config: SimulationConfig, head: HeadModel, groups: dict[str, np.ndarray],
                       stimuli: list[Stimulus], facts: list[dict], measured: dict) -> dict:
    """``simulation.json``: every parameter, the seed, derived and measured facts."""
    sfreq = config.resolved_sfreq
    return {
        "generator": "glimpse simulate (glimpse.streaming.simulate)",
        "simulator_version": SIMULATOR_VERSION,
        "glimpse_version": glimpse_version(),
        "mne_version": mne.__version__,
        "mne_bids_version": mne_bids.__version__,
        "seed": config.seed,
        "config": config.to_dict(),
        "snr_definition": SNR_DEFINITION,
        "derived": {
            "modality": config.modality,
            "sfreq": sfreq,
            "units": "T" if config.modality == "meg" else "V",
            "stim_channel": STIM_CHANNEL if config.modality == "meg" else None,
            "trigger_codes": TRIGGER_CODES,
            "head": head.describe(),
            "source_groups": {k: int(len(v)) for k, v in groups.items()},
            "components": {c: {"peak_s": config.latencies[c], "width_s": WIDTHS[c], "moment_am": MOMENTS[c]} for c in COMPONENTS},
            "artefacts": ARTEFACTS[config.modality],
            "train_concepts": sorted({s.concept for s in stimuli if s.split == "train"}),
            "test_concepts": sorted({s.concept for s in stimuli if s.split == "test"}),
            "n_images": {split: sum(s.split == split for s in stimuli) for split in ("train", "test", "catch")},
            "subjects": facts,
        },
        "measured_from_files": measured,
    }


def _write_clean_index(root: Path, config: SimulationConfig, head: HeadModel, stimuli: list[Stimulus]) -> None:
    clean = root / CLEAN_DIR
    (clean / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "noise-free evoked responses of the simulated session",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "glimpse simulate", "Version": glimpse_version()}],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    index = {
        "description": "response(image k) = topographies[k - 1] @ timecourses, in units per channel, from image onset",
        "units": "T" if config.modality == "meg" else "V",
        "sfreq": config.resolved_sfreq,
        "components": list(COMPONENTS),
        "ch_names": head.info.ch_names,
        "image_paths": [s.path for s in stimuli],
    }
    (clean / "clean.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class CleanResponses:
    """Noise-free sensor responses of one subject (the oracle ceiling for decoders)."""

    image_paths: tuple[str, ...]
    ch_names: tuple[str, ...]
    sfreq: float
    topographies: np.ndarray  # (n_images, n_chans, n_components)
    time_courses: np.ndarray  # (n_components, n_times)

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.time_courses.shape[1]) / self.sfreq

    def response(self, image_path: str) -> np.ndarray:
        """``(n_chans, n_times)`` noise-free response to one image, from its onset."""
        try:
            row = self.image_paths.index(image_path)
        except ValueError:
            raise InputError("an image_path of this session (as in events.tsv)", repr(image_path), "use a value of the image_path column") from None
        return self.topographies[row] @ self.time_courses


def clean_responses(bids_root: str | os.PathLike, subject: str = "01") -> CleanResponses:
    """Load the noise-free responses that :func:`simulate_session` added for ``subject``."""
    clean = Path(bids_root) / CLEAN_DIR
    index_path = clean / "clean.json"
    if not index_path.is_file():
        raise InputError(f"{index_path} (written by glimpse simulate)", "no such file", "pass the --out folder of `glimpse simulate`")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    topo = clean / f"sub-{subject}_topographies.npy"
    if not topo.is_file():
        raise InputError("a simulated subject such as '01'", repr(subject), f"pick one of the sub-*_topographies.npy in {clean}")
    return CleanResponses(
        image_paths=tuple(index["image_paths"]),
        ch_names=tuple(index["ch_names"]),
        sfreq=float(index["sfreq"]),
        topographies=np.load(topo),
        time_courses=np.load(clean / f"sub-{subject}_timecourses.npy"),
    )
