"""Label cardinality attacks on a live exporter: spans naming thousands of distinct models, and
resources naming thousands of distinct Kubernetes pods, sent by OpenTelemetry SDK exporters. The
model and pod labels stay under --max-models and --max-pods (the rest fold into `other`), so the
Prometheus series stay bounded, and every request is still counted."""

from __future__ import annotations

import collections
import time

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from servers import ExporterProcess, http_get, samples, sum_samples, wait_for
from span_load import sdk_span

MAX_MODELS, MAX_PODS = 20, 16
DISTINCT = 3000
CAPPED = {"model": MAX_MODELS, "k8s_pod": MAX_PODS}


def attack_spans(first: int, n: int) -> list:
    end_ns = time.time_ns()
    return [sdk_span(i, end_ns, {"service.name": f"svc-{i}", "k8s.namespace.name": "ns", "k8s.pod.name": f"pod-{i}"},
                     **{"gen_ai.request.model": f"model-{i}"}) for i in range(first, first + n)]


def scrape(exporter: ExporterProcess) -> list:
    status, text = http_get(exporter.url("/metrics"))
    assert status == 200
    return samples(text)


def series_of(found: list, label: str, value: str) -> int:
    return sum(1 for s in found if s.labels.get(label) == value)


def test_distinct_models_and_pods_fold_into_other_and_series_stay_bounded():
    exporter = ExporterProcess("--gpu", "sim", "--settle-delay", "1", "--counter-interval", "0.5",
                               "--max-models", str(MAX_MODELS), "--max-pods", str(MAX_PODS), "--node-mode", "on",
                               "--pod-resources-socket", "/nonexistent/kubelet.sock", "--log-level", "warning")
    try:
        http = HttpExporter(endpoint=f"http://127.0.0.1:{exporter.http_port}/v1/traces", timeout=30)
        grpc = GrpcExporter(endpoint=f"127.0.0.1:{exporter.grpc_port}", insecure=True, timeout=30)
        half = DISTINCT // 2
        assert http.export(attack_spans(0, half)) == SpanExportResult.SUCCESS
        assert grpc.export(attack_spans(half, DISTINCT - half)) == SpanExportResult.SUCCESS
        http.shutdown()
        grpc.shutdown()

        wait_for(lambda: sum_samples_of(scrape(exporter), "jouletrace_model_requests_total") == DISTINCT, 30,
                 "every request counted")
        wait_for(lambda: sum_samples(http_get(exporter.url("/metrics"))[1], "jouletrace_pod_energy_joules",
                                     k8s_pod="other") > 0, 30, "energy attributed to the folded pods")
        found = scrape(exporter)
        values = collections.defaultdict(set)
        for s in found:
            for label in CAPPED:
                if s.labels.get(label):
                    values[label].add(s.labels[label])
        assert values["model"] == {f"model-{i}" for i in range(MAX_MODELS)} | {"other"}
        assert values["k8s_pod"] == {f"pod-{i}" for i in range(MAX_PODS)} | {"other"}
        assert sum_samples_of(found, "jouletrace_model_labels_folded_total") == DISTINCT - MAX_MODELS
        per_model, per_pod = series_of(found, "model", "model-0"), series_of(found, "k8s_pod", "pod-0")
        labelled = sum(1 for s in found if any(s.labels.get(label) for label in CAPPED))
        assert labelled <= (MAX_MODELS + 1) * per_model + (MAX_PODS + 1) * per_pod
        assert exporter.proc.poll() is None
    finally:
        exporter.stop()


def sum_samples_of(found: list, name: str) -> float:
    return sum(s.value for s in found if s.name == name)
