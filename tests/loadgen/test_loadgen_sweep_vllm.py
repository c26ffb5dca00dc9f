"""A batch-size sweep that launches a real vLLM (CPU build, tiny random Llama) per point from a
command template, with `--max-num-seqs {max_num_seqs}`, and takes each point's energy from a
jouletrace exporter (simulated GPU) that also receives the spans of every server."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from loadgen_stack import MODEL
from servers import ExporterProcess, http_get, sum_samples, wait_for
from vllm_stack import vllm_command, vllm_env

N = 10


def test_sweep_restarts_vllm_with_each_max_num_seqs(model_dir, tmp_path):
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.5", "--settle-delay", "5", "--counter-interval", "1")
    try:
        template = shlex.join(vllm_command(model_dir, MODEL, "{port}", "{max_num_seqs}",
                                           f"http://127.0.0.1:{exporter.grpc_port}"))
        out = tmp_path / "out"
        done = subprocess.run(
            [sys.executable, "-m", "jouletrace", "loadgen", "sweep", "--server-cmd", template, "--batch-sizes", "2,4",
             "-n", str(N), "--max-tokens", "48", "--ignore-eos", "--prompt-scale", "0.1", "--quiet",
             "--exporter", exporter.url(""), "--energy-wait", "30", "--server-timeout", "600", "--out", str(out)],
            capture_output=True, text=True, timeout=900, env=vllm_env(MODEL))
        assert done.returncode == 0, done.stderr
        runs = {r["max_num_seqs"]: r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
        assert sorted(runs) == [2, 4]
        for b, r in runs.items():
            assert (r["completed"], r["failed"], r["model_id"]) == (N, 0, MODEL)
            assert r["window"]["rule"] == "steady_state" and r["energy_per_token_j"] > 0
            # each point's server was started with its own max_num_seqs (vLLM logs its non-default args)
            assert f"'max_num_seqs': {b}" in (out / f"server-b{b}.log").read_text()
        # all N requests went out at t=0: only the server's max_num_seqs bounded the running batch
        assert runs[2]["mean_running_batch"] <= 2.0
        assert (out / "energy_per_token_vs_batch.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "time_energy_frontier.png").read_bytes()[:4] == b"\x89PNG"
        # both servers' spans reached the exporter, and each server was stopped after its point
        wait_for(lambda: sum_samples(http_get(exporter.url("/metrics"))[1], "jouletrace_model_requests_total",
                                     model=MODEL) == 2 * N, 60, f"{2 * N} vLLM spans in the exporter")
        assert "2 of 2 points run" in done.stderr
        assert subprocess.run(["pgrep", "-f", f"served-model-name {MODEL}"], capture_output=True).returncode == 1
    finally:
        exporter.stop()
