"""The marker bridge: a presentation's onsets onto ``<stream>-markers``, on the LSL clock.

One pylsl outlet per stream name, made by :func:`glimpse.streaming.outlet.markers_info`
(type "Markers", irregular rate, one string channel, named ``<stream>-markers``),
shared by every presentation for that stream and withdrawn by
:meth:`MarkerBridge.close`. Its source id is ``<stream>-presentation-markers``: not
``<stream>-markers``, which is what a replay or simulator publishing ``<stream>`` with
source id ``<stream>`` gives its own markers stream; two outlets with one source id
would be one stream to an inlet that recovers by source id. An outlet is made when a
presentation is created, so a recorder or a simulated person can subscribe before the
first image.

Each marker is the JSON string replay sends (ARCHITECTURE.md, contract 7),
``{"stim_file", "concept", "trial_type"}``, plus ``presentation``, ``trial`` and
``stim_id``; it is pushed with an explicit timestamp: the image's onset mapped to the
LSL clock, not the time it reached the service. When a run stops early, one more
marker says so: ``{"stim_file": null, "concept": null, "trial_type": "invalid",
"presentation", "trials", "reason"}`` at the moment it stopped, so that what is
recorded knows those trials were touched (and a viewer shows no true stimulus from
then on).
"""

from __future__ import annotations

import json
import logging
import threading

import pylsl

from glimpse.streaming.outlet import markers_info

__all__ = ["MarkerBridge"]

logger = logging.getLogger("glimpse.service.present.bridge")


class MarkerBridge:
    """``<stream>-markers`` outlets by stream name; thread-safe."""

    def __init__(self):
        self._outlets: dict[str, pylsl.StreamOutlet] = {}
        self._lock = threading.Lock()
        self.n_published = 0

    def open(self, stream: str) -> str:
        """Make (or reuse) the outlet of ``stream``; returns the markers stream's name."""
        with self._lock:
            if stream not in self._outlets:
                info = markers_info(stream, f"{stream}-presentation")
                self._outlets[stream] = pylsl.StreamOutlet(info)
                logger.info("publishing presentation markers on %s-markers", stream)
        return f"{stream}-markers"

    def publish(self, stream: str, marker: dict, t_lsl: float) -> str:
        """Push ``marker`` (JSON) on ``<stream>-markers`` stamped ``t_lsl``; returns the text."""
        text = json.dumps(marker, ensure_ascii=False, allow_nan=False)
        self.open(stream)
        with self._lock:
            self._outlets[stream].push_sample([text], float(t_lsl))
            self.n_published += 1
        return text

    def streams(self) -> list[str]:
        with self._lock:
            return [f"{s}-markers" for s in self._outlets]

    def close(self) -> None:
        """Withdraw every outlet (liblsl closes an outlet when it is freed)."""
        with self._lock:
            self._outlets.clear()
