"""Sends one planned request to an OpenAI-compatible server and times it.

Streaming: TTFT (s) is the first chunk carrying output (text or reasoning), every later such
chunk's gap is one ITL (s); token counts come from the final usage chunk. Non-streaming: only the
end-to-end latency. Every request carries `X-Request-Id` and a W3C `traceparent` from its client span."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json

import aiohttp

from .clock import now
from .plan import Sampling
from .requests import Media, PlannedRequest
from .tracing import ClientTracer, traceparent

PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


@dataclasses.dataclass
class RequestResult:
    index: int
    request_id: str               # X-Request-Id sent
    task: str
    api: str
    trace_id: str = ""
    span_id: str = ""             # the client span, parent of the server's span
    ok: bool = False
    error_kind: str = ""          # timeout, connection, http_<status>, protocol, cancelled
    error: str = ""
    start: float = 0.0            # unix s, request sent
    first_token: float | None = None   # unix s
    end: float | None = None      # unix s, response complete
    token_times: list[float] = dataclasses.field(default_factory=list)  # unix s of each output chunk
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    response_id: str = ""

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
        return f"chatcmpl-{self.request_id}" if self.api == "chat" else f"cmpl-{self.request_id}-0"


def _data_url(m: Media) -> str:
    return f"data:{m.mime};base64,{base64.b64encode(m.data).decode()}"


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
        if r.frames:  # vLLM takes a clip as comma-separated base64 frames under video/jpeg
            frames = ",".join(base64.b64encode(m.data).decode() for m in r.frames)
            content.append({"type": "video_url", "video_url": {"url": f"data:video/jpeg;base64,{frames}"}})
    body["messages"] = [*r.history, {"role": "user", "content": content}]
    return body


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
    path = PATHS.get(r.api, "")
    span, res.trace_id, res.span_id = tracer.start(
        f"POST {path}", {"http.request.method": "POST", "url.full": base_url + path,
                         "jouletrace.loadgen.task": r.task, "jouletrace.loadgen.request_id": request_id,
                         "gen_ai.request.max_tokens": r.max_tokens})
    headers = {"X-Request-Id": request_id, "traceparent": traceparent(res.trace_id, res.span_id)}
    res.start = now()
    try:
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
        res.end = now()
        if not res.error_kind:
            if stream and res.output_tokens is None:
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
        if span is not None:
            span.set_attribute("gen_ai.request.id", res.server_request_id)
            if res.output_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", res.output_tokens)
            if res.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", res.prompt_tokens)
            if res.ttft is not None:
                span.set_attribute("jouletrace.loadgen.ttft_s", res.ttft)
            if res.error_kind:
                span.set_attribute("error.type", res.error_kind)
                from opentelemetry.trace import Status, StatusCode
                span.set_status(Status(StatusCode.ERROR, res.error[:200]))
            span.end()
    return res
