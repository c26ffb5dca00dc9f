"""`jouletrace plan budget` end to end on a small simulated fleet: two racks of two servers (the
simulated engine and power model under the load generator's bursty, diurnal arrivals, in
accelerated time), their exporters' power-budget series backfilled into a real Prometheus (Debian's
`promtool tsdb create-blocks-from openmetrics`, then `prometheus` serving the blocks), the planner
reading it through the HTTP API. Checked against the 100 ms traces the series came from: the group
series is the nodes' windowed peaks summed at each step, it bounds the true 100 ms group power,
at most the risk share of 100 ms intervals exceeds the level planned at, the caps hold the
budget at every 100 ms of the scaled fleet, chunked queries answer as one. Errors are one line,
exit code 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from servers import BackgroundApp, PrometheusProcess, backfill, free_port

from jouletrace.budget.plan import Question, budgets, plan
from jouletrace.budget.prometheus import Prometheus
from jouletrace.simulator.fleet import Shape, make_servers, run_fleet, scrape_ticks, windowed_peaks, write_openmetrics

SHAPE = Shape(replicas=1, duration_s=240.0, day_s=240.0)
SCRAPE_S, WINDOW_S, STEP_S = 15.0, 30.0, 15.0
RISK = 0.1
BUDGET_W = 4000.0   # two servers of 4 x 700 W: 5,600 W at nameplate


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    run = run_fleet(make_servers({"r1": 2, "r2": 2}, SHAPE, seed=3), SHAPE)
    start = float(int(time.time()) - 3 * 3600)
    with open(d / "fleet.om", "w") as f:
        write_openmetrics(run, f, start, SCRAPE_S, WINDOW_S)
    backfill(str(d / "fleet.om"), str(d / "tsdb"))
    prom = PrometheusProcess([], data=str(d / "tsdb"))
    yield run, prom, start, start + SHAPE.duration_s
    prom.stop()


def question(start: float, end: float, **kw) -> Question:
    return Question("rack", start, end, STEP_S, budgets(f"{BUDGET_W:g}"), RISK, **kw)


@pytest.fixture(scope="module")
def planned(fleet):
    run, prom, start, end = fleet
    plans, notes = plan(Prometheus(f"http://127.0.0.1:{prom.port}"), question(start, end))
    return {p.group: p for p in plans}, notes


def test_the_group_series_are_the_nodes_power_summed_at_each_step(fleet, planned):
    run, _, start, end = fleet
    plans, notes = planned
    assert sorted(plans) == ["r1", "r2"] and notes == []
    node_peaks = windowed_peaks(run.power.sum(axis=1), WINDOW_S)
    for group, p in plans.items():
        rows = [k for k, s in enumerate(run.servers) if s.group == group]
        assert p.nodes == [run.servers[k].node for k in rows] and len(p.gpus) == 2 * SHAPE.gpus
        steps = round(SHAPE.duration_s / STEP_S)
        assert steps - 1 <= len(p.power) <= steps and steps - 1 <= len(p.bound) <= steps
        settled = start + 2 * SCRAPE_S  # every node has been scraped
        assert set(p.times[p.times >= settled]) == set(p.bound_times[p.bound_times >= settled])
        for t, sample, bound in zip(p.times, p.power, p.bound[-len(p.times):]):
            if t < settled:
                continue
            low = high = total = 0.0
            for k in rows:
                ticks = scrape_ticks(run.servers[k].node, SCRAPE_S, SHAPE.ticks)
                at = start + ticks * 0.1
                total += run.power[k, :, ticks[at <= t + 1e-6][-1] - 1].sum()   # each GPU's latest sample
                # the step's range holds the node's scrapes after t - step, and may hold one at t - step
                low += node_peaks[k, ticks[(at > t - STEP_S + 1e-6) & (at <= t + 1e-6)] - 1].max()
                high += node_peaks[k, ticks[(at >= t - STEP_S - 1e-6) & (at <= t + 1e-6)] - 1].max()
            assert sample == pytest.approx(total, rel=1e-6)
            assert low - 1e-3 <= bound <= high + 1e-3
        truth = run.group_power(group)
        assert p.bound.max() >= truth.max() >= p.distribution["peak"]   # the bound holds; the sample is of the truth
        assert p.mean_w == pytest.approx(truth.mean(), rel=0.05)
        assert p.intervals == pytest.approx(2 * SHAPE.ticks, rel=0.1)
        assert p.nameplate_w == 2 * SHAPE.gpus * 700.0 and p.servers_nameplate == 1


def test_the_servers_that_fit_are_planned_at_the_risk_quantile_of_the_sample(planned):
    for group, p in planned[0].items():
        assert p.level_w == np.quantile(p.power, 1 - RISK, method="higher")
        assert (p.power > p.level_w).mean() <= RISK
        assert p.servers_fit == math.floor(2 * BUDGET_W / p.level_w)


def test_the_caps_hold_the_budget_at_every_100ms_of_the_scaled_fleet(fleet, planned):
    run = fleet[0]
    capped = [p for p in planned[0].values() if p.cap_w is not None and math.isfinite(p.cap_w)]
    assert capped, "the budget needs no cap in any rack: lower BUDGET_W"
    for p in capped:
        assert 0 < p.cap_w < 700.0 and p.cap_at is not None
        rows = [k for k, s in enumerate(run.servers) if s.group == p.group]
        held = np.minimum(run.power[rows], p.cap_w).sum(axis=(0, 1)) * p.scale
        assert held.max() <= p.budget_w * (1 + 1e-9)


def test_chunked_range_queries_answer_as_one(fleet, planned):
    _, prom, start, end = fleet
    small, _ = plan(Prometheus(f"http://127.0.0.1:{prom.port}", max_points=7), question(start, end))
    for p in small:
        whole = planned[0][p.group]
        assert np.array_equal(p.times, whole.times) and np.array_equal(p.power, whole.power)
        assert (p.cap_w, p.cap_at, p.servers_fit) == (whole.cap_w, whole.cap_at, whole.servers_fit)


def jouletrace(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jouletrace", "plan", "budget", *argv], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"})


def test_the_command_prints_the_plan_and_writes_the_cap_requests(fleet, planned, tmp_path):
    _, prom, start, end = fleet
    done = jouletrace("--prometheus-url", f"http://127.0.0.1:{prom.port}", "--range", f"{SHAPE.duration_s:g}s",
                      "--end", f"{end:.0f}", "--step", f"{STEP_S:g}s", "--budget-w", f"{BUDGET_W:g}", "--risk",
                      str(RISK), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "assumptions:" in done.stdout and "never a sum of each node's own distribution" in done.stdout
    saved = json.loads((tmp_path / "budget_plan.json").read_text())
    assert [g["servers_at_risk"] for g in saved["groups"]] == [planned[0][g].servers_fit for g in ("r1", "r2")]
    assert (tmp_path / "budget_plan.png").stat().st_size > 0
    dynamo = (tmp_path / "caps-dynamo.sh").read_text()
    admin = (tmp_path / "caps-jouletrace.sh").read_text()
    for p in planned[0].values():
        if p.cap_w is not None and math.isfinite(p.cap_w):
            cap = math.floor(p.cap_w)
            for node in p.nodes:  # one pod per server here, holding all its GPUs
                assert f"-n inference {node}-r0 dynamo.nvidia.com/gpu-power-limit={cap}\n" in dynamo
                assert f"http://{node}:9464/api/v1/powercap" in admin
            assert f'"watts": {cap}' in admin and '"gpus": [0, 1, 2, 3]' in admin


def test_errors_are_one_line_exit_2(fleet):
    _, prom, start, end = fleet
    url = f"http://127.0.0.1:{prom.port}"
    window = ("--range", f"{SHAPE.duration_s:g}s", "--end", f"{end:.0f}", "--step", "15s", "--budget-w", "4000")
    from aiohttp import web

    async def not_prometheus(request):  # a stand-in: no real Prometheus answers a range query with a vector
        series = {"metric": {"node": "n1", "rack": "r1"}, "value": [0, "1"]}
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": [series]}})

    app = web.Application()
    app.router.add_get("/api/v1/{kind}", not_prometheus)
    stand_in = BackgroundApp(app)
    try:
        cases = [
            (("--prometheus-url", f"http://127.0.0.1:{free_port()}", *window), "cannot reach Prometheus"),
            (("--prometheus-url", url, *window, "--group-label", "row"), "has a `row` label"),
            (("--prometheus-url", url, "--budget-w", "4000", "--end", f"{start - 86400:.0f}", "--range", "1h"),
             "no jouletrace_node_power_max_watts"),
            (("--prometheus-url", stand_in.url, *window), "is not a matrix"),
            (("--prometheus-url", url, *window, "--risk", "1.5"), "--risk 1.5"),
            (("--prometheus-url", url, *window, "--step", "0s"), "--step: expected a duration"),
            (("--prometheus-url", url, *window, "--budget-w", "r1=lots"), "--budget-w: expected W or GROUP=W"),
            (("--prometheus-url", url, *window, "--budget-w", "r1=9000"), "no budget for rack=r2"),
            (("--prometheus-url", url, *window, "--group-label", "a-b"), "--group-label 'a-b'"),
            (("--prometheus-url", url, *window, "--group-label", "__rack"), "--group-label '__rack'"),
            (("--prometheus-url", url, *window, "--group-label", "node"), "--group-label 'node'"),
            (("--prometheus-url", url, *window, "--deadline", "fast"), "--deadline: expected [basis:]ms"),
            (("--budget-w",), "expected one argument"),
        ]
        for argv, says in cases:
            done = jouletrace(*argv)
            assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, (argv, done.stderr)
            assert "Traceback" not in done.stderr
    finally:
        stand_in.stop()
