"""The simulated engine's `/metrics`: vLLM's series names, labels and units (model_name, engine)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine import Engine, SimRequest, StepResult

LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                     20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class EngineMetrics:
    """vLLM's engine series for one served model, updated per step and per finished request."""

    def __init__(self, model: str, engine: Engine):
        self.engine = engine
        self.registry = CollectorRegistry()
        labels = {"model_name": model, "engine": "0"}
        names = list(labels)

        def make(kind, name, doc, *extra, **kw):
            return kind(name, doc, names + list(extra), registry=self.registry, **kw)

        self.running = make(Gauge, "vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = make(Gauge, "vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv = make(Gauge, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prompt = make(Counter, "vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation = make(Counter, "vllm:generation_tokens", "Number of generation tokens processed.")
        self.preemptions = make(Counter, "vllm:num_preemptions", "Cumulative number of preemptions.")
        self.success = make(Counter, "vllm:request_success", "Count of successfully processed requests.",
                            "finished_reason")
        self.ttft = make(Histogram, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                         buckets=LATENCY_BUCKETS_S)
        self.itl = make(Histogram, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                        buckets=ITL_BUCKETS_S)
        self.e2e = make(Histogram, "vllm:e2e_request_latency_seconds",
                        "Histogram of e2e request latency in seconds.", buckets=LATENCY_BUCKETS_S)
        self.queue = make(Histogram, "vllm:request_queue_time_seconds",
                          "Histogram of time spent in WAITING phase for request.", buckets=LATENCY_BUCKETS_S)
        self.prefill = make(Histogram, "vllm:request_prefill_time_seconds",
                            "Histogram of time spent in PREFILL phase for request.", buckets=LATENCY_BUCKETS_S)
        self.decode = make(Histogram, "vllm:request_decode_time_seconds",
                           "Histogram of time spent in DECODE phase for request.", buckets=LATENCY_BUCKETS_S)
        self.prompt_len = make(Histogram, "vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                               buckets=TOKEN_BUCKETS)
        self.output_len = make(Histogram, "vllm:request_generation_tokens", "Number of generation tokens processed.",
                               buckets=TOKEN_BUCKETS)
        self.labels = labels
        self._seen_prompt = self._seen_generation = self._seen_preemptions = 0
        self.arrived()

    def arrived(self) -> None:
        """A request joined the queue."""
        self.waiting.labels(**self.labels).set(len(self.engine.waiting))

    def step(self, step: StepResult) -> None:
        e, lb = self.engine, self.labels
        self.running.labels(**lb).set(len(e.running))
        self.waiting.labels(**lb).set(len(e.waiting))
        self.kv.labels(**lb).set(e.kv_usage)
        self.prompt.labels(**lb).inc(e.prompt_tokens_total - self._seen_prompt)
        self.generation.labels(**lb).inc(e.generation_tokens_total - self._seen_generation)
        self.preemptions.labels(**lb).inc(e.preemptions - self._seen_preemptions)
        self._seen_prompt, self._seen_generation = e.prompt_tokens_total, e.generation_tokens_total
        self._seen_preemptions = e.preemptions
        itl = self.itl.labels(**lb)
        for r, previous in step.emitted:
            if previous is not None:
                itl.observe(step.end - previous)
            else:
                self.ttft.labels(**lb).observe(step.end - r.arrival)

    def finished(self, r: SimRequest, reason: str) -> None:
        lb = self.labels
        self.success.labels(**lb, finished_reason=reason).inc()
        self.e2e.labels(**lb).observe(r.finished_at - r.arrival)
        self.queue.labels(**lb).observe(r.scheduled_at - r.arrival)
        self.prefill.labels(**lb).observe(r.first_token_at - r.scheduled_at)
        self.decode.labels(**lb).observe(r.finished_at - r.first_token_at)
        self.prompt_len.labels(**lb).observe(r.prompt_tokens)
        self.output_len.labels(**lb).observe(r.generated)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
