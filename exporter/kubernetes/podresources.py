"""Which GPUs a pod holds, from the kubelet's PodResources API (v1 `List`, gRPC over its unix socket).

The kubelet answers every pod on the node with its containers' devices; for NVIDIA GPUs the device
ids are GPU (or MIG) UUIDs under the resource `nvidia.com/gpu` (or `nvidia.com/mig-*`). Only the
fields read here are declared: the v1 field numbers of the kubelet's published `api.proto`;
protobuf skips the others (cpu ids, memory, topology, dynamic resources)."""

from __future__ import annotations

import dataclasses

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"
GPU_RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-")


def _message_classes() -> tuple[type, type]:
    """(ListPodResourcesRequest, ListPodResourcesResponse) of package `v1`, in a private pool."""
    f = descriptor_pb2.FileDescriptorProto(name="jouletrace/kubelet_podresources_v1.proto", package="v1",
                                           syntax="proto3")
    string, message = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    one, many = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    shapes = {
        "ListPodResourcesRequest": [],
        "ListPodResourcesResponse": [("pod_resources", 1, message, many, ".v1.PodResources")],
        "PodResources": [("name", 1, string, one, None), ("namespace", 2, string, one, None),
                         ("containers", 3, message, many, ".v1.ContainerResources")],
        "ContainerResources": [("name", 1, string, one, None), ("devices", 2, message, many, ".v1.ContainerDevices")],
        "ContainerDevices": [("resource_name", 1, string, one, None), ("device_ids", 2, string, many, None)],
    }
    for name, fields in shapes.items():
        m = f.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{n}"))
                 for n in ("ListPodResourcesRequest", "ListPodResourcesResponse"))


ListPodResourcesRequest, ListPodResourcesResponse = _message_classes()


@dataclasses.dataclass(frozen=True)
class ContainerGPUs:
    namespace: str
    pod: str
    container: str
    device_ids: tuple[str, ...]   # GPU or MIG UUIDs


class PodResourcesError(RuntimeError):
    """The kubelet's socket did not answer (missing, refused, timed out) or answered garbage."""


def list_gpus(socket_path: str = DEFAULT_SOCKET, timeout_s: float = 5.0) -> list[ContainerGPUs]:
    """Every container on the node that holds GPUs, with their device ids."""
    try:
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            call = channel.unary_unary(LIST_METHOD, request_serializer=ListPodResourcesRequest.SerializeToString,
                                       response_deserializer=ListPodResourcesResponse.FromString)
            response = call(ListPodResourcesRequest(), timeout=timeout_s)
    except grpc.RpcError as e:
        raise PodResourcesError(f"kubelet PodResources at {socket_path}: {e.code().name}: {e.details()}") from None
    out = []
    for pod in response.pod_resources:
        for c in pod.containers:
            ids = tuple(i for d in c.devices if d.resource_name.startswith(GPU_RESOURCES) for i in d.device_ids)
            if ids:
                out.append(ContainerGPUs(pod.namespace, pod.name, c.name, ids))
    return out


def pod_gpu_ids(socket_path: str, namespace: str, pod: str, timeout_s: float = 5.0) -> list[str]:
    """The GPU ids of every container of pod `namespace/pod`, in the kubelet's order, without repeats."""
    ids: list[str] = []
    for c in list_gpus(socket_path, timeout_s):
        if c.namespace == namespace and c.pod == pod:
            ids += [i for i in c.device_ids if i not in ids]
    return ids
