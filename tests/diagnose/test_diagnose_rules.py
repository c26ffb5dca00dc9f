"""Diagnosis rules on hand-built factors (each threshold's edges), the factors computed from
hand-built snapshots, the query parameters, and the history recorded from a sampler and a ledger."""

from __future__ import annotations

import dataclasses

import pytest
from rig import Rig

from jouletrace.exporter.diagnose import (
    BATCH_FILL_LOW,
    BATCH_FILL_VERY_LOW,
    BATCH_FULL,
    CAP_SHARE,
    KV_FULL,
    KV_LOW,
    POWER_AT_LIMIT,
    QUEUE_BUILT,
    QUEUE_EMPTY,
    UTIL_LOW,
    UTIL_VERY_LOW,
    EngineFactors,
    EnginePoint,
    GPUFactors,
    GPUPoint,
    History,
    ModelFactors,
    ModelPoint,
    Snapshot,
    diagnose,
    findings,
    parse_query,
)

URL = "http://127.0.0.1:8000/metrics"


def gpu(**kw) -> GPUFactors:
    base = dict(gpu="0", samples=60, power_w=450.0, power_limit_w=700.0, idle_power_w=72.0,
                idle_power_source="given", utilization=0.85, sm_occupancy=0.8, power_cap_share=0.0,
                energy_j=27000.0, static_power_share=0.16, idle_energy_share=0.0)
    return GPUFactors(**{**base, **kw})


def engine(running: float = 30.0, max_num_seqs: float = 64.0, waiting: float = 0.0, kv: float | None = 0.3,
           source: str = "given") -> EngineFactors:
    return EngineFactors(engine=URL, model="llama", samples=60, running=running, running_max=max_num_seqs,
                         max_num_seqs=max_num_seqs, max_num_seqs_source=source, batch_fill=running / max_num_seqs,
                         waiting=waiting, kv_usage=kv, kv_usage_max=kv)


def ids(gpus=(), engines=(), models=()) -> list[str]:
    return [f.id for f in findings(list(gpus) or [gpu()], list(engines), list(models))]


def found(finding_id: str, **kw):
    return next(f for f in findings(kw.get("gpus", [gpu()]), kw.get("engines", []), kw.get("models", []))
                if f.id == finding_id)


# -- batch limited by load ----------------------------------------------------------------------
def test_batch_limited_by_load_edges():
    edge = BATCH_FILL_LOW * 64
    assert "batch_limited_by_load" in ids(engines=[engine(running=edge - 0.1)])
    assert "batch_limited_by_load" not in ids(engines=[engine(running=edge)])
    assert "batch_limited_by_load" not in ids(engines=[engine(running=4, waiting=QUEUE_EMPTY)])
    assert "batch_limited_by_load" not in ids(engines=[engine(running=4, kv=KV_LOW)])
    assert "batch_limited_by_load" not in ids(engines=[engine(running=4, kv=None)])  # no finding without data
    assert found("batch_limited_by_load", engines=[engine(running=BATCH_FILL_VERY_LOW * 64 - 0.1)]).severity == "high"
    assert found("batch_limited_by_load", engines=[engine(running=BATCH_FILL_VERY_LOW * 64)]).severity == "medium"


def test_batch_limited_by_load_evidence_names_its_numbers_and_units():
    f = found("batch_limited_by_load", engines=[engine(running=4, waiting=0.1, kv=0.05)],
              models=[ModelFactors("llama", 5000.0, 2500.0, 2.0, 0.05, 0.95)])
    ev = f.evidence
    assert ev["batch_fill"] == {"value": 0.0625, "unit": "ratio", "threshold": f"< {BATCH_FILL_LOW}"}
    assert ev["waiting_mean"]["threshold"] == f"< {QUEUE_EMPTY}" and ev["kv_cache_usage_mean"]["value"] == 0.05
    assert ev["max_num_seqs"] == {"value": 64.0, "unit": "requests"}
    assert ev["gpu_power_mean"]["unit"] == "W" and ev["static_power_share"]["value"] == 0.16
    assert ev["energy_per_output_token"] == {"value": 2.0, "unit": "J/token"}
    assert f.title == "Batch limited by load: llama" and f.effect and f.action


def test_an_observed_maximum_is_named_as_such():
    f = found("batch_limited_by_load", engines=[engine(running=3, max_num_seqs=8, source="observed maximum")])
    assert "max_num_seqs" not in f.evidence and f.evidence["running_batch_max"]["value"] == 8


# -- batch capped by max_num_seqs ---------------------------------------------------------------
def test_batch_capped_edges():
    full = BATCH_FULL * 16
    assert "batch_capped" in ids(engines=[engine(running=full, max_num_seqs=16, waiting=QUEUE_BUILT, kv=0.3)])
    assert "batch_capped" not in ids(engines=[engine(running=full - 0.1, max_num_seqs=16, waiting=5)])
    assert "batch_capped" not in ids(engines=[engine(running=16, max_num_seqs=16, waiting=QUEUE_BUILT - 0.1)])
    assert ids(engines=[engine(running=16, max_num_seqs=16, waiting=5, kv=KV_FULL)]) == ["memory_bound"]


# -- memory bound -------------------------------------------------------------------------------
def test_memory_bound_edges():
    assert "memory_bound" in ids(engines=[engine(running=10, waiting=QUEUE_BUILT, kv=KV_FULL)])
    assert "memory_bound" not in ids(engines=[engine(running=10, waiting=QUEUE_BUILT, kv=KV_FULL - 0.01)])
    assert "memory_bound" not in ids(engines=[engine(running=10, waiting=QUEUE_BUILT - 0.1, kv=0.99)])
    assert found("memory_bound", engines=[engine(running=10, waiting=9, kv=0.95)]).severity == "medium"
    high = found("memory_bound", engines=[engine(running=10, waiting=10, kv=0.95)])
    assert high.severity == "high" and high.evidence["kv_cache_usage_mean"]["threshold"] == f">= {KV_FULL}"


# -- non-GPU bottleneck -------------------------------------------------------------------------
def test_non_gpu_bottleneck_edges():
    queued = engine(running=20, waiting=QUEUE_BUILT, kv=0.3)
    assert "non_gpu_bottleneck" in ids([gpu(utilization=UTIL_LOW - 0.01)], [queued])
    assert "non_gpu_bottleneck" not in ids([gpu(utilization=UTIL_LOW)], [queued])
    assert "non_gpu_bottleneck" not in ids([gpu(utilization=0.1)], [engine(running=20, waiting=0.9, kv=0.3)])
    assert "non_gpu_bottleneck" not in ids([gpu(utilization=0.1)], [engine(running=20, waiting=5, kv=KV_FULL)])
    assert "non_gpu_bottleneck" not in ids([gpu(utilization=None)], [queued])  # utilization not reported
    very_low = found("non_gpu_bottleneck", gpus=[gpu(utilization=UTIL_VERY_LOW - 0.01)], engines=[queued])
    assert very_low.severity == "high"
    # the mean over the GPUs counts
    two = [gpu(utilization=0.2), gpu(gpu="1", utilization=0.7)]
    f = found("non_gpu_bottleneck", gpus=two, engines=[queued])
    assert f.evidence["gpu_utilization_mean"] == {"value": 0.45, "unit": "ratio", "threshold": f"< {UTIL_LOW}"}


# -- power cap ----------------------------------------------------------------------------------
def test_power_cap_edges():
    assert "power_cap" in ids([gpu(power_cap_share=CAP_SHARE)])
    assert "power_cap" not in ids([gpu(power_cap_share=CAP_SHARE - 0.01, power_w=POWER_AT_LIMIT * 700 - 1)])
    # without clocks-event reasons, power against the limit decides
    assert "power_cap" in ids([gpu(power_cap_share=None, power_w=POWER_AT_LIMIT * 700)])
    assert "power_cap" not in ids([gpu(power_cap_share=None, power_w=POWER_AT_LIMIT * 700 - 1)])
    assert "power_cap" not in ids([gpu(power_cap_share=None, power_limit_w=None, power_w=700)])
    f = found("power_cap", gpus=[gpu(power_cap_share=None, power_w=690.0)])
    assert f.severity == "low" and "sw_power_cap_share" not in f.evidence
    assert f.evidence["power_to_limit"]["value"] == round(690 / 700, 4) and f.title.endswith("GPU 0")


def test_findings_rank_by_severity_then_rule():
    gpus = [gpu(power_cap_share=1.0)]
    engines = [engine(running=20, waiting=20, kv=0.95),  # memory bound, high
               dataclasses.replace(engine(running=20), model="small"),  # batch limited, medium
               dataclasses.replace(engine(running=4), model="tiny")]  # batch limited, high
    got = findings(gpus, engines, [])
    assert [(f.id, f.severity, f.title.split(": ")[1]) for f in got] == [
        ("batch_limited_by_load", "high", "tiny"), ("memory_bound", "high", "llama"),
        ("batch_limited_by_load", "medium", "small"), ("power_cap", "low", "GPU 0")]


# -- factors from snapshots ---------------------------------------------------------------------
def point(t: float, power: float = 300.0, **kw) -> GPUPoint:
    """A GPU drawing `power` W since t = 0, half of its energy attributed."""
    base = dict(up=True, power_w=power, power_limit_w=700.0, utilization=0.8, sm_occupancy=None, power_capped=False,
                energy_j=300.0 * t, settled_until=t, attributed_j=150.0 * t, idle_j=150.0 * t)
    return GPUPoint(**{**base, **kw})


LIGHT = EnginePoint(running=4, waiting=0, kv_usage=0.1)


def snapshots(n: int, engine_point: EnginePoint | None = LIGHT, first_power: float = 300.0):
    out = []
    for t in range(n):
        engines = {(URL, "llama"): engine_point} if engine_point else {}
        models = {"llama": ModelPoint(100.0 * t, 50.0 * t, 10.0 * t, 90.0 * t)}
        out.append(Snapshot(1000.0 + t, {"0": point(t, first_power if t == 0 else 300.0)}, engines, models))
    return out


def test_factors_over_a_window_bounded_by_the_history():
    d = diagnose(snapshots(100), [URL], window_s=20, max_num_seqs=64, idle_power_w=75.0)
    assert d["window_s"] == 20
    (g,) = d["factors"]["gpus"]
    assert g["samples"] == 21 and g["energy_j"] == pytest.approx(6000.0)
    assert g["static_power_share"] == pytest.approx(0.25) and g["idle_power_source"] == "given"
    assert g["idle_energy_share"] == pytest.approx(0.5) and g["power_cap_share"] == 0.0
    (e,) = d["factors"]["engines"]
    assert e["batch_fill"] == pytest.approx(4 / 64) and e["max_num_seqs_source"] == "given"
    (m,) = d["factors"]["models"]
    assert m["energy_per_output_token_j"] == pytest.approx(2.0)
    assert (m["prefill_share"], m["decode_share"]) == (pytest.approx(0.1), pytest.approx(0.9))
    assert [f["id"] for f in d["findings"]] == ["batch_limited_by_load"]
    assert d["missing"] == ["GPU 0: no SM occupancy (GPM: Hopper and newer)"]
    assert diagnose(snapshots(100), [URL], window_s=1000)["window_s"] == 99  # all that is held


def test_without_idle_power_or_max_num_seqs_the_lowest_power_and_largest_batch_stand_in():
    d = diagnose(snapshots(30, first_power=90.0), [URL], window_s=10)
    (g,) = d["factors"]["gpus"]
    assert (g["idle_power_w"], g["idle_power_source"]) == (90.0, "lowest seen")  # seen before the window
    assert g["static_power_share"] == pytest.approx(0.3)
    (e,) = d["factors"]["engines"]
    assert (e["max_num_seqs"], e["max_num_seqs_source"], e["batch_fill"]) == (4, "observed maximum", 1.0)
    assert any(m.startswith("max_num_seqs: not given") for m in d["missing"])
    assert any("idle power not given" in m and "90 W" in m for m in d["missing"])


def test_missing_inputs_are_listed_instead_of_findings():
    d = diagnose(snapshots(30, engine_point=None), [URL], window_s=20, max_num_seqs=64)
    assert d["factors"]["engines"] == [] and d["findings"] == []
    assert f"engine metrics: {URL} answered no scrape in the window" in d["missing"]
    d = diagnose(snapshots(30, engine_point=None), [], window_s=20)
    assert any(m.startswith("engine metrics: no --engine-metrics URL is configured") for m in d["missing"])
    quiet = [dataclasses.replace(s, models={"llama": ModelPoint(0, 0, 0, 0)}) for s in snapshots(30)]
    d = diagnose(quiet, [URL], window_s=20, max_num_seqs=64)
    assert d["factors"]["models"] == [] and any(m.startswith("spans: no request energy") for m in d["missing"])
    unphased = [dataclasses.replace(s, models={"llama": ModelPoint(100.0 * i, 50.0 * i, 0, 0)})
                for i, s in enumerate(snapshots(30))]
    d = diagnose(unphased, [URL], window_s=20, max_num_seqs=64)
    assert d["factors"]["models"][0]["prefill_share"] is None
    assert "llama: spans without prefill/decode durations (no phase shares)" in d["missing"]
    down = [dataclasses.replace(s, gpus={"0": point(i, up=False)}) for i, s in enumerate(snapshots(30))]
    d = diagnose(down, [URL], window_s=20, max_num_seqs=64)
    assert d["factors"]["gpus"] == [] and "GPU 0: no reading in the window" in d["missing"]
    d = diagnose(snapshots(1), [URL])
    assert d["window_s"] == 0 and d["findings"] == [] and d["missing"][0].startswith("history: 1 snapshot(s)")


def test_query_parameters():
    assert parse_query({"window": "15", "max_num_seqs": "64", "idle_power": "72.5"}) == \
        {"window_s": 15.0, "max_num_seqs": 64, "idle_power_w": 72.5}
    assert parse_query({}) == {}
    for query, message in (({"window": "0"}, "window must be seconds > 0"), ({"window": "nan"}, "window"),
                           ({"max_num_seqs": "1.5"}, "max_num_seqs must be an integer >= 1"),
                           ({"idle_power": "-3"}, "idle_power must be watts > 0"),
                           ({"max-num-seqs": "8"}, "unknown parameter 'max-num-seqs'")):
        with pytest.raises(ValueError, match=message):
            parse_query(query)


# -- the history, from a sampler and a ledger ---------------------------------------------------
def test_history_records_the_ledger_phases_and_gpu_totals(clock):
    rig = Rig(clock, load=lambda t: 0.6, settle_delay_s=20.0)
    history = History(rig.samplers, rig.ledger, list, clock=clock, hold_s=30.0)
    rig.run(2.0)
    requests = [rig.request(3.0 + i, 4.0, prompt=2000, completion=200, prefill=1.0, rid=f"r{i}") for i in range(10)]
    for i in range(40):
        rig.run(1.0)
        history.record()
        if i == 15:
            rig.submit(requests)  # their spans arrive once they have ended
    assert len(history.snapshots()) == 31  # hold_s / period_s, and the newest
    ((_, totals),) = rig.ledger.snapshot_models()
    assert totals.prefill_energy_j + totals.decode_energy_j == pytest.approx(totals.energy_j, rel=1e-9)
    assert totals.prefill_energy_j > 0 and totals.decode_energy_j > 0
    d = history.diagnose(window_s=30.0)
    (g,) = d["factors"]["gpus"]
    assert g["power_limit_w"] == 700.0 and g["power_cap_share"] == 0.0 and 0 < g["static_power_share"] < 1
    assert 0 < g["idle_energy_share"] < 1
    (m,) = d["factors"]["models"]
    assert m["prefill_share"] + m["decode_share"] == pytest.approx(1.0, abs=1e-3)
    assert any(s.startswith("engine metrics: no --engine-metrics") for s in d["missing"])
