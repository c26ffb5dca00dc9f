"""GPU discovery through the kubelet's PodResources API, against a STAND-IN kubelet (tests/kubelet.py)."""

from __future__ import annotations

import pytest
from kubelet import SIM_UUID, StandInKubelet
from servers import ExporterProcess, http_get, wait_for

from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.kubernetes.podresources import PodResourcesError, list_gpus, pod_gpu_ids

EXCLUSIVE = {("inference", "llama-0"): {"vllm": {"nvidia.com/gpu": [SIM_UUID.format(1)], "example.com/nic": ["eth9"]},
                                        "jouletrace": {}},
             ("inference", "llama-1"): {"vllm": {"nvidia.com/gpu": [SIM_UUID.format(0), SIM_UUID.format(2)]}},
             ("batch", "etl-0"): {"main": {}}}
SHARED = {("inference", "a"): {"vllm": {"nvidia.com/gpu": [SIM_UUID.format(0) + "::0"]}},
          ("inference", "b"): {"vllm": {"nvidia.com/gpu": [SIM_UUID.format(0) + "::1"]}},
          ("inference", "mig"): {"vllm": {"nvidia.com/mig-1g.10gb": ["MIG-0d5e4f6a-0000-5000-9000-000000000001"]}}}


@pytest.fixture
def kubelet(request):
    k = StandInKubelet(request.param)
    yield k
    k.stop()


@pytest.mark.parametrize("kubelet", [EXCLUSIVE], indirect=True)
def test_exclusive_gpus_per_pod(kubelet):
    got = {(c.namespace, c.pod, c.container): c.device_ids for c in list_gpus(kubelet.socket)}
    assert got == {("inference", "llama-0", "vllm"): (SIM_UUID.format(1),),
                   ("inference", "llama-1", "vllm"): (SIM_UUID.format(0), SIM_UUID.format(2))}
    assert pod_gpu_ids(kubelet.socket, "inference", "llama-1") == [SIM_UUID.format(0), SIM_UUID.format(2)]
    assert pod_gpu_ids(kubelet.socket, "batch", "etl-0") == []
    selection = Selection.discover("all", "inference/llama-0", kubelet.socket, environ={})
    assert (selection.items, selection.source) == ((SIM_UUID.format(1),), "podresources")
    closed = Selection.discover("all", "batch/etl-0", kubelet.socket, environ={})  # a pod without GPUs
    assert (closed.source, closed.reason) == ("unresolved", "the kubelet lists no GPU for pod batch/etl-0")


@pytest.mark.parametrize("kubelet", [SHARED], indirect=True)
def test_shared_and_mig_devices_are_listed_with_their_ids(kubelet):
    got = {c.pod: c.device_ids for c in list_gpus(kubelet.socket)}
    assert got["a"] == (SIM_UUID.format(0) + "::0",) and got["b"] == (SIM_UUID.format(0) + "::1",)
    assert got["mig"] == ("MIG-0d5e4f6a-0000-5000-9000-000000000001",)


def test_precedence_explicit_then_kubelet_then_environment(tmp_path):
    socket = str(tmp_path / "none.sock")
    assert Selection.discover("1", "ns/p", socket, environ={}).source == "config"
    env = {"NVIDIA_VISIBLE_DEVICES": SIM_UUID.format(2)}
    fallback = Selection.discover("all", "ns/p", socket, environ=env)  # no kubelet: the environment naming GPUs
    assert (fallback.items, fallback.source) == ((SIM_UUID.format(2),), "NVIDIA_VISIBLE_DEVICES")
    closed = Selection.discover("all", "ns/p", socket, environ={"NVIDIA_VISIBLE_DEVICES": "all"})  # nor that: no answer
    assert closed.source == "unresolved" and "UNAVAILABLE" in closed.reason
    assert Selection.discover("all", "", "", environ={}).source == "all"  # no pod: every GPU of the machine
    with pytest.raises(PodResourcesError, match="UNAVAILABLE"):
        list_gpus(str(tmp_path / "none.sock"), timeout_s=1)


@pytest.mark.parametrize("kubelet", [EXCLUSIVE], indirect=True)
def test_the_exporter_samples_exactly_its_pods_gpus(kubelet):
    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", "3", "--pod", "inference/llama-1",
                               "--pod-resources-socket", kubelet.socket)
    try:
        text = wait_for(lambda: (b := http_get(exporter.url("/metrics"))[1]) and "jouletrace_gpu_selection_info" in b
                        and b, 15, "metrics")
    finally:
        exporter.stop()
    line = next(x for x in text.splitlines() if x.startswith("jouletrace_gpu_selection_info"))
    assert 'source="podresources"' in line and f'gpus="{SIM_UUID.format(0)},{SIM_UUID.format(2)}"' in line
    assert sorted({x.split('gpu="')[1].split('"')[0] for x in text.splitlines()
                   if x.startswith("jouletrace_gpu_power_watts{")}) == ["0", "2"]
