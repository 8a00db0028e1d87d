"""
Simulate a session and look at it
=================================

``glimpse simulate`` writes a THINGS-like MEG or EEG session: a BIDS dataset
with real sensor geometry, an MNE forward model, and the images that were
"shown". Here we write the small session the tests use, look at a few of its
stimuli, and average its trials into the evoked response.

The same session from the command line::

    glimpse simulate --out tiny --subjects 1 --concepts 8 --exemplars 2
"""

# %%
# Write the session
# -----------------
# One subject, 8 training concepts x 2 exemplars shown once, 4 test concepts
# x 2 exemplars shown 6 times each, 48-pixel images. It takes about 10 s.
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mne
import numpy as np
from PIL import Image

from glimpse.streaming.recordings import open_recording
from glimpse.streaming.simulate import SimulationConfig, simulate_session

mne.set_log_level("error")
workdir = Path(tempfile.mkdtemp(prefix="glimpse-example-"))
config = SimulationConfig(modality="meg", seed=0, subjects=1, concepts=8, exemplars=2,
                          test_concepts=4, test_exemplars=2, test_repeats=6, image_size=48)
result = simulate_session(config, workdir / "sim", progress=False)
print(result.n_trials)
print(sorted(p.name for p in result.bids_root.iterdir()))

# %%
# The stimuli
# -----------
# Concepts are shape families in variants; exemplars vary colour, size,
# position, rotation, texture and background. Test concepts are never shown in
# training.
fig, axes = plt.subplots(2, 8, figsize=(8, 2.4))
for row, split in zip(axes, ("train", "test")):
    images = sorted((result.stimuli_dir / split).rglob("*.png"))[:8]
    for ax, image in zip(row, images):
        ax.imshow(Image.open(image))
        ax.set_title(image.parent.name, fontsize=6)
        ax.axis("off")
    row[0].text(-0.2, 0.5, split, transform=row[0].transAxes, ha="right", va="center")
fig.tight_layout()

# %%
# Read it back
# ------------
# :func:`glimpse.streaming.recordings.open_recording` reads any recording or
# BIDS dataset and finds its trials; here they come from the BIDS
# ``events.tsv``, which names each trial's stimulus file.
recording = open_recording(result.bids_root, subject="01")
print(recording.format, recording.system, f"{len(recording.ch_names)} channels at "
      f"{recording.sfreq:.0f} Hz, {recording.duration:.0f} s")
print(recording.trials[0])

# %%
# The evoked response
# -------------------
# Average every training and test trial with MNE, low-pass at 40 Hz. The
# configured peaks sit at 100 ms (early), 170 and 280 ms (late) and 600 ms
# (the offset response, 100 ms after the image goes).
raw = recording.raw.load_data().pick("mag").filter(None, 40.0)
shown = [t for t in recording.trials if t.split in ("train", "test")]
events = np.array([[t.sample + raw.first_samp, 0, 1] for t in shown])
epochs = mne.Epochs(raw, events, tmin=-0.2, tmax=0.8, baseline=(None, 0), preload=True)
evoked = epochs.average()
fig = evoked.plot(gfp=True, spatial_colors=True, show=False,
                  titles=f"MEG, {len(shown)} trials averaged")

# %%
# The simulator also wrote its own figure, computed from the written files
# (RMS over posterior sensors), in ``figures/evoked.png``.
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.imshow(Image.open(result.figure_path))
ax.axis("off")

# %%
shutil.rmtree(workdir)
