"""A small simulated fleet for PromQL tests: the simulated engine (Llama-3.1-8B shape, max_num_seqs 16)
serving a steady open-loop chat load from the load generator, a jouletrace exporter reading its
simulated GPU and spans and scraping its metrics, and a real Prometheus (Debian package) scraping
the exporter every second with `namespace`, `pod`, `container` and `node` target labels as
Kubernetes service discovery and the monitors' relabeling (k8s/overlays/monitoring) set them, evaluating the given rule files.
The exporter runs in node mode, as the `node` overlay's DaemonSet in its own namespace `jouletrace`: a
STAND-IN kubelet (tests/kubelet.py) says pod `inference/llama-0` holds the GPU, and the engine's spans
name that pod through OTEL_RESOURCE_ATTRIBUTES, as k8s/README.md says.
Power-cap actuation is on: once Prometheus has scraped a window observed at the GPU's first limit
(POWER_LIMITS_W; that scrape's Unix time is `uncapped_at`), the fleet lowers the limit through the
admin API and waits until the advice, within the power budget too, is in Prometheus.
Its node sits in TOPOLOGY, whose power budgets Prometheus loads from
prometheus/power-budgets.example.yml. The exporter is given an electricity price and a grid carbon intensity,
for the cost and carbon series."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from kubelet import StandInKubelet
from powercap.stack import TOKEN, api
from servers import ExporterProcess, PrometheusProcess, SimEngine, free_port, wait_for

from jouletrace.exporter.gpu.devicefile import FileGPU
from jouletrace.simulator.gpus import install_gpus

MODEL = "llama-3.1-8b"
TARGET_LABELS = {"namespace": "jouletrace", "pod": "jouletrace-x7k2p", "container": "jouletrace", "node": "gpu-node-0"}
INFERENCE_POD = ("inference", "llama-0")  # the pod that holds the GPU: its namespace and name
POWER_LIMITS_W = (700.0, 400.0)  # the GPU's limit at start (its maximum), then the one set
POWER_BUDGET_W = 500.0  # --powercap-budget: only the second limit fits
TOPOLOGY = {"rack": "rack-1", "row": "row-a", "pdu": "pdu-1"}
BUDGETS = Path(__file__).resolve().parents[2] / "prometheus" / "power-budgets.example.yml"


class Fleet:
    def __init__(self, rule_files: list[str] | None = None, warmup_s: float = 40.0):
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-"))
        device = self.dir / "gpu.dev"
        install_gpus(device)
        gpu = FileGPU(str(device), 0)
        gpu.reopen()
        namespace, pod = INFERENCE_POD
        token_file = self.dir / "admin-token"
        token_file.write_text(TOKEN + "\n")
        self.kubelet = StandInKubelet({(namespace, pod): {"vllm": {"nvidia.com/gpu": [gpu.uuid]}}})
        engine_port = free_port()
        self.exporter = ExporterProcess("--gpu", "sim", "--sim-device-file", str(device), "--settle-delay", "3",
                                        "--counter-interval", "1", "--window", "15",
                                        "--engine-metrics", f"http://127.0.0.1:{engine_port}/metrics",
                                        "--node-mode", "on", "--pod-resources-socket", self.kubelet.socket,
                                        "--pod-refresh", "1", "--powercap-actuation", "on",
                                        "--powercap-token-file", str(token_file), "--powercap-cooldown", "0",
                                        "--powercap-max-step", f"{POWER_LIMITS_W[0] - POWER_LIMITS_W[1]:g}",
                                        "--powercap-guard-deadline", "off", "--powercap-budget", f"{POWER_BUDGET_W:g}",
                                        "--electricity-price", "0.12", "--currency", "USD", "--grid-carbon-intensity", "400",
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
        uncapped = wait_for(lambda: self.prometheus.query("timestamp(jouletrace_powercap_limits_observed)"), 60,
                            f"a window at {POWER_LIMITS_W[0]:g} W in Prometheus")
        self.uncapped_at = float(uncapped[0]["value"][1])
        status, body, _ = api(self.exporter.url(""), "POST", {"watts": POWER_LIMITS_W[1], "reason": "fleet"})
        assert status == 200 and body["changes"], body
        wait_for(lambda: self.prometheus.query("jouletrace_powercap_recommended_watts")
                 and self.prometheus.query("jouletrace_powercap_budget_recommended_watts"), 90,
                 f"the advice from windows at {POWER_LIMITS_W[0]:g} W and {POWER_LIMITS_W[1]:g} W in Prometheus")
        wait_for(lambda: self.prometheus.query(f"count_over_time(jouletrace_gpu_power_watts[{int(warmup_s)}s]) "
                                               f">= {int(warmup_s * 0.8)}"), warmup_s + 60, "history in Prometheus")

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        return self.prometheus.query(promql, at)

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
