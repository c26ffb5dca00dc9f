"""Soak: the exporter beside the simulated engine at a steady request rate for a long run.

A simulated Llama-3.1-8B engine on a simulated H100 sends its spans to `jouletrace exporter`,
and the load generator sends chat requests at a constant rate for `--duration` seconds. Every
`--every` seconds the exporter's RSS and CPU time are read from /proc and one /metrics scrape is
timed. At the end the exporter is stopped gracefully (final attribution) and its last scrape gives:

    spans lost         requests the load generator completed minus request spans accepted (must be 0)
    conservation error |attributed + idle - measured| / measured, over the whole run, every GPU
    RSS growth         last RSS minus the RSS after the first tenth of the run (start-up excluded)
    CPU                exporter CPU seconds per wall second
    scrape latency     median, p99 and max of the timed scrapes

    python benchmarks/soak.py --duration 1800 --rate 4 --out benchmarks/results/soak-DATE
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from jouletrace.simulator.gpus import install_gpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import free_port, proc_usage, sum_samples  # noqa: E402

def scrape(url: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read().decode()
    return time.perf_counter() - t0, body


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    p.add_argument("--rate", type=float, default=4.0, help="requests/s (constant arrivals)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between usage readings and timed scrapes")
    p.add_argument("--max-tokens", type=int, default=256, help="output cap per request")
    p.add_argument("--out", required=True, help="directory for logs and soak.json")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = out / "gpu.dev"
    device.unlink(missing_ok=True)
    install_gpus(device)
    metrics_port, grpc_port, engine_port = free_port(), free_port(), free_port()
    py = [sys.executable, "-m", "jouletrace"]
    exporter = subprocess.Popen(
        [*py, "exporter", "--gpu", "sim", "--sim-device-file", str(device), "--metrics-addr", f"127.0.0.1:{metrics_port}",
         "--otlp-grpc-addr", f"127.0.0.1:{grpc_port}", "--otlp-http-addr", "off", "--counter-interval", "1",
         "--settle-delay", "10", "--shutdown-scrape-wait", "30",
         "--engine-metrics", f"http://127.0.0.1:{engine_port}/metrics"],
        stdout=open(out / "exporter.log", "w"), stderr=subprocess.STDOUT)
    engine = subprocess.Popen(
        [*py, "simulate", "serve", "--port", str(engine_port), "--max-num-seqs", "64", "--device-file", str(device),
         "--otlp-traces-endpoint", f"http://127.0.0.1:{grpc_port}"],
        stdout=open(out / "engine.log", "w"), stderr=subprocess.STDOUT)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    readings: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(args.every):
            try:
                latency, _ = scrape(metrics_url)
                cpu, rss = proc_usage(exporter.pid)
            except OSError:
                continue
            readings.append({"t": time.time(), "cpu_s": cpu, "rss_bytes": rss, "scrape_s": latency})

    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{engine_port}/v1/models", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        watcher = threading.Thread(target=watch, daemon=True)
        t0 = time.time()
        watcher.start()
        load = subprocess.run(
            [*py, "loadgen", "run", "--base-url", f"http://127.0.0.1:{engine_port}", "--task", "chat",
             "--num-requests", str(int(args.duration * args.rate)), "--rate", str(args.rate), "--arrival", "constant",
             "--max-tokens", str(args.max_tokens), "--exporter", f"http://127.0.0.1:{metrics_port}", "--no-energy",
             "--quiet", "--out", str(out / "loadgen")], capture_output=True, text=True)
        wall = time.time() - t0
        (out / "loadgen.log").write_text(load.stdout + load.stderr)
        time.sleep(15)  # the last spans reach the exporter
        done.set()
        exporter.send_signal(signal.SIGTERM)
        final = ""
        for _ in range(100):  # the final scrape, after the final attribution
            try:
                _, body = scrape(metrics_url)
            except OSError:
                break
            if "final attribution done" in (out / "exporter.log").read_text():
                final = body
                break
            time.sleep(0.2)
        exporter.wait(60)
    finally:
        done.set()
        for proc in (engine, exporter):
            if proc.poll() is None:
                proc.kill()
    results = json.loads(next((out / "loadgen").glob("*.json")).read_text())
    completed = int(results["completed"])
    m = lambda name, **labels: sum_samples(final, name, **labels)  # noqa: E731
    accepted = (m("jouletrace_spans_received_total") - m("jouletrace_spans_ignored_total")
                - m("jouletrace_spans_rejected_total", reason="invalid_span")
                - m("jouletrace_spans_rejected_total", reason="queue_full") - m("jouletrace_spans_duplicate_total"))
    measured = m("jouletrace_gpu_energy_joules_total")
    split = m("jouletrace_gpu_attributed_energy_joules_total") + m("jouletrace_gpu_idle_energy_joules_total")
    steady = [r for r in readings if r["t"] >= t0 + wall / 10]
    scrapes = [r["scrape_s"] for r in readings]
    summary = {
        "duration_s": round(wall, 1), "rate_per_s": args.rate, "requests_completed": completed,
        "request_spans_accepted": accepted, "spans_lost": completed - accepted,
        "requests_attributed": m("jouletrace_model_requests_total"),
        "measured_j": measured, "conservation_error": abs(split - measured) / measured if measured else None,
        "rss_start_mib": steady[0]["rss_bytes"] / 2**20, "rss_end_mib": readings[-1]["rss_bytes"] / 2**20,
        "rss_growth_mib": (readings[-1]["rss_bytes"] - steady[0]["rss_bytes"]) / 2**20,
        "cpu_fraction": (readings[-1]["cpu_s"] - readings[0]["cpu_s"]) / (readings[-1]["t"] - readings[0]["t"]),
        "scrape_ms": {"median": 1e3 * statistics.median(scrapes), "p99": 1e3 * percentile(scrapes, 0.99),
                      "max": 1e3 * max(scrapes), "n": len(scrapes)},
    }
    (out / "soak.json").write_text(json.dumps({"summary": summary, "readings": readings}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if summary["spans_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
