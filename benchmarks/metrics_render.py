"""`/metrics` render time at 8 GPUs x 20 models: median and p99 of `generate_latest` over repeats.

    python benchmarks/metrics_render.py [--repeats 500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from prometheus_client import generate_latest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from rig import FakeClock, Rig  # noqa: E402

from jouletrace.exporter.intake.core import IntakeStats  # noqa: E402
from jouletrace.exporter.sinks.prometheus.registry import build_registry, collectors  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=500)
    args = ap.parse_args()
    clock = FakeClock()
    rig = Rig(clock, gpus=8, load=0.6, settle_delay_s=5.0)
    rig.run(2.0)
    rig.submit([rig.request(2.0 + 0.01 * i, 5.0, model=f"model-{i % 20}", span_id=i + 1) for i in range(2000)])
    rig.run(20.0)
    registry = build_registry(collectors(rig.samplers, rig.ledger, IntakeStats().snapshot, clock=clock))
    body = generate_latest(registry)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"gpus": 8, "models": len(rig.ledger.model_names), "bytes": len(body),
                      "series": sum(1 for line in body.decode().splitlines() if not line.startswith("#")),
                      "median_ms": statistics.median(times) * 1e3, "p99_ms": times[int(0.99 * len(times))] * 1e3}))


if __name__ == "__main__":
    main()
