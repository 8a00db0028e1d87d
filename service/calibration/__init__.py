"""Calibration: a new person from nothing to live decoding.

``POST /api/calibrations`` (:mod:`glimpse.service.api.calibrations`) or ``glimpse
calibrate`` (:mod:`glimpse.service.cli_calibrate`): pick a base checkpoint and a stream;
the person watches ``/present`` (calibration images, trial_type "exp", with held-out
images, "test", mixed in) while a live session records the stream and its markers
into a session folder; the base is then adapted to the person in a process of its own
(:mod:`.adapt`: a new subject layer, optionally the last layers, from the base
subjects' mean; :func:`glimpse.models.new_subject.adapt_to_subject`), evaluated on
the held-out images before and after, and the live session is hot-swapped to the
adapted checkpoint. :mod:`.flow` holds the states, :mod:`.manager` the checks made
before anything starts, :mod:`.trials` which recorded trials count.
"""

from .flow import Calibration
from .manager import CalibrationManager
from .request import MIN_TRIALS, CalibrationRequest

__all__ = ["MIN_TRIALS", "Calibration", "CalibrationManager", "CalibrationRequest"]
