"""`jouletrace simulate plan` and `jouletrace run`, the README's main command, end to end."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys

import pytest
from servers import SimEngine, free_port


def jouletrace(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jouletrace", *args], capture_output=True, text=True, timeout=timeout)


def test_plan_picks_configurations_for_a_deadline_and_a_budget(tmp_path):
    done = jouletrace("simulate", "plan", "--batch-sizes", "8,64,256", "--power-limits", "300,700",
                      "--itl-deadline-ms", "30", "--budget-kw", "10", "-n", "300", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "plan.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(int(r["max_num_seqs"]), float(r["power_limit_w"])) for r in rows} == \
        {(b, w) for b in (8, 64, 256) for w in (300.0, 700.0)}
    by = {(int(r["max_num_seqs"]), float(r["power_limit_w"])): r for r in rows}
    for b in (8, 64, 256):  # a lower cap never draws more power nor serves faster
        assert float(by[b, 300.0]["avg_power_w"]) <= float(by[b, 700.0]["avg_power_w"]) + 1e-6
        assert float(by[b, 300.0]["median_itl_ms"]) >= float(by[b, 700.0]["median_itl_ms"]) - 1e-9
    assert (tmp_path / "power_limit_frontier.png").read_bytes()[:4] == b"\x89PNG"
    within = [r for r in rows if float(r["median_itl_ms"]) <= 30]
    best = min(within, key=lambda r: float(r["energy_per_token_j"]))
    assert f"batch {best['max_num_seqs']} at {float(best['power_limit_w']):g} W" in done.stdout
    assert "GPUs" in done.stdout and "most throughput in 10 kW" in done.stdout


def test_plan_runs_a_tensor_parallel_replica(tmp_path):
    done = jouletrace("simulate", "plan", "--model", "llama-3.1-70b", "--gpu", "h200-sxm",
                      "--tensor-parallel-size", "4", "--batch-sizes", "64", "--power-limits", "700",
                      "--itl-deadline-ms", "100", "--budget-kw", "20", "-n", "200", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "llama-3.1-70b on 4 x h200-sxm" in done.stdout and "KV cache" in done.stdout
    with open(tmp_path / "plan.csv") as f:
        (row,) = csv.DictReader(f)
    assert 4 * 200 < float(row["avg_power_w"]) < 4 * 700   # four GPUs, below their limit
    assert "replicas" in done.stdout
    done = jouletrace("simulate", "plan", "--model", "llama-3.1-70b", "--tensor-parallel-size", "2",
                      "--out", str(tmp_path))
    assert done.returncode == 2 and "no room for a KV cache" in done.stderr


def test_plan_rejects_bad_options_in_one_line(tmp_path):
    for args, words in ((("--power-limits", "50"), "accepts 200-700 W"), (("--task", "text-to-image"), "only LLM"),
                        (("--model", "nope"), "unknown model"), (("--batch-sizes", "x"), "--batch-sizes")):
        done = jouletrace("simulate", "plan", *args, "--out", str(tmp_path))
        assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_run_measures_the_simulated_engine_at_each_batch_size(tmp_path):
    metrics_port, engine_port, grpc_port = free_port(), free_port(), free_port()
    done = jouletrace("run", "--batch-sizes", "8,16", "--max-tokens", "256", "--out", str(tmp_path),
                      "--metrics-addr", f"127.0.0.1:{metrics_port}", "--engine-port", str(engine_port),
                      "--otlp-grpc-addr", f"127.0.0.1:{grpc_port}", "--otlp-http-addr", "off")
    assert done.returncode == 0, done.stderr
    (run_dir,) = tmp_path.iterdir()
    results = sorted((json.loads(p.read_text()) for p in run_dir.glob("*.json")), key=lambda r: r["max_num_seqs"])
    assert [r["max_num_seqs"] for r in results] == [8, 16]
    for r in results:
        assert r["energy_source"] == "exporter" and r["energy_per_token_j"] > 0
        assert r["completed"] == r["num_prompts"] and r["mean_running_batch"] > 0
    assert results[1]["energy_per_token_j"] < results[0]["energy_per_token_j"]  # batching saves energy
    assert "J/token" in done.stderr and "tokens/s/W" in done.stderr  # the live progress line
    for name in ("summary.csv", "energy_per_token_vs_batch.png", "time_energy_frontier.png", "exporter.log"):
        assert str(run_dir.resolve() / name) in done.stdout
    assert f"127.0.0.1:{metrics_port}/metrics" in done.stderr
    assert f"spans go to OTLP/gRPC 127.0.0.1:{grpc_port}, OTLP/HTTP off" in done.stderr


@pytest.mark.parametrize("args, words", [(("--gpu", "nvml"), "give the engine"),
                                         (("--engine-url", "http://127.0.0.1:1", "--gpu", "sim"), "real GPUs"),
                                         (("--otlp-grpc-addr", "off", "--otlp-http-addr", "off"), "both be off"),
                                         (("--otlp-grpc-addr", "4317"), "--otlp-grpc-addr: expected host:port")])
def test_run_refuses_a_real_gpu_without_a_real_engine_and_back(tmp_path, args, words):
    done = jouletrace("run", *args, "--out", str(tmp_path))
    assert done.returncode == 2 and words in done.stderr


def test_run_says_in_one_line_why_its_exporter_did_not_start(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = jouletrace("run", "--metrics-addr", f"127.0.0.1:{busy.getsockname()[1]}", "--otlp-grpc-addr",
                          f"127.0.0.1:{free_port()}", "--otlp-http-addr", "off", "--out", str(tmp_path))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "the exporter did not start" in done.stderr and "address already in use" in done.stderr


def test_run_measures_a_running_engine_with_client_concurrency(tmp_path):
    """`--engine-url`: the path for a real server on real GPUs. Here the server is the simulated engine
    and `--gpu auto` falls back to the simulated GPU, as on any machine without an NVIDIA driver."""
    engine = SimEngine("--max-num-seqs", "64")
    try:
        done = jouletrace("run", "--engine-url", engine.url(), "--gpu", "auto", "--batch-sizes", "4,8",
                          "--max-tokens", "128", "--out", str(tmp_path), "--metrics-addr", f"127.0.0.1:{free_port()}")
    finally:
        engine.stop()
    assert done.returncode == 0, done.stderr
    (run_dir,) = tmp_path.iterdir()
    results = sorted((json.loads(p.read_text()) for p in run_dir.glob("*.json")), key=lambda r: r["max_concurrency"])
    assert [(r["max_concurrency"], r["max_num_seqs"]) for r in results] == [(4, 4), (8, 8)]
    assert all(r["energy_per_token_j"] > 0 and r["mean_running_batch"] <= r["max_concurrency"] for r in results)
    assert "server-b" not in done.stdout  # no server was launched


def test_plan_warns_when_its_choice_is_unstable(tmp_path):
    done = jouletrace("simulate", "plan", "--batch-sizes", "8,256", "--power-limits", "700", "-n", "40",
                      "--itl-deadline-ms", "200", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "least energy within 200 ms median ITL: batch 256" in done.stdout
    assert "warning: that point is unstable" in done.stdout and "rerun with more requests (-n)" in done.stdout


def test_serve_on_a_taken_port_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = jouletrace("simulate", "serve", "--port", str(busy.getsockname()[1]), timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("address already in use; choose another --port (or --host)")
