"""The loadgen tests' servers: one vLLM (batch size 4) sending its spans to a jouletrace exporter,
and a stand-in of the exporter's energy endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

VLLM_TESTS = Path(__file__).resolve().parents[1] / "vllm"
sys.path.insert(0, str(VLLM_TESTS))

from servers import BackgroundApp, ExporterProcess, free_port, http_get  # noqa: E402
from vllm_stack import CACHE, ROOT, START_TIMEOUT_S, VENV_PYTHON, tail  # noqa: E402

MAX_NUM_SEQS = 4
MODEL = "tiny-llama-loadgen"


class Stack:
    """A vLLM server (max_num_seqs 4) whose spans go to a jouletrace exporter (simulated GPU)."""

    def __init__(self, model_dir: Path, log_dir: Path):
        self.exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.5", "--settle-delay", "5",
                                        "--counter-interval", "1")
        self.port = free_port()
        self.log_path = log_dir / "vllm.log"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "VLLM_CACHE_ROOT": str(CACHE / "vllm"), "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OTEL_SERVICE_NAME": MODEL,
               "OTEL_BSP_SCHEDULE_DELAY": "500"}
        for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(var, None)
        cmd = [str(VENV_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", "2048", "--max-num-seqs", str(MAX_NUM_SEQS), "--enforce-eager",
               "--otlp-traces-endpoint", f"http://127.0.0.1:{self.exporter.grpc_port}"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while http_get(self.url("/health"), timeout=2)[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vLLM did not start:\n{tail(self.log_path.read_text(errors='replace'))}")
            time.sleep(0.5)
        self.logs = {"exporter": self.exporter.output, "vLLM": lambda: self.log_path.read_text(errors="replace")}

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        import signal
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
        self.exporter.stop()


class EnergyStandIn(BackgroundApp):
    """A STAND-IN for the exporter's `GET /api/v1/energy` (the contract of loadgen/energy.py):
    a constant `watts` per GPU over any window, 503 + Retry-After once per window first asked,
    416 for windows starting before `oldest`. Used where the exporter does not serve the route."""

    def __init__(self, watts: float = 300.0, gpus: int = 1, oldest: float = 0.0):
        from aiohttp import web
        self.watts, self.gpus, self.oldest = watts, gpus, oldest
        self.asked: set = set()
        self.calls = 0

        async def energy(request):
            self.calls += 1
            start, end = float(request.query["start"]), float(request.query["end"])
            if start < self.oldest:
                return web.json_response({"error": "out of retention"}, status=416)
            if (start, end) not in self.asked:
                self.asked.add((start, end))
                return web.json_response({"error": "not yet"}, status=503, headers={"Retry-After": "0.2"})
            per = self.watts * (end - start)
            return web.json_response({"start": start, "end": end, "joules": per * self.gpus, "gpus": [
                {"index": i, "uuid": f"GPU-standin-{i}", "backend": "sim", "method": "counter", "joules": per}
                for i in range(self.gpus)]})

        app = web.Application()
        app.router.add_get("/api/v1/energy", energy)
        super().__init__(app)


