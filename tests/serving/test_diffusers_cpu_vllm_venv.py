"""Real diffusers pipelines behind `jouletrace serve diffusion` on the CPU: SD3's and CogVideoX's
pipelines a few channels wide with random weights (benchmarks/diffusion_models.py `tiny_image`,
`tiny_video`, and CogVideoX's image-to-video pipeline `tiny_i2v`), driven by `jouletrace loadgen`
(text-to-image at batch 2, text-to-video jobs, image-to-video jobs at batch 2), their spans over
OTLP/gRPC into a real exporter on a simulated GPU that counts every image and video and attributes
energy to them. A pipeline that generates from an image refuses to start as text-to-video.

The servers run in .venv-vllm, whose CPU torch the vLLM tests install with diffusers beside it
(scripts/setup-vllm.sh); the file's name puts it in the vLLM unit of `make test` (tests/conftest.py),
which installs that venv once. About a minute on a busy two-core machine."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from servers import ExporterProcess, free_port, http_get, sum_samples, wait_for
from serving_checks import attributed, loadgen

VLLM_TESTS = Path(__file__).resolve().parents[1] / "vllm"
sys.path.insert(0, str(VLLM_TESTS))
from vllm_stack import VENV_PYTHON, tail

_spec = importlib.util.spec_from_file_location("vllm_test_fixtures", VLLM_TESTS / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
vllm_venv = _fixtures.vllm_venv  # .venv-vllm, installed on first use

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "benchmarks" / "diffusion_models.py"


class Server:
    """`jouletrace serve diffusion` on the CPU, from .venv-vllm, this tree on its path."""

    def __init__(self, factory: str, kind: str, otlp: str, log: Path, *args: str):
        self.port, self.log = free_port(), log
        self.proc = subprocess.Popen(
            [str(VENV_PYTHON), "-m", "jouletrace", "serve", "diffusion", "--pipeline", f"{MODELS}:{factory}",
             "--kind", kind, "--device", "cpu", "--dtype", "float32", "--port", str(self.port), "--otlp-endpoint", otlp,
             *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the server exited {self.proc.returncode}:\n{tail(self.log.read_text())}")
        return http_get(self.url + "/health")[0] == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_tiny_diffusers_pipelines_on_the_cpu(vllm_venv, tmp_path):
    ports = (free_port(), free_port(), free_port())
    otlp = f"grpc://127.0.0.1:{ports[1]}"
    image = Server("tiny_image", "image", otlp, tmp_path / "image.log", "--max-batch", "2", "--batch-wait", "2")
    video = Server("tiny_video", "video", otlp, tmp_path / "video.log", "--fps", "8")
    i2v = Server("tiny_i2v", "image-to-video", otlp, tmp_path / "i2v.log", "--fps", "8", "--max-batch", "2",
                 "--batch-wait", "2")
    exporter = None
    try:
        wait_for(lambda: image.ready() and video.ready() and i2v.ready(), 120, "the diffusion servers")
        exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.5", "--counter-interval", "1",
                                   *(a for s in (image, video, i2v) for a in ("--engine-metrics", s.url + "/metrics")),
                                   ports=ports)
        img = loadgen("--base-url", image.url, "--task", "text-to-image", "-n", "4", "--concurrency", "2",
                      "--size", "32x32", "--steps", "2", "--exporter", exporter.url(""), "--out", str(tmp_path))
        vid = loadgen("--base-url", video.url, "--task", "text-to-video", "-n", "2", "--concurrency", "1",
                      "--size", "16x16", "--seconds", "1", "--steps", "2", "--poll-interval", "0.1", "--fetch-content",
                      "--exporter", exporter.url(""), "--out", str(tmp_path))
        ivid = loadgen("--base-url", i2v.url, "--task", "image-to-video", "-n", "2", "--concurrency", "2",
                       "--size", "16x16", "--seconds", "1", "--steps", "2", "--poll-interval", "0.1",
                       "--fetch-content", "--exporter", exporter.url(""), "--out", str(tmp_path))
        body = json.dumps({"prompt": "t1 t2", "n": 2, "size": "32x16", "seed": 3}).encode()
        request = urllib.request.Request(image.url + "/v1/images/generations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            direct = json.load(r)
        # CogVideoX: 8x VAE, 2x2 patches; 24 px is 3 latent columns, which the pipeline would fail on
        off = urllib.request.Request(video.url + "/v1/videos", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": "x", "size": "24x16", "seconds": "1"}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(off, timeout=60)

        text = attributed(exporter, ("tiny_image", 6), ("tiny_video", 2), ("tiny_i2v", 2))
    finally:
        for p in (image, video, i2v):
            p.stop()
        if exporter is not None:
            exporter.stop()
    assert (img["completed"], img["images_completed"], vid["completed"], vid["videos_completed"]) == (4, 4, 2, 2)
    assert (ivid["completed"], ivid["videos_completed"], ivid["failed"]) == (2, 2, 0)
    assert ivid["energy_per_video_j"] > 0
    pngs = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in direct["data"]]
    assert [(p.format, p.size) for p in pngs] == [("PNG", (32, 16))] * 2
    assert sum_samples(text, "jouletrace_model_requests_total", model="tiny_image") == 5  # 4 + the direct one
    assert img["energy_per_image_j"] > 0 and vid["energy_per_video_j"] > 0
    assert refused.value.code == 400 and json.load(refused.value)["error"]["message"] == \
        "size '24x16': this pipeline makes widths and heights that are multiples of 16 px"


def test_an_image_to_video_pipeline_is_not_served_as_text_to_video(vllm_venv, tmp_path):
    done = subprocess.run([str(VENV_PYTHON), "-m", "jouletrace", "serve", "diffusion", "--pipeline",
                           f"{MODELS}:tiny_i2v", "--kind", "video", "--device", "cpu", "--dtype", "float32"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.strip().endswith("--kind video: CogVideoXImageToVideoPipeline generates from an image: "
                                        "use --kind image-to-video")
