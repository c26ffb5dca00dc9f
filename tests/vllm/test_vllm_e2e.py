"""End to end with a real vLLM (CPU build) serving a tiny random Llama.

For each OTLP protocol vLLM speaks (its default gRPC, and http/protobuf), a vLLM server sends its
spans to a running `jouletrace exporter --gpu sim`, concurrent chat and completion requests
(streaming and not) go through it, and the exporter's /metrics must agree with what the clients
saw and with vLLM's own /metrics, and conserve energy.

The gRPC server's spans reach the exporter through an in-test OTLP/gRPC relay that keeps each
raw span, so that it can be matched to its request: id, trace context, token counts and timings.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator

import pytest
from servers import ExporterProcess, free_port, http_get, sum_samples, wait_for
from vllm_stack import OtlpReceiver, Sent, VllmServer, attributes, drive, tail

PER_KIND = 4            # requests per (endpoint, streaming) pair: 16 at once per server, after one alone
SPAN_WAIT_S = 90        # for the last span to arrive and its energy to be split
PROTOCOL_LABEL = {"grpc": "grpc", "http/protobuf": "http"}


@dataclasses.dataclass
class Run:
    protocol: str                   # OTEL_EXPORTER_OTLP_TRACES_PROTOCOL given to vLLM
    model: str                      # served name = OTEL_SERVICE_NAME = the exporter's model label
    sent: list[Sent]
    metrics: str                    # the exporter's /metrics once every request was accounted for
    vllm_generation_tokens: float   # increase of vllm:generation_tokens_total over the requests
    vllm_prompt_tokens: float       # increase of vllm:prompt_tokens_total over the requests
    startup_s: float
    logs: dict[str, Callable[[], str]]

    def m(self, name: str, **labels: str) -> float:
        return sum_samples(self.metrics, name, **labels)


def exporter_metrics(exporter: ExporterProcess) -> str:
    status, body = http_get(exporter.url("/metrics"))
    assert status == 200, f"exporter /metrics answered {status}"
    return body


@contextlib.contextmanager
def served(protocol: str, model_dir, tmp_path_factory) -> Iterator[tuple[Run, OtlpReceiver | None]]:
    """A run of requests through a vLLM server whose spans go to an exporter over `protocol`
    (gRPC through a relay that keeps them, also yielded); the exporter runs until the end."""
    label = PROTOCOL_LABEL[protocol]
    model = f"tiny-llama-{label}"
    vllm_port = free_port()
    # settlement follows vLLM's running requests (--engine-metrics): no span may arrive late
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.6", "--counter-interval", "1",
                               "--engine-metrics", f"http://127.0.0.1:{vllm_port}/metrics")
    relay = OtlpReceiver(forward_to=f"127.0.0.1:{exporter.grpc_port}") if protocol == "grpc" else None
    endpoint = relay.endpoint if relay is not None else f"http://127.0.0.1:{exporter.http_port}/v1/traces"
    log = tmp_path_factory.mktemp("vllm") / f"vllm-{label}.log"
    logs = {"exporter": exporter.output, f"vLLM ({protocol})": log.read_text}
    try:
        server = VllmServer(model_dir, model, endpoint, protocol, log_path=log, port=vllm_port)
        print(f"vLLM ({protocol}) healthy {server.startup_s:.1f} s after start")
        try:
            gen0 = server.metric("vllm:generation_tokens_total")
            prompt0 = server.metric("vllm:prompt_tokens_total")
            sent = drive(server, label, PER_KIND, seed=1 if protocol == "grpc" else 2)
            print(f"{len(sent)} requests, client latency: first {sent[0].latency_s:.2f} s, then "
                  f"{min(r.latency_s for r in sent[1:]):.2f}-{max(r.latency_s for r in sent[1:]):.2f} s")
            gen1 = server.metric("vllm:generation_tokens_total")
            prompt1 = server.metric("vllm:prompt_tokens_total")

            def accounted():
                body = exporter_metrics(exporter)
                done = (sum_samples(body, "jouletrace_model_requests_total", model=model) == len(sent)
                        and sum_samples(body, "jouletrace_requests_pending") == 0
                        and sum_samples(body, "jouletrace_engine_generation_tokens_total", model=model) == gen1)
                return body if done else None
            try:
                body = wait_for(accounted, SPAN_WAIT_S, "every request in the exporter", period_s=0.5)
            except TimeoutError as e:
                now = "\n".join(line for line in exporter_metrics(exporter).splitlines()
                                if line.startswith(("jouletrace_model_requests", "jouletrace_spans",
                                                    "jouletrace_requests_pending", "jouletrace_otlp")))
                pytest.fail(f"{e}; exporter /metrics now:\n{now}\n--- exporter log:\n{tail(exporter.output(), 40)}"
                            f"\n--- vLLM log:\n{tail(server.output(), 60)}", pytrace=False)
        finally:
            server.stop()
        yield Run(protocol, model, sent, body, gen1 - gen0, prompt1 - prompt0, server.startup_s, logs), relay
    finally:
        if relay is not None:
            relay.stop()
        code = exporter.stop()
    assert code == 0, f"exporter exited {code}:\n{exporter.output()}"


@pytest.fixture(scope="module")
def grpc_run(model_dir, tmp_path_factory) -> tuple[Run, OtlpReceiver]:
    with served("grpc", model_dir, tmp_path_factory) as done:
        yield done


@pytest.fixture(scope="module", params=["grpc", "http/protobuf"], ids=["grpc", "http"])
def run(request, model_dir, tmp_path_factory) -> Run:
    if request.param == "grpc":
        yield request.getfixturevalue("grpc_run")[0]
        return
    with served(request.param, model_dir, tmp_path_factory) as (done, _):
        yield done


def test_clients_got_what_they_asked(run: Run):
    assert len(run.sent) == 1 + 4 * PER_KIND
    for r in run.sent:
        assert r.response_id == r.expected_response_id
        assert r.completion_tokens == r.max_tokens, r  # ignore_eos: every request runs to max_tokens
        assert r.prompt_tokens > 0, r
        if r.stream:
            assert r.content_chunks >= 1, r


def test_every_span_arrived_once(run: Run):
    n, proto = len(run.sent), PROTOCOL_LABEL[run.protocol]
    other = "http" if proto == "grpc" else "grpc"
    assert run.m("jouletrace_model_requests_total", model=run.model, backend="sim") == n
    assert run.m("jouletrace_model_requests_total") == n  # no other model label
    # vLLM also sends a few start-up spans, counted as received and ignored
    received, ignored = run.m("jouletrace_spans_received_total", protocol=proto), \
        run.m("jouletrace_spans_ignored_total", protocol=proto)
    assert received - ignored == n
    assert run.m("jouletrace_spans_received_total", protocol=other) == 0
    assert run.m("jouletrace_spans_rejected_total") == 0
    assert run.m("jouletrace_spans_duplicate_total") == 0
    late = "\n".join(line for line in run.metrics.splitlines() if line.startswith(("jouletrace_settle", "jouletrace_spans")))
    assert run.m("jouletrace_spans_late_total") == 0, f"{late}\n--- exporter log:\n{tail(run.logs['exporter'](), 60)}"
    assert "settlement: engine" in run.logs["exporter"]()
    assert run.m("jouletrace_settle_holds_expired_total") == 0
    assert run.m("jouletrace_request_energy_joules_count", model=run.model) == n
    ok = run.m("jouletrace_otlp_requests_total", protocol=proto, code="200" if proto == "http" else "OK")
    assert ok >= 1
    assert run.m("jouletrace_otlp_requests_total") == ok, "an OTLP export was answered with an error"


def test_token_counters_equal_client_usage(run: Run):
    assert run.m("jouletrace_model_input_tokens_total", model=run.model) == sum(r.prompt_tokens for r in run.sent)
    assert run.m("jouletrace_model_output_tokens_total", model=run.model) == \
        sum(r.completion_tokens for r in run.sent)


def test_token_counters_equal_vllm_metrics(run: Run):
    assert run.vllm_generation_tokens == sum(r.completion_tokens for r in run.sent)
    assert run.m("jouletrace_model_output_tokens_total", model=run.model) == run.vllm_generation_tokens
    assert run.m("jouletrace_model_input_tokens_total", model=run.model) == run.vllm_prompt_tokens


def test_engine_metrics_are_scraped_beside_the_energy(run: Run):
    """The exporter read vLLM's own /metrics: batch, queue, KV cache, tokens, and spans cover every token."""
    assert run.m("jouletrace_engine_up") == 1
    # down while vLLM started (the exporter starts first); never garbage: vLLM's text always parsed
    assert run.m("jouletrace_engine_scrape_failures_total", reason="garbage") == 0
    assert run.m("jouletrace_engine_generation_tokens_total", model=run.model) >= run.vllm_generation_tokens
    assert run.m("jouletrace_engine_requests_running", model=run.model) == 0  # all finished
    assert run.m("jouletrace_engine_requests_waiting", model=run.model) == 0
    assert 0 <= run.m("jouletrace_engine_kv_cache_usage_ratio", model=run.model) <= 1
    # ~1: every span arrived. Not exactly 1: the baseline is the first scrape that saw the model, and
    # tokens of a request already running then are counted by the engine before it, in spans after.
    assert run.m("jouletrace_engine_span_token_ratio", model=run.model) == pytest.approx(1.0, abs=0.1)


def test_energy_is_conserved(run: Run):
    measured = run.m("jouletrace_gpu_energy_joules_total")
    attributed = run.m("jouletrace_gpu_attributed_energy_joules_total")
    idle = run.m("jouletrace_gpu_idle_energy_joules_total")
    model = run.m("jouletrace_model_energy_joules_total")
    assert measured > 0 and attributed > 0 and idle > 0
    assert attributed + idle <= measured * (1 + 1e-9)
    assert model == pytest.approx(attributed, rel=1e-6)
    assert run.m("jouletrace_request_energy_joules_sum", model=run.model) == pytest.approx(model, rel=1e-6)


# ---- raw spans, matched to requests --------------------------------------------------------------

@dataclasses.dataclass
class RawRun:
    model: str
    sent: list[Sent]
    spans: dict[str, tuple[dict, object]]   # gen_ai.request.id -> (resource attributes, span)
    llm_spans: int
    startup_s: float
    logs: dict[str, Callable[[], str]]


@pytest.fixture(scope="module")
def raw(grpc_run) -> RawRun:
    """The gRPC run's spans as the relay kept them; the exporter counted every request, so the
    relay passed on every span."""
    run, relay = grpc_run
    spans = relay.spans("llm_request")
    by_id = {_attrs(s)["gen_ai.request.id"]: (res, s) for res, s in spans}
    return RawRun(run.model, run.sent, by_id, len(spans), run.startup_s, run.logs)


def _attrs(span) -> dict:
    return attributes(span.attributes)


def test_one_span_per_request_with_its_trace_context(raw: RawRun):
    assert raw.llm_spans == len(raw.sent) == len(raw.spans)
    for r in raw.sent:
        assert r.response_id == r.expected_response_id
        resource, span = raw.spans[r.expected_span_request_id]
        assert resource.get("service.name") == raw.model
        assert (resource.get("k8s.namespace.name"), resource.get("k8s.pod.name")) == ("inference", f"{raw.model}-0")
        assert span.kind == span.SPAN_KIND_SERVER
        assert span.trace_id.hex() == r.trace_id, r.request_id
        assert span.parent_span_id.hex() == r.parent_span_id, r.request_id


def test_span_tokens_equal_client_usage(raw: RawRun):
    for r in raw.sent:
        a = _attrs(raw.spans[r.expected_span_request_id][1])
        assert a["gen_ai.usage.prompt_tokens"] == r.prompt_tokens, r.request_id
        assert a["gen_ai.usage.completion_tokens"] == r.completion_tokens == r.max_tokens, r.request_id
        assert a["gen_ai.request.max_tokens"] == r.max_tokens, r.request_id


def test_span_timings_fit_inside_the_client_view(raw: RawRun):
    for r in raw.sent:
        span = raw.spans[r.expected_span_request_id][1]
        a = _attrs(span)
        e2e = a["gen_ai.latency.e2e"]
        assert 0 < e2e <= r.latency_s, (r.request_id, e2e, r.latency_s)
        # the span covers the request inside vLLM: it opens after the client sent it
        assert span.start_time_unix_nano / 1e9 >= r.sent_at - 0.01, r.request_id
        assert span.start_time_unix_nano < span.end_time_unix_nano, r.request_id
        for phase in ("time_in_queue", "time_to_first_token", "time_in_model_prefill",
                      "time_in_model_decode", "time_in_model_inference"):
            value = a[f"gen_ai.latency.{phase}"]
            assert 0 <= value <= e2e, (r.request_id, phase, value, e2e)
        assert a["gen_ai.latency.time_in_model_prefill"] + a["gen_ai.latency.time_in_model_decode"] <= \
            a["gen_ai.latency.time_in_model_inference"] + 1e-6, r.request_id

