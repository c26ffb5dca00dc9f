"""Power-cap advice from synthetic operating points: the least-energy limit within each deadline,
the budget plan, not enough data, load generator results as points, and the option parsers."""

import pytest

from jouletrace.exporter.config import switch
from jouletrace.planning import (Deadline, OperatingPoint, advise, combine, deadline, deadlines, describe,
                                 optional_deadline, point_from_result)

# The simulator's Llama-3.1-8B / H100 figures at max_num_seqs 512 (benchmarks/RESULTS.md, issue 5):
# limit W -> (J/token, median ITL ms, tokens/s)
BATCH_512 = {200: (0.0427, 84.9, 4689), 300: (0.0474, 61.6, 6332), 400: (0.0546, 53.7, 7329),
             500: (0.0617, 49.2, 8099), 600: (0.0687, 46.0, 8728), 700: (0.0756, 43.8, 9259)}


def points(table=BATCH_512, model="llama", **kw):
    return [OperatingPoint(model, float(w), j, tps, min(w, 690.0), {"median_itl": itl, "p99_tpot": itl * 1.3}, **kw)
            for w, (j, itl, tps) in table.items()]


def test_recommends_the_least_energy_limit_within_each_deadline():
    (a,) = advise(points(), deadlines("50,100,45,p99_tpot:70"))
    assert a.model == "llama" and a.limits_w == (200, 300, 400, 500, 600, 700) and not a.insufficient
    by = {str(r.deadline): r for r in a.recommendations}
    assert by["median_itl:50"].point.power_limit_w == 500  # 49.2 ms, the least J/token under 50
    assert by["median_itl:100"].point.power_limit_w == 200
    assert by["median_itl:45"].point.power_limit_w == 700
    assert by["p99_tpot:70"].point.power_limit_w == 400  # p99 TPOT 1.3 x ITL: 69.8 ms at 400 W
    r = by["median_itl:50"]
    assert r.reference.power_limit_w == 700
    assert r.energy_saving == pytest.approx(1 - 0.0617 / 0.0756)  # 18 %
    assert r.throughput_change == pytest.approx(8099 / 9259 - 1)  # -13 %
    assert by["median_itl:45"].energy_saving == 0.0


def test_a_deadline_no_limit_meets_says_why():
    (a,) = advise(points(), [Deadline("median_itl", 40.0), Deadline("generation_latency", 5000.0)])
    tight, other = a.recommendations
    assert tight.point is None and "no observed power limit meets median_itl <= 40 ms" in tight.reason
    assert "fastest: 43.8 ms at 700 W" in tight.reason
    assert other.point is None and other.reason == "no generation_latency measured"
    lines = describe([a])
    assert lines == [f"llama: median_itl <= 40 ms: {tight.reason}", "llama: generation_latency <= 5000 ms: "
                     "no generation_latency measured"]


def test_not_enough_data_with_fewer_than_two_limits():
    one = [p for p in points() if p.power_limit_w == 700]
    (a,) = advise(one * 3, deadlines("50"))
    assert a.insufficient == "1 distinct power limit(s) observed; at least 2 are needed"
    assert a.recommendations == () and a.limits_w == (700,)
    assert describe([a]) == ["llama: not enough data: 1 distinct power limit(s) observed; at least 2 are needed"]
    assert advise([], deadlines("50")) == []


def test_budget_buys_the_most_throughput_within_the_deadline():
    # a rack: 10 kW, as many GPUs as it holds (the simulator's plan: 20 GPUs at 500 W)
    (a,) = advise(points(), deadlines("50,45"), budget_w=10_000)
    rack, tight = a.budget
    assert (rack.point.power_limit_w, rack.gpus, rack.tokens_per_s) == (500, 20, 20 * 8099)
    assert (tight.point.power_limit_w, tight.gpus) == (700, 14)
    # a node of 8 GPUs under 4 kW: at most 500 W each fits all 8
    (node,) = advise(points(), deadlines("100"), budget_w=4000, max_gpus=8)[0].budget
    assert (node.point.power_limit_w, node.gpus) == (500, 8)
    # too small a budget, too tight a deadline
    (none,) = advise(points(), deadlines("100"), budget_w=150)[0].budget
    assert none.point is None and "holds no GPU" in none.reason
    (unmet,) = advise(points(), deadlines("10"), budget_w=4000)[0].budget
    assert unmet.point is None and "no observed power limit meets" in unmet.reason


def test_points_of_one_limit_combine_by_their_medians():
    windows = [OperatingPoint("m", 400.0, j, 1000.0 * j, 380.0, {"median_itl": 10.0 * j}) for j in (1.0, 3.0, 2.0)]
    windows.append(OperatingPoint("m", 400.0, 9.0, 5.0, 390.0, {}))  # no latency measured in this window
    (p,) = combine(windows)
    assert (p.energy_per_token_j, p.tokens_per_s, p.avg_power_w) == (2.5, 1500.0, 380.0)
    assert p.latency_ms == {"median_itl": 20.0}
    # different configurations stay apart; each is compared with its own highest limit
    b8 = points({300: (0.28, 7.1, 1070), 700: (0.45, 7.0, 1118)}, config="max_num_seqs 8")
    b64 = points({300: (0.072, 12.2, 6000), 700: (0.122, 10.4, 7000)}, config="max_num_seqs 64")
    (a,) = advise(b8 + b64, deadlines("7.05,11,13"))
    chosen = [(r.point.config, r.point.power_limit_w, r.reference.power_limit_w) for r in a.recommendations]
    assert chosen == [("max_num_seqs 8", 700, 700), ("max_num_seqs 64", 700, 700), ("max_num_seqs 64", 300, 700)]
    front = a.frontier("median_itl")
    assert [(p.config, p.power_limit_w) for p in front] == [("max_num_seqs 8", 700), ("max_num_seqs 8", 300),
                                                            ("max_num_seqs 64", 700), ("max_num_seqs 64", 300)]


def result(limit, jpt=0.1, itl=10.0, **kw):
    return {"model_id": "llama", "task": "chat", "max_num_seqs": 64, "request_rate": "inf", "power_limit_w": limit,
            "energy_per_token_j": jpt, "window_output_throughput": 5000.0, "avg_power_w": 1200.0,
            "median_itl_ms": itl, "p99_tpot_ms": itl * 1.2, "window": {"end": 1800000000.0},
            "energy": {"joules": 1.0, "gpus": [{"index": 0}, {"index": 1}]}, **kw}


def test_load_generator_results_become_points():
    p = point_from_result(result(300.0))
    assert (p.model, p.power_limit_w, p.energy_per_token_j, p.tokens_per_s) == ("llama", 300.0, 0.1, 5000.0)
    assert (p.avg_power_w, p.gpus, p.source, p.time) == (600.0, 2, "loadgen", 1800000000.0)  # per GPU
    assert p.latency_ms == {"median_itl": 10.0, "p99_tpot": 12.0}
    assert p.config == "chat, max_num_seqs 64"
    assert point_from_result(result(None)) is None  # not a power sweep
    assert point_from_result(result(300.0, interrupted=True)) is None
    assert point_from_result(result(300.0, energy_per_token_j=None)) is None
    image = point_from_result(result(300.0, item_kind="image", energy_per_item_j=250.0, window_item_throughput=2.0,
                                     median_generation_latency_ms=900.0, request_rate=1.5))
    assert (image.energy_per_token_j, image.tokens_per_s, image.latency_ms) == (
        250.0, 2.0, {"generation_latency": 900.0})
    assert image.config == "chat, max_num_seqs 64, rate 1.5/s"


def test_option_parsers():
    assert deadline("50") == Deadline("median_itl", 50.0)
    assert deadline("p99_tpot:120.5") == Deadline("p99_tpot", 120.5)
    assert str(deadline("generation_latency:30000")) == "generation_latency:30000"
    assert deadlines("") == () and len(deadlines("50, 100,250")) == 3
    for bad in ("ttft:50", "median_itl:0", "x", "median_itl:"):
        with pytest.raises(ValueError, match="basis"):
            deadline(bad)
    assert optional_deadline("off") is None and optional_deadline("75") == Deadline("median_itl", 75.0)
    assert switch("on") and not switch("off") and switch("TRUE")
    with pytest.raises(ValueError):
        switch("maybe")
