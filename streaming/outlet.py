"""An LSL signal outlet with a SAMPLE_INDEX channel and its markers stream beside it.

``glimpse replay``, the latency bench and the tests' synthetic outlet publish the
same pair: a float32 signal stream whose channels declare label, type and SI unit
in ``desc/channels/channel/{label,type,unit}`` (what :func:`glimpse.streaming.lsl.
channel_info` reads), optionally with a ``SAMPLE_INDEX`` channel (type "misc",
unit "none") holding each sample's running index, so that a consumer can prove
that no sample was dropped or duplicated (mne-lsl's player habit); and
``<name>-markers`` (type "Markers", irregular rate, one string channel, source id
``<source_id>-markers``). float32 holds the index exactly up to 2**24 samples:
3.9 h at 1200 Hz.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import mne
import numpy as np
import pylsl
from mne.io.constants import FIFF

__all__ = ["INDEX_CHANNEL", "SignalOutlet", "content_type", "markers_info", "si_units",
           "signal_info"]

INDEX_CHANNEL = "SAMPLE_INDEX"
# FIFF unit codes -> SI symbols; channels with no physical unit (stim, counters) get "none"
# (MNE says "NA"; "none" is what LSL consumers, glimpse's acquisition included, know).
_UNITS = {FIFF.FIFF_UNIT_V: "V", FIFF.FIFF_UNIT_T: "T", FIFF.FIFF_UNIT_T_M: "T/m",
          FIFF.FIFF_UNIT_MOL: "mol", FIFF.FIFF_UNIT_CEL: "C", FIFF.FIFF_UNIT_S: "S",
          FIFF.FIFF_UNIT_SEC: "s", FIFF.FIFF_UNIT_PX: "px"}


def si_units(info: mne.Info) -> list[str]:
    """Each channel's SI unit symbol, as MNE stores the data (V, T, T/m; "none")."""
    return [_UNITS.get(int(ch["unit"]), "none") for ch in info["chs"]]


def content_type(ch_types: Sequence[str]) -> str:
    """LSL's content type: MEG where there are MEG sensors, else EEG, else the first type."""
    if {"mag", "grad"} & set(ch_types):
        return "MEG"
    if "eeg" in ch_types:
        return "EEG"
    return ch_types[0].upper()


def signal_info(name: str, source_id: str, sfreq: float, ch_names: Sequence[str],
                ch_types: Sequence[str], units: Sequence[str], *,
                index: Literal["first", "last"] | None = None, stream_type: str | None = None,
                channel_format: int | str = pylsl.cf_float32) -> pylsl.StreamInfo:
    """The signal stream's info: every channel with label, type (MNE's names) and unit.

    ``index`` adds the SAMPLE_INDEX channel before ("first": mne-lsl's player) or
    after ("last": the recording's channels keep their positions) the others.
    ``stream_type`` defaults to :func:`content_type` of ``ch_types``. Add stream
    metadata to ``info.desc()`` before the outlet is made.
    """
    if not (len(ch_names) == len(ch_types) == len(units)):
        raise ValueError(f"signal_info: {len(ch_names)} ch_names, {len(ch_types)} ch_types "
                         f"and {len(units)} units; give one of each per channel")
    labels, types, units = list(ch_names), list(ch_types), list(units)
    if index == "first":
        labels, types, units = [INDEX_CHANNEL, *labels], ["misc", *types], ["none", *units]
    elif index == "last":
        labels, types, units = [*labels, INDEX_CHANNEL], [*types, "misc"], [*units, "none"]
    elif index is not None:
        raise ValueError(f"signal_info: index is 'first', 'last' or None, not {index!r}")
    info = pylsl.StreamInfo(name, stream_type or content_type(ch_types), len(labels), sfreq,
                            channel_format, source_id)
    info.set_channel_labels(labels)
    info.set_channel_types(types)
    info.set_channel_units(units)
    return info


def markers_info(name: str, source_id: str) -> pylsl.StreamInfo:
    """``<name>-markers``: irregular rate, one string channel, source id ``<source_id>-markers``."""
    return pylsl.StreamInfo(f"{name}-markers", "Markers", 1, pylsl.IRREGULAR_RATE,
                            pylsl.cf_string, f"{source_id}-markers")


class SignalOutlet:
    """The signal outlet of ``info`` and, with ``markers``, its ``<name>-markers`` outlet.

    ``index`` says where ``info`` has the SAMPLE_INDEX channel, as given to
    :func:`signal_info` ("first", "last" or None); :meth:`push` fills it. It is
    said, not guessed from the labels: a recorded session may carry a channel of
    that name as data. The streams are visible once the object exists;
    :meth:`close` (or freeing it) withdraws them.
    """

    def __init__(self, info: pylsl.StreamInfo, *, index: Literal["first", "last"] | None = None,
                 markers: bool = True, chunk_size: int = 0, max_buffered: int = 360):
        if index not in ("first", "last", None):
            raise ValueError(f"SignalOutlet: index is 'first', 'last' or None, not {index!r}")
        self.n_chans = info.channel_count()
        self.index_at = {"first": 0, "last": self.n_chans - 1, None: None}[index]
        labels = info.get_channel_labels() or []
        if self.index_at is not None and labels[self.index_at:][:1] != [INDEX_CHANNEL]:
            raise ValueError(f"SignalOutlet: index={index!r} but that channel of the stream "
                             f"info is not {INDEX_CHANNEL}; build the info with "
                             f"`signal_info(..., index={index!r})`")
        self.signal = pylsl.StreamOutlet(info, chunk_size, max_buffered)
        self.markers = pylsl.StreamOutlet(markers_info(info.name(), info.source_id())) \
            if markers else None

    def push(self, data: np.ndarray, stamps: Sequence[float], first_index: int = 0) -> None:
        """Push ``(n_samples, n_data_chans)`` samples with one LSL timestamp each; the
        SAMPLE_INDEX channel, if any, counts from ``first_index``."""
        if self.index_at is not None:
            n = len(data)
            out = np.empty((n, self.n_chans), np.float32)
            data_cols = slice(1, None) if self.index_at == 0 else slice(0, -1)
            out[:, data_cols] = data
            out[:, self.index_at] = np.arange(first_index, first_index + n)
            data = out
        self.signal.push_chunk(data, np.asarray(stamps, np.float64).tolist())

    def push_marker(self, text: str, stamp: float) -> None:
        """One marker (a JSON string by glimpse's contract) at LSL time ``stamp``."""
        if self.markers is None:
            raise RuntimeError("SignalOutlet.push_marker: made without a markers stream; "
                               "make it with `SignalOutlet(info, markers=True)`")
        self.markers.push_sample([text], float(stamp))

    def have_consumers(self) -> bool:
        """Whether an inlet has opened the signal stream."""
        return self.signal.have_consumers()

    def close(self) -> None:
        """Withdraw both streams (liblsl closes an outlet when it is freed)."""
        self.signal = self.markers = None
