"""The shared outlet: channel descriptions as glimpse's reader sees them, the SAMPLE_INDEX
channel first or last, markers beside the signal, over LSL on loopback."""

from __future__ import annotations

import uuid

import mne
import numpy as np
import pylsl
import pytest

from glimpse.streaming.lsl import channel_info, unit_scale
from glimpse.streaming.outlet import (INDEX_CHANNEL, SignalOutlet, content_type, markers_info,
                                      si_units, signal_info)

# A resolve that never succeeds or a pull that never gets data must fail, not hang CI.
pytestmark = pytest.mark.timeout(60)


def _uid() -> str:
    return f"outlet-test-{uuid.uuid4().hex[:12]}"


def _inlet(source_id: str) -> pylsl.StreamInlet:
    infos = pylsl.resolve_byprop("source_id", source_id, timeout=20)
    assert infos, f"no LSL stream with source_id {source_id}"
    inlet = pylsl.StreamInlet(infos[0], max_buflen=60, recover=False)
    inlet.open_stream(timeout=10)
    return inlet


def test_si_units_and_content_type_follow_mne():
    info = mne.create_info(["MEG 0111", "MEG 0112", "EEG 001", "STI 014"], 1000.0,
                           ["mag", "grad", "eeg", "stim"])
    assert si_units(info) == ["T", "T/m", "V", "V"]  # MNE gives a stim channel volts
    with info._unlock():
        info["chs"][3]["unit"] = mne.io.constants.FIFF.FIFF_UNIT_NONE  # a counter
    assert si_units(info)[3] == "none"
    assert content_type(["mag", "grad", "eeg"]) == "MEG"
    assert content_type(["stim", "eeg"]) == "EEG"
    assert content_type(["ecog"]) == "ECOG"


@pytest.mark.parametrize(("index", "labels"), [
    (None, ["Fz", "Cz"]),
    ("first", [INDEX_CHANNEL, "Fz", "Cz"]),
    ("last", ["Fz", "Cz", INDEX_CHANNEL]),
])
def test_signal_info_is_read_back_by_the_acquisition_reader(index, labels):
    info = signal_info("s", "sid", 250.0, ["Fz", "Cz"], ["eeg", "eeg"], ["V", "uV"], index=index)
    got_labels, types, units = channel_info(info)
    assert got_labels == labels and info.channel_count() == len(labels)
    assert info.type() == "EEG" and info.nominal_srate() == 250.0
    assert info.channel_format() == pylsl.cf_float32
    data = {label: (kind, unit) for label, kind, unit in zip(got_labels, types, units)}
    assert data["Fz"] == ("eeg", "V") and data["Cz"] == ("eeg", "uV")
    assert unit_scale(data["Cz"][1]) == 1e-6
    if index:
        assert data[INDEX_CHANNEL] == ("misc", "none") and unit_scale("none") == 1.0


def test_bad_arguments_say_what_to_give():
    with pytest.raises(ValueError, match="one of each per channel"):
        signal_info("s", "sid", 250.0, ["Fz", "Cz"], ["eeg"], ["V", "V"])
    with pytest.raises(ValueError, match="'first', 'last' or None"):
        signal_info("s", "sid", 250.0, ["Fz"], ["eeg"], ["V"], index="middle")
    with pytest.raises(ValueError, match="signal_info"):  # info without the index channel
        SignalOutlet(signal_info("s", _uid(), 250.0, ["Fz"], ["eeg"], ["V"]), index="last")
    outlet = SignalOutlet(signal_info("s", _uid(), 250.0, ["Fz"], ["eeg"], ["V"]), markers=False)
    with pytest.raises(RuntimeError, match="markers=True"):
        outlet.push_marker("{}", 0.0)
    outlet.close()


def test_markers_info_names_the_pair():
    info = markers_info("meg", "meg-1234")
    assert (info.name(), info.type(), info.source_id()) == ("meg-markers", "Markers",
                                                             "meg-1234-markers")
    assert info.nominal_srate() == pylsl.IRREGULAR_RATE
    assert info.channel_format() == pylsl.cf_string and info.channel_count() == 1


@pytest.mark.parametrize("index", ["first", "last", None])
def test_push_fills_the_index_and_keeps_data_and_stamps(index):
    sid = _uid()
    # "SAMPLE_INDEX" as a data channel (a recorded session replayed): with index=None it
    # is data, never overwritten.
    names = ["Fz", "Cz", INDEX_CHANNEL] if index is None else ["Fz", "Cz"]
    outlet = SignalOutlet(signal_info(sid, sid, 100.0, names, ["eeg", "eeg", "misc"][:len(names)],
                                      ["V", "V", "none"][:len(names)], index=index),
                          index=index)
    markers, inlet = _inlet(f"{sid}-markers"), _inlet(sid)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((40, len(names))).astype(np.float32)
    stamps = 1000.0 + np.arange(40) / 100.0
    outlet.push(data[:25], stamps[:25], first_index=7)
    outlet.push(data[25:], stamps[25:], first_index=32)
    outlet.push_marker('{"stim_file": "a.png"}', stamps[30])
    got, ts = [], []
    while (left := 40 - sum(map(len, ts))) > 0:  # pull_chunk waits for all it may take
        chunk, t = inlet.pull_chunk(timeout=1.0, max_samples=left, as_numpy=True)
        got.append(chunk.copy())
        ts.append(t.copy())
    got, ts = np.concatenate(got), np.concatenate(ts)
    marker, t_marker = markers.pull_sample(timeout=5.0)
    outlet.close()
    np.testing.assert_allclose(ts, stamps, atol=1e-9)
    assert marker == ['{"stim_file": "a.png"}'] and t_marker == pytest.approx(stamps[30], abs=1e-9)
    if index is None:
        np.testing.assert_array_equal(got, data)
        return
    col = 0 if index == "first" else -1
    np.testing.assert_array_equal(got[:, col], np.arange(7, 47))
    np.testing.assert_array_equal(np.delete(got, col, axis=1), data)
