"""The diffusion server's `GET /metrics`, one registry per server, every series labelled `model_name`:

- `vllm:num_requests_running` and `vllm:num_requests_waiting`, gauges read at each scrape: vLLM's
  names, which the exporter's engine scrape settles on and the load generator reads its batch from;
- `jouletrace_serving_requests_refused_total{reason}`: requests answered with an error before any
  work started (so with no span), one count per request, by one of REFUSALS' fixed reasons;
- `jouletrace_serving_requests_total{outcome}`: requests accepted, counted as their span ends, by
  one of OUTCOMES.

Two families, not one with an outcome and a reason: a refused request has a reason and no span, an
accepted one a span and an outcome, so neither label is ever empty; the second counts exactly the
spans the server sends, and `outcome="failed"` over its sum is the failure ratio. Every series
starts at 0, so a rate or an alert on it exists before the first refusal."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: reason -> the HTTP status of its answer; the adapter refuses a request for these reasons only.
REFUSALS = {
    "bad_json": 400,          # the body is not JSON, or not a JSON object
    "bad_form": 400,          # a multipart/form-data body aiohttp cannot read
    "bad_field": 400,         # a field missing, malformed or out of range (prompt, size, n, seed, ...)
    "missing_image": 400,     # image-to-video without an `input_reference` image file
    "unexpected_image": 400,  # an `input_reference` sent to a text-to-video server
    "bad_image": 400,         # an `input_reference` Pillow cannot decode
    "image_too_large": 400,   # an `input_reference` over MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS
    "body_too_large": 413,    # a body over MAX_BODY_BYTES (aiohttp's answer)
    "unknown_model": 404,     # another model than the one served
    "unknown_job": 404,       # a video job never created, or forgotten
    "job_not_completed": 404,  # the content of a video job queued, in progress or failed
    "video_expired": 404,     # the content of a completed video job no longer kept
}
#: how an accepted request ended: its outputs produced; the generation (or the encoding of its
#: outputs) raised; its handler was cancelled before its outputs were sent (an image request still
#: running when the server stops).
OUTCOMES = ("completed", "failed", "cancelled")


class ServingMetrics:
    """The series of the module docstring for `model`; `running` and `waiting` are called at each
    scrape for the requests in the batch being generated and those queued."""

    def __init__(self, model: str, running: Callable[[], int], waiting: Callable[[], int]):
        self.model = model
        self.registry = CollectorRegistry()
        for name, doc, value in (("vllm:num_requests_running", "Requests in the batch being generated.", running),
                                 ("vllm:num_requests_waiting", "Requests waiting for a batch.", waiting)):
            Gauge(name, doc, ["model_name"], registry=self.registry).labels(model).set_function(value)
        self._refused = Counter("jouletrace_serving_requests_refused", "Requests refused before any work, by reason.",
                                ["model_name", "reason"], registry=self.registry)
        self._ended = Counter("jouletrace_serving_requests", "Requests accepted, by how their span ended.",
                              ["model_name", "outcome"], registry=self.registry)
        for reason in REFUSALS:
            self._refused.labels(model, reason)
        for outcome in OUTCOMES:
            self._ended.labels(model, outcome)

    def refused(self, reason: str) -> None:
        if reason not in REFUSALS:
            raise ValueError(f"refusal reason {reason!r}: one of {', '.join(REFUSALS)}")
        self._refused.labels(self.model, reason).inc()

    def ended(self, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r}: one of {', '.join(OUTCOMES)}")
        self._ended.labels(self.model, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type. Never OpenMetrics, whatever the scrape accepts:
        prometheus_client writes its samples with `:` escaped, so `vllm:num_requests_running` would
        lose its name."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
