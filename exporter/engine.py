"""Engine metrics scrape: the inference server's own Prometheus endpoint, read beside the energy.

Every `interval_s` each configured URL (vLLM's `/metrics`) is fetched with aiohttp and parsed;
running and waiting requests, KV-cache usage, token and request counters are kept per
`model_name`, so batch size and memory pressure can be read next to energy. The engine's
output-token counter is also the cross-check of span intake: tokens seen in spans vs tokens the
engine counted. Every scrape, answered or failed, is handed to `on_scrape(url, sent, answered,
values or None)` (Unix seconds): settlement waits for the requests the engine runs.

Faults: an engine that is down, slow (no whole answer within `timeout_s`) or answers garbage
(HTTP error, no vLLM series, a body over MAX_BODY_BYTES) is counted by reason and logged once
per change of state; its last good values are kept (`EngineState.values`, with `last_success`),
and the gauges among them are not exported until it answers again. Each engine is scraped by a
task of its own, so one that hangs delays no other, and the body is parsed on a worker thread
(only the lines of VLLM_SERIES), so a huge answer never holds up the event loop that serves span
intake and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

#: vLLM series read, and the name each is kept under.
VLLM_SERIES = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage_ratio",
    "vllm:prompt_tokens": "prompt_tokens",  # the parser strips `_total` from counters
    "vllm:generation_tokens": "generation_tokens",
    "vllm:request_success": "requests_succeeded",
}
#: Gauges among them: a value of the last good scrape, not exported while the engine fails.
GAUGES = ("requests_running", "requests_waiting", "kv_cache_usage_ratio")
MAX_BODY_BYTES = 8 << 20
# the samples and TYPE lines of VLLM_SERIES (counters' samples end in _total or _created)
_WANTED = re.compile(r"^(?:# TYPE )?(?:%s)(?:_total|_created)?(?=[\s{]).*$"
                     % "|".join(map(re.escape, VLLM_SERIES)), re.M)
UNKNOWN, UP, DOWN, SLOW, GARBAGE = "unknown", "up", "down", "slow", "garbage"


@dataclass(slots=True)
class EngineState:
    """What the last scrape of one engine found; values per model_name."""

    url: str
    state: str = UNKNOWN
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> series -> value
    # model -> (engine output tokens, span output tokens) the cross-check counts from: their values at
    # the first scrape when the engine already ran then, else zero (its counter began while watched)
    baseline: dict[str, tuple[float, float]] = field(default_factory=dict)
    scrapes: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # state -> count
    last_success: float | None = None
    scrape_seconds: float = 0.0


def parse_vllm(text: str) -> dict[str, dict[str, float]]:
    """The VLLM_SERIES values per model_name, summed over the other labels (engines, reasons).

    Lines of other series are skipped unparsed: a malformed one does not lose these values."""
    out: dict[str, dict[str, float]] = {}
    found = False
    for family in text_string_to_metric_families("\n".join(_WANTED.findall(text)) + "\n"):
        key = VLLM_SERIES.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            found = True
            model = sample.labels.get("model_name", "")
            series = out.setdefault(model, {})
            series[key] = series.get(key, 0.0) + float(sample.value)
    if not found:
        raise ValueError("no vLLM series in the answer")
    return out


class EngineScraper:
    """Scrapes engine URLs until `stop()`; `states` is read at scrape time of our own /metrics.

    `span_tokens(model)` gives the output tokens seen in spans so far (the cross-check's other
    side); at most `max_models` model names are kept per engine.
    """

    def __init__(self, urls: list[str], span_tokens: Callable[[str], float], *, interval_s: float = 1.0,
                 timeout_s: float = 2.0, max_models: int = 50,
                 on_scrape: Callable[[str, float, float, dict[str, dict[str, float]] | None], None] | None = None):
        self.states = [EngineState(url) for url in urls]
        self.span_tokens = span_tokens
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_models = max_models
        self.on_scrape = on_scrape
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """One scrape loop per engine (none when no engine is configured)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(st)) for st in self.states]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, st: EngineState) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                started = time.monotonic()
                await self.scrape(session, st)
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def scrape(self, session: aiohttp.ClientSession, st: EngineState) -> None:
        t0 = time.monotonic()
        sent = time.time()
        values, cancelled = None, False
        try:
            async with session.get(st.url) as r:
                if r.status != 200:
                    raise ValueError(f"HTTP {r.status}")
                body = bytearray()
                async for chunk in r.content.iter_any():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise ValueError(f"answer larger than {MAX_BODY_BYTES} bytes")
            values = await asyncio.to_thread(parse_vllm, body.decode("utf-8", errors="replace"))
            values = dict(list(values.items())[: self.max_models])
        except asyncio.CancelledError:  # stopped: no answer to report
            cancelled = True
            raise
        except asyncio.TimeoutError:
            self._set(st, SLOW, f"no answer within {self.timeout_s}s")
        except aiohttp.ClientError as exc:
            self._set(st, DOWN, str(exc) or type(exc).__name__)
        except ValueError as exc:
            self._set(st, GARBAGE, str(exc))
        else:
            first = st.last_success is None
            watched_start = first and bool(st.failures)  # the engine came up after the exporter
            st.values = values
            for model, series in values.items():
                if "generation_tokens" in series and model not in st.baseline:
                    if first and not watched_start:  # it ran before we looked: count from now
                        st.baseline[model] = (series["generation_tokens"], self.span_tokens(model))
                    else:  # its counter started from zero while we were watching
                        st.baseline[model] = (0.0, 0.0)
            st.last_success = time.time()
            self._set(st, UP, "")
        finally:
            if self.on_scrape is not None and not cancelled:
                self.on_scrape(st.url, sent, time.time(), values)
            st.scrapes += 1
            st.scrape_seconds += time.monotonic() - t0

    @staticmethod
    def _set(st: EngineState, state: str, reason: str) -> None:
        if state != UP:
            st.failures[state] = st.failures.get(state, 0) + 1
        if state != st.state:
            if state == UP:
                log.info("engine %s answers", st.url)
            else:
                log.warning("engine %s is %s: %s", st.url, state, reason)
            st.state = state


def span_token_ratio(st: EngineState, model: str, span_tokens: float) -> float | None:
    """Output tokens seen in spans per output token the engine counted, since the first scrape.

    Near 1 when every span arrives; below 1 when spans are lost (or still in flight).
    """
    base = st.baseline.get(model)
    engine_now = st.values.get(model, {}).get("generation_tokens")
    if base is None or engine_now is None or engine_now <= base[0]:
        return None
    return (span_tokens - base[1]) / (engine_now - base[0])
