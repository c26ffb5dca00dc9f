"""The diffusion server adapter (serving/diffusion.py): its OpenAI routes, batching and spans, its
refusals and outcomes counted on /metrics (read with prometheus_client's parser), and jouletrace
reading those spans, driven by the real load generator into a real exporter on a
simulated GPU, spans over OTLP/gRPC from the real OpenTelemetry SDK.

The pipeline is a STAND-IN (`slow_noise`): the test venv has no torch, so nothing real can run
here; it returns arrays of the shape a diffusers pipeline returns after a fixed generation time.
The real diffusers pipelines run in test_diffusers_cpu_vllm_venv.py (CPU) and tests/gpu/."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from aiohttp import ClientSession, FormData
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from servers import BackgroundApp, ExporterProcess, free_port, http_get, sum_samples
from serving_checks import attributed, loadgen

from jouletrace.cli import main
from jouletrace.exporter.engine import parse_vllm
from jouletrace.exporter.intake.otlp import decode_protobuf
from jouletrace.loadgen.engine import parse_running
from jouletrace.loadgen.media import encode_png
from jouletrace.loadgen.tracing import tracer_provider
from jouletrace.serving.diffusion import DiffusionServer
from jouletrace.serving.metrics import OUTCOMES, REFUSALS, ServingMetrics
from jouletrace.serving.pipeline import Shape, size_multiple

GEN_S = 0.3
PNG = b"\x89PNG\r\n\x1a\n"


class SlowNoise:
    """Stands in for `pipeline.generate`: GEN_S s per batch, outputs of the batch's shape; records
    each batch as (shape, prompts, seeds) and its input images. `fail` makes every batch raise."""

    def __init__(self, fail: bool = False):
        self.batches: list[tuple[Shape, list[str], list[int]]] = []
        self.images: list[list] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, pipe, shape: Shape, prompts: list[str], seeds: list[int], images: list):
        with self.lock:
            self.batches.append((shape, list(prompts), list(seeds)))
            self.images.append(list(images))
        time.sleep(GEN_S)
        if self.fail:
            raise RuntimeError("CUDA out of memory (stand-in)")
        if shape.kind == "image":
            return [[np.full((shape.height, shape.width, 3), 7, np.uint8)] * shape.per_prompt for _ in prompts]
        return [[np.zeros((shape.frames, shape.height, shape.width, 3), np.uint8)] for _ in prompts]


MODELS = {"image": "sd-standin", "video": "video-standin", "image-to-video": "i2v-standin"}


def serve(kind: str, provider, generate, **kw) -> BackgroundApp:
    return BackgroundApp(DiffusionServer(None, MODELS[kind], kind, provider, generate=generate, **kw).app())


def counted(url: str, model: str) -> dict[str, dict[str, float]]:
    """The adapter's counters, scraped from its /metrics and read with prometheus_client's parser:
    {"reason": refused requests by reason, "outcome": accepted ones by outcome}, the non-zero ones.
    Every reason and outcome has its series, labelled with the served model, from the start; the
    vLLM gauges are 0 (called at rest)."""
    status, text = http_get(url + "/metrics")
    assert status == 200 and parse_vllm(text) == {model: {"requests_running": 0.0, "requests_waiting": 0.0}}
    out = {}
    for family in text_string_to_metric_families(text):
        label, every = {"jouletrace_serving_requests_refused": ("reason", REFUSALS),
                        "jouletrace_serving_requests": ("outcome", OUTCOMES)}.get(family.name, (None, ()))
        totals = [s for s in family.samples if s.name.endswith("_total")]
        if label:
            assert {s.labels["model_name"] for s in totals} == {model} and family.type == "counter"
            assert sorted(s.labels[label] for s in totals) == sorted(every)
            out[label] = {s.labels[label]: s.value for s in totals if s.value}
    assert set(out) == {"reason", "outcome"}
    return out


def test_metrics_keep_vllms_gauges_for_the_engine_scrape_and_the_load_generator():
    """The adapter's vLLM gauges read as the exporter's engine scrape and the load generator read
    them, the model name escaped; a refusal reason outside REFUSALS is refused."""
    model = 'sd "3.5" \\ medium'
    metrics = ServingMetrics(model, lambda: 3, lambda: 2)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain;")
    assert parse_vllm(body.decode()) == {model: {"requests_running": 3.0, "requests_waiting": 2.0}}
    assert parse_running(body.decode()) == 3.0
    with pytest.raises(ValueError, match="refusal reason"):
        metrics.refused("the body is not JSON")
    with pytest.raises(ValueError, match="outcome"):
        metrics.ended("ok")


def test_energy_per_image_and_video_through_the_exporter(tmp_path):
    """Text-to-image (batches of 2), text-to-video and image-to-video jobs (batches of 2) from
    `jouletrace loadgen` into the adapter; its spans reach a real exporter (simulated GPU, settling on
    the adapter's vllm:num_requests_running), which counts every image and video and attributes
    energy to them."""
    ports = (free_port(), free_port(), free_port())
    provider = tracer_provider("diffusion-test", f"grpc://127.0.0.1:{ports[1]}")
    images, videos, i2v = SlowNoise(), SlowNoise(), SlowNoise()
    image_server = serve("image", provider, images, max_batch=2, batch_wait_s=1.0)
    video_server = serve("video", provider, videos, fps=4.0)
    i2v_server = serve("image-to-video", provider, i2v, fps=4.0, max_batch=2, batch_wait_s=1.0)
    exporter = ExporterProcess("--gpu", "sim", "--sim-load", "0.5", "--counter-interval", "1",
                               *(a for s in (image_server, video_server, i2v_server)
                                 for a in ("--engine-metrics", s.url + "/metrics")), ports=ports)
    try:
        img = loadgen("--base-url", image_server.url, "--task", "text-to-image", "-n", "6", "--concurrency", "2",
                      "--size", "64x48", "--steps", "3", "--exporter", exporter.url(""), "--out", str(tmp_path))
        vid = loadgen("--base-url", video_server.url, "--task", "text-to-video", "-n", "3", "--concurrency", "1",
                      "--size", "32x16", "--seconds", "2", "--poll-interval", "0.05", "--fetch-content",
                      "--exporter", exporter.url(""), "--out", str(tmp_path))
        ivid = loadgen("--base-url", i2v_server.url, "--task", "image-to-video", "-n", "4", "--concurrency", "2",
                       "--size", "48x32", "--seconds", "1", "--steps", "2", "--poll-interval", "0.05",
                       "--fetch-content", "--exporter", exporter.url(""), "--out", str(tmp_path))
        provider.force_flush(5000)
        text = attributed(exporter, ("sd-standin", 6), ("video-standin", 3), ("i2v-standin", 4))
    finally:
        exporter.stop()
        for server in (image_server, video_server, i2v_server):
            server.stop()
        provider.shutdown()
    assert (img["completed"], img["images_completed"], vid["completed"], vid["videos_completed"]) == (6, 6, 3, 3)
    assert (ivid["completed"], ivid["videos_completed"], ivid["failed"]) == (4, 4, 0)
    assert [len(p) for _, p, _ in i2v.batches] == [2, 2]
    assert {s for s, _, _ in i2v.batches} == {Shape("video", 48, 32, 2, 1, 5)}  # 1 s x 4 fps + 1
    # the load generator's 64x64 PNG, decoded and resized to the request's size, one per request
    assert [(im.mode, im.size) for batch in i2v.images for im in batch] == [("RGB", (48, 32))] * 4
    assert all(im is None for batch in videos.images for im in batch)
    assert sum_samples(text, "jouletrace_model_videos_total", model="i2v-standin") == 4
    assert ivid["energy_per_video_j"] > 0
    assert [len(p) for _, p, _ in images.batches] == [2, 2, 2]  # concurrency 2, batches of 2
    assert {s for s, _, _ in images.batches} == {Shape("image", 64, 48, 3, 1)}
    assert {s for s, _, _ in videos.batches} == {Shape("video", 32, 16, None, 1, 9)}  # 2 s x 4 fps + 1
    assert sum_samples(text, "jouletrace_model_requests_total", model="sd-standin") == 6
    assert img["energy_per_image_j"] > 0 and vid["energy_per_video_j"] > 0


@pytest.fixture
def spans():
    """An in-memory span exporter behind a real SDK provider, and the provider."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory, provider
    provider.shutdown()


async def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    async with ClientSession() as s, s.post(url, json=body, headers=headers or {}) as r:
        return r.status, await r.json()


def test_image_spans_carry_what_jouletrace_reads(spans):
    memory, provider = spans
    gen = SlowNoise()
    server = serve("image", provider, gen, max_batch=4, batch_wait_s=0.5)
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    body = {"model": "sd-standin", "prompt": "a red cube", "n": 2, "size": "40x24", "response_format": "b64_json"}

    async def two():
        return await asyncio.gather(
            _post(server.url + "/v1/images/generations", body, {"X-Request-Id": "req-1", "traceparent": parent}),
            _post(server.url + "/v1/images/generations", {**body, "n": 2, "seed": 5}, {"X-Request-Id": "req-2"}))

    try:
        (s1, a1), (s2, a2) = asyncio.run(two())
        counts = counted(server.url, "sd-standin")
    finally:
        server.stop()
    assert (s1, s2) == (200, 200) and len(a1["data"]) == len(a2["data"]) == 2
    assert counts == {"reason": {}, "outcome": {"completed": 2}}
    assert base64.b64decode(a1["data"][0]["b64_json"]).startswith(PNG)
    assert len(gen.batches) == 1 and gen.batches[0][2][1] == 5  # one batch of both; the seed sent
    got = {s.attributes["gen_ai.request.id"]: s for s in memory.get_finished_spans()}
    assert set(got) == {"req-1", "req-2"}
    one = got["req-1"]
    assert one.parent is not None and one.parent.span_id == int("cd" * 8, 16)
    assert one.context.trace_id == int("ab" * 16, 16)
    a = one.attributes
    assert (a["gen_ai.output.type"], a["gen_ai.request.choice.count"], a["gen_ai.request.model"],
            a["gen_ai.operation.name"], a["jouletrace.serving.batch_size"]) == ("image", 2, "sd-standin",
                                                                                 "generate_content", 2)
    assert 0 <= a["gen_ai.latency.time_in_queue"] < 5 and one.end_time - one.start_time >= GEN_S * 1e9
    # jouletrace's own decoder reads these spans: 2 requests of 2 images, the queue excluded
    batch = decode_protobuf(encode_spans(memory.get_finished_spans()).SerializeToString(), "default").batch
    records = {r.request_id: r for r in batch.records()}
    assert set(records) == {"req-1", "req-2"}
    r = records["req-1"]
    assert (r.output_kind, r.output_count, r.model) == ("image", 2, "sd-standin")
    assert r.queue_s == pytest.approx(a["gen_ai.latency.time_in_queue"])


def test_video_jobs_send_output_type_video_which_jouletrace_counts(spans):
    memory, provider = spans
    server = serve("video", provider, SlowNoise(), fps=8.0)

    async def job():
        async with ClientSession() as s:
            async with s.post(server.url + "/v1/videos", json={"model": "video-standin", "prompt": "waves",
                                                              "seconds": "1", "size": "16x16"}) as r:
                created = await r.json()
            statuses = [created["status"]]
            while statuses[-1] not in ("completed", "failed"):
                await asyncio.sleep(0.05)
                async with s.get(f"{server.url}/v1/videos/{created['id']}") as r:
                    statuses.append((await r.json())["status"])
            async with s.get(f"{server.url}/v1/videos/{created['id']}/content") as r:
                content = (r.status, r.content_type, await r.read())
            async with s.get(f"{server.url}/v1/videos/nope") as r:
                missing = r.status
            return created, statuses, content, missing

    try:
        created, statuses, content, missing = asyncio.run(job())
        counts = counted(server.url, "video-standin")
    finally:
        server.stop()
    assert created["object"] == "video" and created["size"] == "16x16" and statuses[-1] == "completed"
    assert "in_progress" in statuses and missing == 404
    assert counts == {"reason": {"unknown_job": 1}, "outcome": {"completed": 1}}
    assert content[0] == 200 and content[1] == "image/gif" and content[2].startswith(b"GIF8")
    (span,) = memory.get_finished_spans()
    assert span.attributes["gen_ai.output.type"] == "video" and span.attributes["gen_ai.request.id"] == created["id"]
    assert span.attributes["jouletrace.serving.frames"] == 9
    (r,) = decode_protobuf(encode_spans([span]).SerializeToString(), "default").batch.records()
    assert (r.output_kind, r.output_count, r.request_id) == ("video", 1, created["id"])


def test_finished_jobs_are_forgotten_beyond_max_jobs(spans, monkeypatch):
    monkeypatch.setattr("jouletrace.serving.diffusion.MAX_JOBS", 2)
    memory, provider = spans
    server = DiffusionServer(None, "video-standin", "video", provider, generate=SlowNoise(), keep_videos=1)
    app = BackgroundApp(server.app())
    body = {"prompt": "x", "size": "16x16", "seconds": "1"}

    async def four():
        ids = [(await _post(app.url + "/v1/videos", body))[1]["id"] for _ in range(4)]
        while len(memory.get_finished_spans()) < 4:
            await asyncio.sleep(0.05)
        async with ClientSession() as s:
            statuses = [(await s.get(f"{app.url}/v1/videos/{i}")).status for i in ids]
            async with s.get(f"{app.url}/v1/videos/{ids[2]}/content") as r:
                return ids, statuses, (r.status, await r.json())

    try:
        ids, statuses, expired = asyncio.run(four())
        counts = counted(app.url, "video-standin")
    finally:
        app.stop()
    assert statuses == [404, 404, 200, 200] and list(server.jobs) == ids[2:]
    assert [j.video is not None for j in server.jobs.values()] == [False, True]  # keep_videos=1
    assert expired == (404, {"error": {"message": f"video job {ids[2]!r}: expired", "type": "not_found_error"}})
    assert counts == {"reason": {"unknown_job": 2, "video_expired": 1}, "outcome": {"completed": 4}}


async def _post_raw(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, str]:
    async with ClientSession() as s, s.post(url, data=data, headers={"Content-Type": content_type}) as r:
        return r.status, await r.text()


def test_refusals_and_failures(spans, monkeypatch):
    """Bad requests are 400, another model 404, in OpenAI's error shape, a body over MAX_BODY_BYTES
    aiohttp's 413; each is counted by its reason. A failed generation is 500 (images) or a `failed`
    job (videos), counted as failed, and its span carries error.type and no output type."""
    monkeypatch.setattr("jouletrace.serving.diffusion.MAX_BODY_BYTES", 4096)
    memory, provider = spans
    image = serve("image", provider, SlowNoise(fail=True))
    video = serve("video", provider, SlowNoise(fail=True))
    ok = {"model": "sd-standin", "prompt": "x", "size": "16x16"}

    async def calls():
        out = []
        for body in ({**ok, "size": "big"}, {**ok, "prompt": " "}, {**ok, "n": 0}, {**ok, "n": 99},
                     {**ok, "response_format": "url"}, {**ok, "num_inference_steps": "many"}, {**ok, "seed": -1},
                     {**ok, "model": "other"},
                     ok, [ok]):
            out.append(await _post(image.url + "/v1/images/generations", body))
        raw = [await _post_raw(image.url + "/v1/images/generations", data) for data in (b"{", b"{" + b" " * 8192)]
        out.append(await _post(video.url + "/v1/videos", {"model": "video-standin", "prompt": "x", "size": "16x16",
                                                          "seconds": "-1"}))
        _, job = await _post(video.url + "/v1/videos", {"model": "video-standin", "prompt": "x", "size": "16x16"})
        async with ClientSession() as s:
            for _ in range(100):
                await asyncio.sleep(0.05)
                async with s.get(f"{video.url}/v1/videos/{job['id']}") as r:
                    job = await r.json()
                if job["status"] == "failed":
                    break
            async with s.get(f"{video.url}/v1/videos/{job['id']}/content") as r:
                out.append((r.status, await r.json()))
            async with s.get(f"{video.url}/v1/videos/video_nope/content") as r:
                out.append((r.status, await r.json()))
        return out, raw, job

    try:
        out, raw, job = asyncio.run(calls())
        counts = counted(image.url, "sd-standin"), counted(video.url, "video-standin")
    finally:
        image.stop()
        video.stop()
    assert [s for s, _ in out] == [400, 400, 400, 400, 400, 400, 400, 404, 500, 400, 400, 404, 404]
    assert all(set(b["error"]) >= {"message", "type"} for _, b in out)
    assert [b["error"]["type"] for _, b in out[7:]] == ["not_found_error", "server_error", "invalid_request_error",
                                                       "invalid_request_error", "not_found_error", "not_found_error"]
    assert "out of memory" in out[8][1]["error"]["message"]
    assert out[9][1]["error"]["message"] == "the body is not a JSON object"
    assert out[11][1]["error"]["message"] == f"video job {job['id']!r}: not completed"
    assert out[12][1]["error"]["message"] == "video job 'video_nope': unknown"
    assert raw[0] == (400, '{"error": {"message": "the body is not JSON", "type": "invalid_request_error"}}')
    assert raw[1][0] == 413 and raw[1][1].startswith("Maximum request body size 4096 exceeded")  # aiohttp's
    assert job["status"] == "failed" and "out of memory" in job["error"]["message"]
    assert counts == ({"reason": {"bad_field": 7, "unknown_model": 1, "bad_json": 2, "body_too_large": 1},
                       "outcome": {"failed": 1}},
                      {"reason": {"bad_field": 1, "job_not_completed": 1, "unknown_job": 1},
                       "outcome": {"failed": 1}})
    failed = memory.get_finished_spans()
    assert len(failed) == 2 and all(s.attributes["error.type"] == "RuntimeError" for s in failed)
    assert all("gen_ai.output.type" not in s.attributes for s in failed)
    assert len(decode_protobuf(encode_spans(failed).SerializeToString(), "default").batch) == 0  # no image counted


def _png(width: int, height: int, claims: tuple[int, int] | None = None) -> bytes:
    """A PNG of `width` x `height` pixels of noise (which does not compress); `claims`: its header
    says that size instead (a decompression bomb's, read before any pixel)."""
    png = encode_png(width, height, random.Random(width).randbytes(width * height * 3))
    if claims is None:
        return png
    ihdr = b"IHDR" + struct.pack(">II", *claims) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


async def _post_form(url: str, fields: dict, image: bytes | None) -> tuple[int, dict]:
    form = FormData(default_to_multipart=True)  # multipart with or without a file
    for k, v in fields.items():
        form.add_field(k, v)
    if image is not None:
        form.add_field("input_reference", image, content_type="image/png", filename="input.png")
    async with ClientSession() as s, s.post(url, data=form) as r:
        return r.status, await r.json()


def test_image_to_video_takes_an_image_and_refuses_a_bad_one(spans, monkeypatch):
    """An image-to-video server decodes `input_reference` and resizes it to the request's size; a
    missing, undecodable, too large (pixels in its header, or bytes) or text-only image, or a form
    aiohttp cannot read, is 400 with no span; a text-to-video server refuses `input_reference` as
    before. Each is counted by its reason. The span is a video's."""
    monkeypatch.setattr("jouletrace.serving.diffusion.MAX_IMAGE_BYTES", 64 * 1024)
    memory, provider = spans
    gen = SlowNoise()
    i2v, video = serve("image-to-video", provider, gen, fps=4.0), serve("video", provider, SlowNoise())
    ok = {"model": "i2v-standin", "prompt": "waves", "seconds": "1", "size": "40x24"}

    async def calls():
        refused = [await _post_form(i2v.url + "/v1/videos", ok, image)
                   for image in (None, b"not an image", _png(8, 8, claims=(5000, 5000)), _png(200, 200))]
        refused.append(await _post(i2v.url + "/v1/videos", ok))  # JSON: no file
        refused.append(await _post_form(video.url + "/v1/videos", {**ok, "model": "video-standin"}, _png(8, 8)))
        part = b'--zz\r\nContent-Disposition: form-data; name="prompt"\r\n'
        forms = [await _post_raw(i2v.url + "/v1/videos", body, "multipart/form-data" + boundary)
                 for body, boundary in ((part + b"\r\nx\r\n--zz--\r\n", ""), (b"not a form", "; boundary=zz"),
                                        (b"--zz\r\nno header\r\n\r\nx\r\n--zz--\r\n", "; boundary=zz"),
                                        (part + b"Content-Transfer-Encoding: rot13\r\n\r\nx\r\n--zz--\r\n",
                                         "; boundary=zz"))]
        status, job = await _post_form(i2v.url + "/v1/videos", ok, _png(64, 48))
        while len(memory.get_finished_spans()) < 1:
            await asyncio.sleep(0.05)
        return refused, forms, status, job

    try:
        refused, forms, status, job = asyncio.run(calls())
        counts = counted(i2v.url, "i2v-standin"), counted(video.url, "video-standin")
    finally:
        i2v.stop()
        video.stop()
    assert [s for s, _ in refused] == [400] * 6
    assert [s for s, _ in forms] == [400] * 4  # no boundary, none found, a part without headers, an encoding
    assert all(t.startswith('{"error": {"message": "the body is not a multipart/form-data form aiohttp reads: ')
               and t.endswith('"type": "invalid_request_error"}}') for _, t in forms)
    assert counts == ({"reason": {"missing_image": 2, "bad_image": 1, "image_too_large": 2, "bad_form": 4},
                       "outcome": {"completed": 1}},
                      {"reason": {"unexpected_image": 1}, "outcome": {}})
    messages = [b["error"]["message"] for _, b in refused]
    assert "send input_reference, an image file" in messages[0] and "send input_reference" in messages[4]
    assert "not an image Pillow decodes" in messages[1]
    assert "5000x5000 pixels" in messages[2] and "bytes, more than 65536" in messages[3]
    assert messages[5] == "this server generates from text only: no input_reference"
    assert status == 200 and job["size"] == "40x24"
    (images,) = gen.images
    assert [(im.mode, im.size) for im in images] == [("RGB", (40, 24))]
    (span,) = memory.get_finished_spans()  # the refused requests started none
    assert span.attributes["gen_ai.output.type"] == "video" and span.attributes["gen_ai.request.choice.count"] == 1
    assert not [k for k in span.attributes if "input" in k]


def test_without_torch_the_command_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    assert main(["serve", "diffusion", "--pipeline", "x.py:f", "--kind", "image"]) == 2
    assert capsys.readouterr().err == "jouletrace serve: needs torch: pip install 'jouletrace[diffusion]'\n"


def test_the_size_step_is_the_vae_downscaling_times_the_patch():
    """STAND-IN pipelines with only the attributes read (the real CogVideoX one: 16 px,
    test_diffusers_cpu_vllm_venv.py): a (t, h, w) patch counts by its last entry, a UNet's by 1."""
    from types import SimpleNamespace as NS

    assert size_multiple(NS(vae_scale_factor_spatial=8, transformer=NS(config=NS(patch_size=(1, 2, 2))))) == 16
    assert size_multiple(NS(vae_scale_factor=8, unet=object())) == 8
    assert size_multiple(None) == 1
