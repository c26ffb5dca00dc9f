"""Faults of the inference engine's metrics endpoint: hung, slow, HTTP 500, not Prometheus text,
huge, over the size bound. The exporter counts each by reason, withholds the failed engine's
gauges (its counters stay), and keeps taking spans and answering /metrics throughout.

The engine is an aiohttp stand-in of vLLM's /metrics (tests/test_engine.py's text); the exporter
is a real `jouletrace exporter` process scraping it every 0.2 s."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web
from servers import BackgroundApp, ExporterProcess, http_get, serve_app, sum_samples, wait_for
from test_engine import VLLM_TEXT

from jouletrace.exporter.engine import GARBAGE, MAX_BODY_BYTES, UP, EngineScraper

FIXTURE = (Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb").read_bytes()
FIXTURE_SPANS = 5
GOOD = VLLM_TEXT % {"prompt": 1000.0, "gen": 500.0}
# a valid answer far larger than one read of the socket: vLLM's histograms make answers of this kind
LARGE = GOOD + "".join(f'vllm:request_success_total{{engine="0",finished_reason="r{i}",model_name="llama"}} 1\n'
                       for i in range(20_000))
# just under the bound, no vLLM series: the whole text parsed would take seconds of CPU
HUGE_GARBAGE = "x 1\n" * ((MAX_BODY_BYTES - 64) // 4)
OVERSIZED = GOOD + "# padding\n" * (MAX_BODY_BYTES // 10)


class StandIn:
    """vLLM's /metrics answering per `mode`; `hang` holds each request until `release` is set."""

    def __init__(self):
        self.mode = "ok"
        self.entered = threading.Event()  # a request is being held
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "hang":
            self.entered.set()
            await self.release.wait()
        if self.mode == "error":
            return web.Response(status=500, text="internal error")
        if self.mode == "html":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        body = {"huge": HUGE_GARBAGE, "oversized": OVERSIZED, "large": LARGE}.get(self.mode, GOOD)
        response = web.StreamResponse()  # chunked, in pieces, as a real server streams a large answer
        await response.prepare(request)
        data = body.encode()
        piece = 1 << 16
        for i in range(0, len(data), piece):
            await response.write(data[i:i + piece])
        await response.write_eof()
        return response


async def serve(engine: StandIn) -> tuple[web.AppRunner, str]:
    """`engine` served on a free loopback port of the running loop; (runner, its /metrics URL)."""
    app = web.Application()
    app.router.add_get("/metrics", engine.handle)
    runner, port = await serve_app(app)
    return runner, f"http://127.0.0.1:{port}/metrics"


def test_a_large_answer_is_read_whole_and_one_over_the_bound_is_garbage():
    engine = StandIn()

    async def scenario():
        runner, url = await serve(engine)
        scraper = EngineScraper([url], lambda model: 0.0, timeout_s=10)
        (st,) = scraper.states
        seen = []
        async with aiohttp.ClientSession() as session:
            for mode in ("large", "oversized"):
                engine.mode = mode
                await scraper.scrape(session, st)
                seen.append((st.state, dict(st.values)))
        await runner.cleanup()
        return seen

    (large, large_values), (oversized, kept) = asyncio.run(scenario())
    assert len(LARGE) > 1 << 20 and large == UP
    assert large_values["llama"]["generation_tokens"] == 500.0
    assert oversized == GARBAGE and kept == large_values  # the last good values are kept


def test_one_hanging_engine_delays_no_other():
    """The hung engine holds its request until the other has been scraped five more times: scraped
    one after the other (or all together), that never happens and the wait times out."""
    hung, ok = StandIn(), StandIn()
    hung.mode = "hang"

    async def scenario():
        runners, urls = zip(*[await serve(engine) for engine in (hung, ok)])
        scraper = EngineScraper(list(urls), lambda model: 0.0, interval_s=0.05, timeout_s=60)
        scraper.start()
        try:
            while not hung.entered.is_set():
                await asyncio.sleep(0.01)
            before = scraper.states[1].scrapes
            while scraper.states[1].scrapes < before + 5:
                await asyncio.sleep(0.01)
            held = scraper.states[0].scrapes  # still 0: its first request is open
            hung.release.set()
        finally:
            await scraper.stop()
            for runner in runners:
                await runner.cleanup()
        return held, scraper.states[1].state

    held, other = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert held == 0 and other == UP


def post_spans(exporter: ExporterProcess) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{exporter.http_port}/v1/traces", data=FIXTURE,
                                 headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


def test_exporter_takes_spans_and_serves_metrics_through_every_engine_fault():
    engine = StandIn()
    app = web.Application()
    app.router.add_get("/metrics", engine.handle)
    server = BackgroundApp(app)
    url = f"{server.url}/metrics"
    exporter = ExporterProcess("--gpu", "sim", "--engine-metrics", url, "--engine-interval", "0.2")
    posted = 0

    def metrics() -> str:
        status, text = http_get(exporter.url("/metrics"))
        assert status == 200, "the exporter's /metrics did not answer"
        return text

    def failures(text: str, reason: str) -> float:
        return sum_samples(text, "jouletrace_engine_scrape_failures_total", engine=url, reason=reason)

    def metrics_when(predicate, what: str) -> str:
        return wait_for(lambda: (lambda text: text if predicate(text) else None)(metrics()), 20, what)

    try:
        metrics_when(lambda t: sum_samples(t, "jouletrace_engine_requests_running", engine=url) == 12.0,
                     "the engine's running batch")
        for mode, reason in (("hang", "slow"), ("error", "garbage"), ("html", "garbage"), ("huge", "garbage"),
                             ("oversized", "garbage")):
            before = failures(metrics(), reason)
            engine.mode = mode
            if mode == "hang":  # spans and /metrics while a scrape of the engine is open
                assert engine.entered.wait(10)
            for _ in range(3):
                assert post_spans(exporter) == 200
                posted += 1
            text = metrics_when(lambda t: failures(t, reason) > before, f"a {reason} failure while {mode}")
            assert sum_samples(text, "jouletrace_engine_up", engine=url) == 0
            assert "jouletrace_engine_requests_running{" not in text  # stale gauges withheld
            assert sum_samples(text, "jouletrace_engine_generation_tokens_total", engine=url) == 500.0
        engine.mode = "ok"
        server.loop.call_soon_threadsafe(engine.release.set)
        text = metrics_when(lambda t: sum_samples(t, "jouletrace_engine_up", engine=url) == 1, "the engine again")
        assert sum_samples(text, "jouletrace_engine_requests_running", engine=url) == 12.0
        assert sum_samples(text, "jouletrace_spans_received_total") == posted * FIXTURE_SPANS
        assert sum_samples(text, "jouletrace_spans_rejected_total") == 0
    finally:
        assert exporter.stop() == 0, exporter.output()
        server.loop.call_soon_threadsafe(engine.release.set)
        server.stop()
    log = exporter.output()
    assert log.count("is slow") == 1 and log.count("is garbage") == 1 and log.count(f"engine {url} answers") == 2
