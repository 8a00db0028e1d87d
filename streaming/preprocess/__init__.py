"""The one preprocessing definition, shared by training (offline) and live decoding.

A :class:`PreprocessConfig` is plain data (it lives in a checkpoint's
``config.json``). It has two faces over one implementation:

* online: :class:`OnlinePreprocessor` takes chunks of any size (0, 1, 12, 4096
  samples...) and carries every filter's state between calls;
* offline: :func:`preprocess_raw` runs that same object over a whole recording,
  block by block, so training and serving cannot drift apart.

Chain, in order (every stage is causal, so the live numbers are the training numbers)::

    pick channels -> hold non-finite samples -> notch (input rate, IIR)
    -> anti-alias FIR + rational polyphase resampling (to ``sfreq``)
    -> Butterworth band-pass (output rate, IIR) -> robust scaling -> clamp

Why this order: line noise is notched before it can alias; the band-pass runs at
the output rate, where it is ~10x cheaper and its 0.1 Hz high-pass is far better
conditioned than at 1200 Hz.

Time alignment. Count input samples ``n = 0, 1, ...`` and output samples
``k = 0, 1, ...`` from the first sample after construction or :meth:`reset`, and
let ``t0`` be the time of input sample 0. Output ``k`` sits at time
``t0 + k / sfreq_out`` (input position ``k * down / up``); it depends on input
samples up to ``floor(k * down / up)`` only, and is emitted by the call that
delivers that sample; ``process(chunk, timestamps)`` returns that sample's LSL
timestamp for each output, so a window can carry the time of its last sample.
Its content lags by the anti-alias FIR's constant group delay
(:attr:`OnlinePreprocessor.group_delay`: ~61 ms for a 120 Hz output from any
faster input) plus the IIR filters' frequency-dependent delay
(:meth:`OnlinePreprocessor.group_delay_at`; 0.1-40 Hz band-pass: ~8 ms at 10 Hz).
"""


from .config import PreprocessConfig
from .offline import fit_scaler, preprocess_raw
from .online import OnlinePreprocessor

__all__ = ["OnlinePreprocessor", "PreprocessConfig", "fit_scaler", "preprocess_raw"]
