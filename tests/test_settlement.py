"""Settlement: waiting for the requests the engine runs, the adaptive delay, the bounds and fallbacks."""

from __future__ import annotations

import pytest
from rig import FakeClock, Rig

from jouletrace.exporter.ledger.settlement import ADAPTIVE, ADAPTIVE_FLOOR_S, ENGINE, FIXED, GAUGE_LAG_S

URL = "http://engine/metrics"


class Served:
    """Requests served by one engine on a rig: each second the engine is scraped (requests running
    and finished so far) and the spans of requests that ended `export_s` ago are sent."""

    def __init__(self, rig: Rig, requests: list, export_s: float = 1.0, engine: bool = True, gauge_lag_s: float = 0.0):
        """`gauge_lag_s`: how far behind the engine's gauges are when scraped (a busy engine
        publishes them as it processes its steps' outputs)."""
        self.rig, self.requests, self.export_s, self.engine = rig, list(requests), export_s, engine
        self.gauge_lag_s = gauge_lag_s
        self.sent: set[int] = set()
        self.restarted_at = float("inf")
        if engine:
            rig.ledger.watch_engines([URL])

    def values(self, t: float) -> dict:
        """The engine's gauges at `t`; after a restart it counts only the requests started since."""
        since = self.restarted_at if t >= self.restarted_at else float("-inf")
        running = sum(since <= r.start and r.start + r.queue_s <= t < r.end for r in self.requests)
        done = sum(since <= r.start and r.end <= t for r in self.requests)
        return {"m": {"requests_running": float(running), "requests_succeeded": float(done)}}

    def run(self, seconds: float, up: bool = True) -> None:
        for _ in range(int(seconds)):
            self.rig.run(1.0)
            t = self.rig.clock.t
            if self.engine:  # the engine reads its gauges halfway through the scrape
                self.rig.ledger.engine_sample(URL, t - 0.01, t, self.values(t - 0.005 - self.gauge_lag_s) if up else None)
            due = [r for i, r in enumerate(self.requests) if i not in self.sent and r.end + self.export_s <= t]
            self.sent |= {i for i, r in enumerate(self.requests) if r.end + self.export_s <= t}
            if due:
                self.rig.submit(due)


def long_requests(rig: Rig, n: int = 6, duration: float = 40.0) -> list:
    """Overlapping requests of `duration` s (4x a 10 s settle delay), then short ones."""
    reqs = [rig.request(5.0 + 7.0 * i, duration, rid=f"long{i}", span_id=i + 1, completion=2000) for i in range(n)]
    reqs += [rig.request(6.0 + 3.0 * i, 2.0, rid=f"short{i}", span_id=100 + i, completion=50) for i in range(20)]
    return reqs


def test_long_requests_keep_all_their_energy_when_the_engine_is_scraped():
    """Requests of 4x the old settle delay get what an unbounded delay gives them (1 %), none late."""
    energy = {}
    for policy in ("engine", "unbounded", "fixed"):
        clock = FakeClock()
        delay = {"engine": None, "unbounded": 400.0, "fixed": 10.0}[policy]
        rig = Rig(clock, settle_delay_s=delay, max_hold_s=300.0, load=lambda t: 0.7, seed=3)
        served = Served(rig, long_requests(rig), engine=policy == "engine")
        served.run(100)
        rig.run(420.0 if policy == "unbounded" else 20.0)
        energy[policy] = rig.models()["m"].energy_j
        if policy == "engine":
            assert rig.ledger.spans_late == rig.ledger.spans_expired == 0
            assert rig.ledger.settlement.reason == ENGINE
            assert rig.attributed_j() + rig.idle_j() == pytest.approx(rig.measured_j(), rel=1e-9)
        if policy == "fixed":
            assert rig.ledger.spans_late > 0  # what the engine scrape prevents
    assert energy["engine"] == pytest.approx(energy["unbounded"], rel=0.01)
    assert energy["fixed"] < 0.9 * energy["unbounded"]


def test_with_nothing_in_flight_energy_is_final_seconds_after_the_request_ends(clock):
    rig = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5)
    served = Served(rig, [rig.request(3.0 + 5.0 * i, 1.5, span_id=i + 1) for i in range(8)], export_s=1.0)
    served.run(50)
    fig = rig.ledger.settlement_figures()
    assert sum(fig.lag_counts) == 8
    # export delay (1 s) + the gauges' lag + the scrape and pass that follow (1 s each)
    assert fig.lag_sum / 8 <= 1.0 + GAUGE_LAG_S + 2.0 + 0.5
    # idle, the hold is the export delay, the gauges' lag and two scrape periods (the scrape
    # answered an export delay ago, and the one GAUGE_LAG_S before it; 1 s each)
    assert max(fig.holds.values()) <= 3.0 + GAUGE_LAG_S + 0.05 and fig.reason == ENGINE


def test_a_request_whose_span_never_comes_holds_only_up_to_max_hold(clock):
    rig = Rig(clock, settle_delay_s=None, max_hold_s=30.0, load=lambda t: 0.5)
    lost = rig.request(2.0, 1000.0, span_id=99)
    served = Served(rig, [lost, *[rig.request(3.0 + 4.0 * i, 1.0, span_id=i + 1) for i in range(20)]])
    served.sent.add(0)  # its span is lost
    served.run(20)
    assert max(rig.ledger.settlement_figures().holds.values()) >= 15.0  # held for it
    served.run(60)
    fig = rig.ledger.settlement_figures()
    assert fig.holds_expired == 1
    assert max(fig.holds.values()) <= 31.0
    assert rig.ledger.spans_late == 0


def test_a_request_that_ends_without_a_span_holds_only_until_its_end_is_seen(clock):
    """Aborted, or its span sampled out: once the engine no longer runs it, nothing is waited for."""
    rig = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5)
    aborted = rig.request(2.0, 10.0, span_id=99)
    served = Served(rig, [aborted, *[rig.request(3.0 + 2.0 * i, 1.5, span_id=i + 1) for i in range(20)]])
    served.sent.add(0)
    served.run(10)
    assert max(rig.ledger.settlement_figures().holds.values()) >= 7.0  # held while it ran
    served.run(30)
    fig = rig.ledger.settlement_figures()
    assert max(fig.holds.values()) <= 5.0 + GAUGE_LAG_S and fig.holds_expired == 0  # the short requests in flight
    assert rig.ledger.spans_late == 0


def test_an_engine_restart_or_outage_falls_back_to_the_adaptive_delay(clock):
    rig = Rig(clock, settle_delay_s=None, max_hold_s=200.0, load=lambda t: 0.5)
    killed = rig.request(2.0, 500.0, span_id=99)  # running when the engine restarts: never ends
    served = Served(rig, [killed, *[rig.request(3.0 + 4.0 * i, 1.0, span_id=i + 1) for i in range(40)]])
    served.sent.add(0)
    served.run(20)
    served.restarted_at = clock.t
    served.run(20)
    fig = rig.ledger.settlement_figures()
    assert fig.fallbacks["engine_restart"] == 1 and fig.holds_expired == 0
    assert max(fig.holds.values()) < 10.0 and fig.reason == ENGINE  # the moments before the restart let go
    served.run(5, up=False)  # a few failed scrapes: what is held stays held
    assert rig.ledger.settlement_figures().reason == ENGINE
    served.run(30, up=False)
    fig = rig.ledger.settlement_figures()
    assert fig.fallbacks["engine_down"] == 1 and fig.reason == ADAPTIVE
    served.run(5)
    assert rig.ledger.settlement_figures().reason == ENGINE


def test_without_an_engine_the_delay_follows_the_spans_age(clock):
    rig = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5)
    served = Served(rig, [rig.request(2.0 + 10.0 * i, 20.0, span_id=i + 1) for i in range(6)], engine=False)
    served.run(10)
    fig = rig.ledger.settlement_figures()
    assert fig.reason == ADAPTIVE and min(fig.holds.values()) >= ADAPTIVE_FLOOR_S
    served.run(60)
    fig = rig.ledger.settlement_figures()
    assert 1.25 * 21.0 <= max(fig.holds.values()) <= 1.25 * 21.0 + 1.5  # spans arrive 21 s after they start
    assert rig.ledger.spans_late <= 2  # those running before the first span told the age


def test_a_nearly_full_ledger_ends_holds(clock):
    rig = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5, max_pending=50)
    stuck = rig.request(1.0, 1000.0, span_id=999)
    served = Served(rig, [stuck, *[rig.request(2.0 + 0.5 * i, 0.4, span_id=i + 1) for i in range(120)]])
    served.sent.add(0)
    served.run(70)
    fig = rig.ledger.settlement_figures()
    assert fig.holds_expired >= 1 and rig.ledger.pending < 50  # never full: no sender refused
    assert max(fig.holds.values()) < 30.0  # the stuck request has run for 70 s


def test_a_fixed_delay_is_kept(clock):
    rig = Rig(clock, settle_delay_s=7.0)
    rig.run(12.0)
    fig = rig.ledger.settlement_figures()
    assert fig.reason == FIXED and fig.holds[0] == pytest.approx(7.0, abs=1.0)


def test_requests_that_start_and_end_between_two_scrapes_are_waited_for(clock):
    """A 0.6 s request between two scrapes of 1 s is in no gauge: its time waits until the scrape
    after it answered an export delay ago, so none is late however its span's delay falls."""
    rig = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5)
    served = Served(rig, [rig.request(3.2 + 1.0 * i, 0.6, span_id=i + 1) for i in range(20)], export_s=3.0)
    served.run(40)
    assert rig.ledger.spans_late == 0 and rig.ledger.settlement.reason == ENGINE
    fig = rig.ledger.settlement_figures()
    assert sum(fig.lag_counts) == 20
    # export delay (3.2 s as sent here) + the gauges' lag + the scrape after the request's end + the pass
    assert fig.lag_sum / 20 <= 3.2 + GAUGE_LAG_S + 1.0 + 1.0 + 0.5


def test_an_engine_that_has_not_answered_yet_holds_what_runs_before_its_first_scrape(clock):
    """Requests start before the engine's first answer (a busy machine, an engine that came up
    late): their time waits for it, STALE_S at most, then the adaptive delay takes over."""
    rig = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5)
    served = Served(rig, [rig.request(1.0, 25.0, rid=f"long{i}", span_id=i + 1, completion=2000) for i in range(3)])
    served.run(10, up=False)
    assert rig.ledger.settlement_figures().reason == ENGINE and max(rig.ledger.settlement_figures().holds.values()) >= 9
    served.run(40)
    assert rig.ledger.spans_late == 0 and rig.ledger.settlement_figures().fallbacks["engine_down"] == 0
    assert sum(rig.ledger.settlement_figures().lag_counts) == 3

    silent = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5)
    Served(silent, []).run(40, up=False)
    fig = silent.ledger.settlement_figures()
    assert fig.fallbacks["engine_down"] == 1 and fig.reason == ADAPTIVE
    assert max(fig.holds.values()) <= ADAPTIVE_FLOOR_S + 1.0


def test_gauges_that_lag_the_engine_by_a_step_lose_no_request(clock):
    """A busy engine's gauges are a step behind: a request is in them only ~1.5 s after it started.
    Its time waits for scrapes GAUGE_LAG_S past it, so none is late."""
    rig = Rig(clock, settle_delay_s=None, max_hold_s=300.0, load=lambda t: 0.5)
    reqs = [rig.request(3.3 + 2.0 * i, 3.0, span_id=i + 1) for i in range(15)]
    served = Served(rig, reqs, export_s=1.0, gauge_lag_s=1.5)
    served.run(50)
    assert rig.ledger.spans_late == 0 and rig.ledger.settlement.reason == ENGINE
    assert sum(rig.ledger.settlement_figures().lag_counts) == 15
