"""A STAND-IN kubelet: a real gRPC server on a unix socket serving `v1.PodResourcesLister/List`, with
messages declared here from the kubelet's published v1 `api.proto`, including fields jouletrace does
not read (cpu ids, NUMA topology). No kubelet can run here."""

from __future__ import annotations

import os
import tempfile
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

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


def _response(pods: dict):
    response = M["ListPodResourcesResponse"]()
    for (namespace, pod), containers in pods.items():
        p = response.pod_resources.add(name=pod, namespace=namespace)
        for container, resources in containers.items():
            c = p.containers.add(name=container, cpu_ids=[0, 1])
            for resource, ids in resources.items():
                c.devices.add(resource_name=resource, device_ids=ids).topology.nodes.add(ID=0)
    return response


class StandInKubelet:
    """pods: {(namespace, pod): {container: {resource: [device ids]}}}"""

    def __init__(self, pods: dict):
        self.dir = tempfile.mkdtemp(prefix="kubelet-")
        self.socket = os.path.join(self.dir, "kubelet.sock")
        self.response = _response(pods)
        handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: self.response,
                                                      request_deserializer=M["ListPodResourcesRequest"].FromString,
                                                      response_serializer=M["ListPodResourcesResponse"].SerializeToString)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("v1.PodResourcesLister",
                                                                                  {"List": handler}),))
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()

    def set_pods(self, pods: dict) -> None:
        """Answer with `pods` from now on."""
        self.response = _response(pods)

    def stop(self) -> None:
        self.server.stop(grace=None).wait()
