"""Unit tests of the load generator: arrivals, the steady-state window, statistics, synthetic
workloads, the energy client (against a stand-in of the exporter's endpoint), the CLI's errors.
Dataset files: test_loadgen_datasets.py."""

from __future__ import annotations

import asyncio
import math
import statistics
import struct
import subprocess
import sys
import zlib

import aiohttp
import pytest
from loadgen_stack import EnergyStandIn

from jouletrace.loadgen.arrivals import arrival_offsets
from jouletrace.loadgen.client import RequestResult, build_body
from jouletrace.loadgen.energy import CounterTimeline, EnergyUnavailable, exporter_energy
from jouletrace.loadgen.engine import BatchScraper, parse_running
from jouletrace.loadgen.media import synthetic_frames, synthetic_image
from jouletrace.loadgen import progress
from jouletrace.loadgen.plan import Sampling, plan
from jouletrace.exporter.grid import GridValues
from jouletrace.loadgen.cli import add_arguments
from jouletrace.loadgen.options import run_config
from jouletrace.loadgen.report import energy_figures, grid_figures, grid_note, stability
from jouletrace.loadgen.stats import good_requests, parse_slos, percentile_key, summarize
from jouletrace.loadgen.tasks import TASKS, task
from jouletrace.loadgen.window import Window, steady_state_window, tokens_in_window


# ---- arrivals ----------------------------------------------------------------------------------

def gaps(xs):
    return [b - a for a, b in zip(xs, xs[1:])]


def test_closed_loop_sends_everything_at_zero():
    assert arrival_offsets(5, math.inf, "poisson") == [0.0] * 5


def test_constant_rate():
    assert arrival_offsets(4, 2.0, "constant") == [0.0, 0.5, 1.0, 1.5]


def test_poisson_gaps_are_exponential():
    g = gaps(arrival_offsets(20001, 10.0, "poisson", seed=1))
    assert statistics.mean(g) == pytest.approx(0.1, rel=0.03)
    assert statistics.stdev(g) / statistics.mean(g) == pytest.approx(1.0, rel=0.05)  # CV of exponential = 1


@pytest.mark.parametrize("k", [0.25, 4.0])
def test_gamma_burstiness_sets_the_spread(k):
    g = gaps(arrival_offsets(20001, 5.0, "gamma", burstiness=k, seed=2))
    assert statistics.mean(g) == pytest.approx(0.2, rel=0.05)
    assert statistics.stdev(g) / statistics.mean(g) == pytest.approx(1 / math.sqrt(k), rel=0.06)


def test_arrivals_are_seeded_and_validated():
    assert arrival_offsets(50, 3.0, seed=7) == arrival_offsets(50, 3.0, seed=7)
    assert arrival_offsets(50, 3.0, seed=7) != arrival_offsets(50, 3.0, seed=8)
    assert arrival_offsets(3, math.inf, "trace", trace=[0.0, 2.5, 1.0]) == [0.0, 1.0, 2.5]
    for bad in (dict(rate=0.0), dict(rate=1.0, kind="weibull"), dict(rate=1.0, kind="gamma", burstiness=0)):
        with pytest.raises(ValueError):
            arrival_offsets(3, **bad)
    with pytest.raises(ValueError, match="timestamp"):
        arrival_offsets(2, math.inf, "trace", trace=[0.0, None])


# ---- steady-state window -----------------------------------------------------------------------

def req(i, start, first, end, tokens=10, times=None):
    r = RequestResult(i, f"r{i}", "chat", "chat", ok=True, start=start, first_token=first, end=end,
                      output_tokens=tokens)
    r.token_times = times or []
    return r


def test_window_opens_when_batch_full_and_closes_when_draining():
    # N = 10, B = 3: opens at the 3rd first token, closes when 10 - 3 - 1 = 6 have finished
    rs = [req(i, 0.0, 1.0 + i, 20.0 + i) for i in range(10)]
    w, why = steady_state_window(rs, 10, 3)
    assert why == "" and (w.start, w.end, w.rule) == (3.0, 25.0, "steady_state")


def test_window_absent_with_reasons():
    rs = [req(i, 0.0, 1.0 + i, 20.0 + i) for i in range(10)]
    assert steady_state_window(rs, 10, 9)[0] is None  # 10 - 9 - 1 = 0 finished: no rule
    assert "first token" in steady_state_window(rs[:2], 10, 3)[1]
    drained = [req(i, 0.0, 10.0 + i, 5.0 + i) for i in range(10)]
    assert "empty" in steady_state_window(drained, 10, 3)[1]
    failed = [req(i, 0.0, 1.0, 2.0) for i in range(10)]
    for r in failed[:5]:
        r.ok = False
    assert "finished" in steady_state_window(failed, 10, 3)[1]


def test_tokens_in_window_counts_chunks_or_spreads_evenly():
    w = Window(10.0, 20.0, "steady_state")
    assert tokens_in_window(req(0, 0, 5, 25, tokens=4, times=[5, 12, 15, 25]), w) == 2
    assert tokens_in_window(req(0, 0, 0, 40, tokens=8), w) == pytest.approx(2.0)  # 10 s of 40 s
    failed = req(0, 0, 0, 40)
    failed.ok = False
    assert tokens_in_window(failed, w) == 0


def test_energy_figures_and_stability():
    w = Window(0.0, 10.0, "steady_state")
    rs = [req(0, 0, 0, 10, tokens=100), req(1, 0, 0, 10, tokens=300)]
    f = energy_figures(w, {"joules": 2000.0}, rs)
    assert f["window_output_tokens"] == 400 and f["energy_per_token_j"] == 5.0
    assert f["energy_per_response_j"] == 5.0 * 200 and f["avg_power_w"] == 200.0
    assert f["output_tokens_per_joule"] == pytest.approx(f["window_output_throughput"] / f["avg_power_w"])
    assert stability(Window(0, 30, "steady_state"), 7.0, 8) == []
    assert len(stability(Window(0, 19, "steady_state"), 6.0, 8)) == 2  # short window and 6 < 0.85 x 8
    assert stability(None, None, None) == ["no measurement window"]


def test_cost_and_co2e_figures_by_hand():
    # 5 J a token: a million tokens take 5 MJ = 25/18 kWh; at 0.12 a kWh 1/6, at 360 g a kWh 500 g
    tokens = {"energy_per_token_j": 5.0}
    figures = grid_figures(GridValues(0.12, "USD", 360.0), tokens)
    assert figures == pytest.approx({"cost_per_million_output_tokens": 1 / 6, "co2e_per_million_output_tokens_g": 500.0},
                                    rel=1e-15)
    assert grid_note({**tokens, **figures, "currency": "USD"}) == \
        ", 0.1667 USD and 500 gCO2e per million output tokens"
    # 36 kJ an image is 10 Wh: 0.002 at 0.20 a kWh, 4 g at 400 g a kWh
    image = {"item_kind": "image", "energy_per_image_j": 36_000.0, "energy_per_token_j": None}
    figures = grid_figures(GridValues(0.2, "EUR", 400.0), image)
    assert figures == pytest.approx({"cost_per_image": 0.002, "co2e_per_image_g": 4.0}, rel=1e-15)
    assert grid_note({**image, **figures, "currency": "EUR"}) == ", 0.002 EUR and 4 gCO2e per image"
    assert grid_figures(GridValues(None, "", 50.0), {"energy_per_token_j": None}) == \
        {"co2e_per_million_output_tokens_g": None}  # no energy: the key says so
    assert grid_figures(GridValues(), tokens) == {} and grid_note(tokens) == ""


def test_price_and_intensity_options():
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["run", "--base-url", "http://127.0.0.1:1"]
    cfg = run_config(parser.parse_args([*base, "--electricity-price", "0.12", "--currency", "USD",
                                        "--grid-carbon-intensity", "350"]))
    assert cfg.grid == GridValues(0.12, "USD", 350.0)
    assert run_config(parser.parse_args(base)).grid == GridValues()
    with pytest.raises(ValueError, match="needs its currency"):
        run_config(parser.parse_args([*base, "--electricity-price", "0.12"]))


def test_running_batch_parse_and_time_weighted_mean():
    text = ('# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="a"} 3.0\n'
            'vllm:num_requests_running{model_name="b"} 2.0\n')
    assert parse_running(text) == 5.0 and parse_running("x 1\n") is None
    b = BatchScraper("unused")
    b.samples = [(0.0, 2.0), (1.0, 4.0), (3.0, 0.0)]
    assert b.mean(0.5, 2.0) == pytest.approx(10 / 3) and b.mean(0.0, 4.0) == 2.5 and b.mean(-2, -1) is None


# ---- statistics --------------------------------------------------------------------------------

def test_percentile_keys_and_summary_in_ms():
    assert percentile_key(99, "ttft") == "p99_ttft_ms" and percentile_key(99.9, "itl") == "p99.9_itl_ms"
    s = summarize("itl", [0.001 * i for i in range(1, 101)], (50, 99))
    assert s["mean_itl_ms"] == pytest.approx(50.5) and s["median_itl_ms"] == pytest.approx(50.5)
    assert s["p99_itl_ms"] == pytest.approx(99.01)
    assert summarize("ttft", [])["mean_ttft_ms"] == 0.0


def test_goodput_counts_requests_meeting_every_slo():
    assert parse_slos(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    for bad in ("ttft", "itl:5", "ttft:x", "e2el:-1"):
        with pytest.raises(ValueError):
            parse_slos(bad)
    fast = req(0, 0.0, 0.1, 1.0, tokens=10)     # TTFT 100 ms, TPOT 100 ms
    slow = req(1, 0.0, 0.9, 1.8, tokens=10)     # TTFT 900 ms
    assert good_requests([fast, slow], {"ttft": 500}) == 1
    assert good_requests([fast, slow], {"ttft": 1000, "tpot": 100}) == 2
    assert good_requests([fast, slow], {"tpot": 99}) == 0


# ---- synthetic workloads -----------------------------------------------------------------------

def test_synthetic_workloads_follow_the_study_and_are_seeded():
    chat = plan(task("chat"), 2000, 0, Sampling(ignore_eos=True))
    assert statistics.mean(r.max_tokens for r in chat) == pytest.approx(717, rel=0.08)
    assert all(r.max_tokens <= 4096 for r in chat)
    reasoning = plan(task("problem-solving"), 2000, 0, Sampling(ignore_eos=True))
    assert statistics.mean(r.max_tokens for r in reasoning) == pytest.approx(6988, rel=0.08)
    assert {r.max_tokens for r in plan(task("reasoning"), 5, 0, Sampling())} == {32768}  # cap, model stops
    assert {r.max_tokens for r in plan(task("code"), 5, 0, Sampling(max_tokens=16))} == {16}
    prompts = [r.prompt for r in plan(task("chat"), 5, 3, Sampling())]
    assert prompts == [r.prompt for r in plan(task("chat"), 5, 3, Sampling())]
    code = plan(task("code"), 3, 0, Sampling())[0]
    assert code.api == "completion" and code.prompt.startswith("<|fim_prefix|>") and "<|fim_suffix|>" in code.prompt
    video = plan(task("video-chat"), 1, 0, Sampling())[0]
    assert len(video.frames) == 32
    body = build_body(video, "m", Sampling(), stream=True)
    url = body["messages"][-1]["content"][-1]["video_url"]["url"]
    assert url.startswith("data:video/jpeg;base64,") and url.count(",") == 32
    assert body["temperature"] == 0.8 and body["top_p"] == 0.95 and "ignore_eos" not in body
    assert set(TASKS) >= {"chat", "reasoning", "code", "image-chat", "video-chat", "text-to-image", "text-to-video",
                          "image-to-video"}


def test_synthetic_png_is_valid():
    png = synthetic_image(1, 8, 6)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    length = struct.unpack(">I", png[33:37])[0]
    assert (w, h) == (8, 6) and png[37:41] == b"IDAT"
    assert len(zlib.decompress(png[41:41 + length])) == 6 * (1 + 8 * 3)
    frames = synthetic_frames(2, 4, 8, 8)
    assert len(frames) == 4 and len(set(frames)) == 4  # the square moves


# ---- energy ------------------------------------------------------------------------------------

def test_exporter_energy_client_against_a_stand_in():
    """Against a STAND-IN of the exporter's /api/v1/energy: polls 503 + Retry-After, then reads 200;
    416 is an error."""
    s = EnergyStandIn(watts=250.0, gpus=2, oldest=100.0)

    async def go():
        async with aiohttp.ClientSession() as session:
            e = await exporter_energy(session, s.url, 200.0, 210.0, wait_s=10)
            with pytest.raises(EnergyUnavailable, match="retention"):
                await exporter_energy(session, s.url, 50.0, 60.0)
            with pytest.raises(EnergyUnavailable, match="still not measured"):
                await exporter_energy(session, s.url, 300.0, 301.0, wait_s=0)
            with pytest.raises(EnergyUnavailable, match="cannot reach"):
                await exporter_energy(session, "http://127.0.0.1:1", 1.0, 2.0)
            return e
    try:
        e = asyncio.run(go())
    finally:
        s.stop()
    assert e["joules"] == 5000.0 and [g["joules"] for g in e["gpus"]] == [2500.0, 2500.0]
    assert e["source"] == "exporter" and s.calls == 4  # 503 then 200, 416, 503


def test_counter_timeline_interpolates():
    tl = CounterTimeline()
    for t, j in ((0.0, 0.0), (1.0, 100.0), (2.0, 300.0)):
        tl.add(t, j)
    assert tl.between(0.5, 1.5) == pytest.approx(150.0)
    with pytest.raises(EnergyUnavailable):
        tl.between(1.0, 3.0)


# ---- CLI errors --------------------------------------------------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "run", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_unreachable_server_is_one_line_exit_2(tmp_path):
    done = cli("--base-url", "http://127.0.0.1:1", "-n", "2", "--no-energy", "--out", str(tmp_path))
    assert done.returncode == 2 and "cannot reach the server" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_without_nvml_or_exporter_says_so(tmp_path):
    done = cli("--base-url", "http://127.0.0.1:1", "-n", "2", "--out", str(tmp_path))
    assert done.returncode == 2 and "--exporter" in done.stderr


def test_live_j_per_token_waits_for_enough_tokens_and_starts_at_the_first_token(monkeypatch):
    """Four streams from t=2 s at 10 tokens/s each, 100 W from t=0: J/token is shown only once the
    window (first token .. now - lag) holds 20 tokens per request, and then excludes the idle start."""
    asked = []

    async def energy(session, url, start, end, wait_s):
        asked.append((start, end))
        return {"joules": 100.0 * (end - start)}

    monkeypatch.setattr(progress, "exporter_energy", energy)
    sent = [RequestResult(i, f"r{i}", "chat", "chat", start=0.0, first_token=2.0,
                          token_times=[2.0 + k / 10 for k in range(200)]) for i in range(4)]
    live = progress.Progress(4, sent, 0.0, "http://exporter", period_s=0)
    monkeypatch.setattr(progress, "now", lambda: 2.0 + progress.EXPORTER_LAG_S + 1.5)  # 15 tokens a stream
    asyncio.run(live._energy(None))
    assert live.j_per_token is None and asked == [] and "J/token" not in live.line()
    monkeypatch.setattr(progress, "now", lambda: 2.0 + progress.EXPORTER_LAG_S + 5.0)  # 50 tokens a stream
    asyncio.run(live._energy(None))
    assert asked == [(2.0, 7.0)] and live.j_per_token == pytest.approx(100.0 * 5 / 200)
    assert "2.5000 J/token" in live.line()
