"""The simulated engine as a server, through real parts: the load generator's client, a real
OTLP/gRPC receiver and a real jouletrace exporter reading the engine's device file. Its spans and
metrics must read exactly as real vLLM's do (tests/fixtures holds a captured vLLM payload)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vllm"))
from jouletrace.exporter.engine import parse_vllm  # noqa: E402
from jouletrace.loadgen.plan import Sampling  # noqa: E402
from jouletrace.loadgen.runner import RunConfig, run  # noqa: E402
from jouletrace.simulator.gpus import install_gpus  # noqa: E402
from servers import ExporterProcess, SimEngine, free_port, http_get, sum_samples, wait_for  # noqa: E402
from vllm_stack import OtlpReceiver, attributes  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb"
MODEL = "llama-3.1-8b"


def load(engine: SimEngine, out: Path, n: int, max_num_seqs: int | None = None, exporter: str | None = None,
         max_tokens: int = 64) -> dict:
    cfg = RunConfig(base_url=engine.url(), task="chat", num_requests=n, max_num_seqs=max_num_seqs,
                    exporter=exporter, no_energy=exporter is None, sampling=Sampling(max_tokens=max_tokens),
                    out_dir=str(out), progress=False, energy_wait_s=60)
    return asyncio.run(run(cfg))[0]


def vllm_span_shape() -> tuple[set, dict]:
    req = trace_service_pb2.ExportTraceServiceRequest()
    req.ParseFromString(FIXTURE.read_bytes())
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.name == "llm_request":
                    return {ss.scope.name, span.kind}, {a.key: a.value.WhichOneof("value") for a in span.attributes}
    raise AssertionError("no llm_request span in the fixture")


def test_spans_have_vllms_shape_and_join_the_client_trace(tmp_path):
    receiver = OtlpReceiver()
    engine = SimEngine("--max-num-seqs", "4", "--otlp-traces-endpoint", receiver.endpoint)
    try:
        r = load(engine, tmp_path, 6)
        spans = wait_for(lambda: (s := receiver.spans("llm_request")) and len(s) == 6 and s, 20, "6 spans")
    finally:
        engine.stop()
        receiver.stop()
    assert r["completed"] == 6
    (scope_kind, shape) = vllm_span_shape()
    for resource, span in spans:
        attrs = attributes(span.attributes)
        assert {a.key: a.value.WhichOneof("value") for a in span.attributes} == shape
        assert resource["service.name"] == MODEL
        assert span.kind in scope_kind
        assert attrs["gen_ai.latency.e2e"] == pytest.approx((span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
                                                            abs=1e-3)
        assert attrs["gen_ai.latency.time_in_model_prefill"] + attrs["gen_ai.latency.time_in_model_decode"] == \
            pytest.approx(attrs["gen_ai.latency.time_in_model_inference"])
    # the server span is the child of the client span whose context went out as traceparent
    sent = set(zip(r["trace_ids"], r["span_ids"]))
    assert {(s.trace_id.hex(), s.parent_span_id.hex()) for _, s in spans} == sent
    assert {attributes(s.attributes)["gen_ai.request.id"] for _, s in spans} == set(r["server_request_ids"])
    assert {attributes(s.attributes)["gen_ai.usage.completion_tokens"] for _, s in spans} <= set(r["output_lens"])


def test_the_exporter_measures_the_engine_as_it_would_vllm(tmp_path):
    device = tmp_path / "gpu.dev"
    install_gpus(device)
    engine_port = free_port()
    exporter = ExporterProcess("--gpu", "sim", "--sim-device-file", str(device), "--settle-delay", "3",
                               "--counter-interval", "1", "--engine-metrics", f"http://127.0.0.1:{engine_port}/metrics")
    engine = None
    try:
        engine_args = ("--max-num-seqs", "8", "--device-file", str(device), "--otlp-traces-endpoint",
                       f"http://127.0.0.1:{exporter.grpc_port}")
        engine = SimEngine(*engine_args, port=engine_port)
        wait_for(lambda: http_get(exporter.url("/readyz"))[0] == 200, 15, "the exporter to see the GPU")
        r = load(engine, tmp_path, 24, max_num_seqs=8, exporter=exporter.url(""), max_tokens=256)
        assert r["completed"] == 24 and r["energy_per_token_j"] > 0
        # the exporter got every span and matches them to the engine's own token counter
        metrics = lambda: http_get(exporter.url("/metrics"))[1]  # noqa: E731
        wait_for(lambda: sum_samples(metrics(), "jouletrace_model_requests_total", model=MODEL) == 24, 30,
                 "24 spans attributed")
        text = metrics()
        assert sum_samples(text, "jouletrace_model_output_tokens_total", model=MODEL) == r["total_output_tokens"]
        assert sum_samples(text, "jouletrace_model_input_tokens_total", model=MODEL) == r["total_input_tokens"]
        wait_for(lambda: sum_samples(metrics(), "jouletrace_engine_span_token_ratio", model=MODEL) == 1.0, 10,
                 "span tokens to match the engine's count")
        engine_series = parse_vllm(http_get(engine.url("/metrics"))[1])[MODEL]
        assert engine_series["generation_tokens"] == r["total_output_tokens"]
        assert engine_series["prompt_tokens"] == r["total_input_tokens"]
        # energy comes from the engine's device file: a busy simulated H100 draws hundreds of watts
        assert 300 < r["avg_power_w"] < 700
        assert sum_samples(text, "jouletrace_gpu_energy_joules_total", backend="sim") > 0
    finally:
        if engine is not None:
            engine.stop()
        exporter.stop()
