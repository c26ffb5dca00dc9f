"""The real-GPU validation end to end, short: benchmarks/gpu_validation.py serves the Llama-3.1-8B
shape with `transformers serve --continuous-batching`, measures one small closed-loop batch with the
exporter, and checks the exporter's window energy against an independent counter reading (2 %: the
window's edges fall inside 5 s counter intervals, shaped there by 100 ms power samples; on this
~19 s window three runs gave +1.47 %, +0.12 % and -0.01 %, benchmarks/RESULTS.md) and conservation
after a graceful stop (0.1 %). Skipped without an NVIDIA GPU (conftest.py) or
without the `transformers` command."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_validation.py"


@pytest.mark.skipif(shutil.which("transformers") is None, reason="no `transformers serve` here")
def test_a_short_sweep_on_the_gpu(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--batch-sizes", "8",
                           "--max-tokens", "64", "--requests-per-batch", "4"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (run,) = summary["runs"]
    assert run["completed"] == 32 and run["failed"] == 0
    assert run["energy_per_token_j"] > 0 and run["avg_power_w"] > 50
    assert abs(run["energy_error"]) < 0.02
    assert abs(summary["conservation"]["error"]) < 0.001
