"""The simulator's tensor-parallel physics against public figures (none of them fitted).

    python benchmarks/tp_public.py

1. All-reduce time per message size at TP 2, 4 and 8 on H100s: the simulator's model (the H100
   profile's latency and bus bandwidths) against vLLM's custom all-reduce as measured in
   https://github.com/sgl-project/sglang/pull/2904 (H100, no CUDA graph, 512 B to 1 MiB).
2. Llama-3.1-70B served by vLLM at TP 2, 4 and 8 on H100s: output tokens/s from Lambda's benchmark
   (https://github.com/LambdaLabsML/vllm-benchmark/blob/main/benchmark_v0.md: vLLM 0.5.4,
   Meta-Llama-3.1-70B-Instruct-FP8, 320 prompts sent at once) against the simulator's closed loop
   of 320 chat requests at vLLM's default max_num_seqs 256. The simulator has no FP8 compute: the
   shape is given 1-byte weights and KV (what FP8 changes for memory) and BF16 FLOP/s, so compute-bound
   steps run slower than FP8 kernels would; vLLM 0.5.4 spent much of each step on the host, which
   0.6.0 halved (Lambda's own note), so its figures sit below a current vLLM's. The scaling from TP 2
   to 4 to 8 is the part to compare.
3. H200 against H100 at the same tensor-parallel degree: NVIDIA reports up to 1.5 x the H100's
   Llama 2 70B throughput in MLPerf Inference v4.1 (https://developer.nvidia.com/blog/
   nvidia-blackwell-platform-sets-new-llm-inference-records-in-mlperf-inference-v4-1/), and 4 x
   for the B200 (FP4 there, BF16 here); the simulator's ratio for Llama-3.1-70B, TP 8, batch 512.

Prints Markdown tables."""

from __future__ import annotations

import dataclasses

from jouletrace.loadgen.tasks import task
from jouletrace.simulator.lengths import OutputLengths
from jouletrace.simulator.perf import PerfModel, StepWork
from jouletrace.simulator.profiles import B200_SXM, H100_SXM, H200_SXM, LLAMA_3_1_70B
from jouletrace.simulator.whatif import run_point

# vLLM custom all-reduce on H100, latency in us by message bytes, at TP 2 / 4 / 8 (sglang PR 2904)
VLLM_ALLREDUCE_US = {512: (9.5, 9.1, 10.1), 4096: (8.8, 8.5, 9.3), 32768: (8.7, 9.2, 11.8),
                     262144: (12.9, 20.6, 24.1), 524288: (17.7, 26.9, 30.4), 1048576: (26.6, 40.2, 45.0)}
# Lambda, vLLM 0.5.4, Llama-3.1-70B-Instruct-FP8 on N x H100 SXM: (output tokens/s, latency ms)
LAMBDA_70B = {2: (1727.69, 49.33), 4: (2242.99, 38.26), 8: (2572.8, 33.71)}
MLPERF_70B_VS_H100 = {"h200-sxm": 1.5, "b200-sxm": 4.0}


def allreduce_table() -> None:
    print("| message | TP | vLLM custom all-reduce us | simulator us | error |")
    print("|---:|---:|---:|---:|---:|")
    for size, measured in VLLM_ALLREDUCE_US.items():
        for tp, us in zip((2, 4, 8), measured):
            sim = PerfModel(LLAMA_3_1_70B, H100_SXM, tp).allreduce_s(size) * 1e6
            print(f"| {size:,} B | {tp} | {us:.1f} | {sim:.1f} | {sim / us - 1:+.0%} |")


def lambda_table() -> None:
    fp8 = dataclasses.replace(LLAMA_3_1_70B, name="llama-3.1-70b-fp8", dtype_bytes=1)
    print("| TP | Lambda tokens/s | simulator tokens/s | ratio | Lambda vs previous TP | simulator vs previous TP "
          "| simulator median ITL ms | W per GPU | all-reduce share |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    prev = None
    for tp, (tokens, _) in LAMBDA_70B.items():
        point, _ = run_point(fp8, H100_SXM, tp, task("chat"), 256, H100_SXM.max_power_limit_w, OutputLengths(),
                             num_requests=320)
        share = comm_share(fp8, tp, point.mean_running_batch)
        steps = "" if prev is None else f"{tokens / prev[0]:.2f} x"
        sim_steps = "" if prev is None else f"{point.tokens_per_s / prev[1]:.2f} x"
        print(f"| {tp} | {tokens:,.0f} | {point.tokens_per_s:,.0f} | {point.tokens_per_s / tokens:.2f} | {steps} | "
              f"{sim_steps} | {point.median_itl_ms:.1f} | {point.avg_power_w / tp:.0f} | {share:.0%} |")
        prev = (tokens, point.tokens_per_s)


def comm_share(model, tp: int, batch: float) -> float:
    """Share of a decode step of `batch` sequences (600 tokens of context) spent in all-reduces."""
    b = max(1, round(batch))
    cost = PerfModel(model, H100_SXM, tp).step(StepWork(b, b, b, b * 600, b * 600), H100_SXM.max_power_limit_w)
    return cost.comm_fraction


def gpu_table() -> None:
    print("| GPU | TP | batch | simulator tokens/s | vs H100 | W per GPU | MLPerf v4.1 Llama 2 70B vs H100 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for gpu in (H100_SXM, H200_SXM, B200_SXM):
        point, _ = run_point(LLAMA_3_1_70B, gpu, 8, task("chat"), 512, gpu.max_power_limit_w, OutputLengths())
        base = base or point.tokens_per_s
        print(f"| {gpu.name} | 8 | 512 | {point.tokens_per_s:,.0f} | {point.tokens_per_s / base:.2f} x | "
              f"{point.avg_power_w / 8:.0f} | {MLPERF_70B_VS_H100.get(gpu.name, 1.0):g} x |")


def main() -> None:
    allreduce_table()
    print()
    lambda_table()
    print()
    gpu_table()


if __name__ == "__main__":
    main()
