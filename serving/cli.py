"""`jouletrace serve diffusion`: a diffusers pipeline behind the OpenAI images or video-jobs API,
one span per request sent over OTLP to a jouletrace exporter (serving/diffusion.py)."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from .pipeline import DTYPES, KINDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="server", required=True)
    d = sub.add_parser("diffusion", help="a diffusers pipeline behind the OpenAI images or video-jobs API",
                       description="Serves one diffusers pipeline: text-to-image on /v1/images/generations, or "
                                   "text-to-video or image-to-video as OpenAI video jobs (/v1/videos), with one "
                                   "OpenTelemetry span per request for jouletrace (docs/serving.md).")
    d.add_argument("--pipeline", required=True,
                   help="a diffusers pipeline directory, or FILE.py:FUNCTION / MODULE:FUNCTION returning one "
                        "(called with device= and dtype=)")
    d.add_argument("--kind", choices=KINDS, required=True,
                   help="what the pipeline generates: image, video from text, or video from an image and text")
    d.add_argument("--model", help="the served model name (default: the pipeline's directory or function name)")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on")
    d.add_argument("--port", type=int, default=8000, help="port to listen on")
    d.add_argument("--device", default="cuda", help="torch device")
    d.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="the weights' and activations' dtype")
    d.add_argument("--max-batch", type=int, default=1, help="requests of one shape run in one pipeline call")
    d.add_argument("--batch-wait", type=float, default=0.0,
                   help="s a batch waits to fill to --max-batch once its first request is queued")
    d.add_argument("--steps", type=int, help="num_inference_steps when a request names none (default: the pipeline's)")
    d.add_argument("--fps", type=float, default=8.0,
                   help="video frames per second: a clip of S s has S x fps + 1 frames")
    d.add_argument("--otlp-endpoint", help="send the spans here: grpc://host:4317 or http://host:4318/v1/traces "
                                           "(a jouletrace exporter's OTLP listener)")
    d.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log verbosity")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from jouletrace.loadgen.tracing import tracer_provider

    from . import pipeline
    from .diffusion import DiffusionServer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = args.model or (args.pipeline.rpartition(":")[2] if ":" in args.pipeline
                           else pathlib.Path(args.pipeline).name)
    try:
        pipe = pipeline.load(args.pipeline, args.device, args.dtype)
        from_image = pipeline.takes_image(pipe)
        if from_image != (args.kind == "image-to-video"):
            raise ValueError(f"--kind {args.kind}: {type(pipe).__name__} "
                             + ("generates from an image: use --kind image-to-video" if from_image
                                else "takes no input image"))
        provider = tracer_provider(model, args.otlp_endpoint)
        server = DiffusionServer(pipe, model, args.kind, provider, max_batch=args.max_batch,
                                 batch_wait_s=args.batch_wait, steps=args.steps, fps=args.fps)
    except ValueError as exc:
        print(f"jouletrace serve diffusion: {exc}", file=sys.stderr)
        return 2
    try:
        web.run_app(server.app(), host=args.host, port=args.port, print=None, access_log=None)
    finally:
        provider.shutdown()
    return 0
