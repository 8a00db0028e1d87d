"""
Train and evaluate a decoder
============================

A decoder maps a 250 ms window of brain signal to an image embedding; it is
judged by retrieval: among the test images, is the one that was shown in the
top 5? Test images come from concepts never seen in training.

This example trains a small brain encoder (the real architecture at a toy size,
for seconds of CPU time) on the small simulated session, then evaluates it as
``glimpse evaluate`` does. The command-line equivalent, at the default size::

    glimpse train sim --out model
    glimpse evaluate model sim --json metrics.json
"""

# %%
# Simulate and load a session
# ---------------------------
# :func:`glimpse.models.data.load_session` reads every recording of a dataset,
# preprocesses it (the same causal filters the live path runs) and fits the
# robust scaler on the training trials.
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mne
import torch
from PIL import Image

from glimpse.models.data import load_session
from glimpse.models.evaluate import evaluate, format_report
from glimpse.models.train import TrainConfig, train
from glimpse.streaming.simulate import SimulationConfig, simulate_session

mne.set_log_level("error")
torch.set_num_threads(1)  # tiny models: a second thread costs more than it saves
workdir = Path(tempfile.mkdtemp(prefix="glimpse-example-"))
config = SimulationConfig(modality="meg", seed=0, subjects=1, concepts=8, exemplars=2,
                          test_concepts=4, test_exemplars=2, test_repeats=6, image_size=48)
root = simulate_session(config, workdir / "sim", progress=False).bids_root
session = load_session(root, progress=False)
print(session.summary())

# %%
# Train
# -----
# :class:`glimpse.models.train.TrainConfig` holds every choice; it is stored in
# the checkpoint. A quarter of the training concepts are held out for early
# stopping and for choosing the window offset that is reported. The default
# ``glimpse train`` uses a larger model and lets early stopping end training
# (10 epochs of patience, at most 100).
train_config = TrainConfig(hidden=32, spatial_channels=32, n_blocks=2, epochs=10, batch_size=16,
                           val_concept_fraction=0.25, cache_dir=str(workdir / "cache"))
result = train(session, train_config, workdir / "model", progress=False)
print(sorted(p.name for p in result.checkpoint_dir.iterdir()))
print({k: result.metrics[k] for k in ("epochs_run", "n_val_concepts", "n_val_images")})

# %%
# Training curves and the confidence's reliability, as ``train`` wrote them:
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, name in zip(axes, ("training.png", "reliability.png")):
    ax.imshow(Image.open(result.checkpoint_dir / "figures" / name))
    ax.axis("off")
fig.tight_layout()

# %%
# Evaluate
# --------
# Retrieval among the 8 test images, single-trial and with the 6 repeats of
# each image averaged, a time-resolved curve, and the simulator's noise-free
# ceiling. Expect figures at chance, the ceiling included: 16 training trials
# of 8 concepts are far too few to generalise to unseen concepts (the default
# session has 28 training concepts x 10 images per subject, THINGS-MEG ~22,000
# training trials). This example shows the path, not the accuracy:
# :ref:`accuracy` has the default decoder's figures.
metrics = evaluate(result.checkpoint_dir, session, cache_dir=workdir / "cache",
                   out_dir=workdir / "report")
print(format_report(metrics))

# %%
# The time-resolved curve: top-5 of windows ending at each offset after onset.
fig, ax = plt.subplots(figsize=(8, 4))
ax.imshow(Image.open(workdir / "report" / "curve.png"))
ax.axis("off")

# %%
shutil.rmtree(workdir)
