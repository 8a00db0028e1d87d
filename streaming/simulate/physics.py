"""Sensors, head model, forward solution and the image -> source -> sensor response model.

The head is a sphere (:func:`mne.make_sphere_model`) filled with a volume source
space; :func:`mne.make_forward_solution` gives the free-orientation leadfield of
the real CTF-275 (MEG) or BioSemi-64 (EEG) sensor geometry. No MRI and no
``subjects_dir`` are needed, and nothing is cached: the forward takes about a
second.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from dataclasses import dataclass

import mne
import numpy as np
from PIL import Image

from .stimuli import CATCH_CONCEPT, FAMILIES, TEXTURES, VARIANTS, Stimulus, concept_name, figure_mask

logger = logging.getLogger("glimpse.streaming.simulate")

#: Fixed recording date: mne-bids writes it into scans.tsv and the FIF header,
#: and a fixed one keeps files byte-identical for the same seed.
MEAS_DATE = datetime.datetime(2024, 1, 1, 9, 0, 0, tzinfo=datetime.timezone.utc)
STIM_CHANNEL = "STI101"
MEG_BRAIN_RADIUS = 0.075  # m; sources fill this sphere inside the helmet
EEG_BRAIN_FRACTION = 0.8  # of the scalp radius
EEG_SIGMAS = (0.33, 1.0, 0.0132, 0.33)  # S/m: brain, CSF, skull, scalp
N_AREA_DIPOLES = 24  # dipoles per visual area
RADIAL_SHARE = 1.0  # radial spread of dipole orientations relative to the tangential part
COMPONENTS = ("early", "late_1", "late_2", "offset")
#: Gaussian widths (s) of the component time courses.
WIDTHS = {"early": 0.015, "late_1": 0.025, "late_2": 0.050, "offset": 0.020}
#: Peak dipole moments (A m) of each component; chosen so that evoked fields reach
#: ~0.1-0.5 pT (MEG) and a few uV (EEG) at posterior sensors, as in real recordings.
MOMENTS = {"early": 15e-9, "late_1": 12e-9, "late_2": 10e-9, "offset": 8e-9}
SHAPE_GRID = 10  # silhouette grid of the shape code
N_SHAPE_FEATURES = SHAPE_GRID * SHAPE_GRID + 8


def shape_features(stim: Stimulus) -> np.ndarray:
    """Unit-norm shape code that drives the late (ventral-stream) components.

    Position- and size-invariant, as inferotemporal shape selectivity is: the
    figure's silhouette cropped to its bounding box on a coarse grid, and the
    histogram of its edge orientations. Encoding models predict late visual MEG
    responses from such image features (and from CLIP's), which is what lets a
    decoder generalise to concepts it never saw.
    """
    mask = figure_mask(stim, 32)
    box = mask.getbbox() or (0, 0, mask.width, mask.height)
    sil = np.asarray(mask.crop(box).resize((SHAPE_GRID, SHAPE_GRID), Image.BILINEAR), np.float64) / 255
    m = np.asarray(mask, np.float64) / 255
    gy, gx = np.gradient(m)
    mag, ang = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    hist = np.bincount(np.minimum((ang / np.pi * 8).astype(int), 7).ravel(), mag.ravel(), 8)
    hist = hist / (hist.sum() + 1e-9)
    f = np.r_[sil.ravel() - sil.mean(), 4 * (hist - 1 / 8)]
    return f / (np.linalg.norm(f) + 1e-9)


_TEXTURE_GAIN = {"plain": 1.0, "stripes": 1.35, "dots": 1.2}  # more edges, more V1 drive


def sensor_info(modality: str, sfreq: float, line_freq: float) -> mne.Info:
    """Measurement info: CTF-275 axial gradiometers + STI101, or BioSemi-64 EEG."""
    if modality == "meg":
        canonical = mne.channels.read_meg_canonical_info("ctf275")
        names = [ch["ch_name"] for ch in canonical["chs"]]
        info = mne.create_info(names + [STIM_CHANNEL], sfreq, ["mag"] * len(names) + ["stim"])
        for ch, ref in zip(info["chs"], canonical["chs"]):
            for key in ("loc", "coil_type", "coord_frame", "unit", "kind"):
                ch[key] = ref[key].copy() if key == "loc" else ref[key]
        info["dev_head_t"] = mne.transforms.Transform("meg", "head")
    else:
        montage = mne.channels.make_standard_montage("biosemi64")
        info = mne.create_info(montage.ch_names, sfreq, "eeg")
        info.set_montage(montage)
    info["line_freq"] = float(line_freq)
    info.set_meas_date(MEAS_DATE)
    return info


def posterior_channels(ch_names: list[str], modality: str) -> list[int]:
    """Indices of the occipital sensors: CTF ``M?O..``, EEG ``O*``, ``PO*``, ``Iz``."""
    if modality == "meg":
        return [i for i, name in enumerate(ch_names) if len(name) > 2 and name[0] == "M" and name[2] == "O"]
    return [i for i, name in enumerate(ch_names) if name.startswith(("O", "PO", "Iz"))]


def frontal_channels(ch_names: list[str]) -> list[int]:
    """Indices of the EEG channels nearest the eyes."""
    return [i for i, name in enumerate(ch_names) if name.startswith(("Fp", "AF"))]


@dataclass
class HeadModel:
    """Leadfield and geometry shared by all subjects of a session."""

    modality: str
    info: mne.Info  # data channels only
    gain: np.ndarray  # (n_chans, n_sources, 3), head coordinates, A m -> T or V
    rr: np.ndarray  # (n_sources, 3) m, head coordinates
    center: np.ndarray  # (3,) sphere centre
    radius: float  # radius of the source-filled sphere
    posterior: list[int]
    forward_seconds: float

    @property
    def normalized(self) -> np.ndarray:
        """Source positions relative to the sphere: x right, y front, z up, ``|.| <= 1``."""
        return (self.rr - self.center) / self.radius

    def describe(self) -> dict[str, object]:
        return {
            "head_model": "mne.make_sphere_model" + (" (MEG, Sarvas)" if self.modality == "meg" else " (EEG, 4 shells)"),
            "sphere_center_m": [round(float(v), 5) for v in self.center],
            "source_radius_m": round(float(self.radius), 5),
            "n_sources": int(len(self.rr)),
            "n_chans": int(self.gain.shape[0]),
            "posterior_channels": [self.info.ch_names[i] for i in self.posterior],
        }


def build_head_model(info: mne.Info, modality: str, spacing_mm: float) -> HeadModel:
    """Sphere head + volume source space + MNE forward solution for the data channels."""
    start = time.perf_counter()
    data_info = mne.pick_info(info, mne.pick_types(info, meg=True, eeg=True))
    if modality == "meg":
        pos = np.array([ch["loc"][:3] for ch in data_info["chs"]])
        # Centre of the helmet: least-squares sphere through the sensors (device =
        # head coordinates here); the brain sphere sits inside with >= 3 cm clearance.
        design = np.c_[2 * pos, np.ones(len(pos))]
        sol = np.linalg.lstsq(design, (pos**2).sum(1), rcond=None)[0]
        center = sol[:3]
        radius = MEG_BRAIN_RADIUS
        bem = mne.make_sphere_model(r0=center, head_radius=None, verbose=False)
        src = mne.setup_volume_source_space(pos=spacing_mm, sphere=(*center, radius), sphere_units="m", mindist=0.0, exclude=0.0, verbose=False)
    else:
        # Skull:brain conductivity 1:25 (Lai et al. 2005; Gonçalves et al. 2003) rather
        # than the classic 1:80, which underestimates scalp potentials.
        bem = mne.make_sphere_model("auto", "auto", data_info, sigmas=EEG_SIGMAS, verbose=False)
        center = np.asarray(bem["r0"], float)
        # Sources within 80% of the scalp radius: cortex lies 1.5-2.5 cm below the
        # electrodes, as the MEG sources lie >= 3 cm below the helmet's sensors.
        radius = EEG_BRAIN_FRACTION * float(bem["layers"][-1]["rad"])
        src = mne.setup_volume_source_space(pos=spacing_mm, sphere=(*center, radius), sphere_units="m", mindist=0.0, exclude=0.0, verbose=False)
    fwd = mne.make_forward_solution(data_info, trans=None, src=src, bem=bem, meg=modality == "meg", eeg=modality == "eeg", verbose=False)
    gain = fwd["sol"]["data"].reshape(len(data_info.ch_names), -1, 3)
    if modality == "eeg":
        # Average reference, as most EEG pipelines (and THINGS-EEG2) use.
        gain = gain - gain.mean(axis=0, keepdims=True)
    rr = fwd["src"][0]["rr"][fwd["src"][0]["vertno"]]
    seconds = time.perf_counter() - start
    logger.debug("forward: %d sources x %d channels in %.2f s", len(rr), gain.shape[0], seconds)
    return HeadModel(
        modality=modality, info=data_info, gain=np.ascontiguousarray(gain), rr=rr, center=center,
        radius=float(np.linalg.norm(rr - center, axis=1).max()),
        posterior=posterior_channels(data_info.ch_names, modality), forward_seconds=seconds,
    )


def source_groups(head: HeadModel, seed: int) -> dict[str, np.ndarray]:
    """Source indices of the visual areas, chosen by position (posterior = negative y).

    Candidates lie in a cortex-like shell (65-95 % of the radius); each area keeps
    :data:`N_AREA_DIPOLES` of them (the same for every subject), so the summed
    moment stays in the tens of nAm that real evoked responses show.
    """
    n = head.normalized
    depth = np.linalg.norm(n, axis=1)
    shell = (depth > 0.65) & (depth < 0.95)
    occipital = shell & (n[:, 1] < -0.45) & (np.abs(n[:, 0]) < 0.6) & (np.abs(n[:, 2]) < 0.5)
    ventral = shell & (n[:, 1] < -0.05) & (n[:, 1] > -0.8) & (np.abs(n[:, 0]) > 0.35) & (n[:, 2] < 0.1) & ~occipital
    parietal = shell & (n[:, 1] < -0.2) & (n[:, 2] > 0.2) & ~occipital
    rng = np.random.default_rng([seed, 300])
    groups = {}
    for name, mask in (("occipital", occipital), ("occipitotemporal", ventral), ("parieto_occipital", parietal)):
        idx = np.flatnonzero(mask)
        if len(idx) < N_AREA_DIPOLES:
            raise RuntimeError(f"only {len(idx)} {name} sources; the source spacing is too coarse")
        groups[name] = np.sort(rng.choice(idx, N_AREA_DIPOLES, replace=False))
    return groups


def _orientations(rng: np.random.Generator, rr: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Random unit dipole orientations, tangential and radial mixed as on folded cortex."""
    radial = (rr - center) / np.linalg.norm(rr - center, axis=1, keepdims=True)
    vec = rng.standard_normal(rr.shape)
    tangential = vec - (vec * radial).sum(1, keepdims=True) * radial
    tangential /= np.linalg.norm(tangential, axis=1, keepdims=True)
    ori = tangential + RADIAL_SHARE * rng.standard_normal((len(rr), 1)) * radial
    return ori / np.linalg.norm(ori, axis=1, keepdims=True)


def _gaussian(times: np.ndarray, peak: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((times - peak) / width) ** 2)


@dataclass
class ResponseModel:
    """One subject's noise-free evoked responses: ``topographies[i] @ time_courses``.

    ``topographies`` has shape ``(n_images, n_chans, n_components)`` in T (MEG) or
    V (EEG) at unit time course; ``time_courses`` ``(n_components, n_times)`` starts
    at image onset. Stimulus ``image_nr`` k is row k - 1.
    """

    topographies: np.ndarray
    time_courses: np.ndarray
    latencies: dict[str, float]
    weights_seed: list[int]

    def response(self, row: int) -> np.ndarray:
        return self.topographies[row] @ self.time_courses


def _shared_patterns(seed: int, n_occ: int, n_ot: int) -> dict[str, np.ndarray]:
    """Patterns common to all subjects (the 'species-level' visual system)."""
    rng = np.random.default_rng([seed, 301])
    n_fam, n_var, n_con = len(FAMILIES) + 1, len(VARIANTS), len(FAMILIES) * len(VARIANTS) + 1
    pats = {}
    for comp in ("late_1", "late_2"):
        pats[f"{comp}_base"] = rng.standard_normal(n_ot)
        pats[f"{comp}_family"] = rng.standard_normal((n_fam, n_ot))
        pats[f"{comp}_variant"] = rng.standard_normal((n_var, n_ot))
        pats[f"{comp}_concept"] = rng.standard_normal((n_con, n_ot))
        pats[f"{comp}_texture"] = rng.standard_normal((len(TEXTURES), n_ot))
        pats[f"{comp}_shape"] = rng.standard_normal((N_SHAPE_FEATURES, n_ot))
    pats["colour"] = rng.standard_normal((2, n_occ))
    pats["occ_base"] = rng.uniform(0.5, 1.5, n_occ)
    pats["rf_jitter"] = 0.1 * rng.standard_normal((n_occ, 2))
    return pats


#: Mixture weights of the late components. The image-computable shape code dominates,
#: so unseen test concepts (new family x variant pairs) are predictable from training;
#: family, variant and concept codes add category content that pixels do not carry.
_LATE_MIX = {
    "late_1": {"base": 1.0, "shape": 2.5, "family": 0.5, "variant": 0.3, "concept": 0.2, "texture": 0.2},
    "late_2": {"base": 0.6, "shape": 2.5, "family": 0.3, "variant": 0.4, "concept": 0.25, "texture": 0.3},
}


def _concept_index(stim: Stimulus) -> tuple[int, int, int]:
    if stim.family == CATCH_CONCEPT:
        return len(FAMILIES), 0, len(FAMILIES) * len(VARIANTS)
    f, v = FAMILIES.index(stim.family), VARIANTS.index(stim.variant)
    assert concept_name(stim.family, stim.variant) == stim.concept
    return f, v, f * len(VARIANTS) + v


def build_response_model(
    head: HeadModel,
    groups: dict[str, np.ndarray],
    stimuli: list[Stimulus],
    *,
    seed: int,
    subject_index: int,
    variability: float,
    latencies: dict[str, float],
    sfreq: float,
    response_duration: float,
) -> ResponseModel:
    """Dipole weights per image and component, projected through the leadfield.

    early (~100 ms) and offset: occipital dipoles with retinotopic receptive fields,
    driven by where the shapes are, their size, luminance contrast, texture and
    colour. late_1 / late_2 (~170 / ~280 ms): occipito-temporal dipoles driven by
    the shape code (:func:`shape_features`), shape family, variant, concept and
    texture. Subjects share the patterns; each
    gets its own dipole orientations, gains and small latency shifts.
    """
    occ, ot = groups["occipital"], groups["occipitotemporal"]
    shared = _shared_patterns(seed, len(occ), len(ot))
    shared_rng = np.random.default_rng([seed, 302])
    base_ori = _orientations(shared_rng, head.rr, head.center)
    weights_seed = [seed, 303, subject_index]
    rng = np.random.default_rng(weights_seed)
    ori = base_ori + variability * rng.standard_normal(base_ori.shape)
    ori /= np.linalg.norm(ori, axis=1, keepdims=True)
    dipole_gain = np.clip(1 + variability * rng.standard_normal(len(head.rr)), 0.2, None)
    shift = variability / 0.3 * rng.uniform(-0.004, 0.004, size=len(COMPONENTS))
    subject_latencies = {c: float(latencies[c] + s) for c, s in zip(COMPONENTS, shift)}

    # Leadfield of each dipole along its orientation, scaled by its gain: (n_chans, n_sources).
    fixed = np.einsum("csk,sk->cs", head.gain, ori) * dipole_gain

    # Retinotopy: contralateral hemifield, upper field below the calcarine (lower z).
    n = head.normalized[occ]
    rf = np.c_[-n[:, 0] / np.abs(n[:, 0]).max(), -(n[:, 2] - np.median(n[:, 2])) / (np.ptp(n[:, 2]) / 2 + 1e-9)]
    rf = np.clip(0.9 * rf + shared["rf_jitter"], -1, 1)
    sigma_rf = 0.35

    n_img = len(stimuli)
    w = {c: np.zeros((n_img, len(occ) if c in ("early", "offset") else len(ot))) for c in COMPONENTS}
    for row, stim in enumerate(stimuli):
        retino = np.zeros(len(occ))
        for x, y, r in stim.items:
            d2 = ((rf - [x, y]) ** 2).sum(1)
            retino += (r / 0.4) ** 2 * np.exp(-0.5 * d2 / (sigma_rf**2 + r**2))
        # Every image drives all of early visual cortex a little (foveal and
        # feedback spread), its retinotopic locations much more.
        drive = stim.contrast * _TEXTURE_GAIN[stim.texture] * (retino + 0.4 * shared["occ_base"])
        hue = 2 * math.pi * stim.hue
        colour = stim.saturation * (math.cos(hue) * shared["colour"][0] + math.sin(hue) * shared["colour"][1])
        w["early"][row] = drive + 0.3 * colour * np.sqrt(retino)
        w["offset"][row] = drive
        f, v, c = _concept_index(stim)
        t = TEXTURES.index(stim.texture)
        shape = shape_features(stim)
        for comp, mix in _LATE_MIX.items():
            w[comp][row] = (
                mix["base"] * shared[f"{comp}_base"]
                + mix["shape"] * shape @ shared[f"{comp}_shape"]
                + mix["family"] * shared[f"{comp}_family"][f]
                + mix["variant"] * shared[f"{comp}_variant"][v]
                + mix["concept"] * shared[f"{comp}_concept"][c]
                + mix["texture"] * shared[f"{comp}_texture"][t]
            ) / 2.9
    idx = {"early": occ, "offset": occ, "late_1": ot, "late_2": ot}
    topographies = np.stack([MOMENTS[c] * w[c] @ fixed[:, idx[c]].T for c in COMPONENTS], axis=-1)

    times = np.arange(int(round(response_duration * sfreq))) / sfreq
    time_courses = np.stack([_gaussian(times, subject_latencies[c], WIDTHS[c]) for c in COMPONENTS])
    return ResponseModel(topographies=topographies, time_courses=time_courses, latencies=subject_latencies, weights_seed=weights_seed)

