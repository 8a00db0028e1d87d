"""Physics-based simulator of THINGS-like MEG/EEG sessions (``glimpse simulate``).

``simulate_session(SimulationConfig(...), out_dir)`` writes, in ``out_dir`` (a
BIDS root):

- ``sub-XX/{meg,eeg}/``: one recording per subject written with mne-bids, task
  ``things``. MEG: CTF-275 axial gradiometers + ``STI101`` (codes exp=1, test=2,
  catch=3) as int16 FIF in tesla. EEG: BioSemi-64 (10-20 names) as BrainVision
  float32, average reference, in volts once read. ``*_events.tsv`` columns:
  ``onset, duration (0.5), trial_type (exp|test|catch), value (trigger code),
  sample, image_path, concept, image_nr, exemplar_nr``.
- ``stimuli/{train,test}/<concept>/<concept>_NN.png`` and ``stimuli/catch/catch.png``;
  ``stimuli/stimuli.tsv`` lists each image's properties (the ones that drive the
  simulated response). Test concepts are never shown in training; training images
  are shown once, test images ``test_repeats`` times, in random order; 500 ms on,
  1000 +- 200 ms fixation.
- ``derivatives/clean/``: the noise-free responses, exactly what was added to the
  data before noise: ``sub-XX_topographies.npy`` (n_images, n_chans, 4) and
  ``sub-XX_timecourses.npy`` (4, n_times), with ``clean.json`` naming images and
  channels. Load them with :func:`clean_responses` (the decoders' oracle ceiling).
  The evoked response has no trial-to-trial variability: every trial of an image
  carries the same clean response, and all variability is noise.
- ``simulation.json`` (config, seeds, derived facts, facts measured back from the
  files) and ``figures/evoked.png`` (RMS over posterior sensors, computed from the
  written files, with the configured peaks marked).

Physics: an MNE forward model (sphere head, volume source space, real sensor
positions). Sources: occipital dipoles with retinotopic receptive fields give an
early (~100 ms) and an offset response (100 ms after the image goes) that depend
on shape position, size, contrast, texture and colour; occipito-temporal dipoles
give two late responses (~170, ~280 ms) that depend on shape family, variant,
concept and texture. Subjects share patterns but differ in dipole orientation,
gain and latency (``subject_variability``). One head model serves all subjects.

SNR: ``snr_db = 10 log10(S / N)``. S is the mean square of the noise-free evoked
signal over the posterior sensors (CTF ``M?O..``; EEG ``O*, PO*, Iz``) in the
window [0, stim_duration + offset_latency) = 0-600 ms after onset, averaged over
the session's trials; N is the mean square at those sensors of the noise the knob
scales (1/f brain background, alpha bursts, white sensor noise, in the shares
``noise_mix``). Line noise, drift and EEG blinks have fixed physical amplitudes
and are not part of N. The realised value is logged in ``simulation.json``.

Same config (seed included) and same software versions -> byte-identical files.
"""

from .config import SIMULATOR_VERSION, SimulationConfig, simulated_with

_LAZY = {"CleanResponses", "SimulationResult", "clean_responses", "simulate_session"}


def __getattr__(name: str):
    # The session machinery imports MNE (~2 s); load it on first use so that
    # `glimpse simulate --help` (which reads SimulationConfig's defaults) stays fast.
    if name in _LAZY:
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["SIMULATOR_VERSION", "CleanResponses", "SimulationConfig", "SimulationResult", "clean_responses",
           "simulate_session", "simulated_with"]
