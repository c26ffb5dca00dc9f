"""GPU discovery through the kubelet's PodResources API, against a STAND-IN kubelet: a real gRPC server
on a unix socket serving `v1.PodResourcesLister/List` with messages declared here from the kubelet's
published v1 `api.proto`, including fields jouletrace does not read (cpu ids, NUMA topology)."""

from __future__ import annotations

import os
import tempfile
from concurrent import futures

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from servers import ExporterProcess, http_get, wait_for

from jouletrace.exporter.gpu import Selection
from jouletrace.exporter.podresources import PodResourcesError, list_gpus, pod_gpu_ids

T = descriptor_pb2.FieldDescriptorProto
KUBELET_V1 = {  # message: [(field, number, type, repeated, message type)]
    "ListPodResourcesRequest": [],
    "ListPodResourcesResponse": [("pod_resources", 1, T.TYPE_MESSAGE, True, "PodResources")],
    "PodResources": [("name", 1, T.TYPE_STRING, False, None), ("namespace", 2, T.TYPE_STRING, False, None),
                     ("containers", 3, T.TYPE_MESSAGE, True, "ContainerResources")],
    "ContainerResources": [("name", 1, T.TYPE_STRING, False, None),
                           ("devices", 2, T.TYPE_MESSAGE, True, "ContainerDevices"),
                           ("cpu_ids", 3, T.TYPE_INT64, True, None)],
    "ContainerDevices": [("resource_name", 1, T.TYPE_STRING, False, None), ("device_ids", 2, T.TYPE_STRING, True, None),
                         ("topology", 3, T.TYPE_MESSAGE, False, "TopologyInfo")],
    "TopologyInfo": [("nodes", 1, T.TYPE_MESSAGE, True, "NUMANode")],
    "NUMANode": [("ID", 1, T.TYPE_INT64, False, None)],
}


def kubelet_messages() -> dict[str, type]:
    f = descriptor_pb2.FileDescriptorProto(name="kubelet_stand_in_v1.proto", package="v1", syntax="proto3")
    for name, fields in KUBELET_V1.items():
        m = f.message_type.add(name=name)
        for field, number, kind, repeated, ref in fields:
            d = m.field.add(name=field, number=number, type=kind,
                            label=T.LABEL_REPEATED if repeated else T.LABEL_OPTIONAL)
            if ref:
                d.type_name = f".v1.{ref}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{n}")) for n in KUBELET_V1}


M = kubelet_messages()
SIM_UUID = "GPU-51000000-0000-4000-8000-{:012x}"  # the simulated backend's UUIDs, seed 0


class StandInKubelet:
    """pods: {(namespace, pod): {container: {resource: [device ids]}}}"""

    def __init__(self, pods: dict):
        self.dir = tempfile.mkdtemp(prefix="kubelet-")
        self.socket = os.path.join(self.dir, "kubelet.sock")
        response = M["ListPodResourcesResponse"]()
        for (namespace, pod), containers in pods.items():
            p = response.pod_resources.add(name=pod, namespace=namespace)
            for container, resources in containers.items():
                c = p.containers.add(name=container, cpu_ids=[0, 1])
                for resource, ids in resources.items():
                    c.devices.add(resource_name=resource, device_ids=ids).topology.nodes.add(ID=0)
        handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: response,
                                                      request_deserializer=M["ListPodResourcesRequest"].FromString,
                                                      response_serializer=M["ListPodResourcesResponse"].SerializeToString)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("v1.PodResourcesLister",
                                                                                  {"List": handler}),))
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


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


@pytest.mark.parametrize("kubelet", [SHARED], indirect=True)
def test_shared_and_mig_devices_are_listed_with_their_ids(kubelet):
    got = {c.pod: c.device_ids for c in list_gpus(kubelet.socket)}
    assert got["a"] == (SIM_UUID.format(0) + "::0",) and got["b"] == (SIM_UUID.format(0) + "::1",)
    assert got["mig"] == ("MIG-0d5e4f6a-0000-5000-9000-000000000001",)


def test_precedence_explicit_then_kubelet_then_environment(tmp_path):
    assert Selection.discover("1", "ns/p", str(tmp_path / "none.sock"), {}).source == "config"
    env = {"NVIDIA_VISIBLE_DEVICES": SIM_UUID.format(2)}
    fallback = Selection.discover("all", "ns/p", str(tmp_path / "none.sock"), env)  # no kubelet: the environment
    assert (fallback.items, fallback.source) == ((SIM_UUID.format(2),), "NVIDIA_VISIBLE_DEVICES")
    assert Selection.discover("all", "", "", {}).source == "all"
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
