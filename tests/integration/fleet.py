"""A small simulated fleet for PromQL tests: the simulated engine (Llama-3.1-8B shape, max_num_seqs 16)
serving a steady open-loop chat load from the load generator, a jouletrace exporter reading its
simulated GPU and spans and scraping its metrics, and a real Prometheus (Debian package) scraping
the exporter every second with `namespace`, `pod`, `container` and `node` target labels as
Kubernetes service discovery and the monitors' relabeling (k8s/overlays/monitoring) set them, evaluating the given rule files.
The exporter runs in node mode: a STAND-IN kubelet (tests/kubelet.py) says pod `inference/llama-0` holds the
GPU, and the engine's spans name that pod through OTEL_RESOURCE_ATTRIBUTES, as k8s/README.md says. Its node
sits in TOPOLOGY, whose power budgets Prometheus loads from prometheus/power-budgets.example.yml."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from kubelet import StandInKubelet
from servers import ExporterProcess, PrometheusProcess, SimEngine, free_port, wait_for

from jouletrace.exporter.gpu.devicefile import FileGPU
from jouletrace.simulator.gpus import install_gpus

MODEL = "llama-3.1-8b"
TARGET_LABELS = {"namespace": "inference", "pod": "llama-0", "container": "jouletrace", "node": "gpu-node-0"}
TOPOLOGY = {"rack": "rack-1", "row": "row-a", "pdu": "pdu-1"}
BUDGETS = Path(__file__).resolve().parents[2] / "prometheus" / "power-budgets.example.yml"


class Fleet:
    def __init__(self, rule_files: list[str] | None = None, warmup_s: float = 40.0):
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-"))
        device = self.dir / "gpu.dev"
        install_gpus(device)
        gpu = FileGPU(str(device), 0)
        gpu.reopen()
        namespace, pod = TARGET_LABELS["namespace"], TARGET_LABELS["pod"]
        self.kubelet = StandInKubelet({(namespace, pod): {"vllm": {"nvidia.com/gpu": [gpu.uuid]}}})
        engine_port = free_port()
        self.exporter = ExporterProcess("--gpu", "sim", "--sim-device-file", str(device), "--settle-delay", "3",
                                        "--counter-interval", "1", "--window", "15",
                                        "--engine-metrics", f"http://127.0.0.1:{engine_port}/metrics",
                                        "--node-mode", "on", "--pod-resources-socket", self.kubelet.socket,
                                        "--pod-refresh", "1",
                                        *(arg for key, value in TOPOLOGY.items() for arg in ("--topology", f"{key}={value}")))
        self.engine = SimEngine("--max-num-seqs", "16", "--device-file", str(device), "--otlp-traces-endpoint",
                                f"http://127.0.0.1:{self.exporter.grpc_port}", port=engine_port,
                                env={"OTEL_RESOURCE_ATTRIBUTES": f"k8s.namespace.name={namespace},k8s.pod.name={pod}"})
        self.load = subprocess.Popen(
            [sys.executable, "-m", "jouletrace", "loadgen", "run", "--base-url", self.engine.url(), "--task", "chat",
             "--rate", "6", "--arrival", "poisson", "-n", "100000", "--max-tokens", "256", "--no-energy", "--quiet",
             "--out", str(self.dir / "load")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.prometheus = PrometheusProcess([f"127.0.0.1:{self.exporter.metrics_port}"],
                                            rule_files=[*(rule_files or []), str(BUDGETS)], labels=TARGET_LABELS)
        wait_for(lambda: self.prometheus.query("jouletrace_model_energy_per_output_token_joules"), warmup_s + 60,
                 "J/token in Prometheus")
        wait_for(lambda: self.prometheus.query(f"count_over_time(jouletrace_gpu_power_watts[{int(warmup_s)}s]) "
                                               f">= {int(warmup_s * 0.8)}"), warmup_s + 60, "history in Prometheus")

    def query(self, promql: str) -> list[dict]:
        return self.prometheus.query(promql)

    def stop(self) -> None:
        self.load.send_signal(signal.SIGINT)
        try:
            self.load.wait(30)
        except subprocess.TimeoutExpired:
            self.load.kill()
        self.prometheus.stop()
        self.engine.stop()
        self.exporter.stop()
        self.kubelet.stop()
