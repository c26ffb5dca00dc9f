"""Energy counter faults on the simulated backend, injected through its device interface while a
request runs: a reading that goes back or jumps for one read, a counter that restarts (driver
reload) or steps up for good. Each is rejected and counted; the rejected joules never reach the
timeline or the request, and the ledger still conserves what was measured."""

import pytest
from rig import Rig

MJ = 1_000_000  # one kJ in the counter's millijoules


def one_reading(rig: Rig, mj: int) -> None:
    """The counter reads `mj` off for exactly one reading, then is right again."""
    device, sampler = rig.devices[0], rig.samplers[0]
    rig.clock.advance(0.1)
    device.jump_counter(mj)
    sampler.read_counter_soon()
    sampler.step()
    device.jump_counter(-mj)


def for_good(change):
    return lambda rig: change(rig.devices[0])


FAULTS = {
    # fault: (inject, resets counted, jumps counted, whether the timeline still equals the counter)
    # less than the energy since the last reading: indistinguishable from a slow interval, and the
    # next reading puts the joules back where they belong
    "one reading back by less than the interval's energy": (lambda rig: one_reading(rig, -MJ // 5), 0, 0, True),
    "one reading back": (lambda rig: one_reading(rig, -3 * MJ), 1, 0, True),
    "one reading far back": (lambda rig: one_reading(rig, -50 * MJ), 1, 0, True),
    "one implausible reading": (lambda rig: one_reading(rig, 10**6 * MJ), 0, 1, True),
    "counter restarts from zero": (for_good(lambda d: d.reset_counter()), 1, 0, False),
    "counter steps up for good": (for_good(lambda d: d.jump_counter(10**6 * MJ)), 0, 1, False),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_counter_fault_is_rejected_counted_and_never_attributed(clock, fault):
    inject, resets, jumps, exact = FAULTS[fault]
    rig = Rig(clock, settle_delay_s=40.0)
    rig.run(12.0)
    inject(rig)
    rig.run(17.5)
    rig.submit([rig.request(1.0, 28.0, rid="during-the-fault")])  # its span arrives once it has ended
    rig.run(45.0)
    sampler, device, tl = rig.samplers[0], rig.devices[0], rig.samplers[0].timeline
    assert (sampler.counter_resets, sampler.counter_rejected) == (resets, jumps)
    assert sampler.healthy and not sampler.errors
    true = device.true_energy_j(tl.settled_until) - device.true_energy_j(tl.origin)
    # the counter's truth; where an interval had to be integrated from power, within its error
    assert tl.total_j == (pytest.approx(true, abs=0.005) if exact else pytest.approx(true, rel=0.002))
    request = rig.models()["m"]
    assert request.requests == 1
    assert request.energy_j == pytest.approx(tl.energy(rig.t0 + 1.0, rig.t0 + 29.0), rel=1e-9)
    assert request.energy_j == pytest.approx(device.true_energy_j(rig.t0 + 29.0) - device.true_energy_j(rig.t0 + 1.0),
                                             rel=0.01)
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-9)
