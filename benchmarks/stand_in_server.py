"""A fast OpenAI-compatible streaming server for client benchmarks (not a model server).

`POST /v1/chat/completions` and `POST /v1/completions` stream `max_tokens` one-token chunks (no
delay between them) and a final usage chunk. `GET /v1/models`, `GET /health` and `GET /metrics`
(a vLLM-style `vllm:num_requests_running` gauge) answer at once.

Each completion request's arrival is recorded server-side, `time.time()` at handler entry, with
its `X-Request-Id`. `GET /_arrivals` returns them (`[[t, request_id, path], ...]`) and
`POST /_reset` clears them, so a driver can measure any client's arrival times the same way.

    python benchmarks/stand_in_server.py --port 8123 [--cpu 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from aiohttp import web

MODEL = "stand-in"


def make_app() -> web.Application:
    arrivals: list[list] = []
    running = 0

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=f'vllm:num_requests_running{{model_name="{MODEL}"}} {running}\n')

    async def complete(request: web.Request) -> web.StreamResponse:
        nonlocal running
        arrivals.append([time.time(), request.headers.get("X-Request-Id", ""), request.path])
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = max(1, int(body.get("max_tokens") or body.get("max_completion_tokens") or 8))
        rid = ("chatcmpl-" if chat else "cmpl-") + request.headers.get("X-Request-Id", "x")
        obj = "chat.completion.chunk" if chat else "text_completion"
        running += 1
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for _ in range(n):
                choice = {"index": 0, "delta": {"content": "tok "}} if chat else {"index": 0, "text": "tok "}
                chunk = {"id": rid, "object": obj, "model": MODEL, "choices": [choice]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            usage = {"id": rid, "object": obj, "model": MODEL, "choices": [],
                     "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}}
            await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            await resp.write_eof()
            return resp
        finally:
            running -= 1

    async def get_arrivals(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def reset(request: web.Request) -> web.Response:
        arrivals.clear()
        return web.Response(text="ok")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/v1/completions", complete)
    app.router.add_get("/_arrivals", get_arrivals)
    app.router.add_post("/_reset", reset)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--cpu", type=int, help="pin this process to one core")
    a = ap.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    web.run_app(make_app(), host=a.host, port=a.port, backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
