"""Attribution: conservation, the split rule, late and duplicate spans, limits, window aggregates."""

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from rig import Rig

from jouletrace.exporter.ledger.ledger import batch_phases
from jouletrace.exporter.ledger.records import IntakeFull, RequestBatch, RequestRecord


def test_a_lone_request_gets_the_energy_of_its_running_time(clock):
    rig = Rig(clock, settle_delay_s=20.0)
    rig.run(3.0)
    r = rig.request(4.0, 10.0, queue=1.0, prefill=0.5)
    rig.run(12.0)
    rig.submit([r])
    rig.run(25.0)
    tl = rig.samplers[0].timeline
    expected = tl.energy(r.start + 1.0, r.end)  # queue time runs nothing
    m = rig.models()["m"]
    assert m.requests == 1
    assert m.energy_j == pytest.approx(expected, rel=1e-9)
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-9)


def test_concurrent_requests_split_by_tokens_processed(clock):
    rig = Rig(clock, load=0.8, settle_delay_s=20.0)
    rig.run(2.0)
    a = rig.request(3.0, 8.0, completion=300, prefill=0.0, rid="a")
    b = rig.request(3.0, 8.0, completion=300, prefill=0.0, rid="b")
    c = rig.request(3.0, 8.0, completion=600, prefill=0.0, rid="c", model="big")
    rig.run(10.0)
    rig.submit([a, b, c])
    rig.run(25.0)
    energy = {name: m.energy_j for name, m in rig.ledger.snapshot_models()}
    total = rig.samplers[0].timeline.energy(a.start, a.end)
    # a and b weigh 300/8 tokens/s each, c 600/8: c gets half of the energy
    assert energy["big"] == pytest.approx(total / 2, rel=1e-9)
    assert energy["m"] == pytest.approx(total / 2, rel=1e-9)


def phases(r: RequestRecord) -> list[tuple]:
    start, end, weight, gen, *_ = batch_phases(RequestBatch.from_records([r]).rows)
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in zip(start, end, weight, gen)]


def test_phases_follow_the_vllm_span_layout():
    r = RequestRecord("x", "m", start=100.0, end=110.0, prompt_tokens=1000, completion_tokens=90,
                      queue_s=2.0, prefill_s=1.0, decode_s=6.0)
    (ps, pe, pw, pg), (ds, de, dw, dg) = phases(r)
    assert (ps, pe, ds, de) == (103.0, 104.0, 104.0, 110.0)  # anchored at the end; tokenization before
    assert pw == pytest.approx(1000.0) and dw == pytest.approx(15.0) and dg == 90 and pg == 0
    generic = RequestRecord("g", "m", start=0.0, end=4.0, prompt_tokens=10, completion_tokens=30)
    assert phases(generic) == [(0.0, 4.0, 10.0, 30)]
    image = RequestRecord("i", "sd", start=0.0, end=2.0, output_kind="image", output_count=4)
    assert phases(image) == [(0.0, 2.0, 2.0, 0)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), gpus=st.integers(1, 3), n=st.integers(0, 40))
def test_conservation_under_random_request_mixes(clock, seed, gpus, n):
    """Attributed plus idle equals the measured energy (0.1 %), whatever the mix, order and lateness."""
    rng = random.Random(seed)
    rig = Rig(clock, gpus=gpus, seed=seed)
    reqs = []
    for i in range(n):
        start = rng.uniform(0.5, 40.0)
        duration = rng.uniform(0.01, 15.0)
        reqs.append(rig.request(start, duration, prompt=rng.randint(0, 4000), completion=rng.randint(0, 2000),
                                queue=rng.uniform(0, duration / 3), prefill=rng.uniform(0, duration / 3),
                                model=rng.choice("abc"), rid=str(i), span_id=i + 1))
    rng.shuffle(reqs)  # out of order
    elapsed = 0.0
    while reqs or elapsed < 70.0:
        step = rng.uniform(0.5, 6.0)
        rig.run(step)
        elapsed += step
        arrived = [r for r in reqs if r.end <= clock.t]
        take = arrived[: rng.randint(0, len(arrived))] if arrived else []
        rig.submit(take)
        reqs = [r for r in reqs if r not in take]
        if elapsed > 120:
            rig.submit(reqs)
            reqs = []
    rig.run(10.0)
    measured = rig.measured_j()
    assert measured > 0
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(measured, rel=1e-3)
    per_gpu = sum(g.attributed_j for g in rig.ledger.gpus)
    assert per_gpu == pytest.approx(rig.attributed_j(), rel=1e-6, abs=1e-6)
    assert measured == pytest.approx(rig.true_j(), rel=1e-3)
    assert sum(x.requests for x in rig.models().values()) == n


def test_late_expired_and_duplicate_spans_are_counted(clock):
    rig = Rig(clock, settle_delay_s=5.0)
    rig.run(2.0)
    early = rig.request(1.0, 2.0, rid="early", span_id=1)
    straddling = rig.request(20.0, 11.0, rid="long", span_id=2)
    rig.run(30.0)
    rig.submit([early, straddling, straddling])
    rig.run(10.0)
    led = rig.ledger
    assert led.spans_expired == 1  # all of its time had been finalized
    assert led.spans_late == 1  # part of it had
    assert led.spans_duplicate == 1
    m = rig.models()["m"]
    assert m.requests == 2 and m.completion_tokens == 400
    long_energy = m.energy_observed_j
    assert 0 < long_energy < rig.samplers[0].timeline.energy(straddling.start + 0.05, straddling.end)
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-9)


def test_full_ledger_refuses_and_keeps_what_it_has(clock):
    rig = Rig(clock, max_pending=3)
    rig.run(1.0)
    rig.submit([rig.request(0.1 * i, 0.5, span_id=i + 1) for i in range(3)])
    with pytest.raises(IntakeFull):
        rig.submit([rig.request(0.3, 0.5, span_id=9)])
    assert rig.ledger.pending == 3


def test_consumers_get_the_rows_taken_and_a_failing_one_loses_nothing(clock, caplog):
    rig = Rig(clock, max_pending=4)
    rig.run(1.0)
    seen = []

    def broken(rows, batch):
        raise RuntimeError("consumer bug")

    rig.ledger.add_consumer(broken)
    rig.ledger.add_consumer(lambda rows, batch: seen.append((len(rows), list(batch.models))))
    twice = rig.request(0.2, 0.5, span_id=2)
    rig.submit([rig.request(0.1, 0.5, span_id=1), twice, twice])
    assert seen == [(2, ["m"])]  # the rows taken: the copy left out
    assert rig.ledger.consumer_errors == 1 and "consumer bug" in caplog.text
    assert rig.ledger.pending == 2 and rig.ledger.spans_accepted == 2  # what the ledger took stays taken
    rig.submit([twice])  # nothing taken: no call
    with pytest.raises(IntakeFull):  # refused: no call
        rig.submit([rig.request(0.3, 0.5, span_id=i) for i in range(3, 6)])
    assert len(seen) == 1 and rig.ledger.consumer_errors == 1


def test_model_labels_are_capped(clock):
    rig = Rig(clock, max_models=3)
    rig.run(1.0)
    rig.submit([rig.request(50.0, 1.0, model=f"model-{i}", span_id=i + 1) for i in range(10)])
    names = [name for name, _ in rig.ledger.snapshot_models()]
    assert names == ["model-0", "model-1", "model-2", "other"]
    assert rig.ledger.folded_models == 7


def test_window_aggregates_follow_the_study(clock):
    """Steady decode load: J/token = attributed energy / tokens; tokens/s/W = tokens / all energy."""
    rig = Rig(clock, load=0.7, window_s=30.0, settle_delay_s=100.0)
    rig.run(1.0)
    reqs = [rig.request(1.0 + i, 4.0, prompt=10, completion=400, prefill=0.0, queue=0.0, span_id=i + 1)
            for i in range(80)]
    rig.run(90.0)
    rig.submit(reqs)
    rig.run(69.0)  # finalized up to ~60 s: the window [30, 60] is in steady state
    ws = rig.ledger.window()["m"]
    assert ws.seconds == pytest.approx(30.0, abs=1.0)
    assert ws.output_tokens == pytest.approx(400.0 * ws.seconds, rel=0.02)  # 4 running * 100 tokens/s
    assert ws.joules_per_output_token == pytest.approx(ws.energy_j / ws.output_tokens)
    power = ws.measured_j / ws.seconds
    assert ws.output_tokens_per_second_per_watt == pytest.approx((ws.output_tokens / ws.seconds) / power)
    expected_power = rig.devices[0].idle_w + 0.7 * (rig.devices[0].max_w - rig.devices[0].idle_w)
    assert power == pytest.approx(expected_power, rel=0.05)
    # everything ran with requests busy all the time: J/token matches all the energy
    assert ws.energy_j == pytest.approx(ws.measured_j, rel=0.05)


def test_energy_per_image(clock):
    rig = Rig(clock, load=0.9, settle_delay_s=100.0)
    rig.run(1.0)
    reqs = [RequestRecord(f"i{i}", "sdxl", start=rig.t0 + 2 + 3 * i, end=rig.t0 + 5 + 3 * i, output_kind="image",
                          output_count=2, span_id=bytes([i + 1]) * 8, trace_id=b"\x02" * 16) for i in range(10)]
    rig.run(40.0)
    rig.submit(reqs)
    rig.run(105.0)
    m = rig.models()["sdxl"]
    assert m.images == 20
    ws = rig.ledger.window()["sdxl"]
    assert ws.images > 0
    assert ws.joules_per_image == pytest.approx(ws.image_energy_j / ws.images)
    assert 3 * 600 / 2 * 0.8 < ws.joules_per_image < 3 * 700 / 2 * 1.05


def test_a_failing_gpu_never_stops_the_others_and_its_energy_comes_back(clock):
    rig = Rig(clock, gpus=2, settle_delay_s=5.0, load=0.5)
    rig.run(5.0)
    rig.devices[1].fail_reads = 10**6
    rig.run(10.0)
    assert not rig.samplers[1].healthy and rig.samplers[0].healthy
    stuck = rig.ledger.gpus[1].finalized_until
    assert rig.ledger.gpus[0].finalized_until > stuck + 5  # GPU 0 goes on
    reqs = [rig.request(16.0 + i, 2.0, span_id=i + 1) for i in range(5)]
    rig.run(10.0)
    rig.submit(reqs)
    rig.run(10.0)
    assert rig.models()["m"].requests == 5  # complete on the healthy GPU
    rig.devices[1].fail_reads = 0
    rig.run(15.0)
    assert rig.samplers[1].healthy
    assert rig.ledger.gpus[1].finalized_until > stuck + 20  # picked up again, the gap included
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-9)
    assert rig.measured_j() == pytest.approx(rig.true_j(), rel=1e-3)


def test_node_placement_keeps_each_gpus_energy_with_the_pods_that_hold_it(clock):
    """GPU 0 is shared by pods a and b (time-slicing), GPU 1 is pod c's alone."""
    rig = Rig(clock, gpus=2, load=0.6, settle_delay_s=20.0)
    rig.ledger.set_placement({"ns/a": [0], "ns/b": [0], "ns/c": [1]})
    rig.run(2.0)
    a = rig.request(3.0, 5.0, completion=300, prefill=0.0, rid="a", model="A", pod="ns/a")
    b = rig.request(3.0, 5.0, completion=100, prefill=0.0, rid="b", model="B", pod="ns/b")
    c = rig.request(3.0, 5.0, completion=50, prefill=0.0, rid="c", model="C", pod="ns/c")
    rig.run(10.0)
    rig.submit([a, b, c])
    rig.run(25.0)
    gpu0, gpu1 = (s.timeline.energy(a.start, a.end) for s in rig.samplers)
    energy = {name: m.energy_j for name, m in rig.ledger.snapshot_models()}
    # on GPU 0, a processes 3x b's tokens per second; c has GPU 1 to itself whatever its tokens
    assert energy["A"] == pytest.approx(0.75 * gpu0, rel=1e-9)
    assert energy["B"] == pytest.approx(0.25 * gpu0, rel=1e-9)
    assert energy["C"] == pytest.approx(gpu1, rel=1e-9)
    assert dict(rig.ledger.pod_energy()) == pytest.approx({"ns/a": 0.75 * gpu0, "ns/b": 0.25 * gpu0, "ns/c": gpu1})
    assert rig.ledger.gpus[0].attributed_j == pytest.approx(gpu0, rel=1e-9)
    assert rig.ledger.spans_unplaced == 0
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-9)
    window = rig.ledger.window()  # throughput per watt of each model counts only its GPUs' energy
    assert window["C"].measured_j == pytest.approx(sum(g.idle_j + g.attributed_j for g in rig.ledger.gpus[1:]),
                                                   rel=0.05)
    assert window["A"].measured_j == window["B"].measured_j < window["C"].measured_j + window["A"].measured_j
    assert [window[m].gpus for m in "ABC"] == [1, 1, 1]


def test_unplaced_spans_run_on_every_gpu_and_are_counted(clock):
    rig = Rig(clock, gpus=2, load=0.6, settle_delay_s=20.0)
    rig.ledger.set_placement({"ns/a": [0], "other-ns/b": [1], "x/dup": [0], "y/dup": [1]})
    rig.run(2.0)
    named = rig.request(3.0, 5.0, rid="named", model="A", pod="a")  # no namespace: the one pod named a
    stray = rig.request(3.0, 5.0, rid="stray", model="S", pod="ns/gone")
    ambiguous = rig.request(3.0, 5.0, rid="amb", model="S", pod="dup")  # two pods are named dup
    bare = rig.request(3.0, 5.0, rid="bare", model="S")
    rig.run(10.0)
    rig.submit([named, stray, ambiguous, bare])
    rig.run(25.0)
    assert rig.ledger.spans_unplaced == 3
    gpu0, gpu1 = (s.timeline.energy(named.start, named.end) for s in rig.samplers)
    energy = {name: m.energy_j for name, m in rig.ledger.snapshot_models()}
    # equal weights: GPU 0 split four ways, GPU 1 three ways (named runs on GPU 0 only)
    assert energy["A"] == pytest.approx(gpu0 / 4, rel=1e-9)
    assert energy["S"] == pytest.approx(3 * gpu0 / 4 + gpu1, rel=1e-9)
    assert dict(rig.ledger.pod_energy()) == pytest.approx({"a": gpu0 / 4, "ns/gone": gpu0 / 4 + gpu1 / 3,
                                                          "dup": gpu0 / 4 + gpu1 / 3})


def test_placement_rejects_unknown_gpus(clock):
    rig = Rig(clock, gpus=2)
    with pytest.raises(ValueError, match="no GPU 2"):
        rig.ledger.set_placement({"ns/a": [2]})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), n=st.integers(0, 30))
def test_conservation_holds_per_gpu_under_random_placements(clock, seed, n):
    rng = random.Random(seed)
    rig = Rig(clock, gpus=3, seed=seed, settle_delay_s=20.0)
    pods = {f"ns/p{i}": rng.sample(range(3), rng.randint(1, 3)) for i in range(4)}
    rig.ledger.set_placement(pods)
    reqs = []
    for i in range(n):
        pod = rng.choice([*pods, "ns/unknown", ""])
        reqs.append(rig.request(rng.uniform(0.5, 30.0), rng.uniform(0.01, 10.0), completion=rng.randint(0, 500),
                                rid=str(i), span_id=i + 1, pod=pod, model=pod or "none"))
    rig.run(45.0)
    rig.submit(reqs)
    rig.run(30.0)
    assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-6)
    by_model = {name: m.energy_j for name, m in rig.models().items() if name != "none"}
    assert dict(rig.ledger.pod_energy()) == pytest.approx(by_model, rel=1e-9, abs=1e-9)
    assert rig.ledger.spans_unplaced == sum(r.pod not in pods for r in reqs)
    for g, totals in enumerate(rig.ledger.gpus):
        if not any(r.pod not in pods or g in pods[r.pod] for r in reqs):
            assert totals.attributed_j == 0  # no request was placed on it: all its energy is idle


def test_a_sender_clock_ahead_is_corrected_and_one_behind_is_reported(clock):
    rig = Rig(clock, load=0.7, settle_delay_s=5.0)
    rig.run(10.0)
    on_time = rig.request(6.0, 4.0, rid="a", model="on-time", span_id=1)
    ahead = dataclasses.replace(rig.request(6.0, 4.0, rid="b", model="ahead", span_id=2),
                                start=on_time.start + 30.0, end=on_time.end + 30.0)
    rig.submit([on_time, ahead])  # both just ended; the second sender's clock is 30 s ahead
    rig.run(10.0)
    behind = dataclasses.replace(rig.request(16.0, 4.0, rid="c", model="behind", span_id=3),
                                 start=clock.t - 2.0 - 1.5, end=clock.t - 1.5)
    rig.submit([behind])
    rig.run(10.0)
    energy = {name: m.energy_j for name, m in rig.ledger.snapshot_models()}
    assert energy["ahead"] == pytest.approx(energy["on-time"], rel=1e-4)  # moved onto the exporter's clock (to its lag)
    assert rig.ledger.skew.corrected == 1
    offsets = rig.ledger.clock_offsets()
    assert offsets["ahead"] == pytest.approx(-30.0, abs=0.2) and offsets["behind"] == pytest.approx(1.5, abs=0.2)
    assert energy["behind"] > 0 and rig.ledger.spans_late == 0  # reported, left as it is


def test_span_ids_kept_for_duplicates_stay_bounded(clock):
    rig = Rig(clock, max_pending=10, settle_delay_s=5.0)
    rig.run(20.0)
    for b in range(20):  # 200 distinct old spans (no pending slot taken), 10 at a time
        rig.submit([rig.request(1.0 + i * 0.1, 0.5, span_id=1 + b * 10 + i) for i in range(10)])
    assert rig.ledger.spans_expired == 200
    assert len(rig.ledger._seen) <= 2 * 10
    rig.submit([rig.request(1.9, 0.5, span_id=200)])  # the last batch's ids are still known
    assert rig.ledger.spans_duplicate == 1
