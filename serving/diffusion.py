"""An OpenAI-compatible HTTP server around one diffusion pipeline, with one OpenTelemetry span per
request carrying what jouletrace reads to attribute energy per image and per video.

Routes (the OpenAI images API and asynchronous video-jobs API, as `jouletrace loadgen` speaks them):
- `POST /v1/images/generations`, JSON `{model, prompt, n, size: "WxH", response_format: "b64_json",
  num_inference_steps?, seed?}`: answers `{created, data: [{b64_json: PNG}, ...]}` once generated.
- `POST /v1/videos`, JSON or form fields `{model, prompt, seconds, size, num_inference_steps?, seed?}`:
  answers the job at once, `{id, object: "video", model, status: "queued", progress, created_at,
  size, seconds}`; `GET /v1/videos/{id}` answers it again, `queued`, `in_progress`, then `completed`
  or `failed` (with `error`); `GET /v1/videos/{id}/content` the clip, an animated GIF. A clip of
  `seconds` s has `round(seconds x fps) + 1` frames. The `keep_videos` latest clips are kept, and
  MAX_JOBS jobs (the oldest finished ones go first).
- Image-to-video (kind `image-to-video`): the same video jobs, sent as multipart/form-data with an
  `input_reference` image file (OpenAI's form), decoded with Pillow (at most MAX_IMAGE_BYTES and
  MAX_IMAGE_PIXELS), converted to RGB and resized to the request's `size`; the pipeline generates
  from it and the prompt. A text-only server (kind `video`) refuses `input_reference`, and an
  image-to-video one a request without it.
- `GET /v1/models`, `GET /health`; `GET /metrics` (serving/metrics.py): `vllm:num_requests_running`
  (requests in the batch being generated) and `vllm:num_requests_waiting`, labelled `model_name`,
  vLLM's gauges, which the load generator reads for the mean running batch and the exporter's engine
  scrape for settlement; the requests refused, by reason, and those accepted, by outcome.
A refused request raises Refused with one of metrics.REFUSALS' reasons, which sets its status: a
malformed request (a multipart form aiohttp cannot read, an image that is missing, too large or not
decodable, a size off the pipeline's step, `pipeline.size_multiple`, included) is 400, another model
than the one served or an unknown video job 404, both in OpenAI's error shape; a body over
MAX_BODY_BYTES is aiohttp's 413. Each is counted by its reason, and starts no span.

Batching: requests of the same shape (kind, size, steps, `n`, frames) run in one pipeline call, up to
`max_batch` requests; once the first is waiting, the batch waits up to `batch_wait_s` to fill. The
pipeline runs in a worker thread, one batch at a time, so status polls are answered meanwhile.

The span (SpanKind.SERVER, child of the request's W3C `traceparent`), named
`generate_content {model}`: it starts when the request arrives and ends when its result is ready
(an image request: encoded, before the answer is sent; a video job: generated). Attributes:
`gen_ai.operation.name` = `generate_content`; `gen_ai.output.type` = `image`, or `video` for a video
job (the GenAI conventions list no video value; jouletrace reads this one); `gen_ai.request.model`
and `gen_ai.response.model`; `gen_ai.request.choice.count` = images (`n`) or 1 video;
`gen_ai.request.id` = the request's `X-Request-Id` (images; a generated id without one) or the job
id (videos); `gen_ai.latency.time_in_queue` = s from arrival to the start of its batch, time
jouletrace gives no GPU energy; `jouletrace.serving.batch_size` (requests in its batch),
`jouletrace.serving.steps`, `jouletrace.serving.frames`. An image-to-video span is the same, with
`gen_ai.output.type` = `video`: the GenAI conventions have no attribute for an input's modality
(only the opt-in message content), so none is added. A request that fails carries `error.type`
and no `gen_ai.output.type`: jouletrace counts no image or video for it."""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import logging
import math
import random
import time
import uuid

from aiohttp import http_exceptions, web
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import pipeline as pipelines
from .metrics import REFUSALS, ServingMetrics
from .pipeline import KINDS, Shape

log = logging.getLogger("jouletrace.serving")
MAX_N = 16
MAX_BODY_BYTES = 32 * 1024 * 1024   # a request's body (aiohttp answers 413 above it)
MAX_JOBS = 4096  # video jobs remembered; the oldest finished ones are forgotten first
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # an input_reference file
MAX_IMAGE_PIXELS = 4096 * 4096      # its width x height, read from its header before decoding
_PROPAGATOR = TraceContextTextMapPropagator()


class Refused(Exception):
    """A request the server refuses: `reason`, one of REFUSALS (which gives the HTTP status), and
    the message its answer carries."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class _Work:
    """One request waiting for, or in, a batch."""

    shape: Shape
    prompt: str
    seed: int
    span: trace.Span
    arrived: float                        # time.time(), s
    done: asyncio.Future                  # its outputs (pipeline.generate's list for it)
    on_start: object = None               # called when its batch starts (video jobs: in_progress)
    image: object = None                  # image-to-video: the input, a PIL image of the shape's size


@dataclasses.dataclass
class _Job:
    id: str
    model: str
    size: str
    seconds: str
    created_at: int
    status: str = "queued"
    error: str = ""
    video: object = None                  # the clip (F, H, W, 3 uint8) once completed

    def view(self) -> dict:
        done = self.status in ("completed", "failed")
        out = {"id": self.id, "object": "video", "model": self.model, "status": self.status,
               "progress": 100 if done else 0, "created_at": self.created_at, "size": self.size,
               "seconds": self.seconds}
        if self.status == "failed":
            out["error"] = {"code": "generation_failed", "message": self.error}
        return out


class DiffusionServer:
    """The routes, the batcher and the spans around `pipe` (see the module docstring). `pipe` is a
    diffusers pipeline, or anything `generate` can call the same way."""

    def __init__(self, pipe, model: str, kind: str, tracer_provider, *, max_batch: int = 1,
                 batch_wait_s: float = 0.0, steps: int | None = None, fps: float = 8.0, keep_videos: int = 8,
                 generate=pipelines.generate):
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
        if max_batch < 1 or batch_wait_s < 0 or fps <= 0 or keep_videos < 1:
            raise ValueError("max_batch and keep_videos must be >= 1, batch_wait_s >= 0 and fps > 0")
        self.pipe, self.model, self.kind = pipe, model, kind
        self.max_batch, self.batch_wait_s, self.steps, self.fps = max_batch, batch_wait_s, steps, fps
        self.keep_videos = keep_videos
        self.generate = generate
        self.size_multiple = pipelines.size_multiple(pipe)
        self.tracer = tracer_provider.get_tracer("jouletrace.serving")
        self.pending: collections.deque[_Work] = collections.deque()
        self.jobs: dict[str, _Job] = {}
        self.running = 0                  # requests in the batch being generated
        self._wake: asyncio.Event | None = None
        self.metrics = ServingMetrics(model, lambda: self.running, lambda: len(self.pending))

    # ---- the app ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._refusals])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        if self.kind == "image":
            app.router.add_post("/v1/images/generations", self._images)
        else:
            app.router.add_post("/v1/videos", self._create_video)
            app.router.add_get("/v1/videos/{id}", self._video)
            app.router.add_get("/v1/videos/{id}/content", self._content)
        app.cleanup_ctx.append(self._run_worker)
        return app

    async def _run_worker(self, app):
        self._wake = asyncio.Event()
        worker = asyncio.create_task(self._worker())
        yield
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    async def _health(self, request):
        return web.Response(text="ok")

    async def _models(self, request):
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model",
                                                              "owned_by": "jouletrace"}]})

    async def _metrics(self, request):
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    @web.middleware
    async def _refusals(self, request: web.Request, handler):
        """A Refused request's answer, in OpenAI's error shape, and aiohttp's 413, each counted."""
        try:
            return await handler(request)
        except Refused as exc:
            self.metrics.refused(exc.reason)
            status = REFUSALS[exc.reason]
            return _error(str(exc), "not_found_error" if status == 404 else "invalid_request_error", status)
        except web.HTTPRequestEntityTooLarge:
            self.metrics.refused("body_too_large")
            raise

    # ---- requests --------------------------------------------------------------------------------

    def _shape(self, body: dict, n: int, frames: int | None) -> Shape:
        if body.get("model") not in (None, "", self.model):
            raise Refused("unknown_model", f"model {body['model']!r} is not served here (this server: {self.model!r})")
        if not str(body.get("prompt") or "").strip():
            raise Refused("bad_field", "prompt is empty")
        w, sep, h = str(body.get("size") or "").partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise Refused("bad_field", f"size {body.get('size')!r}: use WIDTHxHEIGHT")
        if int(w) % self.size_multiple or int(h) % self.size_multiple:
            raise Refused("bad_field", f"size {body['size']!r}: this pipeline makes widths and heights that are "
                                       f"multiples of {self.size_multiple} px")
        steps = body.get("num_inference_steps", self.steps)
        if steps is not None:
            steps = _whole(steps, "num_inference_steps")
        return Shape(KINDS[self.kind], int(w), int(h), steps, n, frames)

    def _start(self, request: web.Request, shape: Shape, request_id: str, body: dict, seed: int,
               image=None) -> _Work:
        """The request's span, started at its arrival, and its place in the queue."""
        arrived = time.time()
        ctx = _PROPAGATOR.extract(request.headers)
        attrs = {"gen_ai.operation.name": "generate_content", "gen_ai.request.model": self.model,
                 "gen_ai.response.model": self.model, "gen_ai.request.choice.count": shape.per_prompt,
                 "gen_ai.request.id": request_id, "jouletrace.serving.steps": shape.steps or 0}
        if shape.frames is not None:
            attrs["jouletrace.serving.frames"] = shape.frames
        span = self.tracer.start_span(f"generate_content {self.model}", context=ctx, kind=trace.SpanKind.SERVER,
                                      attributes=attrs, start_time=int(arrived * 1e9))
        work = _Work(shape, str(body["prompt"]), seed, span, arrived, asyncio.get_running_loop().create_future(),
                     image=image)
        self.pending.append(work)
        self._wake.set()
        return work

    def _finish(self, work: _Work, error: BaseException | None) -> None:
        """Ends the span: with the output type when it produced its outputs, else with the error;
        counts the request's outcome."""
        if error is None:
            work.span.set_attribute("gen_ai.output.type", work.shape.kind)
        else:
            work.span.set_attribute("error.type", type(error).__name__)
            work.span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:200]))
        work.span.end()
        self.metrics.ended("completed" if error is None else
                           "cancelled" if isinstance(error, asyncio.CancelledError) else "failed")

    async def _images(self, request: web.Request) -> web.Response:
        body = await _json(request)
        n = _whole(body.get("n", 1), "n", high=MAX_N)
        if body.get("response_format", "b64_json") != "b64_json":
            raise Refused("bad_field", "response_format: only b64_json is served")
        shape, seed = self._shape(body, n, None), _seed(body)
        request_id = request.headers.get("X-Request-Id") or f"img-{uuid.uuid4().hex}"
        work = self._start(request, shape, request_id, body, seed)
        try:
            images = await work.done
            data = await asyncio.to_thread(lambda: [{"b64_json": base64.b64encode(pipelines.png(im)).decode()}
                                                    for im in images])
        except asyncio.CancelledError as exc:  # the server is stopping
            self._finish(work, exc)
            raise
        except Exception as exc:  # the generation failed: 500, in OpenAI's error shape
            self._finish(work, exc)
            return _error(f"{type(exc).__name__}: {exc}"[:500], "server_error", 500)
        self._finish(work, None)
        return web.json_response({"created": int(work.arrived), "data": data})

    async def _create_video(self, request: web.Request) -> web.Response:
        body = await (_form(request) if request.content_type == "multipart/form-data" else _json(request))
        reference = body.pop("input_reference", None)
        if self.kind == "video" and reference is not None:
            raise Refused("unexpected_image", "this server generates from text only: no input_reference")
        if self.kind == "image-to-video" and not isinstance(reference, web.FileField):
            raise Refused("missing_image", "this server generates from an image: send input_reference, an image "
                                           "file, as multipart/form-data")
        seconds = _number(body.get("seconds", "4"), "seconds")
        shape, seed = self._shape(body, 1, pipelines.clip_frames(seconds, self.fps)), _seed(body)
        image = None if reference is None else \
            await asyncio.to_thread(_image, reference.file, shape.width, shape.height)
        job = _Job(f"video_{uuid.uuid4().hex[:24]}", self.model, f"{shape.width}x{shape.height}",
                   str(body.get("seconds", "4")), int(time.time()))
        self.jobs[job.id] = job
        work = self._start(request, shape, job.id, body, seed, image)
        work.on_start = lambda: setattr(job, "status", "in_progress")
        work.done.add_done_callback(lambda f: self._settle_job(job, work, f))
        return web.json_response(job.view())

    def _settle_job(self, job: _Job, work: _Work, done: asyncio.Future) -> None:
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is None:
            job.status, job.video = "completed", done.result()[0]
            kept = [j for j in self.jobs.values() if j.video is not None]
            for old in kept[:-self.keep_videos]:
                old.video = None
        else:
            job.status, job.error = "failed", f"{type(error).__name__}: {error}"[:500]
        finished = [i for i, j in self.jobs.items() if j.status in ("completed", "failed")]
        for old in finished[:max(0, len(self.jobs) - MAX_JOBS)]:
            del self.jobs[old]
        self._finish(work, error)

    async def _video(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise Refused("unknown_job", f"no video job {request.match_info['id']!r}")
        return web.json_response(job.view())

    async def _content(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        reason, what = (("unknown_job", "unknown") if job is None else
                        ("job_not_completed", "not completed") if job.status != "completed" else
                        ("video_expired", "expired") if job.video is None else (None, ""))
        if reason:
            raise Refused(reason, f"video job {request.match_info['id']!r}: {what}")
        body = await asyncio.to_thread(pipelines.gif, job.video, self.fps)
        return web.Response(body=body, content_type="image/gif")

    # ---- the batcher -----------------------------------------------------------------------------

    def _same(self, head: _Work) -> list[_Work]:
        return [w for w in self.pending if w.shape == head.shape][:self.max_batch]

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            head = self.pending[0]
            deadline = loop.time() + self.batch_wait_s
            while len(self._same(head)) < self.max_batch and (left := deadline - loop.time()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            batch = self._same(head)
            for w in batch:
                self.pending.remove(w)
            started = time.time()
            for w in batch:
                w.span.set_attribute("gen_ai.latency.time_in_queue", max(0.0, started - w.arrived))
                w.span.set_attribute("jouletrace.serving.batch_size", len(batch))
                if w.on_start is not None:
                    w.on_start()
            self.running = len(batch)
            try:
                outputs = await asyncio.to_thread(self.generate, self.pipe, head.shape, [w.prompt for w in batch],
                                                  [w.seed for w in batch], [w.image for w in batch])
            except Exception as exc:  # the batch's requests fail with it; the server goes on
                log.warning("batch of %d failed: %s", len(batch), exc)
                for w in batch:
                    if not w.done.done():
                        w.done.set_exception(exc)
                continue
            finally:
                self.running = 0
            for w, out in zip(batch, outputs):
                if not w.done.done():
                    w.done.set_result(out)


def _error(message: str, kind: str, status: int) -> web.Response:
    """An answer in OpenAI's error shape."""
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise Refused("bad_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused("bad_json", "the body is not a JSON object")
    return body


async def _form(request: web.Request) -> dict:
    """A multipart/form-data body's fields (files as web.FileField); Refused when aiohttp cannot read
    it (no boundary, a malformed part, a nested multipart, an unknown transfer encoding)."""
    try:
        return dict(await request.post())
    except (ValueError, RuntimeError, http_exceptions.HttpProcessingError) as exc:
        raise Refused("bad_form", f"the body is not a multipart/form-data form aiohttp reads: {exc}"[:300]) from None


def _whole(value, what: str, low: int = 1, high: int | None = None) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise Refused("bad_field", f"{what} {value!r} is not a whole number") from None
    if number < low or (high is not None and number > high):
        raise Refused("bad_field", f"{what} {number} is outside {low}..{high if high is not None else ''}")
    return number


def _image(file, width: int, height: int):
    """The `input_reference` file as an RGB PIL image of `width` x `height` (Refused if it is
    larger than MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS, or not an image Pillow decodes)."""
    from PIL import Image

    file.seek(0, 2)
    size = file.tell()
    if size > MAX_IMAGE_BYTES:
        raise Refused("image_too_large", f"input_reference: {size} bytes, more than {MAX_IMAGE_BYTES}")
    file.seek(0)
    try:
        with Image.open(file) as im:
            w, h = im.size
            if w * h <= MAX_IMAGE_PIXELS:
                return im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise Refused("bad_image", f"input_reference is not an image Pillow decodes: {exc}"[:300]) from None
    raise Refused("image_too_large", f"input_reference: {w}x{h} pixels, more than {MAX_IMAGE_PIXELS}")


def _seed(body: dict) -> int:
    """The request's `seed`, else a random one."""
    if body.get("seed") in (None, ""):
        return random.getrandbits(31)
    return _whole(body["seed"], "seed", low=0)


def _number(value, what: str) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise Refused("bad_field", f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise Refused("bad_field", f"{what} must be > 0")
    return number
