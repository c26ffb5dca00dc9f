"""Settlement lag on the simulated engine: seconds from a request's end to its energy being final.

A simulated Llama-3.1-8B engine on a simulated H100 sends its spans to `jouletrace exporter`
(`--engine-metrics` on the engine, `--counter-interval 1`, every other option at its default),
and requests of exactly `max_tokens` output tokens (`ignore_eos`) are sent to the engine:

    chat       20 requests of 100-500 tokens (0.7-3.7 s), Poisson arrivals at 0.5/s
    reasoning  4 requests of 8,000 tokens (about a minute each), started 15 s apart

The exporter's /metrics is read every 0.2 s: its finished-request count reaches k when the k-th
request to end has its energy final (requests complete in the order they end), which gives each
request's lag from the end seen by the client. Per run: the median and p99 lag, spans counted late,
and the share of the busy GPU's energy attributed to requests. `--before DIR` runs the same with
the exporter of another source tree (e.g. `git archive bbe4031`), its C decoder built, beside it.

    python benchmarks/settle_lag.py --workload chat --repeats 3 --before /tmp/settle-before --out benchmarks/results/settle-lag
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from jouletrace.simulator.gpus import install_gpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import ExporterProcess, SimEngine, free_port, http_get, sum_samples  # noqa: E402

MODEL = "llama-3.1-8b"


def workload(name: str, seed: int) -> list[tuple[float, int]]:
    """(send time from the start, output tokens) of each request."""
    rng = random.Random(seed)
    if name == "chat":
        t, out = 0.0, []
        for _ in range(20):
            out.append((t, rng.randint(100, 500)))
            t += rng.expovariate(0.5)
        return out
    return [(15.0 * i, 8000) for i in range(4)]


def chat(engine_url: str, max_tokens: int) -> float:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Explain the joule."}],
                       "max_tokens": max_tokens, "ignore_eos": True}).encode()
    req = urllib.request.Request(engine_url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        resp.read()
    return time.time()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_once(code: str | None, name: str, seed: int) -> dict:
    """One run with the exporter of source tree `code` (None: this one)."""
    tmp = Path(tempfile.mkdtemp())
    device = tmp / "gpu.dev"
    install_gpus(device)
    engine_port = free_port()
    exporter = ExporterProcess("--gpu", "sim", "--sim-device-file", str(device), "--counter-interval", "1",
                               "--engine-metrics", f"http://127.0.0.1:{engine_port}/metrics",
                               env={"PYTHONPATH": code, "PYTHONSAFEPATH": "1"} if code else None)
    engine = SimEngine("--max-num-seqs", "64", "--device-file", str(device), "--otlp-traces-endpoint",
                       f"http://127.0.0.1:{exporter.grpc_port}", port=engine_port)
    counts: list[tuple[float, float]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            text = http_get(exporter.url("/metrics"))[1]
            counts.append((time.time(), sum_samples(text, "jouletrace_model_requests_total", model=MODEL)))

    try:
        time.sleep(2.0)  # the exporter sees the engine idle first
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        plan = workload(name, seed)
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(len(plan)) as pool:
            futures = []
            for at, tokens in plan:
                time.sleep(max(0.0, start + at - time.time()))
                futures.append(pool.submit(chat, engine.url(), tokens))
            ends = sorted(f.result() for f in futures)
        deadline = time.time() + 150
        while time.time() < deadline and (not counts or counts[-1][1] < len(plan)):
            time.sleep(0.5)
        stop.set()
        poller.join()
        text = http_get(exporter.url("/metrics"))[1]
    finally:
        engine.stop()
        exporter.stop()
    log = exporter.output()
    lags = []
    for k, end in enumerate(ends, 1):
        final = next((t for t, n in counts if n >= k), None)
        lags.append(final - end if final is not None else float("nan"))
    attributed = sum_samples(text, "jouletrace_gpu_attributed_energy_joules_total")
    idle = sum_samples(text, "jouletrace_gpu_idle_energy_joules_total")
    policy = next((line.split("settlement: ")[1].split(":")[0] for line in log.splitlines() if "settlement: " in line),
                  "fixed --settle-delay (default)")
    return {"policy": policy, "lag_median_s": statistics.median(lags), "lag_p99_s": percentile(lags, 0.99), "lags_s": lags,
            "spans_late": sum_samples(text, "jouletrace_spans_late_total"),
            "requests_final": counts[-1][1] if counts else 0, "requests": len(ends),
            "attributed_j": attributed, "idle_j": idle, "model_energy_j":
            sum_samples(text, "jouletrace_model_energy_joules_total", model=MODEL)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("chat", "reasoning"), required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", help="source tree of the exporter to compare with (its root, holding jouletrace/)")
    p.add_argument("--out", required=True, help="directory for the JSON results")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codes = {"after": None, **({"before": args.before} if args.before else {})}
    runs: dict[str, list[dict]] = {label: [] for label in codes}
    for i in range(args.repeats):
        for label, code in codes.items():
            r = run_once(code, args.workload, seed=i)
            runs[label].append(r)
            print(f"{args.workload} {label} ({r['policy']}) #{i}: lag median {r['lag_median_s']:.1f} s, p99 {r['lag_p99_s']:.1f} s, "
                  f"late {r['spans_late']:.0f}, final {r['requests_final']:.0f}/{r['requests']}", flush=True)
    summary = {label: {"lag_median_s": statistics.median(r["lag_median_s"] for r in rs),
                       "lag_p99_s": statistics.median(r["lag_p99_s"] for r in rs),
                       "spans_late": statistics.median(r["spans_late"] for r in rs),
                       "attributed_share": statistics.median(r["attributed_j"] / (r["attributed_j"] + r["idle_j"])
                                                             for r in rs)}
               for label, rs in runs.items()}
    (out / f"{args.workload}.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
