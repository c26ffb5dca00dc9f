"""Peak memory of `jouletrace plan budget` over a month of a thousand GPUs.

    python benchmarks/budget_query_memory.py [--days 30 --nodes 125 --gpus-per-node 8 --step 60]

A synthetic Prometheus query API in a process of its own (a stand-in: no real Prometheus holds
a month of a thousand GPUs on this machine) answers the planner's queries for `--nodes` nodes of
`--gpus-per-node` GPUs in racks of 16, over `--days` days at `--step` s: every series the planner
reads, with values that follow a day and noise. The planner (jouletrace.budget.plan.plan, as the
command runs it) reads it through the HTTP API in chunked range queries; this process's peak
resident memory (ru_maxrss) is measured after the imports and after the plan, for the default
chunk (`MAX_POINTS` samples per answer) and a smaller one."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

RACK_NODES = 16


def serve(port: int, nodes: int, gpus: int, ready) -> None:
    def node(n: int) -> dict:
        return {"node": f"n{n:03d}", "instance": f"n{n:03d}:9464", "job": "jouletrace"}

    def gpu(n: int, i: int) -> dict:
        return {**node(n), "gpu": str(i), "uuid": f"GPU-{n}-{i}"}

    def rack(n: int) -> str:
        return f"r{n // RACK_NODES}"

    def watts(times: np.ndarray, key: int, scale: float) -> np.ndarray:
        day = np.sin(2 * np.pi * (times / 86400 + (key % 7) / 50))
        noise = np.random.default_rng(key).random(len(times))
        return scale * (0.55 + 0.3 * day + 0.15 * noise)

    def matrix(series: list[tuple[dict, np.ndarray]], times: np.ndarray) -> dict:
        stamps = [f"{t:.3f}" for t in times]
        return {"resultType": "matrix", "result": [
            {"metric": labels, "values": [[float(t), f"{v:.2f}"] for t, v in zip(stamps, values)]}
            for labels, values in series]}

    def vector(series: list[tuple[dict, float]], at: float) -> dict:
        return {"resultType": "vector", "result": [{"metric": m, "value": [at, f"{v:g}"]} for m, v in series]}

    def answer(path: str, q: dict) -> dict:
        query = q["query"]
        if path.endswith("query_range"):
            start, end, step = float(q["start"]), float(q["end"]), float(q["step"])
            times = np.arange(start, end + step / 2, step)
            racks = sorted({rack(n) for n in range(nodes)})
            if "jouletrace_gpu_power_max_watts" in query:
                return matrix([({"node": gpu(n, i)["node"], "uuid": gpu(n, i)["uuid"]},
                                watts(times, n * gpus + i, 700)) for n in range(nodes) for i in range(gpus)], times)
            return matrix([({"rack": r}, watts(times, k, 700 * gpus * RACK_NODES)) for k, r in enumerate(racks)],
                          times)
        at = float(q["time"])
        if "jouletrace_node_topology_info" in query:
            return vector([({"node": node(n)["node"], "rack": rack(n)}, 1) for n in range(nodes)], at)
        if "jouletrace_node_power_max_watts" in query:
            return vector([({"node": node(n)["node"]}, 700 * gpus) for n in range(nodes)], at)
        if "jouletrace_gpu_power_limit_watts" in query:
            return vector([(gpu(n, i), 700) for n in range(nodes) for i in range(gpus)], at)
        if "jouletrace_node_power_watts_sum" in query or "jouletrace_node_power_watts_count" in query:
            count = "count" in query
            return vector([({"node": node(n)["node"]}, 2.6e7 if count else 2.6e7 * 400 * gpus) for n in range(nodes)],
                          at)
        return vector([], at)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            body = json.dumps({"status": "success", "data": answer(url.path, q)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ready.set()
    server.serve_forever()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=float, default=30)
    ap.add_argument("--nodes", type=int, default=125)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--step", type=float, default=60)
    ap.add_argument("--max-points", type=int, action="append", help="chunk sizes to measure (default: the default)")
    args = ap.parse_args()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(port, args.nodes, args.gpus_per_node, ready), daemon=True)
    server.start()
    ready.wait(30)

    from jouletrace.budget.plan import Question, budgets, plan
    from jouletrace.budget.prometheus import MAX_POINTS, Prometheus

    print(f"after imports: peak RSS {rss_mib():.0f} MiB")
    end = 1_800_000_000.0
    q = Question("rack", end - args.days * 86400, end, args.step, budgets(f"{16 * 8 * 700:g}"), 0.001)
    for max_points in args.max_points or [MAX_POINTS]:
        t0 = time.time()
        plans, _ = plan(Prometheus(f"http://127.0.0.1:{port}", max_points=max_points), q)
        steps = len(plans[0].power)
        print(f"max_points {max_points}: {len(plans)} racks, {sum(len(p.gpus) for p in plans)} GPUs, {steps} steps "
              f"({args.days:g} days at {args.step:g} s), {time.time() - t0:.0f} s; peak RSS so far {rss_mib():.0f} MiB")
    server.terminate()


if __name__ == "__main__":
    main()
