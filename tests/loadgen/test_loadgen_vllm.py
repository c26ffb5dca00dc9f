"""The load generator against a real vLLM (CPU build, tiny random Llama, max_num_seqs 4) whose spans
go to a jouletrace exporter (simulated GPU). Energy comes from the exporter's /api/v1/energy, or
from a labelled stand-in of it where the exporter does not serve that route yet (conftest.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

from jouletrace.loadgen.plan import Sampling
from jouletrace.loadgen.runner import RunConfig, run
from loadgen_stack import MAX_NUM_SEQS, MODEL
from servers import http_get, sum_samples, wait_for
from vllm_stack import OtlpReceiver, attributes


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "run", *args],
                          capture_output=True, text=True, timeout=timeout)


def exporter_requests(stack) -> float:
    return sum_samples(http_get(stack.exporter.url("/metrics"))[1], "jouletrace_model_requests_total", model=MODEL)


def test_closed_loop_chat_cli(stack, energy_url, tmp_path):
    """All 14 requests at t=0 through the CLI: steady-state window, energy, ids, client spans."""
    receiver = OtlpReceiver()
    before = exporter_requests(stack)
    try:
        done = cli("--base-url", stack.url(), "--task", "chat", "-n", "14", "--max-num-seqs", str(MAX_NUM_SEQS),
                   "--max-tokens", "128", "--ignore-eos", "--prompt-scale", "0.1", "--exporter", energy_url,
                   "--otlp-endpoint", receiver.endpoint, "--goodput", "ttft:60000", "--out", str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert "loadgen: 14/14 done" in done.stderr  # the final progress line
        path = tmp_path / done.stdout.strip().splitlines()[-1].split("/")[-1]
        r = json.loads(path.read_text())
        assert (r["completed"], r["failed"], r["num_prompts"], r["model_id"]) == (14, 0, 14, MODEL)
        assert r["dataset"]["kind"] == "synthetic" and r["task"] == "chat"
        assert r["window"]["rule"] == "steady_state" and r["window"]["duration_s"] > 0
        assert r["energy"]["joules"] > 0 and r["energy_per_token_j"] > 0
        assert r["energy_per_token_j"] == r["energy_joules"] / r["window_output_tokens"]
        assert r["request_goodput"] == r["request_throughput"]  # a 60 s TTFT SLO holds for all
        assert r["mean_running_batch"] is not None and r["mean_running_batch"] <= MAX_NUM_SEQS
        # the study's stability rule, applied to this run's own window and batch
        short = r["window"]["duration_s"] < 20
        assert r["stable"] is not (short or r["mean_running_batch"] < 0.85 * MAX_NUM_SEQS)
        assert any("< 20 s" in reason for reason in r["unstable_reasons"]) is short
        assert all(1 <= n <= 128 for n in r["output_lens"])
        assert r["total_output_tokens"] == sum(r["output_lens"])
        assert r["median_itl_ms"] > 0 and r["p99_ttft_ms"] >= r["median_ttft_ms"]
        for rid, resp, server in zip(r["request_ids"], r["response_ids"], r["server_request_ids"]):
            assert resp == server == f"chatcmpl-{rid}"
        assert (tmp_path / "summary.csv").read_text().count("\n") == 2
        # the time-energy frontier drawn from this real run's result
        plotted = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "plot", str(tmp_path)],
                                 capture_output=True, text=True, timeout=120)
        assert plotted.returncode == 0, plotted.stderr
        assert (tmp_path / "time_energy_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # the exporter received vLLM's span of every request
        wait_for(lambda: exporter_requests(stack) - before == 14, 60, "14 vLLM spans in the exporter")
        # every client span carries the trace context that was sent as traceparent
        spans = wait_for(lambda: (s := receiver.spans()) and len(s) == 14 and s, 30, "14 client spans")
        sent = {(t, s) for t, s in zip(r["trace_ids"], r["span_ids"])}
        got = {(span.trace_id.hex(), span.span_id.hex()) for _, span in spans}
        assert got == sent
        assert {attributes(span.attributes)["gen_ai.request.id"] for _, span in spans} == set(r["server_request_ids"])
    finally:
        receiver.stop()


def test_open_loop_completion(stack, energy_url, tmp_path):
    """Code completion (FIM prompt over /v1/completions), Poisson arrivals, no window rule: whole run."""
    before = exporter_requests(stack)
    cfg = RunConfig(base_url=stack.url(), task="code", num_requests=8, rate=8.0, arrival="poisson",
                    exporter=energy_url, sampling=Sampling(max_tokens=8, ignore_eos=True), prompt_scale=0.1,
                    out_dir=str(tmp_path), progress=False)
    r, path = asyncio.run(run(cfg))
    assert path.exists() and r["completed"] == 8 and r["backend"] == "openai"
    assert r["arrival"] == "poisson" and r["request_rate"] == 8.0
    assert r["window"]["rule"] == "whole_run" and r["energy_per_token_j"] > 0
    starts = r["start_times"]
    assert max(starts) - min(starts) > 0.2  # spread out, not all at t=0
    for rid, resp, server in zip(r["request_ids"], r["response_ids"], r["server_request_ids"]):
        assert resp == f"cmpl-{rid}" and server == f"cmpl-{rid}-0"
    wait_for(lambda: exporter_requests(stack) - before == 8, 60, "8 vLLM spans in the exporter")


def test_concurrency_limit_non_streaming(stack, tmp_path):
    """At most 2 in flight; non-streaming answers give E2E latency but no TTFT/ITL."""
    cfg = RunConfig(base_url=stack.url(), task="chat", num_requests=6, concurrency=2, stream=False, no_energy=True,
                    sampling=Sampling(max_tokens=8), prompt_scale=0.1, out_dir=str(tmp_path), progress=False)
    r, _ = asyncio.run(run(cfg))
    assert r["completed"] == 6 and r["energy"] is None and r["max_concurrency"] == 2
    spans = sorted(zip(r["start_times"], (s + lat for s, lat in zip(r["start_times"], r["latencies"]))))
    for t, _ in spans:
        assert sum(1 for a, b in spans if a <= t < b) <= 2
    assert all(t is None for t in r["ttfts"]) and r["mean_e2el_ms"] > 0


def test_ctrl_c_writes_partial_results(stack, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "jouletrace", "loadgen", "run", "--base-url", stack.url(),
                             "-n", "200", "--rate", "2", "--arrival", "constant", "--max-tokens", "8",
                             "--prompt-scale", "0.1", "--no-energy", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    r = json.loads((tmp_path / out.strip().split("/")[-1]).read_text())
    assert r["interrupted"] is True and "partial" in r["result_file"]
    assert 1 <= r["completed"] < 200 and r["not_sent"] > 0
