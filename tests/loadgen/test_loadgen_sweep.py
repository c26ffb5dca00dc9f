"""`jouletrace loadgen sweep` end to end against a STAND-IN OpenAI-compatible streaming server
(not vLLM: a small aiohttp app written below, launched through --server-cmd so that the launch,
/health wait and stop path is the real one), with the energy endpoint's stand-in as --exporter."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from loadgen_stack import EnergyStandIn
from servers import free_port

from jouletrace.loadgen.plots import ENERGY_VS_BATCH, FRONTIER
from jouletrace.loadgen.sweep import BATCH_LADDER, Server, ServerStartError, server_command

# A STAND-IN server: /health (503 for its first 0.3 s), /v1/models, /metrics with
# vllm:num_requests_running, and streamed /v1/chat/completions at most --max-num-seqs at a time,
# one chunk per token, slower per token the fuller the batch. It writes its pid on start and a
# marker when it gets SIGTERM.
STANDIN = textwrap.dedent('''
    import argparse, asyncio, json, os, signal, time
    from aiohttp import web

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-num-seqs", type=int, required=True)
    ap.add_argument("--state", required=True)
    a = ap.parse_args()
    born = time.monotonic()
    running = 0

    async def health(request):
        return web.Response(status=200 if time.monotonic() - born > 0.3 else 503)

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "standin", "object": "model"}]})

    async def metrics(request):
        return web.Response(text=f'vllm:num_requests_running{{model_name="standin"}} {running}\\n')

    async def chat(request):
        global running
        body = await request.json()
        async with sem:
            running += 1
            try:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                rid = "chatcmpl-" + request.headers.get("X-Request-Id", "x")
                n = int(body.get("max_tokens") or 8)
                for _ in range(n):
                    await asyncio.sleep(0.003 + 0.001 * running)
                    chunk = {"id": rid, "choices": [{"index": 0, "delta": {"content": "tok "}}]}
                    await resp.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
                usage = {"id": rid, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n}}
                await resp.write(f"data: {json.dumps(usage)}\\n\\ndata: [DONE]\\n\\n".encode())
                return resp
            finally:
                running -= 1

    async def main():
        global sem
        sem = asyncio.Semaphore(a.max_num_seqs)
        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", models)
        app.router.add_get("/metrics", metrics)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", a.port).start()
        with open(os.path.join(a.state, f"pid-b{a.max_num_seqs}"), "w") as f:
            f.write(str(os.getpid()))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        open(os.path.join(a.state, f"sigterm-b{a.max_num_seqs}"), "w").close()
        await runner.cleanup()

    asyncio.run(main())
''')


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as stopped)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


@pytest.fixture
def standin_script(tmp_path):
    script = tmp_path / "standin_server.py"
    script.write_text(STANDIN)
    state = tmp_path / "state"
    state.mkdir()
    return script, state


@pytest.fixture(scope="module")
def energy():
    e = EnergyStandIn(watts=300.0)
    yield e.url
    e.stop()


def sweep_cli(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "sweep", *args],
                          capture_output=True, text=True, timeout=timeout)


COMMON = ("-n", "10", "--max-tokens", "16", "--ignore-eos", "--quiet", "--energy-wait", "20")


def test_batch_sweep_launches_measures_and_stops_each_server(standin_script, energy, tmp_path):
    script, state = standin_script
    out = tmp_path / "out"
    cmd = f"{sys.executable} {script} --port {{port}} --max-num-seqs {{max_num_seqs}} --state {state}"
    done = sweep_cli("--server-cmd", cmd, "--batch-sizes", "2,4", "--exporter", energy, "--out", str(out),
                     "--itl-deadlines-ms", "5,10,50", "--stop-grace", "10", "--server-timeout", "30", *COMMON)
    assert done.returncode == 0, done.stderr
    runs = sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda r: r["max_num_seqs"])
    assert [r["max_num_seqs"] for r in runs] == [2, 4]
    for r in runs:
        assert r["completed"] == 10 and r["failed"] == 0 and not r["interrupted"]
        assert r["total_output_tokens"] == 160
        assert r["window"]["rule"] == "steady_state"
        assert r["energy_per_token_j"] > 0 and r["median_itl_ms"] > 0
        assert r["mean_running_batch"] is not None
        assert f"max_num_seqs {r['max_num_seqs']}" in done.stderr
        assert ("stable" if r["stable"] else f"unstable ({'; '.join(r['unstable_reasons'])})") in done.stderr
    # the larger batch gives more tokens per second at the stand-in's constant power
    assert runs[1]["energy_per_token_j"] < runs[0]["energy_per_token_j"]
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["max_num_seqs"]) for row in rows] == [2, 4]
    assert {row["result_file"] for row in rows} == {r["result_file"] for r in runs}
    for name in (ENERGY_VS_BATCH, FRONTIER):
        data = (out / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 10_000
    for b in (2, 4):
        pid = int((state / f"pid-b{b}").read_text())
        assert not alive(pid), f"the server of max_num_seqs {b} is still running"
        assert (state / f"sigterm-b{b}").exists()  # stopped by SIGTERM, within the grace
        assert (out / f"server-b{b}.log").exists()


def test_rate_sweep_against_a_running_server(standin_script, energy, tmp_path):
    script, state = standin_script
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--max-num-seqs", "4",
                             "--state", str(state)], start_new_session=True)
    try:
        server = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not (state / "pid-b4").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(0.4)
        out = tmp_path / "out"
        done = sweep_cli("--base-url", server, "--rates", "200,inf", "--max-num-seqs", "4", "--exporter", energy,
                         "--out", str(out), *COMMON)
        assert done.returncode == 0, done.stderr
        with open(out / "summary.csv") as f:
            rows = list(csv.DictReader(f))
        assert [row["request_rate"] for row in rows] == ["200.0", "inf"]
        assert all(row["max_num_seqs"] == "4" for row in rows)
        assert (out / FRONTIER).exists() and not (out / ENERGY_VS_BATCH).exists()
        assert proc.poll() is None  # a running server is left running
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_ctrl_c_stops_the_current_server_and_keeps_what_is_done(standin_script, tmp_path):
    script, state = standin_script
    out = tmp_path / "out"
    cmd = f"{sys.executable} {script} --port {{port}} --max-num-seqs {{max_num_seqs}} --state {state}"
    proc = subprocess.Popen([sys.executable, "-m", "jouletrace", "loadgen", "sweep", "--server-cmd", cmd,
                             "--batch-sizes", "2,4", "--no-energy", "--out", str(out), "-n", "10",
                             "--max-tokens", "3000", "--ignore-eos", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (state / "pid-b2").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    (partial,) = out.glob("*.json")
    r = json.loads(partial.read_text())
    assert r["interrupted"] and r["max_num_seqs"] == 2 and partial.name.endswith("-partial.json")
    assert len(list(csv.DictReader(open(out / "summary.csv")))) == 1
    assert not alive(int((state / "pid-b2").read_text())) and (state / "sigterm-b2").exists()
    assert not (state / "pid-b4").exists()  # the next point was not started


def test_a_server_that_dies_is_reported_with_its_log_tail(tmp_path):
    cmd = (f"{sys.executable} -c \"import sys; print('model weights not found'); sys.exit(3)\" "
           "--port {port} --mns {max_num_seqs}")
    done = sweep_cli("--server-cmd", cmd, "--batch-sizes", "8", "--no-energy", "--out", str(tmp_path), "-n", "2")
    assert done.returncode == 1
    assert "exited with code 3" in done.stderr and "model weights not found" in done.stderr
    assert not list(tmp_path.glob("*.json"))


def test_sweep_option_errors_exit_2(tmp_path):
    both = sweep_cli("--server-cmd", "x {port} {max_num_seqs}", "--base-url", "http://127.0.0.1:1", "--no-energy")
    assert both.returncode == 2 and "exactly one" in both.stderr
    no_rates = sweep_cli("--base-url", "http://127.0.0.1:1", "--no-energy")
    assert no_rates.returncode == 2 and "--rates" in no_rates.stderr
    no_port = sweep_cli("--server-cmd", "serve --max-num-seqs {max_num_seqs}", "--no-energy")
    assert no_port.returncode == 2 and "{port}" in no_port.stderr
    bad = sweep_cli("--server-cmd", "s {port} {max_num_seqs}", "--batch-sizes", "8,x", "--no-energy")
    assert bad.returncode == 2 and "--batch-sizes" in bad.stderr


def test_server_command_substitutes_only_port_and_batch():
    argv = server_command("serve --port {port} --max-num-seqs {max_num_seqs} --cfg '{\"a\": 1}'", 8123, 64)
    assert argv == ["serve", "--port", "8123", "--max-num-seqs", "64", "--cfg", '{"a": 1}']
    assert BATCH_LADDER == (8, 16, 32, 64, 96, 128, 192, 256, 384, 512)


def test_stop_escalates_to_sigkill_for_the_whole_group(tmp_path):
    # the leader ignores SIGTERM and has a child in its group
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(c.pid, flush=True); time.sleep(60)")
    s = Server([sys.executable, "-c", code], tmp_path / "s.log")
    deadline = time.monotonic() + 10
    while not (tmp_path / "s.log").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int((tmp_path / "s.log").read_text().split()[0])
    t0 = time.monotonic()
    assert s.stop(grace_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:  # reparented; reaped by init
        time.sleep(0.05)
    assert not alive(child)


def test_health_timeout_is_an_error_with_the_log(tmp_path):
    import asyncio
    s = Server([sys.executable, "-c", "print('still loading', flush=True); import time; time.sleep(30)"],
               tmp_path / "s.log")
    try:
        with pytest.raises(ServerStartError, match="within 1 s(.|\\n)*still loading"):
            asyncio.run(s.wait_healthy(f"http://127.0.0.1:{free_port()}", 1.0, asyncio.Event()))
    finally:
        s.stop(1.0)
