"""The exporter's side on a fake clock: latency from spans (a consumer of the ledger), the per-window
history with the limit in force, the metrics (advice, not enough data, headroom) and the latency
guard's rollback, driven through the ledger and samplers of simulated GPUs (tests/rig.py)."""

import dataclasses
import json
import re

import numpy as np
import pytest
from prometheus_client import generate_latest
from rig import Rig
from servers import sum_samples
from stack import TOKEN

from jouletrace.exporter.ledger.records import RequestBatch, RequestRecord
from jouletrace.exporter.powercap.advisor import PowerCap, PowerCapConfig
from jouletrace.exporter.powercap.latency import SpanLatency, weighted_median
from jouletrace.exporter.sinks.prometheus.powercap import PowerCapCollector
from jouletrace.exporter.sinks.prometheus.registry import build_registry
from jouletrace.planning import deadlines


def take(spans: SpanLatency, records: list[RequestRecord]) -> None:
    """Hand `spans` the records as a ledger that took every row would."""
    batch = RequestBatch.from_records(records)
    spans.record(batch.rows, batch)


def record(end, decode, completion, kind="text", model="llama", duration=None):
    duration = duration or decode + 0.1
    return RequestRecord(f"r{end}-{completion}", model, end - duration, end, 10, completion, prefill_s=0.05,
                         decode_s=decode, output_kind=kind, output_count=1 if kind != "text" else 0)


def test_span_latency_per_model(clock):
    spans = SpanLatency(hold_s=100.0, max_rows=200, clock=clock)
    t = clock.t
    take(spans, [
        record(t - 5, 1.0, 51),                    # 20 ms per token gap, 50 gaps
        record(t - 4, 0.9, 11),                    # 90 ms, 10 gaps
        record(t - 3, float("nan"), 40),           # no decode time: no ITL
        record(t - 2, 0.5, 1),                     # one token: no gap
        record(t - 1, 0.0, 0, kind="image", model="flux", duration=2.5),
        record(t - 50, 0.1, 11),                   # outside the window
    ])
    lat = spans.window(t - 10, t)
    assert lat["llama"]["median_itl"] == pytest.approx(20.0)  # the median token gap
    assert lat["llama"]["p99_tpot"] == pytest.approx(20 + 0.99 * 70)  # over requests
    assert "generation_latency" not in lat["llama"]
    assert lat["flux"] == {"generation_latency": pytest.approx(2500.0)}
    clock.advance(200)
    take(spans, [record(clock.t, 1.0, 51)])
    assert spans.window(t - 10, t) == {}  # held for hold_s only
    assert weighted_median(np.array([3.0, 1.0, 2.0]), np.array([1, 1, 5])) == 2.0


def test_span_latency_is_on_the_exporters_clock_and_counts_a_request_once(clock):
    """A sender whose clock is 30 s ahead: its requests' latencies fall where the exporter saw them
    end, as their energy does; a request sent 6 times counts once."""
    rig = Rig(clock, settle_delay_s=2.0)
    spans = SpanLatency(hold_s=100.0, max_rows=200, clock=clock)
    rig.ledger.add_consumer(spans.record)
    t = clock.t
    fast = RequestBatch.from_records([dataclasses.replace(record(t + 30 - 0.5, 1.0, 51), trace_id=bytes(16),
                                                          span_id=b"\1" * 8)])  # 20 ms a token gap, 50 gaps
    slow = RequestBatch.from_records([dataclasses.replace(record(t + 30 - 0.4, 0.9, 11), trace_id=bytes(16),
                                                          span_id=b"\2" * 8)])  # 90 ms, 10 gaps
    rig.ledger.submit(fast)
    for _ in range(6):
        rig.ledger.submit(slow)
    assert rig.ledger.spans_duplicate == 5
    assert spans.window(t + 20, t + 40) == {}
    lat = spans.window(t - 5, t)["llama"]
    assert lat["median_itl"] == pytest.approx(20.0)  # the 50 gaps of one outweigh the 10 of the other


def test_span_latency_holds_at_most_twice_the_pending_limit(clock):
    rig = Rig(clock, max_pending=100)
    rig.run(20.0)
    pc = PowerCap(PowerCapConfig(), rig.samplers, rig.ledger, clock=clock)
    for b in range(5):  # 250 requests in 5 batches, each 1 s of decode; ended before the ledger's horizon
        rig.submit([rig.request(1.0 + i / 100, 1.05, completion=51 + b, prefill=0.05, span_id=1 + b * 50 + i)
                    for i in range(50)])
    assert rig.ledger.pending == 0 and rig.ledger.spans_accepted == 250
    gaps = pc.latency.window(clock.t - 30, clock.t)["m"]
    assert gaps["median_itl"] == pytest.approx(1000 / 53)  # the oldest 50 (51 tokens) were forgotten
    assert sum(len(c["end"]) for _, c in pc.latency._chunks) == 200


class Deployment:
    """A simulated GPU at load 0.8 (575 W uncapped) with one request of `model` ending every second,
    decoding 51 tokens at `itl_s` a token; the PowerCap steps every second as on its thread."""

    def __init__(self, clock, tmp_path, **cfg):
        self.rig = Rig(clock, settle_delay_s=2.0, window_s=10.0, load=0.8)
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN)
        self.audit = tmp_path / "audit.jsonl"
        self.pc = PowerCap(PowerCapConfig(token_file=str(self.token_file), audit_log=str(self.audit),
                                          deadlines=deadlines("25,50"), **cfg), self.rig.samplers, self.rig.ledger,
                           clock=clock)
        self.registry = build_registry([PowerCapCollector(self.pc)])
        self.rig.run(3.0)

    @property
    def device(self):
        return self.rig.devices[0]

    def drive(self, seconds: int, itl_s: float) -> None:
        for _ in range(seconds):
            now = self.rig.clock.t - self.rig.t0
            decode = itl_s * 50
            self.rig.submit([self.rig.request(now - decode - 0.05, decode + 0.05, completion=51, prefill=0.05,
                                              model="llama")])
            self.rig.run(1.0)
            self.pc.step()

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()


def test_history_observes_each_limit_and_advises(clock, tmp_path):
    d = Deployment(clock, tmp_path)
    assert 'jouletrace_powercap_insufficient_data{backend="sim",model="",reason="no_windows"} 1.0' in d.metrics()
    d.drive(40, itl_s=0.020)
    text = d.metrics()
    assert 'jouletrace_powercap_insufficient_data{backend="sim",model="llama",reason="too_few_limits"} 1.0' in text
    assert "jouletrace_powercap_recommended_watts{" not in text
    assert sum_samples(text, "jouletrace_power_headroom_watts", gpu="0") == pytest.approx(700 - 575 * 1.02, abs=3)
    d.device.set_power_limit_w(400.0)  # outside the exporter: the history reads it from the GPU
    d.drive(40, itl_s=0.030)
    points = list(d.pc.history.points)
    assert [p.power_limit_w for p in points] == [700.0] * 3 + [400.0] * 3  # the window with the change left out
    for p in points:
        assert p.model == "llama" and p.gpus == 1 and p.tokens_per_s == pytest.approx(50.0, rel=0.05)
        assert p.latency_ms["median_itl"] == pytest.approx(20.0 if p.power_limit_w == 700 else 30.0)
        assert p.avg_power_w == pytest.approx(min(p.power_limit_w, 575.0), rel=0.03)
    at = {p.power_limit_w: p.energy_per_token_j for p in points}
    assert at[400.0] < 0.8 * at[700.0]  # the same tokens for less power
    text = d.metrics()
    assert sum_samples(text, "jouletrace_powercap_recommended_watts", model="llama", deadline_ms="25",
                       basis="median_itl") == 700.0
    assert sum_samples(text, "jouletrace_powercap_recommended_watts", model="llama", deadline_ms="50",
                       basis="median_itl") == 400.0
    assert sum_samples(text, "jouletrace_powercap_limits_observed", model="llama") == 2
    assert "jouletrace_powercap_insufficient_data{" not in text.replace("# HELP jouletrace_powercap_insufficient", "")
    assert sum_samples(text, "jouletrace_power_headroom_watts", gpu="0") == pytest.approx(0.0, abs=3)
    assert "jouletrace_powercap_budget_recommended_watts{" not in text  # no budget given
    assert re.search(r'jouletrace_powercap_changes_total\{action="set"\} 0\.0', text)


def test_budget_advice_for_this_exporters_gpus(clock, tmp_path):
    d = Deployment(clock, tmp_path, budget_w=500.0)
    d.drive(40, itl_s=0.020)
    d.device.set_power_limit_w(400.0)
    d.drive(40, itl_s=0.030)
    text = d.metrics()
    # 700 W does not fit 500 W; 400 W does and meets 50 ms
    assert sum_samples(text, "jouletrace_powercap_budget_recommended_watts", deadline_ms="50") == 400.0
    assert "deadline_ms=\"25\"" not in text.split("jouletrace_powercap_budget_recommended_watts gauge")[1]


def test_the_guard_rolls_back_a_change_that_breaks_the_deadline(clock, tmp_path):
    d = Deployment(clock, tmp_path, actuation=True, guard=deadlines("25")[0], rollback_windows=2, cooldown_s=0)
    d.drive(20, itl_s=0.020)
    d.pc.actuator.set(600.0, None, "token:abc from 10.0.0.1", "try 600 W")
    d.drive(40, itl_s=0.030)  # 30 ms > 25 ms at 600 W
    lines = [json.loads(line) for line in d.audit.read_text().splitlines()]
    assert [(x["action"], x["from_w"], x["to_w"]) for x in lines] == [("set", 700.0, 600.0), ("rollback", 600.0, 700.0)]
    assert lines[1]["why"] == "median_itl 30.0 ms > 25 ms in 2 consecutive windows at 600 W"
    assert d.device.status().power_limit_w == 700.0
    assert sum_samples(d.metrics(), "jouletrace_powercap_changes_total", action="rollback") == 1
