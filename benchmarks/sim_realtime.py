"""The simulated engine served in real time, through HTTP and the load generator, against the same
configuration run in virtual time (`simulate`'s offline model): the ratio of median inter-token
latency and of window output throughput, real / offline, medians over repeats.

Real time depends on how busy the machine is, so this is a benchmark, not a test: on an idle
2-core machine both ratios were within 15 % of 1.

    python benchmarks/sim_realtime.py [--repeats 3] [--requests 24] [--max-num-seqs 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from servers import SimEngine  # noqa: E402

from jouletrace.loadgen.plan import Sampling  # noqa: E402
from jouletrace.loadgen.runner import RunConfig, run  # noqa: E402
from jouletrace.loadgen.tasks import task  # noqa: E402
from jouletrace.simulator.lengths import OutputLengths  # noqa: E402
from jouletrace.simulator.profiles import H100_SXM, LLAMA_3_1_8B  # noqa: E402
from jouletrace.simulator.whatif import run_point  # noqa: E402

MAX_TOKENS = 4096


def real_time(requests: int, max_num_seqs: int) -> dict:
    engine = SimEngine("--max-num-seqs", str(max_num_seqs))
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = RunConfig(base_url=engine.url(), task="chat", num_requests=requests, max_num_seqs=max_num_seqs,
                            no_energy=True, sampling=Sampling(max_tokens=MAX_TOKENS), out_dir=out, progress=False)
            return asyncio.run(run(cfg))[0]
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    args = parser.parse_args()
    offline, _ = run_point(LLAMA_3_1_8B, H100_SXM, 1, task("chat"), args.max_num_seqs, 700, OutputLengths(),
                           num_requests=args.requests)
    itl, throughput = [], []
    for i in range(args.repeats):
        real = real_time(args.requests, args.max_num_seqs)
        itl.append(real["median_itl_ms"] / offline.median_itl_ms)
        throughput.append(real["window_output_throughput"] / offline.tokens_per_s)
        print(json.dumps({"repeat": i, "median_itl_ratio": round(itl[-1], 4),
                          "throughput_ratio": round(throughput[-1], 4)}), flush=True)
    print(json.dumps({"repeats": args.repeats, "median_itl_ratio_median": round(statistics.median(itl), 4),
                      "throughput_ratio_median": round(statistics.median(throughput), 4)}))


if __name__ == "__main__":
    main()
