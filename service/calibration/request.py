"""What a calibration is asked for, and the checks made before anything starts.

:class:`CalibrationRequest` is the body of ``POST /api/calibrations`` (JSON, unknown
fields refused). :func:`planned_trials` turns ``minutes`` into a number of
calibration trials at the presentation's pace and refuses too few to adapt;
:func:`check_base` refuses a base checkpoint that is not a multi-subject brain
encoder; :func:`check_stream` refuses a base of another modality or channel set than
the stream (its channel labels, read from LSL). Each is a 400 naming both sides.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from glimpse.streaming.channels import listing

from ..errors import InputError
from ..present import PresentationRequest

__all__ = ["FLOW_FIELDS", "MIN_TRIALS", "CalibrationRequest", "StreamRef", "check_base", "check_stream",
           "planned_trials", "presentation_request", "stream_modality"]

#: As :data:`glimpse.models.new_subject.MIN_TRIALS` (not imported: that module imports torch).
MIN_TRIALS = 30
#: Presentation fields the flow sets itself; ``presentation`` may not name them.
FLOW_FIELDS = ("stream", "folder", "gallery", "images", "max_images", "repeats", "n_trials", "trial_type",
               "test_folder", "test_repeats", "test_max_images", "first_trial")
WHY_MIN = ("fewer leave the 15 % of concepts held out to pick the best epoch a handful of trials, "
           "and the epoch is then chosen by noise")

Ref = Annotated[str, Field(min_length=1, max_length=1024)]


class StreamRef(BaseModel):
    """An LSL stream by name and/or source id."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    source_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class CalibrationRequest(BaseModel):
    """``POST /api/calibrations``: base checkpoint, stream, images, length, the new person.

    ``images``: calibration images (a folder inside the data roots, trial_type "exp");
    ``test_images``: held-out images (trial_type "test", ``test_repeats`` times each),
    on which the unadapted and the adapted model are compared. ``session``: a running
    live session on the stream (recording) to hot-swap when done; without one the flow
    starts one with the base checkpoint and ``gallery`` (default: the first gallery of
    the base's embedder). ``presentation``: timing and display fields of
    :class:`~glimpse.service.present.PresentationRequest` (image_ms, fixation_ms, ...).
    """

    model_config = ConfigDict(extra="forbid")

    base: Ref = Field(description="a brain_encoder checkpoint id (GET /api/checkpoints) or path")
    stream: StreamRef | Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="the person's LSL stream (default: the session's)")
    images: Ref = Field(description="folder of calibration images inside the data roots")
    test_images: Ref | None = Field(None, description="folder of held-out images inside the data roots")
    minutes: float = Field(2.0, gt=0, le=120, description="length of the calibration images' part")
    test_repeats: int = Field(2, ge=1, le=50)
    test_max_images: int | None = Field(None, ge=1, le=5000)
    subject: str = Field("new", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
                         description="the new person's subject id in the adapted checkpoint")
    session: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    gallery: Ref | None = None
    layers: Literal["subject", "subject+head", "all"] = "all"
    epochs: int = Field(40, ge=1, le=500)
    min_trials: int = Field(MIN_TRIALS, ge=2, le=100_000,
                            description=f"calibration trials needed to adapt (default {MIN_TRIALS}; "
                            "lower it knowingly)")
    swap: bool = Field(True, description="hot-swap the live session to the adapted checkpoint when ready "
                       "(unless it decodes the held-out images clearly worse: see swap_if_worse)")
    swap_if_worse: bool = Field(False, description="swap even when held-out top-5 after is more than one "
                                "standard error below before")
    out: Ref | None = Field(None, description="the adapted checkpoint's folder inside the data roots "
                            "(default: SESSIONS/calibrations/<stamp>-<id>/<base>-<subject>)")
    presentation: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> CalibrationRequest:
        if self.stream is None and self.session is None:
            raise ValueError("a stream (its LSL name) or the session recording it")
        if isinstance(self.stream, StreamRef) and not (self.stream.name or self.stream.source_id):
            raise ValueError('a stream as a name or {"name", "source_id"}')
        taken = sorted(set(self.presentation) & set(FLOW_FIELDS))
        if taken:
            raise ValueError(f"presentation fields other than {', '.join(taken)} (the calibration sets them)")
        return self

    def stream_pair(self) -> tuple[str | None, str | None]:
        if isinstance(self.stream, StreamRef):
            return self.stream.name, self.stream.source_id
        return self.stream, None


def presentation_request(request: CalibrationRequest, stream: str, n_trials: int,
                         first_trial: int = 0) -> PresentationRequest:
    """The design of a calibration: ``n_trials`` of its images and its held-out images."""
    fields = {"catch_rate": 0.05, **request.presentation, "stream": stream, "folder": request.images,
              "n_trials": n_trials, "first_trial": first_trial}
    if request.test_images is not None:
        fields.update(test_folder=request.test_images, test_repeats=request.test_repeats,
                      test_max_images=request.test_max_images)
    try:
        return PresentationRequest(**fields)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'presentation'}: {e['msg']}"
                             for e in err.errors())
        raise InputError("presentation fields of /api/presentations (image_ms, fixation_ms, jitter_ms, "
                         "lead_in_ms, catch_rate, photodiode, mix, seed, ...)", problems,
                         "fix those fields of \"presentation\"") from None


def planned_trials(request: CalibrationRequest) -> int:
    """Calibration trials in ``minutes`` at the presentation's pace; InputError below the minimum."""
    timing = PresentationRequest.model_fields
    image_ms = float(request.presentation.get("image_ms", timing["image_ms"].default))
    fixation_ms = float(request.presentation.get("fixation_ms", timing["fixation_ms"].default))
    trial_ms = max(image_ms + fixation_ms, 1.0)
    n = int(request.minutes * 60_000 // trial_ms)
    if n < request.min_trials:
        need = math.ceil(request.min_trials * trial_ms / 600) / 100
        raise InputError(f"at least {request.min_trials} calibration trials to adapt to a new person "
                         f"({WHY_MIN})", f"{n} trial(s): minutes={request.minutes:g} at {trial_ms:g} ms "
                         "a trial (image + fixation)", f"set minutes to {need:g} or more")
    return n


def check_base(entry: dict[str, Any], config: dict[str, Any]) -> None:
    """A multi-subject brain encoder (adaptation learns a new subject layer)."""
    model = config.get("model", {}).get("name")
    if model != "brain_encoder":
        raise InputError("a brain_encoder base checkpoint (adaptation learns a new subject layer)",
                         f"{entry['id']} ({entry['path']}), a {model} checkpoint",
                         "pick a brain_encoder checkpoint (GET /api/checkpoints: model), or train one "
                         "with `glimpse train --model brain_encoder`")


def stream_modality(types: list[str], stream_type: str) -> str:
    """meg, eeg or the stream's declared type, from its channel types."""
    kinds = {t.lower() for t in types}
    if kinds & {"mag", "grad", "meg", "ref_meg"}:
        return "meg"
    if "eeg" in kinds:
        return "eeg"
    return stream_type.lower() or "unknown"


def check_stream(entry: dict[str, Any], config: dict[str, Any], labels: list[str] | None,
                 types: list[str], stream: str, stream_type: str) -> None:
    """The base's channels must all be in the stream (matched by label, as decoding matches them)."""
    names = list(config["channels"]["names"])
    kind = (entry.get("modality") or "").upper()
    base = (f"base {entry['id']}: {'an ' + kind if kind in ('EEG', 'MEG') else 'a'} checkpoint of {len(names)} "
            f"channels ({listing(names, 3)})")
    fix = ("pick a base checkpoint trained on this modality and montage (GET /api/checkpoints lists each "
           "one's modality and n_chans), or calibrate on the stream of the montage the base knows")
    if labels is None:
        raise InputError("a stream that declares its channel labels, to match the base's channels",
                         f"{stream} without labels", "declare them in the outlet")
    have = set(labels)
    missing = [c for c in names if c not in have]
    if missing:
        modality = stream_modality(types, stream_type).upper()
        raise InputError(f"a base checkpoint of the stream's modality and channel set ({stream}: {modality}, "
                         f"{len(labels)} channels: {listing(labels, 3)})",
                         f"{base}, {len(missing)} of them not in the stream ({listing(missing, 4)})", fix)
