"""A FIF recording over 2 GB is written in parts (``_split-01_meg.fif``, ...): one recording.

The simulator writes such parts for sessions longer than about 40 minutes (MNE splits
FIF files at 2 GB); here the parts are made small with ``split_size``.
"""

from __future__ import annotations

import pickle

import mne
import mne_bids
import numpy as np

from glimpse.service.errors import Conflict
from glimpse.streaming.bids import list_bids_recordings
from glimpse.streaming.errors import InputError
from glimpse.streaming.recordings import open_recording

N_TIMES = 120_000  # 10 channels x 120 s at 1 kHz: 4.8 MB of float32, in 2 MB parts


def _split_dataset(root):
    info = mne.create_info([f"MEG{i:03d}" for i in range(10)], 1000.0, "mag")
    raw = mne.io.RawArray(np.random.default_rng(0).normal(size=(10, N_TIMES)) * 1e-12, info, verbose="error")
    raw.set_annotations(mne.Annotations([1.0, 60.0, 119.0], [0.5] * 3, ["exp"] * 3))
    bp = mne_bids.BIDSPath(subject="01", task="view", datatype="meg", root=root)
    written = mne_bids.write_raw_bids(raw, bp, allow_preload=True, format="FIF", verbose="error")
    whole = written.fpath
    whole.unlink()  # replaced by its parts, with mne-bids' sidecars kept
    raw.save(whole, split_size="2MB", split_naming="bids", verbose="error")
    parts = sorted(whole.parent.glob("*_split-*_meg.fif"))
    # scans.tsv lists every part, as mne-bids writes it for a split recording.
    scans = root / "sub-01" / "sub-01_scans.tsv"
    head, row = scans.read_text().splitlines()[:2]
    scans.write_text("\n".join([head] + [row.replace(whole.name, p.name) for p in parts]) + "\n")
    return parts


def test_a_split_fif_is_one_recording_named_by_its_first_part_and_read_whole(tmp_path):
    parts = _split_dataset(tmp_path)
    assert len(parts) >= 2 and parts[0].name == "sub-01_task-view_split-01_meg.fif"
    found = list_bids_recordings(tmp_path)
    assert [bp.fpath for bp in found] == [parts[0]]
    rec = open_recording(tmp_path)
    assert rec.raw.n_times == N_TIMES  # every part, not only the first
    assert len(rec.trials) == 3 and rec.trials[-1].sample == 119_000


def test_input_errors_survive_pickling_from_worker_processes():
    # A ProcessPoolExecutor returns a worker's exception pickled; InputError's three
    # parts must come back (an unpicklable error breaks the whole pool instead).
    for error in (InputError("a", "b", "c"), Conflict("x", "y", "z")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and back.fix == error.fix
