"""The simulator's performance model and scheduler: physical monotonicity and batching invariants."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jouletrace.simulator.engine import Engine, SimRequest
from jouletrace.simulator.gpus import SimulatedGPUs
from jouletrace.simulator.perf import PerfModel, StepWork
from jouletrace.simulator.profiles import (
    B200_SXM,
    H100_SXM,
    H200_SXM,
    LLAMA_3_1_8B,
    LLAMA_3_1_70B,
    ModelShape,
    gpu_profile,
    model_shape,
)

PERF = PerfModel(LLAMA_3_1_8B, H100_SXM)


def test_llama_shapes_have_their_published_sizes():
    assert LLAMA_3_1_8B.params == pytest.approx(8.03e9, rel=0.005)
    assert LLAMA_3_1_70B.params == pytest.approx(70.6e9, rel=0.005)
    assert LLAMA_3_1_8B.kv_bytes_per_token == 131072  # 32 layers x K,V x 8 heads x 128 x 2 bytes


def test_a_hugging_face_config_gives_the_same_shape(tmp_path):
    config = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(config))
    shape = model_shape(str(tmp_path / "llama"))
    assert dataclasses.replace(shape, name=LLAMA_3_1_8B.name, source=LLAMA_3_1_8B.source) == LLAMA_3_1_8B
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="missing or bad field"):
        model_shape(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="unknown model"):
        model_shape("no-such-model")


def test_a_small_batch_is_memory_bound_and_a_large_prefill_compute_bound():
    decode = PERF.step(StepWork(sequences=1, tokens=1, sampled=1, attended=100, kv_read=100), 700)
    m = LLAMA_3_1_8B  # one step reads every layer's weights and the LM head's (embedding lookups are rows)
    weight_bytes = (m.layers * m.layer_params + m.vocab * m.hidden) * m.dtype_bytes
    weights_s = weight_bytes / (H100_SXM.memory_bandwidth * PERF.cal.memory_efficiency)
    overhead_s = LLAMA_3_1_8B.layers * PERF.cal.layer_overhead_s
    assert decode.duration_s == pytest.approx(weights_s + overhead_s, rel=0.05)
    assert decode.memory_util > decode.compute_util
    prefill = PERF.step(StepWork(sequences=4, tokens=8192, sampled=4, attended=8192 * 1024, kv_read=8192), 700)
    assert prefill.compute_util > prefill.memory_util
    assert prefill.duration_s > 10 * decode.duration_s


works = st.builds(lambda seqs, per, ctx: StepWork(sequences=seqs, tokens=seqs * per, sampled=seqs,
                                                  attended=seqs * per * ctx, kv_read=seqs * (ctx + per)),
                  st.integers(1, 512), st.integers(1, 64), st.integers(1, 4096))


@settings(max_examples=200, deadline=None)
@given(works, st.sampled_from([H100_SXM, H200_SXM, B200_SXM]), st.floats(0, 1), st.floats(0, 1))
def test_a_lower_power_limit_means_lower_power_lower_clock_longer_steps(work, gpu, a, b):
    perf = PerfModel(LLAMA_3_1_8B, gpu)
    lo, hi = (gpu.min_power_limit_w + x * (gpu.max_power_limit_w - gpu.min_power_limit_w) for x in sorted((a, b)))
    low, high = perf.step(work, lo), perf.step(work, hi)
    assert low.power_w <= high.power_w + 1e-6
    assert low.clock_ratio <= high.clock_ratio + 1e-9
    assert low.duration_s >= high.duration_s - 1e-12
    for cost, limit in ((low, lo), (high, hi)):
        assert cost.power_w <= limit + 1e-6   # at its lowest clock the GPU is gated down to the limit
        assert cost.capped == (cost.clock_ratio < 1.0)


@pytest.mark.parametrize("gpu", [H100_SXM, H200_SXM, B200_SXM], ids=lambda g: g.name)
def test_a_capped_gpu_averages_at_or_below_its_limit(gpu):
    """A GPU under a power limit lowers its clock until it draws no more than the limit, and while it
    waits on a slow host between steps it keeps the clock the limit left: over a loaded stretch its
    average power is at or below the limit, whatever the host's share of the time."""
    def average_power_w(limit: float) -> float:
        perf = PerfModel(LLAMA_3_1_8B, gpu)
        engine = Engine(perf, max_num_seqs=32, power_limit_w=limit)
        gpus = SimulatedGPUs(perf, 0, None, limit, 0.0)
        for i in range(64):
            engine.add(SimRequest(f"r{i}", 200, 64, 0.0))
        t = 0.0
        while engine.has_work():
            step = engine.step(t)
            gpus.step(step)
            gpus.wait(step.end)
            t = step.end + 0.004   # the host takes 4 ms after each step
        gpus.idle(t)
        return gpus.energy_j / t

    uncapped = average_power_w(gpu.max_power_limit_w)
    for limit in (gpu.min_power_limit_w, (gpu.min_power_limit_w + uncapped) / 2):
        assert limit < uncapped   # the limit binds
        assert average_power_w(limit) <= limit + 1e-6


@settings(max_examples=100, deadline=None)
@given(works)
def test_more_work_takes_longer(work):
    more = dataclasses.replace(work, tokens=work.tokens * 2, kv_read=work.kv_read * 2, attended=work.attended * 2)
    assert PERF.step(more, 700).duration_s >= PERF.step(work, 700).duration_s


def test_tensor_parallelism_splits_a_large_model():
    with pytest.raises(ValueError, match="no room for a KV cache"):
        Engine(PerfModel(LLAMA_3_1_70B, H100_SXM, 1))
    one = PerfModel(LLAMA_3_1_8B, H100_SXM, 1).step(StepWork(64, 64, 64, 64 * 500, 64 * 500), 700)
    two = PerfModel(LLAMA_3_1_8B, H100_SXM, 2).step(StepWork(64, 64, 64, 64 * 500, 64 * 500), 700)
    assert two.duration_s < one.duration_s
    assert Engine(PerfModel(LLAMA_3_1_70B, H100_SXM, 4)).kv_capacity_tokens > 100_000


def test_an_all_reduce_costs_its_latency_when_small_and_nvlink_bandwidth_when_large():
    perf = PerfModel(LLAMA_3_1_70B, H100_SXM, 8)
    small = perf.allreduce_s(16 * 1024)
    assert small == pytest.approx(H100_SXM.allreduce_latency_s, rel=0.1)
    mib = perf.allreduce_s(1 << 20) - H100_SXM.allreduce_latency_s   # the profile's 1 MiB bus bandwidth
    assert mib == pytest.approx(2 * 7 / 8 * (1 << 20) / H100_SXM.allreduce_busbw_1mib)
    gib = perf.allreduce_s(1 << 30)                                  # 0.8 of NVLink's bandwidth
    assert gib == pytest.approx(2 * 7 / 8 * (1 << 30) / (0.8 * H100_SXM.interconnect_bandwidth), rel=0.01)
    sizes = [2 ** k for k in range(10, 32)]
    times = [perf.allreduce_s(b) for b in sizes]
    assert times == sorted(times)
    assert PerfModel(LLAMA_3_1_70B, H100_SXM, 2).allreduce_s(1 << 24) < PerfModel(
        LLAMA_3_1_70B, H100_SXM, 8).allreduce_s(1 << 24)


def test_communication_adds_time_at_idle_and_clock_power():
    work = StepWork(sequences=256, tokens=256, sampled=256, attended=256 * 600, kv_read=256 * 600)
    uncapped = 10_000.0   # the same clock in both
    alone = PerfModel(LLAMA_3_1_70B, H100_SXM, 4, communication=False).step(work, uncapped)
    tp = PerfModel(LLAMA_3_1_70B, H100_SXM, 4)
    both = tp.step(work, uncapped)
    comm = tp.comm_s(work)
    assert comm == pytest.approx((2 * 80 + 1) * tp.allreduce_s(256 * 8192 * 2))
    assert both.duration_s == pytest.approx(alone.duration_s + comm, rel=0.05)   # not overlapped
    assert both.comm_fraction == pytest.approx(comm / both.duration_s)
    assert both.power_w < alone.power_w
    # energy: the all-reduce time is paid at idle + clock power, below the computing power
    assert both.power_w * both.duration_s - alone.power_w * alone.duration_s == pytest.approx(
        comm * tp.waiting_power_w(1.0), rel=0.01)
    assert PerfModel(LLAMA_3_1_8B, H100_SXM, 1).comm_s(work) == 0.0


def test_kv_heads_split_across_gpus_and_replicate_beyond_their_number():
    per_token = LLAMA_3_1_70B.kv_bytes_per_token
    assert LLAMA_3_1_70B.kv_bytes_per_token_per_gpu(4) == per_token // 4
    assert LLAMA_3_1_70B.kv_bytes_per_token_per_gpu(8) == per_token // 8
    assert LLAMA_3_1_70B.kv_bytes_per_token_per_gpu(16) == per_token // 8   # one head each, replicated
    four, eight = (Engine(PerfModel(LLAMA_3_1_70B, H100_SXM, tp)).kv_capacity_tokens for tp in (4, 8))
    assert 2.5 * four < eight < 3.5 * four       # twice the memory, less the weights twice as thin per GPU
    h200 = Engine(PerfModel(LLAMA_3_1_70B, H200_SXM, 4)).kv_capacity_tokens
    assert h200 > 2 * four


def test_gpu_profiles_rank_as_their_data_sheets():
    assert gpu_profile("h200-sxm") is H200_SXM and gpu_profile("b200-sxm") is B200_SXM
    work = StepWork(sequences=64, tokens=64, sampled=64, attended=64 * 600, kv_read=64 * 600)
    h100, h200, b200 = (PerfModel(LLAMA_3_1_70B, g, 4).step(work, g.max_power_limit_w) for g in
                        (H100_SXM, H200_SXM, B200_SXM))
    assert b200.duration_s < h200.duration_s < h100.duration_s    # memory-bound decode: HBM bandwidth
    assert b200.power_w > h100.power_w


def test_a_kv_cache_smaller_than_the_batch_caps_the_running_batch():
    engine = Engine(PerfModel(LLAMA_3_1_70B, H100_SXM, 4), max_num_seqs=512)
    per_request = 2000 + 500
    requests = [SimRequest(f"r{i}", 2000, 500, 0.0) for i in range(200)]   # 500,000 tokens at most
    assert engine.kv_capacity_tokens < len(requests) * per_request
    steps = run_to_end(engine, requests)
    assert max(running for _, running, _ in steps) <= engine.kv_capacity_tokens // 2000
    assert engine.preemptions > 0
    assert all(r.generated == 500 for r in requests)


def run_to_end(engine: Engine, requests: list[SimRequest]) -> list:
    for r in requests:
        engine.add(r)
    steps, t = [], 0.0
    while engine.has_work():
        step = engine.step(t)
        steps.append((step, len(engine.running), engine.free_blocks + sum(r.blocks for r in engine.running)))
        t = step.end
    return steps


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 300)), min_size=1, max_size=40),
       st.integers(1, 16), st.sampled_from([64, 512, 8192]))
def test_continuous_batching_invariants(shapes, max_num_seqs, budget):
    engine = Engine(PERF, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)
    requests = [SimRequest(f"r{i}", p, o, 0.0) for i, (p, o) in enumerate(shapes)]
    steps = run_to_end(engine, requests)
    for step, running, blocks in steps:
        assert step.batch <= max_num_seqs and running <= max_num_seqs
        assert blocks == engine.total_blocks  # every block is free or held
        assert step.end > step.start
    assert engine.free_blocks == engine.total_blocks
    for r in requests:
        assert r.generated == r.output_tokens
        assert r.arrival <= r.scheduled_at < r.first_token_at <= r.finished_at
    assert engine.generation_tokens_total == sum(o for _, o in shapes)
    assert engine.prompt_tokens_total == sum(p for p, _ in shapes)
    # admission is first come, first served when nothing is preempted
    if engine.preemptions == 0:
        admitted = [r.scheduled_at for r in requests]
        assert admitted == sorted(admitted)


def test_a_full_kv_cache_preempts_the_newest_and_recomputes_it():
    tiny = ModelShape("tiny-kv", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128,
                      vocab=128256)
    engine = Engine(PerfModel(tiny, H100_SXM), max_num_seqs=8, gpu_memory_utilization=0.9)
    engine.total_blocks = engine.free_blocks = 100   # 1,600 tokens of KV cache
    engine.kv_capacity_tokens = 1600
    requests = [SimRequest(f"r{i}", 300, 200, 0.0) for i in range(4)]  # 4 x 500 tokens do not fit at once
    run_to_end(engine, requests)
    assert engine.preemptions > 0
    assert all(r.generated == 200 for r in requests)
    assert max(r.preemptions for r in requests[1:]) > 0 and requests[0].preemptions == 0
    with pytest.raises(ValueError, match="exceed the KV cache"):
        engine.add(SimRequest("huge", 1500, 200, 0.0))
