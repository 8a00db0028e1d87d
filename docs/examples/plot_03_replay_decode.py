"""
Replay a recording and decode it live
=====================================

The live path without an amplifier: a recording is replayed as an LSL stream
(with its stimuli on a markers stream), and ``glimpse decode``'s code pulls
it, cuts a 250 ms window every 50 ms, decodes each window and retrieves the
top 5 images of a gallery, recording the session as it goes. Everything runs
on the loopback interface of this machine. From the command line, in two
terminals::

    glimpse replay sim/sub-01/meg/sub-01_task-things_meg.fif --name meg
    glimpse decode --stream meg --checkpoint model --gallery gallery --duration 20

The decoder here is a ridge regression fitted in seconds on the small
simulated session, so the decoded images are near chance: this example shows
the path and what it measures, not accuracy (:doc:`/guide/benchmarks`).
"""

# %%
# A session, a decoder and a gallery
# ----------------------------------
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import matplotlib.pyplot as plt
import mne
import numpy as np

from glimpse.models.data import load_session
from glimpse.models.embedders import load_embedder
from glimpse.models.gallery import build_gallery
from glimpse.models.train import TrainConfig, train
from glimpse.service.decode import run_decode
from glimpse.streaming.replay import Replay
from glimpse.streaming.simulate import SimulationConfig, simulate_session

mne.set_log_level("error")
workdir = Path(tempfile.mkdtemp(prefix="glimpse-example-"))
config = SimulationConfig(modality="meg", seed=0, subjects=1, concepts=8, exemplars=2,
                          test_concepts=4, test_exemplars=2, test_repeats=6, image_size=48)
sim = simulate_session(config, workdir / "sim", progress=False)
root = sim.bids_root
cache = workdir / "cache"
model = train(load_session(root, progress=False),
              TrainConfig(model="ridge", ridge_draws=1, presence_draws=1, cache_dir=str(cache)),
              workdir / "model", progress=False).checkpoint_dir
# The candidates: the test images, embedded as the checkpoint's embedder does.
gallery = workdir / "gallery"
build_gallery(sorted((root / "stimuli" / "test").rglob("*.png")), load_embedder("handcrafted"),
              root=root, cache_dir=cache, progress=False).save(gallery)

# %%
# Replay and decode
# -----------------
# :class:`glimpse.streaming.replay.Replay` streams the recording from a thread
# of this process, here 4 times faster than real time; a unique stream name
# keeps other replays on the network out.
# :func:`glimpse.service.decode.run_decode` decodes it for 8 s, prints a line
# every 2 s and records the session.
name = f"example-{uuid.uuid4().hex[:8]}"
with Replay(sim.data_files["01"], name=name, speed=4):
    summary = run_decode([name], model, gallery, record=workdir / "session", duration=8.0,
                         interval=2.0, resolve_timeout=30.0)

# %%
# What was recorded
# -----------------
# The session folder holds the raw samples with their LSL timestamps, the
# markers, every decoded frame and the summary; ``glimpse replay SESSION``
# replays it.
session = workdir / "session"
print(sorted(p.name for p in session.iterdir()))
frames = [json.loads(line) for line in (session / "frames.jsonl").read_text().splitlines()]
last = frames[-1]
print({"seq": last["seq"], "confidence": last["confidence"],
       "latency_ms": {k: v and round(v, 2) for k, v in last["latency_ms"].items()},
       "top-3": [(hit["id"], round(hit["score"], 3)) for hit in last["topk"][:3]]})

# %%
# A frame knows the stimulus that was on screen (from the markers), so what
# was shown can be set beside what was decoded. Here: the newest frame whose
# window ended 0.15-0.65 s after an onset, the span where the evoked response
# is.
from PIL import Image

seen = [f for f in frames if f["truth"] and f["truth"]["id"] and 0.15 <= f["truth"]["age_s"] <= 0.65]
frame = seen[-1]
fig, axes = plt.subplots(1, 6, figsize=(8, 1.9))
panels = [("shown", frame["truth"]["id"])] + [(f"#{i + 1}  {hit['score']:.2f}", hit["id"])
                                             for i, hit in enumerate(frame["topk"])]
for ax, (title, image_id) in zip(axes, panels):
    ax.imshow(Image.open(root / image_id))
    ax.set_title(title, fontsize=8)
    ax.axis("off")

# %%
# Latency of every frame, from the LSL time of the window's newest sample to
# the frame leaving the worker, by stage. The first frames carry the start-up;
# a shared machine building documentation is no benchmark (the benchmarks page
# has the measured figures).
stages = ["acquire", "preprocess", "queue", "encode", "retrieve"]
latency = np.array([[f["latency_ms"].get(s) or 0.0 for s in stages] for f in frames])
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.stackplot(np.arange(len(frames)), latency.T, labels=stages)
ax.set(xlabel="frame", ylabel="latency (ms)", title=f"{len(frames)} frames decoded")
ax.legend(loc="upper right", fontsize=8)
fig.tight_layout()

# %%
shutil.rmtree(workdir)
