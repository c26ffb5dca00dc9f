"""GPU selection fails closed, end to end with the exporter running on simulated GPUs: where this
pod's GPUs cannot be determined and several are visible, nothing is sampled or attributed, /readyz
says why, `jouletrace_gpu_selection_info` says `unresolved` and the log says what to do; one visible
GPU, an explicit --gpus and a GPUs file written by the server's container still select."""

from __future__ import annotations

import os

import pytest
from kubelet import SIM_UUID
from servers import ExporterProcess, http_get, samples, wait_for

from jouletrace.exporter.gpu.device import Selection

POD = ("--pod", "inference/llama-0")
NODE_ENV = {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": ""}  # the sidecar sees every GPU


def selection_info(exporter: ExporterProcess) -> dict[str, str]:
    status, text = http_get(exporter.url("/metrics"))
    assert status == 200
    return next(s.labels for s in samples(text) if s.name == "jouletrace_gpu_selection_info")


def sampled_gpus(exporter: ExporterProcess) -> list[str]:
    return sorted(s.labels["uuid"] for s in samples(http_get(exporter.url("/metrics"))[1])
                  if s.name == "jouletrace_gpu_power_watts")


def unreadable_socket(tmp_path) -> tuple[str, str]:
    """A PodResources socket the exporter cannot read (as UID 10001 cannot read the kubelet's)."""
    return "--pod-resources-socket", str(tmp_path / "kubelet.sock")


def test_several_gpus_and_unknown_pod_gpus_fail_closed(tmp_path):
    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", "4", *POD, *unreadable_socket(tmp_path),
                               env=NODE_ENV, ready=False)
    try:
        status, body = http_get(exporter.url("/readyz"))
        info = selection_info(exporter)
        gpus = sampled_gpus(exporter)
        otlp = http_get(f"http://127.0.0.1:{exporter.http_port}/v1/traces")[0]
    finally:
        exporter.stop()
    assert status == 503 and body.startswith("GPU selection unresolved: kubelet PodResources at ")
    assert info["source"] == "unresolved" and info["gpus"] == "" and "UNAVAILABLE" in info["reason"]
    assert gpus == [] and otlp == 0  # nothing sampled, no span taken
    log = exporter.output()
    assert "4 GPUs are visible and this pod's are unknown: sampling none, attributing nothing" in log
    assert "--gpus-file" in log and "--gpus" in log


def test_one_visible_gpu_is_the_pods(tmp_path):
    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", "1", *POD, *unreadable_socket(tmp_path), env=NODE_ENV)
    try:
        info, gpus = selection_info(exporter), sampled_gpus(exporter)
    finally:
        exporter.stop()
    assert (info["source"], info["gpus"]) == ("only-gpu", SIM_UUID.format(0)) and "UNAVAILABLE" in info["reason"]
    assert gpus == [SIM_UUID.format(0)]


def test_an_explicit_selection_needs_no_discovery(tmp_path):
    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", "4", "--gpus", f"{SIM_UUID.format(3)},1", *POD,
                               *unreadable_socket(tmp_path), env=NODE_ENV)
    try:
        info, gpus = selection_info(exporter), sampled_gpus(exporter)
    finally:
        exporter.stop()
    assert (info["source"], info["reason"]) == ("config", "")
    assert gpus == [SIM_UUID.format(1), SIM_UUID.format(3)]


def test_the_gpus_file_is_followed_when_it_appears_and_changes(tmp_path):
    gpus_file = tmp_path / "gpus" / "uuids"
    gpus_file.parent.mkdir()

    def write(text: str) -> None:  # as the server's container does: whole, then renamed into place
        tmp = gpus_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, gpus_file)

    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", "4", "--gpus-file", str(gpus_file), *POD,
                               *unreadable_socket(tmp_path), env=NODE_ENV, ready=False)
    try:
        assert http_get(exporter.url("/readyz"))[0] == 503
        info = selection_info(exporter)
        assert info["source"] == "unresolved" and "no GPUs file yet" in info["reason"]

        write(f"{SIM_UUID.format(2)}\n")  # nvidia-smi --query-gpu=uuid --format=csv,noheader
        wait_for(lambda: http_get(exporter.url("/readyz"))[0] == 200, 15, "readiness on the file's GPU")
        assert (selection_info(exporter)["source"], sampled_gpus(exporter)) == ("gpus-file", [SIM_UUID.format(2)])

        write(f"{SIM_UUID.format(3)}\n{SIM_UUID.format(0)}\n")
        wait_for(lambda: sampled_gpus(exporter) == [SIM_UUID.format(0), SIM_UUID.format(3)], 15, "the new GPUs")
        assert selection_info(exporter)["gpus"] == f"{SIM_UUID.format(0)},{SIM_UUID.format(3)}"  # in index order

        write("GPU-00000000-not-on-this-node\n")  # a GPU this exporter cannot see: closed again
        wait_for(lambda: selection_info(exporter)["source"] == "unresolved", 15, "the unresolved selection")
        assert http_get(exporter.url("/readyz"))[0] == 503 and sampled_gpus(exporter) == []
        assert "matches 0 devices" in selection_info(exporter)["reason"]
    finally:
        assert exporter.stop() == 0
    assert exporter.output().count("restarting on its GPUs") == 3


@pytest.mark.parametrize("text, items, source", [
    ("GPU-a\nGPU-b\n", ("GPU-a", "GPU-b"), "gpus-file"),
    ("GPU-a,GPU-b", ("GPU-a", "GPU-b"), "gpus-file"),
    ("", (), "unresolved"),
    ("all\n", (), "unresolved"),  # "all" is no answer from the server's container
])
def test_the_gpus_file_format(tmp_path, text, items, source):
    path = tmp_path / "uuids"
    path.write_text(text)
    selection = Selection.from_file(str(path))
    assert (selection.items, selection.source) == (items, source)
    assert Selection.from_file(str(tmp_path / "missing")).source == "unresolved"


def test_the_gpus_file_wins_over_the_kubelet_and_the_environment(tmp_path):
    path = tmp_path / "uuids"
    path.write_text(SIM_UUID.format(1))
    env = {"NVIDIA_VISIBLE_DEVICES": SIM_UUID.format(2)}
    socket = str(tmp_path / "none.sock")
    assert Selection.discover("all", "ns/p", socket, str(path), environ=env).items == (SIM_UUID.format(1),)
    assert Selection.discover("0", "ns/p", socket, str(path), environ=env).source == "config"
