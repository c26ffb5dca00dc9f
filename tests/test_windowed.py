"""The windowed greatest and least values against brute force, and each GPU's windowed power peak
against a power trace known in advance (a simulated GPU without noise, on a fake clock)."""

import random

import pytest
from rig import run_sampler

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.gpu.simulated import SimulatedGPU
from jouletrace.exporter.windowed import WindowedExtreme


@pytest.mark.parametrize("least, pick", [(False, max), (True, min)], ids=["greatest", "least"])
def test_the_deque_answers_the_brute_force_extreme(least, pick):
    rng = random.Random(3)
    window = WindowedExtreme(2.0, least)
    seen, t = [], 0.0
    for _ in range(5000):
        t += rng.choice([0.0, 0.05, 0.1, 0.1, 0.3, 1.7])
        value = rng.choice([rng.uniform(0, 700), 350.0])  # repeats as well as distinct values
        window.add(t, value)
        seen.append((t, value))
        assert window.value() == pick(v for tv, v in seen if t - 2.0 < tv <= t)  # the window ending at t
        now = t + rng.choice([0.0, 0.0, 0.5, 1.99, 2.5])
        expected = pick((v for tv, v in seen if now - 2.0 < tv <= now), default=None)
        assert window.value(now) == expected
        t = now


def test_a_value_counts_until_the_window_has_passed_it():
    window = WindowedExtreme(30.0)
    assert window.value(0.0) is None
    window.add(10.0, 500.0)
    window.add(11.0, 200.0)
    assert window.value(39.9) == 500.0
    assert window.value(40.0) == 200.0  # (10, 40]: the 500 W at 10 s has left
    assert window.value(41.0) is None


def test_a_time_that_goes_back_counts_as_the_last_one():
    window = WindowedExtreme(1.0)
    window.add(5.0, 100.0)
    window.add(4.0, 50.0)  # a device timestamp that went back
    assert window.value(5.9) == 100.0 and window.value(6.0) is None


def test_the_window_must_be_positive():
    with pytest.raises(ValueError):
        WindowedExtreme(0.0)


def test_a_gpus_peak_is_its_greatest_sample_of_the_window(clock):
    """75 W idle, 700 W at full load: load 0.2 (200 W) but for 0.5 s at full load (700 W) 5 s in, and
    0.6 (450 W) from 20 s on."""
    t0 = clock.t
    load = lambda t: 1.0 if t0 + 5.0 <= t < t0 + 5.5 else 0.6 if t >= t0 + 20.0 else 0.2
    dev = SimulatedGPU(0, noise=0.0, load=load, clock=clock)
    sampler = GPUSampler(dev, clock=clock, counter_interval_s=2.0, peak_window_s=10.0)
    assert sampler.peak.value(clock.t) is None
    run_sampler(sampler, clock, 4.0)
    assert sampler.peak.value(clock.t) == 200.0
    run_sampler(sampler, clock, 6.0)  # 10 s
    assert sampler.peak.value(clock.t) == 700.0
    run_sampler(sampler, clock, 5.3)  # 15.3 s: (5.3, 15.3] holds the last full-load samples, up to 5.5 s
    assert sampler.peak.value(clock.t) == 700.0
    run_sampler(sampler, clock, 0.4)
    assert sampler.peak.value(clock.t) == 200.0
    run_sampler(sampler, clock, 10.0)
    assert sampler.peak.value(clock.t) == 450.0
    assert sampler.peak.value(clock.t + 10.0) is None  # no sample for a window: no peak
