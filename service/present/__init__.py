"""Stimulus presentation in the browser, with its markers on the LSL clock.

``/present`` (``web/present.html``) shows a :class:`~.design.Design` full screen,
frame by frame; the service (:mod:`glimpse.service.api.present`) keeps each
presentation's design and per-trial log (:mod:`.log`) and publishes every image's
onset on ``<stream>-markers`` (:mod:`.bridge`), mapped from the browser's clock to
the LSL clock by an NTP-style offset the page estimates over the WebSocket.
"""

from .bridge import MarkerBridge
from .design import Design, PresentationRequest, build_design
from .log import read_presentation
from .presentation import Presentation, PresentationManager
from .timing import SYNC_WARN_MS

__all__ = ["SYNC_WARN_MS", "Design", "MarkerBridge", "Presentation", "PresentationManager",
           "PresentationRequest", "build_design", "read_presentation"]
