"""`jouletrace loadgen sweep --power-limits` end to end: the load generator (a real process) sets
each limit through the admin API, runs the chat workload against the simulated engine (a real
process, whose speed and power follow the limit it reads from the device file) and puts the limit
back at the end: after success, an error and Ctrl-C. The exporter's API is the stand-in of
stack.py (the real handlers in this process)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys

import pytest
from servers import SimEngine, free_port, http_get, wait_for
from stack import AdminStandIn, api

from jouletrace.simulator.gpus import install_gpus

BATCH = 32
LOAD = ("-n", str(4 * BATCH), "--max-num-seqs", str(BATCH), "--max-tokens", "64", "--ignore-eos", "--quiet",
        "--energy-wait", "30")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    device = tmp_path_factory.mktemp("powersweep") / "gpu.dev"
    e = SimEngine("--max-num-seqs", str(BATCH), "--device-file", str(device))
    e.device_file = device
    yield e
    e.stop()


@pytest.fixture
def admin(engine, tmp_path):
    # steps of at most 300 W, 1 s apart: 700 -> 200 W takes two changes and one cool-down
    a = AdminStandIn(engine.device_file, tmp_path, max_step_w=300.0, cooldown_s=1.0)
    yield a
    a.stop()
    assert a.requested_limit() == 700.0


def sweep(engine, admin, *args: str, out, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "sweep", "--base-url", engine.url(),
                           "--exporter", admin.url, "--admin-token-file", str(admin.token_file), "--out", str(out),
                           *args], capture_output=True, text=True, timeout=timeout)


def test_power_sweep_measures_each_limit_and_restores_it(engine, admin, tmp_path):
    out = tmp_path / "out"
    done = sweep(engine, admin, "--power-limits", "700,200", "--itl-deadlines-ms", "1000", *LOAD, out=out)
    assert done.returncode == 0, done.stderr
    runs = {r["power_limit_w"]: r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    assert set(runs) == {700.0, 200.0}
    full, capped = runs[700.0], runs[200.0]
    for r in runs.values():
        assert r["completed"] == 4 * BATCH and r["window"]["rule"] == "steady_state"
        assert r["result_file"].endswith(f"-b{BATCH}-{r['power_limit_w']:g}W.json")
    # physics: a lower limit means lower power, a lower clock, longer steps and here less energy per token
    assert capped["avg_power_w"] <= 200.0 * 1.1 < full["avg_power_w"]
    # the simulated H100 decodes ~1.45x slower capped; host time per token, the same at both limits and
    # larger on a busy machine, narrows the measured ratio
    assert capped["median_itl_ms"] > 1.1 * full["median_itl_ms"]
    assert capped["energy_per_token_j"] < full["energy_per_token_j"]
    with open(out / "summary.csv") as f:
        assert [float(row["power_limit_w"]) for row in csv.DictReader(f)] == [700.0, 200.0]
    # 700 W was in force; 700 -> 400 -> 200 W in steps of at most 300 W; then back
    assert admin.changes() == [("set", 700.0, 400.0), ("set", 400.0, 200.0), ("restore", 200.0, 700.0)]
    assert "waiting 1 s for the exporter's cool-down" in done.stderr
    assert "power limits restored: GPU 0 700 W" in done.stderr
    assert "llama-3.1-8b: median_itl <= 1000 ms: 200 W (chat, max_num_seqs 32)" in done.stdout
    # the advice from the results: a deadline between the two ITLs keeps 700 W, a loose one takes 200 W
    between = (full["median_itl_ms"] + capped["median_itl_ms"]) / 2
    advice = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "advise", str(out), "--deadlines",
                             f"{between:.3f},{2 * capped['median_itl_ms']:.3f}"], capture_output=True, text=True)
    tight, loose = advice.stdout.splitlines()
    assert f"median_itl <= {float(f'{between:.3f}'):g} ms" in tight and ": 700 W" in tight
    saved = 1 - capped["energy_per_token_j"] / full["energy_per_token_j"]
    assert ": 200 W" in loose and f"{saved:.1%} less energy per token" in loose and "vs 700 W" in loose


def test_the_limit_is_restored_after_an_error(engine, admin, tmp_path):
    # an operator's 600 W is in force (the exporter's original: 700 W): the sweep puts back 600 W, in steps
    assert api(admin.url, "POST", {"watts": 600})[0] == 200
    done = sweep(engine, admin, "--power-limits", "400", "--dataset", str(tmp_path / "absent.jsonl"), *LOAD,
                 out=tmp_path / "out")
    assert done.returncode == 2 and "absent.jsonl" in done.stderr
    assert admin.changes() == [("set", 700.0, 600.0), ("set", 600.0, 400.0), ("set", 400.0, 600.0)]
    assert admin.requested_limit() == 600.0
    assert api(admin.url, "DELETE")[0] == 200


def test_ctrl_c_with_a_server_template_stops_the_server_and_restores_the_limit(tmp_path):
    # GPUs outlive engines: the device file exists before the sweep launches an engine on it
    device = tmp_path / "template-gpu.dev"
    install_gpus(device)
    admin = AdminStandIn(device, tmp_path, max_step_w=300.0, cooldown_s=1.0)
    out, port = tmp_path / "out", free_port()
    template = (f"{sys.executable} -m jouletrace simulate serve --port {{port}} --max-num-seqs {{max_num_seqs}} "
                f"--device-file {device}")
    proc = subprocess.Popen([sys.executable, "-m", "jouletrace", "loadgen", "sweep", "--server-cmd", template,
                             "--port", str(port), "--batch-sizes", str(BATCH), "--power-limits", "400,700",
                             "--exporter", admin.url, "--admin-token-file", str(admin.token_file), "--out", str(out),
                             "-n", "2000", "--max-tokens", "4000", "--ignore-eos", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (admin.samplers[0].power_w or 0) > 250, 60, "the engine running at 400 W")
        assert admin.requested_limit() == 400.0
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        admin.stop()
    assert proc.returncode == 130, err
    (partial,) = out.glob("*.json")
    r = json.loads(partial.read_text())
    assert r["interrupted"] and r["power_limit_w"] == 400.0 and r["max_num_seqs"] == BATCH
    assert (out / f"server-b{BATCH}-400W.log").exists() and http_get(f"http://127.0.0.1:{port}/health")[0] == 0
    assert admin.changes() == [("set", 700.0, 400.0), ("restore", 400.0, 700.0)]
    assert admin.requested_limit() == 700.0


def test_limits_the_exporter_does_not_allow_change_nothing(engine, admin, tmp_path):
    done = sweep(engine, admin, "--power-limits", "400,150", *LOAD, out=tmp_path / "out")
    assert done.returncode == 2
    assert "--power-limits: 150 W is outside GPU 0's allowed range 200-700 W" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "sweep", "--base-url", engine.url(),
                              "--power-limits", "400", "--no-energy"], capture_output=True, text=True)
    assert missing.returncode == 2 and "give --exporter and --admin-token-file" in missing.stderr
    assert admin.changes() == []
