"""
Read your own data
==================

glimpse reads a recording and its trials (onset, stimulus file, concept,
split) from any format MNE reads and from BIDS datasets. This example reads a
BIDS dataset (a simulated one, since nothing is downloaded here), shows how
the ``events.tsv`` columns are named when a dataset differs from the defaults,
and how THINGS-MEG and THINGS-EEG2 roots are read. :doc:`/guide/data` has
every format.

From the command line, ``glimpse info`` shows what glimpse finds::

    glimpse info sim --subject 01
"""

# %%
# A BIDS dataset
# --------------
# :func:`glimpse.streaming.recordings.open_recording` takes a BIDS root and
# a selection (``subject``, ``session``, ``task``, ``run``), or the path of one
# recording inside the dataset.
import json
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mne
import pandas as pd

from glimpse.streaming.recordings import EventColumns, describe, open_recording
from glimpse.streaming.simulate import SimulationConfig, simulate_session

mne.set_log_level("error")
pd.set_option("display.width", 120)
pd.set_option("display.max_columns", 12)
workdir = Path(tempfile.mkdtemp(prefix="glimpse-example-"))
config = SimulationConfig(modality="meg", seed=0, subjects=1, concepts=8, exemplars=2,
                          test_concepts=4, test_exemplars=2, test_repeats=6, image_size=48)
root = simulate_session(config, workdir / "sim", progress=False).bids_root

recording = open_recording(root, subject="01")
print(recording.format, "|", recording.path.relative_to(root), "|",
      f"{len(recording.trials)} trials from {recording.trial_source}")

# %%
# What ``glimpse info --json`` prints (a part of it): the system, channel
# types, rate, duration and the trials found.
info = describe(root, subject="01", n_listed=1)
print(json.dumps({k: info[k] for k in ("format", "system", "n_chans", "channel_types",
                                       "sfreq", "duration", "trials")}, indent=1))

# %%
# The trials
# ----------
# In a BIDS dataset, trials come from ``events.tsv``: by default the stimulus
# is the ``image_path`` column (relative to the BIDS root), the concept the
# ``concept`` column, and the split comes from ``trial_type`` (``exp`` →
# train, ``test`` → test, ``catch`` → catch).
events_tsv = next(root.rglob("*_events.tsv"))
print(pd.read_csv(events_tsv, sep="\t").head())

trials = pd.DataFrame([{"onset": t.onset, "concept": t.concept, "split": t.split,
                        "stimulus": t.stim_file.name if t.stim_file else None}
                       for t in recording.trials])
print(trials.head())
print(trials.split.value_counts())

# %%
# Onsets of each split over the recording:
fig, ax = plt.subplots(figsize=(8, 1.8))
for row, (split, group) in enumerate(trials.groupby("split")):
    ax.plot(group.onset, [row] * len(group), "|", markersize=12, label=split)
ax.set(yticks=range(trials.split.nunique()), yticklabels=sorted(trials.split.unique()),
       xlabel="time (s)", ylim=(-0.7, trials.split.nunique() - 0.3))
fig.tight_layout()

# %%
# A dataset with other column names
# ---------------------------------
# :class:`glimpse.streaming.recordings.EventColumns` names the columns. Here
# the stimulus column is renamed ``stim_file`` and the split labels are
# ``train`` / ``test`` / ``oddball``, as another lab might write them.
table = pd.read_csv(events_tsv, sep="\t")
table = table.rename(columns={"image_path": "stim_file"})
table["trial_type"] = table["trial_type"].map({"exp": "train", "test": "test", "catch": "oddball"})
table.to_csv(events_tsv, sep="\t", index=False, na_rep="n/a")

columns = EventColumns(stimulus="stim_file",
                       splits={"train": "train", "test": "test", "oddball": "catch"})
other = open_recording(root, subject="01", events=columns)
print(pd.Series([t.split for t in other.trials]).value_counts())

# %%
# THINGS-EEG2
# -----------
# THINGS-EEG2 (Gifford et al. 2022) is published as preprocessed epochs (17
# channels at 100 Hz), not as a raw recording. Point glimpse at the dataset
# root laid out as published::
#
#     ROOT/
#       Preprocessed_data_250Hz/sub-01/preprocessed_eeg_training.npy
#       Preprocessed_data_250Hz/sub-01/preprocessed_eeg_test.npy
#       image_set/image_metadata.npy
#       image_set/training_images/<concept>/...
#       image_set/test_images/<concept>/...
#
# and read it with::
#
#     from glimpse.models.data import load_session
#     from glimpse.streaming.recordings import read_things_eeg2
#
#     eeg2 = read_things_eeg2(ROOT, subject=1)        # the epochs and their images
#     session = load_session(ROOT, subjects=["01"])   # preprocessed, ready to train
#
# or ``glimpse train ROOT --out model``. These ``.npy`` files are pickled
# NumPy dictionaries, and unpickling runs code: glimpse loads them only from a
# path you name, so only point it at files from the dataset's publishers.
#
# THINGS-MEG
# ----------
# THINGS-MEG (OpenNeuro ds004212) is a BIDS dataset whose ``events.tsv`` has
# the THINGS image number (``value``) and no image path; the paths are in
# ``sourcedata/sample_attributes_P{n}.csv``, and the images come from the THINGS
# image database, downloaded separately. :ref:`things-meg` says how to point
# glimpse at both.

# %%
shutil.rmtree(workdir)
