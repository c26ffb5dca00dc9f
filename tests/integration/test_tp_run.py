"""benchmarks/tp_run.py on the CPU: two gloo processes run the tiny shape at tensor parallel 2 and send
their step spans to a real `jouletrace exporter --gpu sim --sim-gpus 2`; jouletrace attributes each
span across both GPUs, the JSONL holds what benchmarks/tp_run_compare.py reads, and the comparison
runs on it. torch lives in .venv-vllm, the vLLM tests' venv: this file shares their fixture
(tests/vllm/conftest.py), which builds it on first use (scripts/setup-vllm.sh lets one install run
at a time), so it runs beside the vLLM unit rather than in it. Nothing here is timed."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from servers import ExporterProcess, http_get, sum_samples

ROOT = Path(__file__).resolve().parents[2]
VLLM_TESTS = ROOT / "tests" / "vllm"
sys.path.insert(0, str(VLLM_TESTS))
from vllm_stack import VENV_PYTHON, tail  # noqa: E402

_spec = importlib.util.spec_from_file_location("vllm_test_fixtures", VLLM_TESTS / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
vllm_venv = _fixtures.vllm_venv

SCRIPT = ROOT / "benchmarks" / "tp_run.py"
COMPARE = ROOT / "benchmarks" / "tp_run_compare.py"
MODEL = "tiny-llama"
# what tp_run_compare.py reads from each configuration's row
ROW_FIELDS = {"id", "tp", "phase", "batch", "context", "tokens", "step_ms", "compute_ms", "allreduce_ms",
              "allreduce_share", "replays", "t0", "t1", "power"}


def test_tp_run_on_the_cpu_spans_attributed_across_both_gpus_and_compared(vllm_venv, tmp_path):
    exporter = ExporterProcess("--gpu", "sim", "--sim-gpus", "2")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["NCCL_NVLS_ENABLE"] = "1"   # the script must turn NVLink multicast off whatever it is given
    try:
        done = subprocess.run(
            [str(VENV_PYTHON), str(SCRIPT), "--nproc", "2", "--backend", "gloo", "--device", "cpu", "--tiny",
             "--seconds", "0.3", "--out", str(tmp_path), "--otlp", f"http://127.0.0.1:{exporter.http_port}",
             "--exporter", exporter.url("")],
            env=env, cwd=ROOT, check=False, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, tail(done.stdout + done.stderr, 80)
        status, metrics = http_get(exporter.url("/metrics"))
        assert status == 200
    finally:
        exporter.stop()
    assert "NCCL_NVLS_ENABLE=1 overridden" in done.stderr

    lines = [json.loads(x) for x in (tmp_path / "tp_run.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines[:1] + lines[-1:]] == ["run", "jouletrace"]
    run, jt = lines[0], lines[-1]
    rows = [x for x in lines if x["kind"] == "config"]
    assert run["env"] == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    assert run["tp"] == 2 and run["shape"]["name"] == MODEL and len(run["devices"]) == 2
    assert {r["phase"] for r in rows} == {"decode", "prefill"}
    for r in rows:
        assert ROW_FIELDS <= r.keys(), r
        assert r["power"] is None and "no NVML" in r["power_note"]
        assert 0 < r["allreduce_share"] < 1 and r["step_ms"] > 0 and r["t1"] > r["t0"]

    # every step span arrived and was taken as a request of the model
    assert sum_samples(metrics, "jouletrace_model_requests_total", model=MODEL) == len(rows)
    assert jt["model"]["requests"] == len(rows) and jt["model"]["energy_j"] > 0
    # attributed across both GPUs: each one's attributed energy grew over the run, and each span's
    # window holds energy on both
    assert len(jt["gpus"]) == 2
    for g in jt["gpus"]:
        assert g["attributed_j"] > 0, g
        assert sum_samples(metrics, "jouletrace_gpu_attributed_energy_joules_total", gpu=str(g["index"])) > 0
    assert [s["id"] for s in jt["spans"]] == [r["id"] for r in rows]
    for s in jt["spans"]:
        assert len(s["gpus"]) == 2 and all(j > 0 for j in s["gpus"].values()), s
    # each span ran alone, and left as its step phase ended: what the exporter attributed is what it
    # measured on the two GPUs over the spans' windows
    assert jt["spans_late"] == 0
    windows = sum(sum(s["gpus"].values()) for s in jt["spans"])
    assert abs(jt["model"]["energy_j"] - windows) <= 0.02 * windows, (jt["model"], windows)

    compared = subprocess.run([sys.executable, str(COMPARE), str(tmp_path / "tp_run.jsonl"), "--gpu", "H100"],
                              check=False, capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    table = compared.stdout
    assert all(f"| {r['id']} |" in table for r in rows), table
    assert "step span" in table and "n/a" in table   # jouletrace's table; no NVML on the CPU
