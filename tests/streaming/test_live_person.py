"""The live simulated person: real LSL on loopback, checked against the offline simulator.

Every test uses its own stream names (uuid), so tests never see each other's
streams. The world is the tests' small session config (MEG, 12 mm sources: the
forward model takes ~1 s), built once per module. The exact checks rest on the
noise being a function of the seeds only: ``LivePerson.render`` regenerates
offline, sample for sample, what the stream carried.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid

import numpy as np
import pylsl
import pytest
from scipy import signal

from glimpse.streaming.errors import InputError
from glimpse.streaming.lsl import channel_info, find_stream, open_inlet
from glimpse.streaming.outlet import INDEX_CHANNEL
from glimpse.streaming.simulate import SimulationConfig, clean_responses
from glimpse.streaming.simulate.design import build_catalogue
from glimpse.streaming.simulate.live import LivePerson, format_live_summary, run_live_person
from glimpse.streaming.simulate.person import (SimulatedPerson, World, exemplar_stimulus, fresh_stimuli,
                                               load_world, stimulus_key)
from glimpse.streaming.simulate.physics import build_response_model
from glimpse.streaming.simulate.session import RESPONSE_TAIL
from glimpse.streaming.simulate.stimuli import CATCH_PATH, sample_stimulus

# The tests' session size (tests/conftest.py small_meg_session), without writing it.
SMALL = dict(seed=0, subjects=1, concepts=8, exemplars=2, test_concepts=4, test_exemplars=2,
             test_repeats=6, image_size=48)


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(SimulationConfig(modality="meg", **SMALL))


def _name() -> str:
    return f"test-live-{uuid.uuid4().hex[:10]}"


def _markers_outlet(name: str) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(f"{name}-markers", "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string,
                            f"{name}-{uuid.uuid4().hex[:6]}-markers")
    return pylsl.StreamOutlet(info)


def _marker(stim_file, trial_type="exp", concept=None) -> str:
    return json.dumps({"stim_file": stim_file, "concept": concept, "trial_type": trial_type})


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _pull_until(inlet, last_index: int, timeout: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_chans) float32 samples and timestamps until SAMPLE_INDEX reaches ``last_index``."""
    chunks, stamps = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data, ts = inlet.pull_chunk(timeout=0.05, max_samples=65536, as_numpy=True)
        if len(ts):
            chunks.append(np.array(data[: len(ts)], np.float32))
            stamps.append(np.asarray(ts))
            if chunks[-1][-1, -1] >= last_index:
                break
    assert chunks, "no samples arrived"
    return np.concatenate(chunks), np.concatenate(stamps)


def _clean_model(world: World, subject_index: int, stimuli):
    config = world.config
    return build_response_model(world.head, world.groups, stimuli, seed=config.seed, subject_index=subject_index,
                                variability=config.subject_variability, latencies=config.latencies,
                                sfreq=config.resolved_sfreq, response_duration=config.latencies["offset"] + RESPONSE_TAIL)


# LSL tests: resolving and opening inlets takes up to a second or two each on a loaded
# 2-core machine; 60 s catches a hang without failing a slow runner.


@pytest.mark.timeout(60)
def test_stream_carries_the_worlds_sensors_without_dropping_a_sample(world):
    name = _name()
    person = LivePerson(world, name=name, chunk_ms=20)
    with person:
        inlet, full = open_inlet(find_stream(name, timeout=10), timeout=10)
        with pytest.raises(RuntimeError, match="already running"):
            person.start()
        first, _ = _pull_until(inlet, 0, 10)
        data, stamps = _pull_until(inlet, int(first[0, -1]) + int(1.5 * world.sfreq), 20)
        inlet.close_stream()
    labels, types, units = channel_info(full)
    assert labels == world.ch_names + [INDEX_CHANNEL]
    assert types == ["mag"] * world.n_chans + ["misc"]
    assert units == ["T"] * world.n_chans + ["none"]
    assert full.nominal_srate() == world.sfreq == 1200.0
    assert full.type() == "MEG" and full.channel_format() == pylsl.cf_float32
    assert full.desc().child("simulation").child_value("subject_index") == "1000"
    index = data[:, -1].astype(np.int64)
    assert np.array_equal(np.diff(index), np.ones(len(index) - 1)), "dropped or duplicated samples"
    # Timestamps are t0 + index / sfreq exactly as pushed (clock correction ~0 on loopback).
    np.testing.assert_allclose(stamps - index / world.sfreq, person.t0, atol=1e-3)
    assert np.all(np.abs(data[:, :-1]) < 1e-9) and np.std(data[:, :-1]) > 1e-14  # tesla, noisy
    stats = person.stats()
    assert stats["state"] == "stopped" and stats["n_samples"] >= index[-1] + 1
    assert not [t for t in threading.enumerate() if name in t.name], "threads left running"
    person.stop()  # twice is fine


@pytest.mark.timeout(60)
def test_a_marker_adds_the_offline_simulators_response_at_its_onset(world):
    name = _name()
    person = LivePerson(world, name=name, subject_seed=7)
    train = world.stimuli[3]
    with person:
        inlet, _ = open_inlet(find_stream(name, timeout=10), timeout=10)
        markers = _markers_outlet(name)  # created after the person started: found anyway
        _wait(lambda: person.stats()["markers_connected"], 15, "the markers stream to be found")
        # In the future (even on a stalling runner): nothing is lost. On a sample's time exactly, so
        # the inlet's clock correction (microseconds on loopback) cannot round it to a neighbour.
        t_on = person.t0 + person.sample_at(pylsl.local_clock() + 0.5) / world.sfreq
        markers.push_sample([_marker(f"/data/sim/{train.path}", concept=train.concept)], t_on)
        markers.push_sample([_marker("stimuli/catch/catch.png", "catch")], t_on + 0.75)
        onsets = person.sample_at(t_on), person.sample_at(t_on + 0.75)
        data, _ = _pull_until(inlet, onsets[1] + person.person.n_times + 10, 20)
        inlet.close_stream()
    stats = person.stats()
    assert stats["n_markers"] == 2 and stats["n_late"] == 0 and stats["by_kind"]["catch"] == 1
    assert [m["onset"] for m in person.recent_markers()] == list(onsets)
    index = data[:, -1].astype(np.int64)
    assert index[0] < onsets[0], "the stream must be seen from before the onset"
    # Stream minus the same seeds' noise is the clean response of subject_index 1007.
    noise = person.render(index[-1] + 1)[:, index].T
    model = _clean_model(world, 1007, world.stimuli)
    expected = np.zeros_like(noise)
    n_resp = model.time_courses.shape[1]
    for onset, row in zip(onsets, (3, len(world.stimuli) - 1)):
        expected[onset - index[0]: onset - index[0] + n_resp] += (model.topographies[row] @ model.time_courses).T
    tolerance = 2e-7 * np.abs(data[:, :-1]).max()  # float32 rounding of the stream
    assert np.abs(expected).max() > 1e4 * tolerance
    np.testing.assert_allclose(data[:, :-1] - noise, expected, rtol=0, atol=tolerance)
    # ... and render() with the same events gives the stream itself.
    events = [(onsets[0], {"stim_file": train.path, "trial_type": "exp"}), (onsets[1], {"trial_type": "catch"})]
    rendered = person.render(index[-1] + 1, events)[:, index].T.astype(np.float32)
    np.testing.assert_allclose(data[:, :-1], rendered, rtol=0, atol=tolerance)


@pytest.mark.timeout(60)
def test_malformed_unknown_and_late_markers_are_counted_and_the_stream_goes_on(world):
    name = _name()
    markers = _markers_outlet(name)
    person = LivePerson(world, name=name)
    with person:
        inlet, _ = open_inlet(find_stream(name, timeout=10), timeout=10)
        _wait(lambda: person.stats()["markers_connected"], 15, "the markers stream to be found")
        head, _ = _pull_until(inlet, int(0.6 * world.sfreq), 20)  # 0.6 s of stream behind us
        now = pylsl.local_clock()
        markers.push_sample(["{not json"], now)
        markers.push_sample(["[1, 2]"], now)
        markers.push_sample([_marker("https://host:8000/images/holiday.jpg?v=1")], now + 0.5)
        late = world.stimuli[0]
        markers.push_sample([_marker(late.path)], now - 0.3)  # its first 300 ms already went out
        markers.push_sample([_marker(world.stimuli[1].path)], now - 5.0)  # all of it went out
        _wait(lambda: person.stats()["n_markers"] == 3, 10, "three image markers")
        n_before = person.stats()["n_samples"]
        data, _ = _pull_until(inlet, person.sample_at(now + 0.5) + person.person.n_times, 20)
        data = np.concatenate([head, data])
        inlet.close_stream()
        assert person.running and person.stats()["n_samples"] > n_before
    stats = person.stats()
    assert (stats["n_bad_markers"], stats["n_unknown"], stats["n_late"], stats["n_expired"]) == (2, 1, 2, 1)
    assert stats["by_kind"] == {"world": 2, "fresh": 0, "catch": 0, "unknown": 1}
    assert stats["lost_ms"]["max"] == pytest.approx(1e3 * person.person.n_times / world.sfreq)
    assert 300 <= stats["lost_ms"]["p50"] < 1000 and stats["marker_lateness_ms"]["max"] > 4000
    assert "2 late, 2 malformed" in format_live_summary(stats)
    recent = {m["stim_path"]: m for m in person.recent_markers()}
    applied, unknown = recent[late.path], recent["https://host:8000/images/holiday.jpg?v=1"]
    assert applied["first_added"] > applied["onset"] and recent[world.stimuli[1].path]["first_added"] is None
    # Exact: the late response is there from the sample it was added at, not before; the
    # unknown image evoked the person's generic response.
    index = data[:, -1].astype(np.int64)
    cut = applied["first_added"]
    later = [(unknown["onset"], {"stim_file": "holiday.jpg"})]
    with_late = person.render(index[-1] + 1, later + [(applied["onset"], {"stim_file": late.path})])
    without = person.render(index[-1] + 1, later)
    expected = np.where(index >= cut, with_late[:, index], without[:, index]).T.astype(np.float32)
    assert index[0] < cut
    np.testing.assert_allclose(data[:, :-1], expected, rtol=0, atol=2e-7 * np.abs(expected).max())


@pytest.mark.timeout(60)
def test_markers_stream_is_found_again_after_it_was_lost(world):
    name = _name()
    person = LivePerson(world, name=name)
    with person:
        time.sleep(0.3)
        assert not person.stats()["markers_connected"]
        first = _markers_outlet(name)
        _wait(lambda: person.stats()["markers_connected"], 15, "the markers stream")
        first.push_sample([_marker(world.stimuli[0].path)], pylsl.local_clock())
        _wait(lambda: person.stats()["n_markers"] == 1, 10, "the first marker")
        del first  # the service restarts: its markers outlet goes away...
        _wait(lambda: not person.stats()["markers_connected"], 15, "the loss to be noticed")
        second = _markers_outlet(name)  # ... and comes back with another source id
        _wait(lambda: person.stats()["markers_connected"], 15, "the new markers stream")
        second.push_sample([_marker(world.stimuli[1].path)], pylsl.local_clock())
        _wait(lambda: person.stats()["n_markers"] == 2, 10, "the second marker")
    assert person.error is None


def test_two_subject_seeds_are_two_people_and_one_seed_is_one(world):
    a, b, again = SimulatedPerson(world, 0), SimulatedPerson(world, 1), SimulatedPerson(world, 0)
    assert (a.subject_index, b.subject_index) == (1000, 1001)
    stim = world.stimuli[5]
    ra, rb = a.response(stim), b.response(stim)
    assert np.array_equal(ra, again.response(stim))
    corr = np.corrcoef(a.topography(stim)[:, 1], b.topography(stim)[:, 1])[0, 1]
    assert abs(corr) < 0.95, f"seeds 0 and 1 give nearly the same late topography (r={corr:.3f})"
    assert a.latencies != b.latencies and np.abs(ra - rb).max() > 0.1 * np.abs(ra).max()
    # The same image evokes the same response in one person however it is named.
    assert np.array_equal(a.evoke({"stim_file": stim.path}).topography, a.topography(stim))


def test_live_person_is_the_written_sessions_subject_when_given_its_index(small_meg_session):
    root, config, _ = small_meg_session
    world = load_world(root)
    assert world.config == config and world.root == root
    person = SimulatedPerson(world, subject_index=1)
    clean = clean_responses(root, "01")
    assert list(clean.image_paths) == [s.path for s in person.stimuli]
    np.testing.assert_allclose(person.model.topographies, clean.topographies, rtol=1e-5,
                               atol=1e-6 * np.abs(clean.topographies).max())
    np.testing.assert_allclose(person.time_courses, clean.time_courses, rtol=1e-6, atol=1e-7)
    assert SimulatedPerson(world, 0).subject_index not in range(1, config.subjects + 1)


def test_images_are_matched_by_path_url_fresh_exemplar_or_registration(world):
    person = SimulatedPerson(world, 2)
    stim = world.stimuli[0]
    topo = person.topography(stim)
    for form in (stim.path, f"/abs/data/sim/{stim.path}", f"http://127.0.0.1:8000/files/sim/{stim.path}?v=3#x",
                 "C:\\data\\sim\\" + stim.path.replace("/", "\\"), f"/files/{stim.path.replace('_', '%5F')}"):
        evoked = person.evoke({"stim_file": form, "trial_type": "exp"})
        assert (evoked.kind, evoked.stim_path) == ("world", stim.path), form
        assert np.array_equal(evoked.topography, topo)
    assert stimulus_key("images/photo.png") is None and stimulus_key(None) is None
    # The catalogue is what build_catalogue draws; exemplars beyond it are drawn the same way.
    catalogue = build_catalogue(world.config)
    for s in catalogue[:-1]:
        family, variant = s.family, s.variant
        assert exemplar_stimulus(world.config, s.split, family, variant, s.exemplar_nr, s.image_nr) == s
    fresh = fresh_stimuli(world.config, 2)
    assert len(fresh) == 2 * world.config.concepts and all(s.path.startswith("stimuli/fresh/") for s in fresh)
    assert not {s.path for s in fresh} & {s.path for s in catalogue}
    evoked = person.evoke({"stim_file": f"/srv/calibration/{fresh[3].path}", "trial_type": "exp"})
    assert evoked.kind == "fresh"
    np.testing.assert_allclose(evoked.topography, _clean_model(world, 1002, [fresh[3]]).topographies[0],
                               rtol=1e-10, atol=1e-30)
    # Any Stimulus, registered by its path.
    custom = dataclasses.replace(sample_stimulus(0, "train", "heart", "pair", 1, np.random.default_rng(5)),
                                 path="stimuli/custom/heart.png")
    assert person.evoke({"stim_file": "x/stimuli/custom/heart.png"}).kind == "unknown"
    person.add_stimuli([custom])
    evoked = person.evoke({"stim_file": "x/stimuli/custom/heart.png"})
    assert evoked.kind == "fresh" and np.allclose(evoked.topography, person.topography(custom))
    with pytest.raises(InputError, match="stimuli/"):
        person.add_stimuli([dataclasses.replace(custom, path="/tmp/heart.png")])
    # Catch trials respond as the catch image; unknown images with the generic response.
    assert np.array_equal(person.evoke({"stim_file": "whatever.png", "trial_type": "catch"}).topography,
                          person.evoke({"stim_file": CATCH_PATH}).topography)
    unknown = person.evoke({"stim_file": "stimuli/train/circle_single/circle_single_3.png"})  # not 2-digit
    assert unknown.kind == "unknown" and np.array_equal(unknown.topography, person.generic)


def test_eeg_person_keeps_blinking_after_the_session_length():
    config = SimulationConfig(modality="eeg", concepts=2, exemplars=1, test_concepts=1, test_exemplars=1,
                              test_repeats=1, catch_fraction=0.0)
    person = LivePerson(World.build(config), name=_name())
    info = person.stream_info()
    labels, types, units = channel_info(info)
    assert info.type() == "EEG" and len(labels) == 65 and labels[-1] == INDEX_CHANNEL
    assert set(types[:-1]) == {"eeg"} and set(units[:-1]) == {"V"} and info.nominal_srate() == 1000.0
    data = person.render(30_000)
    names = person.world.ch_names
    # Frontal minus occipital, high-passed: blinks (~100 µV at Fp1/Fp2, 0.3 s) stand out of
    # the drift and the brain noise (a few µV).
    frontal = data[[names.index("Fp1"), names.index("Fp2")]].mean(0) - data[[names.index("O1"), names.index("O2")]].mean(0)
    frontal = signal.sosfiltfilt(signal.butter(2, 1.0, "highpass", fs=1000, output="sos"), frontal)
    # The noise model drew blinks for the ~9 s session only; they keep coming after it.
    assert np.abs(frontal[:9000]).max() > 40e-6
    assert np.abs(frontal[15_000:]).max() > 40e-6, "no blink after the session length"
    # The noise is a function of the seeds, whatever length is rendered.
    assert np.array_equal(data[:, :3000], person.render(3000))


def test_world_folder_without_simulation_json_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="simulation.json") as err:
        load_world(tmp_path)
    assert "glimpse simulate" in str(err.value) and "--world" in str(err.value)
    with pytest.raises(InputError, match="no such folder"):
        run_live_person(world=tmp_path / "nowhere", duration=1)
    (tmp_path / "simulation.json").write_text("{not json")
    with pytest.raises(InputError, match="as JSON"):
        load_world(tmp_path)
    (tmp_path / "simulation.json").write_text(json.dumps({"config": {"modality": "meg", "sneeze": 1}}))
    with pytest.raises(InputError, match="sneeze"):
        load_world(tmp_path)


def test_bad_options_are_clear_errors(world):
    with pytest.raises(InputError, match="--modality"):
        World.build(modality="fmri")
    with pytest.raises(InputError, match="--modality"):
        run_live_person(modality="fmri", duration=1)
    with pytest.raises(InputError, match="match the world"):
        World.build(world.config, modality="eeg")
    with pytest.raises(InputError, match="--subject-seed"):
        SimulatedPerson(world, -1)
    with pytest.raises(InputError, match="--chunk-ms"):
        LivePerson(world, chunk_ms=0)
    with pytest.raises(InputError, match="--duration"):
        run_live_person(duration=-5)
    with pytest.raises(RuntimeError, match="start"):
        LivePerson(world).sample_at(0.0)


@pytest.mark.timeout(60)
def test_run_live_person_stops_after_its_duration():
    name = _name()
    stats = run_live_person(name=name, subject_seed=4, config=SimulationConfig(**SMALL), duration=1.0)
    assert stats["stopped_by"] == "duration" and stats["subject_index"] == 1004
    assert stats["state"] == "stopped" and 0.9 * 1200 <= stats["n_samples"] <= 3 * 1200
    assert stats["cpu_fraction"] is not None and f"'{name}'" in format_live_summary(stats)
    assert not [t for t in threading.enumerate() if name in t.name]
