"""The sampler against the simulated backend: exact totals, resets, jumps, faults, no counter."""

import pytest
from rig import run_sampler

from jouletrace.exporter.gpu.device import NotSupported
from jouletrace.exporter.gpu.sampler import COUNTER, POWER_INTEGRAL, GPUSampler
from jouletrace.exporter.gpu.simulated import SimulatedGPU, wave_load


def make(clock, **gpu_kwargs):
    dev = SimulatedGPU(0, seed=7, load=lambda t: wave_load(t, 20.0), clock=clock, **gpu_kwargs)
    return dev, GPUSampler(dev, clock=clock, counter_interval_s=2.0)


def test_totals_equal_the_counter(clock):
    dev, s = make(clock)
    origin = clock.t
    run_sampler(s, clock, 60.0)
    tl = s.timeline
    assert s.method == COUNTER
    true = dev.true_energy_j(tl.settled_until) - dev.true_energy_j(origin)
    assert tl.total_j == pytest.approx(true, abs=0.002)  # the counter's mJ resolution, twice
    # counter read every 2 s, power every 0.1 s
    assert 29 <= s.counter_reads <= 32
    # the 100 ms shape follows the true power: 1 s windows within 2 %
    for a in range(5, 55, 7):
        t0 = origin + a
        assert tl.energy(t0, t0 + 1.0) == pytest.approx(dev.true_energy_j(t0 + 1) - dev.true_energy_j(t0), rel=0.02)


def test_counter_reset_is_integrated_from_power(clock):
    dev, s = make(clock)
    run_sampler(s, clock, 10.0)
    before = s.timeline.total_j
    dev.reset_counter()
    run_sampler(s, clock, 10.0)
    assert s.counter_resets == 1
    gained = s.timeline.total_j - before
    assert 10 * dev.idle_w * 0.9 < gained < 10 * dev.max_w  # never negative, never doubled


def test_implausible_jump_is_rejected(clock):
    dev, s = make(clock)
    run_sampler(s, clock, 10.0)
    before = s.timeline.total_j
    dev.jump_counter(10**12)  # a billion joules in two seconds
    run_sampler(s, clock, 4.0)
    assert s.counter_rejected == 1
    assert s.timeline.total_j - before < 4.2 * dev.max_w


def test_no_counter_falls_back_to_power_integral(clock):
    dev, s = make(clock, energy_counter=False)
    origin = clock.t
    run_sampler(s, clock, 30.0)
    assert s.method == POWER_INTEGRAL
    true = dev.true_energy_j(s.timeline.settled_until) - dev.true_energy_j(origin)
    assert s.timeline.total_j == pytest.approx(true, rel=0.01)
    with pytest.raises(NotSupported):
        dev.energy_mj()


def test_errors_mark_unhealthy_and_recovery_is_picked_up(clock):
    dev, s = make(clock)
    origin = clock.t
    run_sampler(s, clock, 5.0)
    assert s.healthy
    dev.fail_reads = 10**6
    run_sampler(s, clock, 3.0)
    assert not s.healthy
    assert s.errors[("power", "gpu_lost")] >= 1
    dev.fail_reads = 0
    run_sampler(s, clock, 6.0)
    assert s.healthy
    # the energy over the outage is still the counter's: nothing lost, nothing doubled
    true = dev.true_energy_j(s.timeline.settled_until) - dev.true_energy_j(origin)
    assert s.timeline.total_j == pytest.approx(true, abs=0.01)


def test_simulated_gpu_is_deterministic(clock):
    a = SimulatedGPU(0, seed=3, load=0.5, clock=clock)
    b = SimulatedGPU(0, seed=3, load=0.5, clock=clock)
    c = SimulatedGPU(0, seed=4, load=0.5, clock=clock)
    clock.advance(10.0)
    assert a.energy_mj()[0] == b.energy_mj()[0] != c.energy_mj()[0]
    st = a.status()
    assert st.utilization == 0.5 and st.power_limit_w == 700.0


def test_power_limit_caps_power(clock):
    dev = SimulatedGPU(0, load=1.0, power_limit_w=400.0, clock=clock)
    assert dev.power_w()[0] <= 400.0
    assert dev.status().clocks_event_reasons["sw_power_cap"]
