"""Engine metrics scrape against an HTTP server answering like vLLM, then down, slow and garbage.

The server here is a test double of vLLM's /metrics endpoint; tests/vllm/ scrapes a real vLLM.
"""

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web
from servers import ExporterProcess, free_port, http_get, serve_app, wait_for

from jouletrace.exporter.engine import DOWN, GARBAGE, SLOW, UP, EngineScraper, parse_vllm, span_token_ratio

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.42
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama"} %(prompt)s
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="llama"} %(gen)s
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="llama"} 7.0
"""


def test_parse_vllm_text():
    values = parse_vllm(VLLM_TEXT % {"prompt": 1000.0, "gen": 500.0})
    assert values == {"llama": {"requests_running": 12.0, "requests_waiting": 3.0, "kv_cache_usage_ratio": 0.42,
                                "prompt_tokens": 1000.0, "generation_tokens": 500.0, "requests_succeeded": 7.0}}
    with pytest.raises(ValueError):
        parse_vllm("# nothing from vLLM here\nup 1\n")


class FakeEngine:
    def __init__(self):
        self.mode = "ok"
        self.gen = 500.0

    async def handle(self, request):
        if self.mode == "slow":
            await asyncio.sleep(2.0)
        if self.mode == "garbage":
            return web.Response(text="<html>proxy error</html>")
        if self.mode == "error":
            return web.Response(status=500)
        return web.Response(text=VLLM_TEXT % {"prompt": 1000.0, "gen": self.gen})


def test_states_are_counted_and_logged_once_per_change(caplog):
    caplog.set_level(logging.INFO, logger="jouletrace.exporter.engine")

    async def scenario():
        engine = FakeEngine()
        app = web.Application()
        app.router.add_get("/metrics", engine.handle)
        runner, port = await serve_app(app)
        span_tokens = {"llama": 100.0}
        reports = []  # what settlement is handed: every scrape, its values or None
        scraper = EngineScraper([f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{free_port()}/metrics"],
                                span_tokens.get, timeout_s=0.5,
                                on_scrape=lambda url, sent, answered, values: reports.append(
                                    (url.endswith(f":{port}/metrics"), sent <= answered, values)))
        ok, down = scraper.states
        seen = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
            async def scrape(times=1):
                for _ in range(times):
                    await asyncio.gather(scraper.scrape(session, ok), scraper.scrape(session, down))
                seen.append((ok.state, down.state))
            await scrape(2)
            engine.gen, span_tokens["llama"] = 600.0, 190.0  # 100 engine tokens, 90 in spans
            await scrape()
            ratio = span_token_ratio(ok, "llama", span_tokens["llama"])
            engine.mode = "slow"
            await scrape(2)
            engine.mode = "garbage"
            await scrape(2)
            engine.mode = "error"
            await scrape()
            engine.mode = "ok"
            await scrape()
        await runner.cleanup()
        return seen, ok, down, ratio, reports

    seen, ok, down, ratio, reports = asyncio.run(scenario())
    assert all(ordered for _, ordered, _ in reports) and len(reports) == 18
    assert [values is not None for is_ok, _, values in reports if is_ok] == [True] * 3 + [False] * 5 + [True]
    assert all(values is None for is_ok, _, values in reports if not is_ok)
    assert next(values for is_ok, _, values in reports if is_ok)["llama"]["requests_succeeded"] == 7.0
    assert [s[0] for s in seen] == [UP, UP, SLOW, GARBAGE, GARBAGE, UP]
    assert all(s[1] == DOWN for s in seen)
    assert ok.failures == {SLOW: 2, GARBAGE: 3}
    assert down.failures[DOWN] == 9
    assert ok.values["llama"]["requests_running"] == 12.0
    assert ratio == pytest.approx(0.9)
    # one log line per change of state, not per failure
    assert caplog.text.count("is down") == 1
    assert caplog.text.count("is slow") == 1
    assert caplog.text.count("is garbage") == 1


def test_exporter_keeps_serving_with_its_engine_down():
    exporter = ExporterProcess("--gpu", "sim", "--engine-metrics", f"http://127.0.0.1:{free_port()}/metrics",
                               "--engine-interval", "0.2")
    try:
        def engine_down():
            status, text = http_get(exporter.url("/metrics"))
            return status == 200 and "jouletrace_engine_scrape_failures_total{" in text and \
                'jouletrace_engine_up{engine="http://127.0.0.1' in text
        wait_for(engine_down, 20, "the engine's failures in /metrics")
    finally:
        assert exporter.stop() == 0
    assert exporter.output().count("is down") == 1


def test_an_engine_that_starts_after_the_exporter_is_counted_from_zero():
    """Scrapes failed until the engine came up: its counters began while watched, so the cross-check
    compares all span tokens with all engine tokens, even if the first good scrape comes late."""
    async def scenario():
        engine = FakeEngine()
        app = web.Application()
        app.router.add_get("/metrics", engine.handle)
        port = free_port()
        spans = {"llama": 0.0}
        scraper = EngineScraper([f"http://127.0.0.1:{port}/metrics"], spans.get, timeout_s=0.5)
        (st,) = scraper.states
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
            await scraper.scrape(session, st)  # not up yet
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            spans["llama"] = 500.0  # every request already done when the first good scrape comes
            await scraper.scrape(session, st)
            await runner.cleanup()
        return st, spans["llama"]

    st, span_tokens = asyncio.run(scenario())
    assert st.state == UP and st.failures == {DOWN: 1}
    assert span_token_ratio(st, "llama", span_tokens) == pytest.approx(1.0)
