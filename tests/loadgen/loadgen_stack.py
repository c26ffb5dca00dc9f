"""The loadgen tests' servers: one vLLM (batch size 4) sending its spans to a jouletrace exporter,
and a stand-in of the exporter's energy endpoint."""

from __future__ import annotations

import sys
from pathlib import Path

VLLM_TESTS = Path(__file__).resolve().parents[1] / "vllm"
sys.path.insert(0, str(VLLM_TESTS))

from servers import BackgroundApp, ExporterProcess  # noqa: E402
from vllm_stack import VllmServer  # noqa: E402

MAX_NUM_SEQS = 4
MODEL = "tiny-llama-loadgen"


class Stack:
    """A vLLM server (max_num_seqs 4) whose spans go to a jouletrace exporter (simulated GPU)."""

    def __init__(self, model_dir: Path, log_dir: Path):
        self.exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.5", "--settle-delay", "5",
                                        "--counter-interval", "1")
        try:
            self.vllm = VllmServer(model_dir, MODEL, f"http://127.0.0.1:{self.exporter.grpc_port}", "grpc",
                                   log_dir / "vllm.log", max_num_seqs=MAX_NUM_SEQS)
        except Exception:
            self.exporter.stop()
            raise
        self.logs = {"exporter": self.exporter.output, "vLLM": self.vllm.output}

    def url(self, path: str = "") -> str:
        return self.vllm.url(path)

    def stop(self) -> None:
        self.vllm.stop()
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


