"""The simulated engine as a server that a client, Prometheus and jouletrace cannot tell from vLLM.

OpenAI-compatible `POST /v1/chat/completions` and `POST /v1/completions` (streaming, one chunk per
token, or not), `GET /v1/models`, `GET /health`, and vLLM's `/metrics` names. Each finished
request leaves one `llm_request` span with vLLM's attributes over OTLP (`--otlp-traces-endpoint`,
protocol from OTEL_EXPORTER_OTLP_TRACES_PROTOCOL as vLLM reads it), a child of the request's W3C
`traceparent`. Request ids follow vLLM: `X-Request-Id` (else a random one) becomes `chatcmpl-<id>`
or `cmpl-<id>` (`cmpl-<id>-0` in the span).

The engine steps in real time: a step planned at t ends at t + its modelled duration, when its
tokens are sent. The GPUs' power and energy go to a device file (exporter/gpu/devicefile.py) that the
exporter reads as it reads NVML, and a power limit requested there applies from the next step."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
import uuid

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .engine import Engine, SimRequest
from .gpus import SimulatedGPUs
from .lengths import OutputLengths, chat_prompt_tokens, completion_prompt_tokens
from .metrics import EngineMetrics
from .tracing import span_exporter_provider

log = logging.getLogger(__name__)

IDLE_REFRESH_S = 0.1           # device-file refresh while the engine has no work
WORDS = ("the", " joule", " is", " a", " unit", " of", " energy", ",", " and", " power", " per", " token",
         " falls", " as", " batches", " grow", ".")


@dataclasses.dataclass(eq=False)
class Pending:
    """A request in the server: the engine's view, its client's queue and what the span needs."""

    sim: SimRequest
    kind: str                        # "chat" or "completion"
    response_id: str
    span_request_id: str
    max_tokens: int
    temperature: float
    top_p: float
    parent: object                   # OpenTelemetry context from traceparent
    tokens: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)


class BadRequest(ValueError):
    """A request the server answers 400 to, with vLLM's error body."""


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; media count as their text only
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if content is None:
        return ""
    raise BadRequest("message content must be a string or a list of content parts")


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the engine loop stopped", exc_info=task.exception())
        os._exit(1)  # a server that cannot step must not look healthy


class SimServer:
    """The aiohttp application around one Engine."""

    def __init__(self, engine: Engine, gpus: SimulatedGPUs, served_model: str, lengths: OutputLengths,
                 max_model_len: int, otlp_endpoint: str | None = None):
        self.engine, self.gpus, self.model, self.lengths = engine, gpus, served_model, lengths
        self.max_model_len = max_model_len
        self.metrics = EngineMetrics(served_model, engine)
        self.provider = span_exporter_provider(otlp_endpoint, served_model) if otlp_endpoint else None
        self.tracer = self.provider.get_tracer("vllm.tracing.otel") if self.provider else None
        self.pending: dict[int, Pending] = {}
        self.wake = asyncio.Event()
        self.app = web.Application(client_max_size=64 << 20)
        self.app.add_routes([web.get("/health", self.health), web.get("/v1/models", self.models),
                             web.get("/metrics", self.metrics_page),
                             web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.completion)])
        self.app.cleanup_ctx.append(self._lifecycle)

    async def _lifecycle(self, app):
        task = asyncio.create_task(self.run())
        task.add_done_callback(_log_crash)
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if self.provider:
            self.provider.shutdown()
        self.gpus.close()

    # -- the engine loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """Steps the engine in real time until cancelled."""
        t = time.time()
        while True:
            self.engine.power_limit_w = self.gpus.requested_power_limit()
            step = self.engine.step(t) if self.engine.has_work() else None
            if step is None:
                self.gpus.idle(time.time())
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), IDLE_REFRESH_S)
                except asyncio.TimeoutError:
                    pass
                t = time.time()
                continue
            self.gpus.step(step)
            delay = step.end - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._deliver(step)
            now = time.time()
            if now > step.end:  # the host fell behind: the GPUs waited
                self.gpus.wait(step.end)
            t = max(step.end, now)

    def _deliver(self, step) -> None:
        for r, _ in step.emitted:
            p = self.pending.get(id(r))
            if p is not None:
                p.tokens.put_nowait(r.generated)
        for r in step.finished:
            p = self.pending.pop(id(r), None)
            if p is not None:
                self.metrics.finished(r, "length" if r.generated >= p.max_tokens else "stop")
                self._span(p)
                p.tokens.put_nowait(None)
        self.metrics.step(step)

    def _span(self, p: Pending) -> None:
        if self.tracer is None:
            return
        r = p.sim
        ns = 1_000_000_000
        span = self.tracer.start_span("llm_request", context=p.parent, kind=trace.SpanKind.SERVER,
                                      start_time=int(r.arrival * ns))
        span.set_attributes({
            "gen_ai.latency.time_to_first_token": r.first_token_at - r.arrival,
            "gen_ai.latency.e2e": r.finished_at - r.arrival,
            "gen_ai.latency.time_in_queue": r.scheduled_at - r.arrival,
            "gen_ai.usage.prompt_tokens": r.prompt_tokens,
            "gen_ai.usage.completion_tokens": r.generated,
            "gen_ai.latency.time_in_model_prefill": r.first_token_at - r.scheduled_at,
            "gen_ai.latency.time_in_model_decode": r.finished_at - r.first_token_at,
            "gen_ai.latency.time_in_model_inference": r.finished_at - r.scheduled_at,
            "gen_ai.request.id": p.span_request_id,
            "gen_ai.request.top_p": p.top_p,
            "gen_ai.request.max_tokens": p.max_tokens,
            "gen_ai.request.temperature": p.temperature,
            "gen_ai.request.n": 1,
        })
        span.end(end_time=int(r.finished_at * ns))

    # -- HTTP ------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "jouletrace-simulator",
             "root": self.engine.perf.model.name, "max_model_len": self.max_model_len}]})

    async def metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    def _parse(self, body, kind: str, headers) -> tuple[Pending, bool, bool]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        if body.get("model", self.model) != self.model:
            raise LookupError(f"The model `{body.get('model')}` does not exist.")
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise BadRequest("`messages` must be a non-empty list of messages")
            prompt = chat_prompt_tokens([_text(m.get("content")) for m in messages])
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise BadRequest("`prompt` must be a string")
            prompt = completion_prompt_tokens(text)
        n = body.get("n", 1)
        if n != 1:
            raise BadRequest("only n=1 is simulated")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = self.max_model_len - prompt
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("`max_tokens` must be a positive integer")
        if prompt + max_tokens > self.max_model_len:
            raise BadRequest(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                             f"requested {prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in "
                             f"the completion).")
        try:
            temperature, top_p = float(body.get("temperature", 1.0)), float(body.get("top_p", 1.0))
        except (TypeError, ValueError):
            raise BadRequest("`temperature` and `top_p` must be numbers") from None
        stream = bool(body.get("stream", False))
        usage = stream and bool((body.get("stream_options") or {}).get("include_usage", False))
        rid = headers.get("X-Request-Id") or uuid.uuid4().hex
        response_id = f"chatcmpl-{rid}" if kind == "chat" else f"cmpl-{rid}"
        span_id = response_id if kind == "chat" else f"{response_id}-0"
        output = max_tokens if body.get("ignore_eos") else min(max_tokens, self.lengths.draw(response_id))
        sim = SimRequest(response_id, prompt, output, time.time())
        parent = TraceContextTextMapPropagator().extract(carrier=dict(headers))
        return Pending(sim, kind, response_id, span_id, max_tokens, temperature, top_p, parent), stream, usage

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        try:
            p, stream, usage = self._parse(body, kind, request.headers)
            self.engine.add(p.sim)
        except LookupError as e:
            return _error(404, str(e), "NotFoundError")
        except ValueError as e:
            return _error(400, str(e))
        self.pending[id(p.sim)] = p
        self.metrics.arrived()
        self.wake.set()
        try:
            if stream:
                return await self._stream(request, p, usage)
            return await self._whole(p)
        finally:
            if self.pending.pop(id(p.sim), None) is not None:  # the client left first
                self.engine.abort(p.sim)

    def _chunk(self, p: Pending, text: str | None, finish: str | None, first: bool = False) -> dict:
        created = int(p.sim.arrival)
        if p.kind == "chat":
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"id": p.response_id, "object": "chat.completion.chunk", "created": created,
                    "model": self.model, "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": p.response_id, "object": "text_completion", "created": created, "model": self.model,
                "choices": [choice]}

    def _usage(self, p: Pending) -> dict:
        r = p.sim
        return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.generated,
                "total_tokens": r.prompt_tokens + r.generated}

    async def _stream(self, request: web.Request, p: Pending, usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj) -> None:
            await resp.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

        if p.kind == "chat":
            await send(self._chunk(p, None, None, first=True))
        while (k := await p.tokens.get()) is not None:
            await send(self._chunk(p, WORDS[k % len(WORDS)], None))
        finish = "length" if p.sim.generated >= p.max_tokens else "stop"
        await send(self._chunk(p, None, finish))
        if usage:
            final = self._chunk(p, None, None)
            final["choices"] = []
            final["usage"] = self._usage(p)
            await send(final)
        await send(b"[DONE]")
        await resp.write_eof()
        return resp

    async def _whole(self, p: Pending) -> web.Response:
        words = []
        while (k := await p.tokens.get()) is not None:
            words.append(WORDS[k % len(WORDS)])
        finish = "length" if p.sim.generated >= p.max_tokens else "stop"
        text = "".join(words)
        if p.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return web.json_response({"id": p.response_id, "object": obj, "created": int(p.sim.arrival),
                                  "model": self.model, "choices": [choice], "usage": self._usage(p)})


def serve(server: SimServer, host: str, port: int) -> None:
    """Runs until SIGINT or SIGTERM."""
    log.info("simulated engine serving %s on http://%s:%d (pid %d)", server.model, host, port, os.getpid())
    web.run_app(server.app, host=host, port=port, print=None, access_log=None)
