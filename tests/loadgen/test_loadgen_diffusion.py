"""The load generator's diffusion paths (text-to-image, text-to-video, image-to-video) against a
STAND-IN for a diffusion server, not a real one: a local aiohttp server that checks the wire format of
each API (OpenAI images, OpenAI's asynchronous video jobs, xDiT's `POST /generate`), simulates a
generation time of 50-200 ms, and answers in each API's documented shape. Requests whose index is
listed in `malformed` get an answer out of shape (or a failed / never-finishing job); they must be
counted as errors of the right kind. Energy comes from the exporter energy endpoint's stand-in."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import re
import subprocess
import sys
import time

import pytest
from aiohttp import web
from jouletrace.loadgen.requests import DiffusionParams
from jouletrace.loadgen.runner import RunConfig, run
from loadgen_stack import EnergyStandIn
from servers import BackgroundApp

MODEL = "standin-diffusion"
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")
PNG = b"\x89PNG\r\n\x1a\n"
SIZE = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")


class DiffusionStandIn(BackgroundApp):
    """A stand-in diffusion server (see the module docstring). `violations` lists every wire-format
    problem it saw (the test asserts there are none); `requests` every (path, X-Request-Id)."""

    def __init__(self, malformed: dict[int, str] | None = None, gen_s: tuple[float, float] = (0.05, 0.2)):
        self.malformed = malformed or {}   # request index -> what goes wrong
        self.gen_s = gen_s
        self.violations: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.jobs: dict[str, dict] = {}
        self.in_flight = self.max_in_flight = 0
        self.ids = itertools.count()
        self.rng = random.Random(0)
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/images/generations", self.images)
        app.router.add_post("/v1/videos", self.create_video)
        app.router.add_get("/v1/videos/{id}", self.video)
        app.router.add_get("/v1/videos/{id}/content", self.content)
        app.router.add_post("/generate", self.xdit)
        super().__init__(app)

    # ---- checks ----------------------------------------------------------------------------------

    def check(self, cond: bool, what: str) -> None:
        if not cond:
            self.violations.append(what)

    def headers(self, request: web.Request) -> int:
        """Checks X-Request-Id and traceparent; returns the request's index (its id ends in -<index>)."""
        rid = request.headers.get("X-Request-Id", "")
        self.requests.append((request.path, rid))
        self.check(bool(re.fullmatch(r".+-\d+", rid)), f"{request.path}: X-Request-Id {rid!r}")
        self.check(bool(TRACEPARENT.match(request.headers.get("traceparent", ""))),
                   f"{request.path}: traceparent {request.headers.get('traceparent')!r}")
        return int(rid.rpartition("-")[2]) if rid.rpartition("-")[2].isdigit() else -1

    async def json_body(self, request: web.Request, required: dict[str, type]) -> dict:
        self.check(request.content_type == "application/json", f"{request.path}: {request.content_type}")
        body = await request.json()
        for k, t in required.items():
            self.check(isinstance(body.get(k), t) and not isinstance(body.get(k), bool),
                       f"{request.path}: {k}={body.get(k)!r} is not {t.__name__}")
        self.check(bool(str(body.get("prompt", "")).strip()), f"{request.path}: empty prompt")
        return body

    async def generate(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.rng.uniform(*self.gen_s))
        finally:
            self.in_flight -= 1

    # ---- routes ----------------------------------------------------------------------------------

    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def images(self, request):
        i = self.headers(request)
        body = await self.json_body(request, {"model": str, "prompt": str, "n": int, "size": str,
                                              "response_format": str})
        self.check(body.get("model") == MODEL, f"images: model {body.get('model')!r}")
        self.check(bool(SIZE.match(str(body.get("size")))), f"images: size {body.get('size')!r}")
        self.check(body.get("response_format") == "b64_json", "images: response_format")
        await self.generate()
        if self.malformed.get(i) == "shape":
            return web.json_response({"created": int(time.time()), "data": "not a list"})
        if self.malformed.get(i) == "b64":
            return web.json_response({"created": int(time.time()), "data": [{"b64_json": "%%% not base64"}]})
        if self.malformed.get(i) == "500":
            return web.json_response({"error": {"message": "out of memory"}}, status=500)
        img = base64.b64encode(PNG + bytes(16)).decode()
        return web.json_response({"created": int(time.time()),
                                  "data": [{"b64_json": img} for _ in range(body.get("n", 1))]})

    def job_view(self, job: dict) -> dict:
        elapsed = time.monotonic() - job["t0"]
        status = ("completed" if elapsed >= job["gen_s"] else "in_progress" if elapsed > 0.02 else "queued")
        if status == "completed" and job["fate"] == "failed":
            status = "failed"
        if job["fate"] == "stuck":
            status = "in_progress"
        if job["fate"] == "bad_status" and status == "completed":
            status = "finished-ish"
        view = {k: job[k] for k in ("id", "object", "model", "created_at", "size", "seconds")}
        view.update(status=status, progress=100 if status == "completed" else min(99, int(100 * elapsed / job["gen_s"])))
        if status == "failed":
            view["error"] = {"code": "generation_failed", "message": "stand-in failure"}
        return view

    async def create_video(self, request):
        i = self.headers(request)
        if request.content_type == "multipart/form-data":  # image-to-video: an input_reference file
            fields, image = {}, b""
            async for part in await request.multipart():
                if part.name == "input_reference":
                    self.check(part.headers.get("Content-Type", "").startswith("image/"), "videos: input type")
                    self.check(bool(part.filename), "videos: input_reference without a filename")
                    image = await part.read()
                else:
                    fields[part.name] = await part.text()
            self.check(image.startswith(PNG), "videos: input_reference is not a PNG")
            for k in ("model", "prompt", "seconds", "size"):
                self.check(bool(fields.get(k)), f"videos (multipart): no {k}")
            body = fields
        else:
            body = await self.json_body(request, {"model": str, "prompt": str, "seconds": str, "size": str})
        self.check(body.get("model") == MODEL, f"videos: model {body.get('model')!r}")
        self.check(bool(SIZE.match(str(body.get("size")))), f"videos: size {body.get('size')!r}")
        self.check(str(body.get("seconds", "")).isdigit(), f"videos: seconds {body.get('seconds')!r}")
        job_id = f"video_{next(self.ids):04d}"
        self.jobs[job_id] = {"id": job_id, "object": "video", "model": body.get("model"), "created_at": int(time.time()),
                             "size": body.get("size"), "seconds": body.get("seconds"), "t0": time.monotonic(),
                             "gen_s": self.rng.uniform(*self.gen_s), "fate": self.malformed.get(i, ""),
                             "rid": request.headers.get("X-Request-Id")}
        if self.malformed.get(i) == "no_id":
            return web.json_response({"object": "video", "status": "queued"})
        return web.json_response(self.job_view(self.jobs[job_id]))

    async def video(self, request):
        self.headers(request)
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            self.violations.append(f"poll of an unknown job {request.match_info['id']}")
            return web.json_response({"error": {"message": "no such video"}}, status=404)
        self.check(request.headers.get("X-Request-Id") == job["rid"], "poll: X-Request-Id differs from create")
        return web.json_response(self.job_view(job))

    async def content(self, request):
        self.headers(request)
        job = self.jobs.get(request.match_info["id"])
        if job is None or self.job_view(job)["status"] != "completed":
            self.violations.append("content of an unfinished job")
            return web.json_response({"error": {"message": "not ready"}}, status=404)
        return web.Response(body=b"\x00\x00\x00\x18ftypmp42" + bytes(64), content_type="video/mp4")

    async def xdit(self, request):
        i = self.headers(request)
        body = await self.json_body(request, {"prompt": str, "num_inference_steps": int, "seed": int,
                                              "height": int, "width": int})
        for k in ("num_inference_steps", "height", "width"):
            self.check(isinstance(body.get(k), int) and body[k] > 0, f"generate: {k} must be positive")
        self.check(body.get("save_disk_path") is None, "generate: save_disk_path set")
        await self.generate()
        if self.malformed.get(i) == "shape":
            return web.json_response({"message": "Image generated successfully", "elapsed_time": "0.10 sec"})
        return web.json_response({"message": "Image generated successfully", "elapsed_time": "0.10 sec",
                                  "output": base64.b64encode(PNG + bytes(16)).decode(), "save_to_disk": False})


@pytest.fixture
def server():
    s = DiffusionStandIn()
    yield s
    s.stop()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jouletrace", "loadgen", "run", *args],
                          capture_output=True, text=True, timeout=timeout)


def ids_sent(r: dict) -> None:
    """Every result has its own request id, trace id and span id."""
    assert len(set(r["request_ids"])) == len(set(r["trace_ids"])) == len(set(r["span_ids"])) == r["num_prompts"]


def test_text_to_image_openai_cli(server, tmp_path):
    """OpenAI images API through the CLI, 2 images per request, concurrency 3, energy from the stand-in."""
    energy = EnergyStandIn(watts=250.0)
    try:
        done = cli("--base-url", server.url, "--task", "text-to-image", "-n", "9", "--concurrency", "3",
                   "--size", "512x512", "--steps", "4", "--exporter", energy.url, "--quiet", "--out", str(tmp_path),
                   "--electricity-price", "0.3", "--currency", "EUR", "--grid-carbon-intensity", "200")
    finally:
        energy.stop()
    assert done.returncode == 0, done.stderr
    assert server.violations == []
    r = json.loads((tmp_path / done.stdout.strip().splitlines()[-1].split("/")[-1]).read_text())
    assert (r["completed"], r["failed"], r["task"], r["model_id"]) == (9, 0, "text-to-image", MODEL)
    assert r["backend"] == "openai-images" and r["item_kind"] == "image" and r["diffusion_api"] == "openai"
    assert r["diffusion"]["size"] == "512x512" and r["diffusion"]["steps"] == 4
    assert r["images_completed"] == r["total_items"] == 9 and r["items"] == [1] * 9
    assert server.max_in_flight <= 3 and [p for p, _ in server.requests].count("/v1/images/generations") == 9
    assert {rid for _, rid in server.requests} == set(r["request_ids"])
    ids_sent(r)
    # generation latency: the stand-in takes 50-200 ms
    assert all(0.05 <= lat < 2.0 for lat in r["latencies"])
    assert 50 <= r["median_generation_latency_ms"] <= r["p99_generation_latency_ms"] < 2000
    assert r["mean_generation_latency_ms"] == pytest.approx(r["mean_e2el_ms"])
    # energy per image = window energy / images finished in the window (whole run at fixed concurrency)
    assert r["window"]["rule"] == "whole_run" and r["window_items"] == 9
    assert r["energy_joules"] == pytest.approx(250.0 * r["window"]["duration_s"], abs=1e-3)  # 1 µs query rounding
    assert r["energy_per_image_j"] == r["energy_per_item_j"] == r["energy_joules"] / 9
    assert r["items_per_joule"] == pytest.approx(9 / r["energy_joules"])
    assert r["avg_power_w"] == pytest.approx(250.0, rel=1e-4)
    assert r["energy_per_token_j"] is None  # no tokens in an image run
    row = (tmp_path / "summary.csv").read_text().splitlines()
    assert "energy_per_item_j" in row[0] and len(row) == 2
    # cost and emissions per image: its energy in kWh times 0.3 EUR and 200 g a kWh
    kwh = r["energy_per_image_j"] / 3.6e6
    assert (r["electricity_price"], r["currency"], r["grid_carbon_intensity"]) == (0.3, "EUR", 200.0)
    assert r["cost_per_image"] == pytest.approx(kwh * 0.3, rel=1e-12)
    assert r["co2e_per_image_g"] == pytest.approx(kwh * 200, rel=1e-12)
    assert f"{r['cost_per_image']:.4g} EUR and {r['co2e_per_image_g']:.4g} gCO2e per image" in done.stderr


def test_text_to_image_n_images_per_request(server, tmp_path):
    cfg = RunConfig(base_url=server.url, task="text-to-image", num_requests=4, no_energy=True, progress=False,
                    out_dir=str(tmp_path), diffusion=DiffusionParams(n=3, size="256x256"))
    r, _ = asyncio.run(run(cfg))
    assert server.violations == []
    assert r["completed"] == 4 and r["images_completed"] == 12 and r["items"] == [3] * 4
    assert r["window_items"] == 12 and r["energy_per_image_j"] is None and r["energy"] is None


def test_text_to_video_async_jobs(server, tmp_path):
    """Create, poll every 30 ms until completed, fetch the content; latency = create to completed."""
    cfg = RunConfig(base_url=server.url, task="text-to-video", num_requests=6, concurrency=3, no_energy=True,
                    progress=False, out_dir=str(tmp_path),
                    diffusion=DiffusionParams(size="640x360", seconds="4", poll_interval_s=0.03, fetch_content=True))
    r, _ = asyncio.run(run(cfg))
    assert server.violations == []
    assert (r["completed"], r["failed"], r["backend"], r["item_kind"]) == (6, 0, "openai-videos", "video")
    assert r["videos_completed"] == 6 and all(p >= 1 for p in r["polls"])
    paths = [p for p, _ in server.requests]
    assert paths.count("/v1/videos") == 6 and sum(p.endswith("/content") for p in paths) == 6
    assert sum(re.fullmatch(r"/v1/videos/video_\d+", p) is not None for p in paths) == sum(r["polls"])
    assert set(r["response_ids"]) == set(server.jobs) and r["server_request_ids"] == r["response_ids"]
    for job_id, lat in zip(r["response_ids"], r["latencies"]):
        job = server.jobs[job_id]
        assert job["gen_s"] <= lat < job["gen_s"] + 1.0  # completed no earlier than the job, one poll late at most
    assert 50 <= r["median_generation_latency_ms"] < 2000
    ids_sent(r)


def test_image_to_video_multipart(server, tmp_path):
    """Image-to-video: the OpenAI-style multipart create with an `input_reference` PNG."""
    cfg = RunConfig(base_url=server.url, task="image-to-video", num_requests=4, no_energy=True, progress=False,
                    out_dir=str(tmp_path), diffusion=DiffusionParams(size="320x320", poll_interval_s=0.03))
    r, _ = asyncio.run(run(cfg))
    assert server.violations == []
    assert r["completed"] == 4 and r["videos_completed"] == 4 and len(server.jobs) == 4


def test_xdit_generate(server, tmp_path):
    energy = EnergyStandIn(watts=100.0)
    try:
        done = cli("--base-url", server.url, "--task", "text-to-image", "--diffusion-api", "xdit", "-n", "6",
                   "--concurrency", "2", "--size", "768x512", "--steps", "8", "--seed", "42",
                   "--exporter", energy.url, "--quiet", "--out", str(tmp_path))
    finally:
        energy.stop()
    assert done.returncode == 0, done.stderr
    assert server.violations == []
    r = json.loads((tmp_path / done.stdout.strip().splitlines()[-1].split("/")[-1]).read_text())
    assert (r["completed"], r["backend"], r["model_id"], r["images_completed"]) == (6, "xdit-images", "xdit", 6)
    assert [p for p, _ in server.requests] == ["/generate"] * 6  # no /v1/models on xDiT
    assert server.max_in_flight <= 2
    assert r["energy_per_image_j"] == pytest.approx(r["energy_joules"] / 6)
    ids_sent(r)


def test_xdit_refuses_image_to_video(server, tmp_path):
    done = cli("--base-url", server.url, "--task", "image-to-video", "--diffusion-api", "xdit", "--no-energy",
               "--out", str(tmp_path))
    assert done.returncode == 2 and "input image" in done.stderr and server.requests == []


def test_malformed_answers_are_errors(tmp_path):
    server = DiffusionStandIn(malformed={1: "shape", 2: "b64", 4: "500"})
    try:
        cfg = RunConfig(base_url=server.url, task="text-to-image", num_requests=6, no_energy=True, progress=False,
                        out_dir=str(tmp_path))
        r, _ = asyncio.run(run(cfg))
    finally:
        server.stop()
    assert server.violations == []
    assert (r["completed"], r["failed"], r["images_completed"]) == (3, 3, 3)
    assert r["error_counts"] == {"protocol": 2, "http_500": 1}
    assert r["items"][1] is None and "data" in r["errors"][1] and r["errors"][4].startswith('{"error"')


def test_xdit_malformed_answer(tmp_path):
    server = DiffusionStandIn(malformed={0: "shape"})
    try:
        cfg = RunConfig(base_url=server.url, task="text-to-image", num_requests=3, no_energy=True, progress=False,
                        out_dir=str(tmp_path), diffusion=DiffusionParams(api="xdit", steps=2, seed=1))
        r, _ = asyncio.run(run(cfg))
    finally:
        server.stop()
    assert (r["completed"], r["error_counts"]) == (2, {"protocol": 1}) and "output" in r["errors"][0]


def test_video_failures_and_timeouts(tmp_path):
    """A failed job, a job without an id, an unknown status and a job that never finishes: each counted."""
    server = DiffusionStandIn(malformed={1: "failed", 2: "no_id", 3: "bad_status", 4: "stuck"})
    try:
        cfg = RunConfig(base_url=server.url, task="text-to-video", num_requests=6, no_energy=True, progress=False,
                        out_dir=str(tmp_path), request_timeout_s=1.0,
                        diffusion=DiffusionParams(poll_interval_s=0.03))
        r, _ = asyncio.run(run(cfg))
    finally:
        server.stop()
    assert server.violations == []
    assert (r["completed"], r["failed"], r["videos_completed"]) == (2, 4, 2)
    assert r["error_counts"] == {"job_failed": 1, "protocol": 2, "timeout": 1}
    assert "stand-in failure" in r["errors"][1] and "finished-ish" in r["errors"][3]
    assert r["window_items"] == 2


def test_request_shapes_and_params():
    """The bodies each API gets, without a server; bad parameters are refused."""
    from jouletrace.loadgen.client import build_diffusion_body, diffusion_path
    from jouletrace.loadgen.requests import Media, PlannedRequest

    def req(api, d, images=()):
        return PlannedRequest(index=2, task="t", api=api, max_tokens=0, prompt="a red cube", images=list(images),
                              diffusion=d)
    d = DiffusionParams(size="512x256", steps=4)
    assert diffusion_path(req("image", d)) == "/v1/images/generations"
    assert build_diffusion_body(req("image", d), "m") == {"model": "m", "prompt": "a red cube", "n": 1,
                                                          "size": "512x256", "response_format": "b64_json",
                                                          "num_inference_steps": 4}
    assert build_diffusion_body(req("video", d), "m") == {"model": "m", "prompt": "a red cube", "seconds": "4",
                                                          "size": "512x256", "num_inference_steps": 4}
    form = build_diffusion_body(req("video", d, [Media(PNG)]), "m")
    assert not isinstance(form, dict) and diffusion_path(req("video", d, [Media(PNG)])) == "/v1/videos"
    x = DiffusionParams(api="xdit", size="512x256", steps=4, seed=40)
    assert diffusion_path(req("image", x)) == "/generate"
    assert build_diffusion_body(req("image", x), "xdit") == {"prompt": "a red cube", "height": 256, "width": 512,
                                                             "save_disk_path": None, "num_inference_steps": 4,
                                                             "seed": 42}
    with pytest.raises(ValueError):
        diffusion_path(req("video", x, [Media(PNG)]))
    for bad in ({"api": "sdapi"}, {"size": "1024"}, {"size": "0x5"}, {"n": 0}, {"steps": 0}, {"poll_interval_s": 0}):
        with pytest.raises(ValueError):
            DiffusionParams(**bad)
