"""Sends one planned request to an OpenAI-compatible server and times it.

Streaming: TTFT (s) is the first chunk carrying output (text or reasoning), every later such
chunk's gap is one ITL (s); token counts come from the final usage chunk. Non-streaming: only the
end-to-end latency. Every request carries `X-Request-Id` and a W3C `traceparent` from its client span.

A video clip goes as one `video_url` part: a video file (`video/*`) as its own data URL, which vLLM
decodes and samples frames from (the study's 32 frames: vLLM's
`--media-io-kwargs '{"video": {"num_frames": 32}}'`); image frames as vLLM's comma-separated base64
frames under `data:video/jpeg`.

Diffusion (image and video tasks, see requests.DiffusionParams): the latency is the generation
latency, request sent to result (images, xDiT) or job created to job seen `completed` (OpenAI video
jobs, polled); `items` counts the images or videos produced. Status polls and content downloads
carry the request's `X-Request-Id` and `traceparent` too. A job the server reports `failed` is error
kind `job_failed`; an answer not in the API's documented shape is `protocol`. The whole job (create,
polls) is bounded by the session's total timeout (--request-timeout)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json

import aiohttp

from .clock import now
from .plan import Sampling
from .requests import DiffusionParams, Media, PlannedRequest
from .tracing import ClientTracer, traceparent

PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
DIFFUSION_PATHS = {("openai", "image"): "/v1/images/generations", ("openai", "video"): "/v1/videos",
                   ("xdit", "image"): "/generate", ("xdit", "video"): "/generate_video"}
VIDEO_PENDING = ("queued", "in_progress", "processing", "pending")


@dataclasses.dataclass
class RequestResult:
    index: int
    request_id: str               # X-Request-Id sent
    task: str
    api: str
    trace_id: str = ""
    span_id: str = ""             # the client span, parent of the server's span
    ok: bool = False
    error_kind: str = ""          # timeout, connection, http_<status>, protocol, job_failed, cancelled
    error: str = ""
    start: float = 0.0            # unix s, request sent
    first_token: float | None = None   # unix s
    end: float | None = None      # unix s, response complete
    token_times: list[float] = dataclasses.field(default_factory=list)  # unix s of each output chunk
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    response_id: str = ""          # LLM: the completion's id; OpenAI video jobs: the job id
    items: int | None = None       # diffusion: images or videos produced
    polls: int = 0                 # video jobs: status polls made

    @property
    def ttft(self) -> float | None:
        """Time to first token, s."""
        return None if self.first_token is None else self.first_token - self.start

    @property
    def latency(self) -> float | None:
        """End-to-end latency, s."""
        return None if self.end is None else self.end - self.start

    @property
    def itl(self) -> list[float]:
        """Every gap between consecutive output chunks, s."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, s (None with fewer than 2 tokens)."""
        if self.ttft is None or self.latency is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def server_request_id(self) -> str:
        """vLLM's `gen_ai.request.id` of this request's span."""
        if self.api in ("image", "video"):
            return self.response_id or self.request_id
        return f"chatcmpl-{self.request_id}" if self.api == "chat" else f"cmpl-{self.request_id}-0"


def _data_url(m: Media) -> str:
    return f"data:{m.mime};base64,{base64.b64encode(m.data).decode()}"


def _clip_url(frames: list[Media]) -> str:
    """A clip as a data URL: a single video file as itself (`data:video/mp4;base64,...`), image
    frames as vLLM's comma-separated base64 frames under `video/jpeg`."""
    if len(frames) == 1 and frames[0].mime.startswith("video/"):
        return _data_url(frames[0])
    return "data:video/jpeg;base64," + ",".join(base64.b64encode(m.data).decode() for m in frames)


def build_body(r: PlannedRequest, model: str, sampling: Sampling, stream: bool) -> dict:
    """The JSON body of `r` for its endpoint."""
    body: dict = {"model": model, "max_tokens": r.max_tokens, "temperature": sampling.temperature,
                  "top_p": sampling.top_p, "stream": stream}
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    if stream:
        body["stream_options"] = {"include_usage": True}
    if r.api == "completion":
        body["prompt"] = r.prompt
        return body
    if r.api != "chat":
        raise ValueError(f"task {r.task}: the {r.api} API is not supported by this client")
    content: str | list = r.prompt
    if r.images or r.frames:
        content = [{"type": "text", "text": r.prompt}]
        content += [{"type": "image_url", "image_url": {"url": _data_url(m)}} for m in r.images]
        if r.frames:
            content.append({"type": "video_url", "video_url": {"url": _clip_url(r.frames)}})
    body["messages"] = [*r.history, {"role": "user", "content": content}]
    return body


def diffusion_path(r: PlannedRequest) -> str:
    """The path the diffusion request `r` is sent to (ValueError for an API that lacks it)."""
    d = r.diffusion or DiffusionParams()
    if d.api == "xdit" and r.images:
        raise ValueError(f"task {r.task}: xDiT's HTTP service takes no input image")
    return DIFFUSION_PATHS[(d.api, r.api)]


def build_diffusion_body(r: PlannedRequest, model: str) -> dict | aiohttp.FormData:
    """The body of the diffusion request `r`: JSON, or multipart form data where it carries an
    input image (OpenAI's `POST /v1/videos` with an `input_reference` file, image-to-video)."""
    d = r.diffusion or DiffusionParams()
    seed = None if d.seed is None else d.seed + r.index
    if d.api == "xdit":
        body: dict = {"prompt": r.prompt, "height": d.height, "width": d.width}
        if r.api == "image":
            body["save_disk_path"] = None  # the image comes back as base64 in `output`
        else:
            body["save_to_disk"] = False
            if d.num_frames is not None:
                body["num_frames"] = d.num_frames
    elif r.api == "image":
        body = {"model": model, "prompt": r.prompt, "n": d.n, "size": d.size, "response_format": "b64_json"}
    else:
        body = {"model": model, "prompt": r.prompt, "seconds": d.seconds, "size": d.size}
    if d.steps is not None:
        body["num_inference_steps"] = d.steps
    if seed is not None:
        body["seed"] = seed
    if r.api == "video" and r.images:
        form = aiohttp.FormData()
        for k, v in body.items():
            form.add_field(k, str(v))
        m = r.images[0]
        form.add_field("input_reference", m.data, content_type=m.mime,
                       filename="input." + m.mime.rpartition("/")[2])
        return form
    return body


def _b64(value, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is not a base64 string")
    base64.b64decode(value, validate=True)  # binascii.Error is a ValueError


async def _json(resp: aiohttp.ClientResponse) -> dict:
    data = await resp.json(content_type=None)
    if not isinstance(data, dict):
        raise TypeError(f"answer is not a JSON object: {str(data)[:200]}")
    return data


def _video_status(job: dict) -> str:
    status = job.get("status")
    if not isinstance(status, str):
        raise TypeError(f"video job without a status: {str(job)[:200]}")
    return status


async def _send_diffusion(session: aiohttp.ClientSession, base_url: str, model: str, r: PlannedRequest,
                          res: RequestResult, headers: dict) -> None:
    """One diffusion request; fills `res` (error_kind set on failure, res.end on completion)."""
    d = r.diffusion or DiffusionParams()
    path = diffusion_path(r)
    body = build_diffusion_body(r, model)
    kw = {"json": body} if isinstance(body, dict) else {"data": body}
    async with session.post(base_url + path, headers=headers, **kw) as resp:
        if resp.status != 200:
            res.error_kind, res.error = f"http_{resp.status}", (await resp.text())[:500]
            return
        data = await _json(resp)
    if d.api == "xdit":
        if "output" not in data:
            raise KeyError("output")
        if data.get("save_to_disk") is False:
            _b64(data["output"], "output")
        elif not isinstance(data["output"], str) or not data["output"]:
            raise ValueError("output is not a file path")
        res.end, res.items = now(), 1
        return
    if r.api == "image":
        items = data["data"]
        if not isinstance(items, list) or not items:
            raise ValueError(f"no images in data: {str(items)[:200]}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise TypeError(f"data[{i}] is not an object")
            if "url" in item and "b64_json" not in item:
                if not isinstance(item["url"], str) or not item["url"]:
                    raise ValueError(f"data[{i}].url is not a URL")
            else:
                _b64(item.get("b64_json"), f"data[{i}].b64_json")
        res.end, res.items = now(), len(items)
        return
    job_id = data["id"]
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("video job without an id")
    res.response_id = job_id
    status = _video_status(data)
    while status != "completed":
        if status == "failed":
            res.error_kind, res.error = "job_failed", str(data.get("error") or "failed")[:500]
            return
        if status not in VIDEO_PENDING:
            raise ValueError(f"video job {job_id}: unknown status {status!r}")
        await asyncio.sleep(d.poll_interval_s)
        res.polls += 1
        async with session.get(f"{base_url}/v1/videos/{job_id}", headers=headers) as resp:
            if resp.status != 200:
                res.error_kind, res.error = f"http_{resp.status}", (await resp.text())[:500]
                return
            data = await _json(resp)
        if data.get("id") != job_id:
            raise ValueError(f"status of job {data.get('id')!r} for job {job_id!r}")
        status = _video_status(data)
    res.end, res.items = now(), 1
    if d.fetch_content:
        async with session.get(f"{base_url}/v1/videos/{job_id}/content", headers=headers) as resp:
            if resp.status != 200:
                res.error_kind, res.error = f"http_{resp.status}", (await resp.text())[:500]
                return
            if not await resp.read():
                raise ValueError(f"video job {job_id}: empty content")


def _has_output(chunk: dict) -> bool:
    for c in chunk.get("choices") or []:
        if c.get("text"):
            return True
        delta = c.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
            return True
    return False


async def _read_stream(resp: aiohttp.ClientResponse, res: RequestResult) -> None:
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        t = now()
        chunk = json.loads(payload)
        if "error" in chunk:
            raise ValueError(f"error in stream: {chunk['error']}")
        res.response_id = chunk.get("id", res.response_id)
        if _has_output(chunk):
            if res.first_token is None:
                res.first_token = t
            res.token_times.append(t)
        if chunk.get("usage"):
            res.prompt_tokens = chunk["usage"].get("prompt_tokens")
            res.output_tokens = chunk["usage"].get("completion_tokens")


async def send(session: aiohttp.ClientSession, base_url: str, model: str, r: PlannedRequest,
               res: RequestResult, sampling: Sampling, tracer: ClientTracer, stream: bool = True) -> RequestResult:
    """Sends `r`, filling in `res` (so that a cancelled request keeps what it saw) and returning it.
    A failed request raises nothing (see error_kind); cancellation is re-raised."""
    request_id = res.request_id
    diffusion = r.api in ("image", "video")
    try:
        path = diffusion_path(r) if diffusion else PATHS.get(r.api, "")
    except (ValueError, KeyError):
        path = ""
    attrs = {"http.request.method": "POST", "url.full": base_url + path, "jouletrace.loadgen.task": r.task,
             "jouletrace.loadgen.request_id": request_id, "gen_ai.request.model": model}
    if not diffusion:
        attrs["gen_ai.request.max_tokens"] = r.max_tokens
    span, res.trace_id, res.span_id = tracer.start(f"POST {path}", attrs)
    headers = {"X-Request-Id": request_id, "traceparent": traceparent(res.trace_id, res.span_id)}
    res.start = now()
    try:
        if diffusion:
            timeout = session.timeout.total
            job = _send_diffusion(session, base_url, model, r, res, headers)
            await (asyncio.wait_for(job, timeout) if timeout else job)
        else:
            body = build_body(r, model, sampling, stream)
            async with session.post(base_url + path, json=body, headers=headers) as resp:
                if resp.status != 200:
                    res.error_kind = f"http_{resp.status}"
                    res.error = (await resp.text())[:500]
                elif stream:
                    await _read_stream(resp, res)
                else:
                    data = await resp.json(content_type=None)
                    res.response_id = data["id"]
                    res.prompt_tokens = data["usage"]["prompt_tokens"]
                    res.output_tokens = data["usage"]["completion_tokens"]
        if res.end is None or res.error_kind:
            res.end = now()
        if not res.error_kind:
            if stream and not diffusion and res.output_tokens is None:
                res.output_tokens = len(res.token_times)  # server sent no usage: one token per chunk
            res.ok = True
    except asyncio.TimeoutError as e:
        res.error_kind, res.error = "timeout", str(e) or "timed out"
    except aiohttp.ClientConnectionError as e:
        res.error_kind, res.error = "connection", str(e)
    except (aiohttp.ClientError, ValueError, KeyError, TypeError) as e:
        res.error_kind, res.error = "protocol", f"{type(e).__name__}: {e}"
    except asyncio.CancelledError:
        res.error_kind, res.error = "cancelled", "stopped before it finished"
        raise
    finally:
        span.set_attribute("gen_ai.request.id", res.server_request_id)
        if res.output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", res.output_tokens)
        if res.prompt_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", res.prompt_tokens)
        if res.ttft is not None:
            span.set_attribute("jouletrace.loadgen.ttft_s", res.ttft)
        if res.items is not None:
            span.set_attribute("jouletrace.loadgen.items", res.items)
        if res.error_kind:
            span.set_attribute("error.type", res.error_kind)
            from opentelemetry.trace import Status, StatusCode
            span.set_status(Status(StatusCode.ERROR, res.error[:200]))
        span.end()
    return res
