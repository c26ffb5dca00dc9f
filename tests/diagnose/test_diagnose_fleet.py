"""`GET /diagnose` and `jouletrace diagnose` against real processes: a jouletrace exporter reading a
simulated engine's GPU (device file), spans and /metrics while the load generator drives it. Each
scenario must raise its finding and not the others. The simulated engine admits requests while its
batch and KV cache have room and its host keeps pace with its GPU, so it cannot show requests
waiting on an idle GPU: the non-GPU bottleneck is covered by test_diagnose_rules.py only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from servers import ExporterProcess, SimEngine, free_port, http_get, wait_for

from jouletrace.exporter.gpu.devicefile import DeviceFile
from jouletrace.simulator.gpus import install_gpus
from jouletrace.simulator.profiles import H100_SXM

WINDOW_S = 15


class Scenario:
    """An exporter, a simulated engine started with `engine_args` and a chat load with `load_args`."""

    def __init__(self, tmp, engine_args: list[str], load_args: list[str]):
        self.device = tmp / "gpu.dev"
        install_gpus(self.device)
        port = free_port()
        self.exporter = ExporterProcess("--gpu", "sim", "--sim-device-file", str(self.device), "--settle-delay", "3",
                                        "--counter-interval", "1", "--engine-metrics",
                                        f"http://127.0.0.1:{port}/metrics")
        self.engine = SimEngine("--device-file", str(self.device), "--otlp-traces-endpoint",
                                f"http://127.0.0.1:{self.exporter.grpc_port}", *engine_args, port=port)
        self.load = subprocess.Popen(
            [sys.executable, "-m", "jouletrace", "loadgen", "run", "--base-url", self.engine.url(), "--task", "chat",
             "--max-tokens", "256", "--prompt-scale", "0.25", "--no-energy", "--quiet", "--out", str(tmp / "load"),
             *load_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loaded_at = time.monotonic()
        self.last: dict = {}

    def diagnosis(self, **query) -> dict:
        params = "&".join(f"{k}={v}" for k, v in {"window": WINDOW_S, **query}.items())
        status, body = http_get(self.exporter.url(f"/diagnose?{params}"))
        assert status == 200, body
        self.last = json.loads(body)
        return self.last

    def until(self, predicate, what: str, timeout_s: float = 120.0, **query) -> dict:
        """The first diagnosis of a window wholly under load for which `predicate` holds."""
        def ready():
            if time.monotonic() < self.loaded_at + WINDOW_S + 1:
                return None
            d = self.diagnosis(**query)
            return d if predicate(d) else None
        try:
            return wait_for(ready, timeout_s, what, period_s=1.0)
        except TimeoutError as exc:
            pytest.fail(f"{exc}; last diagnosis: {json.dumps(self.last)}")

    def stop(self) -> None:
        self.engine.proc.kill()  # a graceful stop would wait for the requests still queued
        self.engine.proc.wait()
        self.load.send_signal(signal.SIGINT)
        try:
            self.load.wait(30)
        except subprocess.TimeoutExpired:
            self.load.kill()
            self.load.wait()
        self.exporter.stop()


@pytest.fixture
def scenario(tmp_path):
    started = []

    def start(engine_args: list[str], load_args: list[str]) -> Scenario:
        started.append(Scenario(tmp_path, engine_args, load_args))
        return started[-1]
    yield start
    for s in started:
        s.stop()


def ids(d: dict) -> set[str]:
    return {f["id"] for f in d["findings"]}


def full(d: dict) -> bool:
    """The window holds a scrape a second and spans' energy."""
    return bool(d["factors"]["engines"]) and d["factors"]["engines"][0]["samples"] >= WINDOW_S - 1 \
        and bool(d["factors"]["models"])


def test_low_load_limits_the_batch_then_a_power_cap_is_found(scenario):
    s = scenario(["--max-num-seqs", "64"], ["--rate", "2", "--arrival", "poisson", "-n", "400"])
    # the simulated H100's idle power, given: the fallback (lowest power seen) depends on whether an
    # idle reading fell inside the history, and overstates the static share when none did
    d = s.until(lambda d: full(d) and "batch_limited_by_load" in ids(d), "batch limited by load", max_num_seqs=64,
                idle_power=H100_SXM.idle_w)
    assert ids(d) == {"batch_limited_by_load"}  # no queue: not memory bound, capped or held up off the GPU
    f = d["findings"][0]
    assert f["evidence"]["batch_fill"]["value"] < 0.5 and f["evidence"]["max_num_seqs"]["value"] == 64
    assert f["evidence"]["energy_per_output_token"]["unit"] == "J/token"
    (g,) = d["factors"]["gpus"]
    # prefill-heavy steps may touch the limit now and then; the finding needs half the readings
    assert g["power_limit_w"] == 700 and g["power_cap_share"] < 0.5 and 0 < g["static_power_share"] < 0.5, g
    assert d["factors"]["models"][0]["decode_share"] > 0.5

    with DeviceFile.open(str(s.device)) as device:
        device.request_power_limit(0, 250)
    d = s.until(lambda d: "power_cap" in ids(d), "the power cap", max_num_seqs=64)
    cap = next(f for f in d["findings"] if f["id"] == "power_cap")
    assert cap["evidence"]["sw_power_cap_share"]["value"] >= 0.5 and cap["evidence"]["power_limit"]["value"] < 700

    report = subprocess.run([sys.executable, "-m", "jouletrace", "diagnose", "--exporter", s.exporter.url(""),
                             "--window", str(WINDOW_S), "--max-num-seqs", "64"], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    out = report.stdout
    for text in ("GPUs", "Engines", "Models (from spans)", "Findings", "[low] Running at the power cap: GPU 0",
                 "Batch limited by load: llama-3.1-8b", "evidence: ", "effect: ", "action: ", "(< 0.5)"):
        assert text in out, out
    as_json = subprocess.run([sys.executable, "-m", "jouletrace", "diagnose", "--exporter", s.exporter.url(""),
                              "--json"], capture_output=True, text=True)
    assert as_json.returncode == 0 and set(json.loads(as_json.stdout)) == {"window_s", "factors", "findings", "missing"}


def test_a_small_kv_cache_under_a_burst_is_memory_bound(scenario):
    # 0.228 of 80 GB leaves the KV cache ~2,800 tokens: about a dozen of these requests
    s = scenario(["--max-num-seqs", "64", "--gpu-memory-utilization", "0.228"], ["-n", "600"])
    d = s.until(lambda d: full(d) and "memory_bound" in ids(d), "memory bound", max_num_seqs=64)
    assert not ids(d) & {"batch_limited_by_load", "batch_capped", "non_gpu_bottleneck"}
    (e,) = d["factors"]["engines"]
    assert e["kv_usage"] >= 0.85 and e["waiting"] >= 1 and e["batch_fill"] < 0.5


def test_a_queue_behind_a_small_max_num_seqs_is_batch_capped(scenario):
    s = scenario(["--max-num-seqs", "4"], ["-n", "150"])
    d = s.until(lambda d: full(d) and "batch_capped" in ids(d), "batch capped")  # max_num_seqs not given
    assert not ids(d) & {"batch_limited_by_load", "memory_bound", "non_gpu_bottleneck"}  # the GPU keeps busy
    f = next(f for f in d["findings"] if f["id"] == "batch_capped")
    assert f["evidence"]["running_batch_max"] == {"value": 4, "unit": "requests"}
    assert any(m.startswith("max_num_seqs: not given") for m in d["missing"])


def test_a_slow_host_is_a_non_gpu_bottleneck(scenario):
    """50 ms of host time per step against ~7 ms of kernels: requests queue while the GPU idles."""
    s = scenario(["--max-num-seqs", "8", "--host-overhead-ms", "50"], ["-n", "150"])
    d = s.until(lambda d: full(d) and "non_gpu_bottleneck" in ids(d), "a non-GPU bottleneck", max_num_seqs=8)
    assert not ids(d) & {"batch_limited_by_load", "memory_bound"}
    f = next(f for f in d["findings"] if f["id"] == "non_gpu_bottleneck")
    (g,) = d["factors"]["gpus"]
    assert g["utilization"] < 0.5 and f["severity"] in ("high", "medium")


def test_without_engine_or_spans_it_says_what_is_missing_and_refuses_bad_parameters():
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.5")
    try:
        d = wait_for(lambda: (r := json.loads(http_get(exporter.url("/diagnose"))[1]))["window_s"] > 0 and r,
                     30, "two snapshots")
        assert d["findings"] == [] and d["factors"]["engines"] == [] and d["factors"]["models"] == []
        assert any(m.startswith("engine metrics: no --engine-metrics URL") for m in d["missing"])
        assert any(m.startswith("spans: no request energy") for m in d["missing"])
        for query, message in (("window=abc", "window must be seconds > 0, got 'abc'"),
                               ("max_num_seqs=0", "max_num_seqs must be an integer >= 1, got '0'"),
                               ("maxnumseqs=8", "unknown parameter 'maxnumseqs'")):
            status, body = http_get(exporter.url(f"/diagnose?{query}"))
            assert status == 400 and message in json.loads(body)["error"] and "\n" not in body.strip()
        bad = subprocess.run([sys.executable, "-m", "jouletrace", "diagnose", "--exporter", exporter.url(""),
                              "--window", "-1"], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.count("\n") == 1 and "answered 400: window must be seconds > 0" in bad.stderr
    finally:
        exporter.stop()
    gone = subprocess.run([sys.executable, "-m", "jouletrace", "diagnose", "--exporter",
                           f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True)
    assert gone.returncode == 2 and gone.stdout == "" and gone.stderr.count("\n") == 1
    assert gone.stderr.startswith("jouletrace diagnose: cannot reach the exporter at http://127.0.0.1:")
