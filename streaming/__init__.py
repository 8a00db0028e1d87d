"""Brain signals in time: recordings, the simulator, preprocessing, LSL, windows.

May import numpy, scipy, mne, mne-lsl, pylsl; never ``models`` or ``service``.
"""

import logging

from .errors import InputError

logger = logging.getLogger("glimpse")

__all__ = ["InputError", "logger"]
