"""Node mode: one exporter serves every pod of a node; each GPU's energy goes to the requests of the pods
that hold it, per the kubelet's PodResources API (a STAND-IN kubelet, tests/kubelet.py), with spans
sent by the OpenTelemetry SDK naming their pod through resource attributes."""

from __future__ import annotations

import time

import pytest
from kubelet import SIM_UUID, StandInKubelet
from rig import Rig
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from servers import ExporterProcess, http_get, samples, sum_samples, wait_for

from jouletrace.exporter.kubernetes.placement import Holder, PodPlacement, holders_of, pod_placement
from jouletrace.exporter.kubernetes.podresources import ContainerGPUs, PodResourcesError

UUIDS = [SIM_UUID.format(i) for i in range(3)]
# GPU 0 time-sliced between pods a and b; GPU 1 is c's; GPU 2 is nobody's
NODE = {("inference", "a"): {"vllm": {"nvidia.com/gpu": [UUIDS[0] + "::0"]}},
        ("inference", "b"): {"vllm": {"nvidia.com/gpu": [UUIDS[0] + "::3"]}, "jouletrace": {}},
        ("inference", "c"): {"vllm": {"nvidia.com/gpu": [UUIDS[1]]}},
        ("inference", "mig"): {"vllm": {"nvidia.com/mig-1g.10gb": ["MIG-0d5e4f6a-0000-5000-9000-000000000001"]}},
        ("batch", "cpu-only"): {"main": {}}}


def test_time_sliced_replicas_name_their_gpu_and_other_devices_are_left_out():
    containers = [ContainerGPUs("inference", "a", "vllm", (UUIDS[0] + "::0",)),
                  ContainerGPUs("inference", "b", "vllm", (UUIDS[0] + "::1", UUIDS[2])),
                  ContainerGPUs("inference", "b", "sidecar", (UUIDS[2] + "::4",)),
                  ContainerGPUs("inference", "mig", "vllm", ("MIG-0d5e4f6a-0000-5000-9000-000000000001",))]
    holders = holders_of(containers, UUIDS)
    assert holders == [Holder(0, "inference", "a", "vllm"), Holder(0, "inference", "b", "vllm"),
                       Holder(2, "inference", "b", "sidecar"), Holder(2, "inference", "b", "vllm")]
    assert pod_placement(holders) == {"inference/a": [0], "inference/b": [0, 2]}


def test_a_kubelet_that_stops_answering_leaves_the_last_placement(clock):
    answers = [[ContainerGPUs("ns", "a", "vllm", (UUIDS[1],))], PodResourcesError("kubelet: UNAVAILABLE")]

    def lister(socket_path: str):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    ledger = Rig(clock, gpus=2).ledger
    placement = PodPlacement(ledger, lambda: UUIDS[:2], "/nowhere.sock", 1.0, lister=lister)
    placement.refresh()
    placement.refresh()
    assert placement.holders == [Holder(1, "ns", "a", "vllm")]
    assert dict(placement.refreshes) == {"ok": 1, "error": 1}
    assert list(ledger._placement) == ["ns/a", "a"]


def pod_provider(port: int, pod: str) -> TracerProvider:
    """The OpenTelemetry SDK of a server in pod `inference/<pod>`, its resource set as k8s/README.md says."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"model-{pod}", "k8s.pod.name": pod,
                                                        "k8s.namespace.name": "inference"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}",
                                                                     insecure=True)))
    return provider


@pytest.fixture
def node():
    kubelet = StandInKubelet(NODE)
    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", "3", "--sim-load", "0.5", "--node-mode", "on",
                               "--pod-resources-socket", kubelet.socket, "--pod-refresh", "1",
                               "--settle-delay", "3", "--counter-interval", "1")
    yield exporter
    exporter.stop()
    kubelet.stop()


def test_a_shared_gpu_is_split_among_its_pods_requests_and_an_unheld_gpu_goes_to_none(node):
    metrics = lambda: http_get(node.url("/metrics"))[1]  # noqa: E731
    wait_for(lambda: sum_samples(metrics(), "jouletrace_pod_placement_refreshes_total", result="ok") >= 1, 15,
             "a pod placement")
    tokens = {"a": 300, "b": 100, "c": 50}
    providers = {pod: pod_provider(node.grpc_port, pod) for pod in tokens}
    for _ in range(4):  # the three pods' requests run at the same time, stamped alike: each span's
        # synchronous export on end() would otherwise delay the next one's end on a busy machine
        began = time.time_ns()
        spans = [p.get_tracer("test").start_span("llm_request", start_time=began, attributes={
            "gen_ai.usage.prompt_tokens": 0, "gen_ai.usage.completion_tokens": tokens[pod]})
            for pod, p in providers.items()]
        time.sleep(1.0)
        ended = time.time_ns()
        for span in spans:
            span.end(end_time=ended)
    for p in providers.values():
        p.shutdown()
    text = wait_for(lambda: (t := metrics()) and sum_samples(t, "jouletrace_model_requests_total") == 12 and t, 30,
                    "12 requests attributed")
    time.sleep(1.5)  # a pass after the last completion: only idle energy from here on
    text = metrics()
    holders = {(s.labels["gpu"], s.labels["k8s_pod"]) for s in samples(text) if s.name == "jouletrace_gpu_pod_info"}
    assert holders == {("0", "a"), ("0", "b"), ("1", "c")}
    pod = {p: sum_samples(text, "jouletrace_pod_energy_joules_total", k8s_namespace="inference", k8s_pod=p)
           for p in "abc"}
    gpu = [sum_samples(text, "jouletrace_gpu_attributed_energy_joules_total", gpu=str(g)) for g in range(3)]
    assert gpu[0] > 0 and gpu[1] > 0
    assert pod["a"] + pod["b"] == pytest.approx(gpu[0], rel=1e-6)
    assert pod["a"] / (pod["a"] + pod["b"]) == pytest.approx(0.75, abs=0.01)  # 3x b's tokens per second
    assert pod["c"] == pytest.approx(gpu[1], rel=1e-6)
    assert gpu[2] == 0 and sum_samples(text, "jouletrace_gpu_idle_energy_joules_total", gpu="2") > 0
    assert sum_samples(text, "jouletrace_spans_unplaced_total") == 0
