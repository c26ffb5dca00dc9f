"""A real vLLM (CPU build, from .venv-vllm) serving a tiny random Llama, an in-test OTLP/gRPC
receiver, and an aiohttp client that drives chat and completion requests with known ids and
trace contexts. Used by test_vllm_e2e.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import aiohttp
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from servers import free_port, http_get, sum_samples

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-vllm"
VENV_PYTHON = VENV / "bin" / "python"
SETUP = ROOT / "scripts" / "setup-vllm.sh"
BUILD_MODEL = Path(__file__).with_name("build_model.py")
CACHE = ROOT / ".cache"

SETUP_TIMEOUT_S = 1800      # first install: ~1.5 min here, more on a slow mirror
START_TIMEOUT_S = 600       # server start: ~25 s here with --enforce-eager, 2 cores


def tail(text: str, n: int = 120) -> str:
    return "\n".join(text.splitlines()[-n:])


def setup_vllm() -> None:
    """Runs scripts/setup-vllm.sh (returns at once when already done); raises with its output."""
    try:
        done = subprocess.run([str(SETUP)], cwd=ROOT, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{SETUP} ran past {SETUP_TIMEOUT_S} s:\n{tail(str(e.stdout or '') + str(e.stderr or ''))}")
    if done.returncode != 0:
        raise RuntimeError(f"{SETUP} failed (exit {done.returncode}):\n{tail(done.stdout + done.stderr)}")
    if not VENV_PYTHON.exists():
        raise RuntimeError(f"{SETUP} succeeded but {VENV_PYTHON} is missing")


def build_model() -> Path:
    """Builds the tiny model under .cache/, keyed by the builder's source; reuses a finished build."""
    key = hashlib.sha256(BUILD_MODEL.read_bytes()).hexdigest()[:16]
    out = CACHE / f"vllm-tiny-llama-{key}"
    if (out / "model.safetensors").exists():
        return out
    CACHE.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vllm-tiny-llama-", dir=CACHE))
    done = subprocess.run([str(VENV_PYTHON), str(BUILD_MODEL), str(tmp)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"build_model.py failed (exit {done.returncode}):\n{tail(done.stdout + done.stderr)}")
    try:
        tmp.rename(out)
    except OSError:  # another run finished it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def vllm_env(served_name: str, protocol: str = "grpc") -> dict:
    """The environment of a CPU vLLM server here: offline, small KV cache, spans sent every 0.5 s."""
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CACHE_ROOT": str(CACHE / "vllm"),
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OTEL_SERVICE_NAME": served_name,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
        # as the k8s manifests set it from the downward API: node mode places spans by their pod
        "OTEL_RESOURCE_ATTRIBUTES": f"k8s.namespace.name=inference,k8s.pod.name={served_name}-0",
        # Spans leave in batches; the SDK's default is every 5 s. Half a second keeps them well
        # inside the exporter's settle delay, so no request's energy is split before its span.
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(var, None)
    return env


def vllm_command(model_dir: Path, served_name: str, port, max_num_seqs, otlp_endpoint: str) -> list[str]:
    """argv of the OpenAI-compatible vLLM server; `port` and `max_num_seqs` may be template fields."""
    return [str(VENV_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "2048", "--max-num-seqs", str(max_num_seqs),
            "--enforce-eager",  # no torch.compile: starts in ~25 s instead of ~60 s on 2 cores
            "--otlp-traces-endpoint", otlp_endpoint]


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` from .venv-vllm, on `port` (a free one by default).

    Its own process group, so that stopping it also ends the engine and worker processes."""

    def __init__(self, model_dir: Path, served_name: str, otlp_endpoint: str, protocol: str, log_path: Path,
                 port: int | None = None, max_num_seqs: int = 32):
        self.name = served_name
        self.port = port or free_port()
        self.log_path = Path(log_path)
        env = vllm_env(served_name, protocol)
        cmd = vllm_command(model_dir, served_name, self.port, max_num_seqs, otlp_endpoint)
        self.log = open(self.log_path, "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True)
        deadline = t0 + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                code = self.stop()  # its engine process may live on
                raise RuntimeError(f"vLLM exited {code} while starting; log {self.log_path}:\n"
                                   f"{tail(self.output())}")
            if http_get(self.url("/health"), timeout=2)[0] == 200:
                break
            if time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise RuntimeError(f"vLLM not healthy after {START_TIMEOUT_S} s; log {self.log_path}:\n{tail(out)}")
            time.sleep(0.5)
        self.startup_s = time.monotonic() - t0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """Sum of a counter over all its label sets, from vLLM's own /metrics."""
        status, body = http_get(self.url("/metrics"))
        if status != 200:
            raise RuntimeError(f"vLLM /metrics answered {status}")
        return sum_samples(body, name)

    def stop(self) -> int:
        """SIGTERM to the whole group, time to shut down (and free its shared memory), then SIGKILL."""
        def group_alive() -> bool:
            try:
                os.killpg(self.proc.pid, 0)
                return True
            except ProcessLookupError:
                return False
        if group_alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.proc.poll()  # reaps the server, so that only live processes count
            if not group_alive():
                break
            time.sleep(0.2)
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


class OtlpReceiver:
    """A real OTLP/gRPC trace server (opentelemetry-proto's service definition) that keeps every
    ExportTraceServiceRequest it receives. Given `forward_to` (host:port of another OTLP/gRPC
    server), it is a relay: each request is passed on, and kept once that server took it; the
    sender gets that server's answer or status code."""

    class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def __init__(self, outer: "OtlpReceiver"):
            self.outer = outer

        def Export(self, request, context):
            answer = trace_service_pb2.ExportTraceServiceResponse()
            if self.outer.upstream is not None:
                try:
                    answer = self.outer.upstream.Export(request, timeout=30)
                except grpc.RpcError as e:  # not kept: the sender retries it
                    context.abort(e.code(), e.details() or "")
            with self.outer.lock:
                self.outer.requests.append(request)
            return answer

    def __init__(self, forward_to: str | None = None):
        self.lock = threading.Lock()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.upstream = None
        if forward_to is not None:
            self._channel = grpc.insecure_channel(forward_to)
            self.upstream = trace_service_pb2_grpc.TraceServiceStub(self._channel)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._Servicer(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self, name: str | None = None) -> list[tuple[dict, object]]:
        """(resource attributes, span) for every span received, optionally only those called `name`."""
        with self.lock:
            requests = list(self.requests)
        out = []
        for req in requests:
            for rs in req.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend((resource, span) for span in ss.spans if name is None or span.name == name)
        return out

    def stop(self) -> None:
        self.server.stop(grace=1).wait()
        if self.upstream is not None:
            self._channel.close()


def attributes(kvs) -> dict:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


# ---- the client --------------------------------------------------------------------------------

@dataclasses.dataclass
class Sent:
    """One request as the client sent and saw it."""
    request_id: str          # X-Request-Id
    endpoint: str            # "chat" or "completion"
    stream: bool
    max_tokens: int
    trace_id: str            # of the traceparent sent, 32 hex digits
    parent_span_id: str      # of the traceparent sent, 16 hex digits
    sent_at: float = 0.0     # wall clock (time.time) when the request left
    done_at: float = 0.0     # wall clock when the last byte arrived
    latency_s: float = 0.0   # monotonic
    response_id: str = ""
    prompt_tokens: int = -1
    completion_tokens: int = -1
    content_chunks: int = 0  # streamed chunks that carried a choice

    @property
    def expected_response_id(self) -> str:
        """The `id` vLLM answers: its prefix and the client's X-Request-Id."""
        return ("chatcmpl-" if self.endpoint == "chat" else "cmpl-") + self.request_id

    @property
    def expected_span_request_id(self) -> str:
        """The span's `gen_ai.request.id`. /v1/completions takes a list of prompts and runs one
        engine request per prompt, so its spans carry the prompt's index too (here always 0)."""
        return self.expected_response_id + ("-0" if self.endpoint == "completion" else "")


WORDS = "the joule energy token request prompt decode prefill batch power watt gpu model span trace".split()


def plan(tag: str, per_kind: int, seed: int) -> list[Sent]:
    """per_kind requests of each of chat/completion x streaming/not, max_tokens 8..32."""
    rng = random.Random(seed)
    out = []
    for endpoint in ("chat", "completion"):
        for stream in (False, True):
            for i in range(per_kind):
                out.append(Sent(
                    request_id=f"{tag}-{endpoint}-{'s' if stream else 'n'}{i}-{rng.getrandbits(32):08x}",
                    endpoint=endpoint, stream=stream, max_tokens=(8, 16, 24, 32)[i % 4],
                    trace_id=f"{rng.getrandbits(128) | 1:032x}", parent_span_id=f"{rng.getrandbits(64) | 1:016x}"))
    rng.shuffle(out)
    return out


async def _one(session: aiohttp.ClientSession, base: str, model: str, r: Sent, rng: random.Random) -> None:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))
    body: dict = {"model": model, "max_tokens": r.max_tokens, "ignore_eos": True, "temperature": 0.8,
                  "top_p": 0.95, "stream": r.stream}
    if r.stream:
        body["stream_options"] = {"include_usage": True}
    if r.endpoint == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": text}]
    else:
        path, body["prompt"] = "/v1/completions", text
    headers = {"X-Request-Id": r.request_id, "traceparent": f"00-{r.trace_id}-{r.parent_span_id}-01"}
    r.sent_at, t0 = time.time(), time.monotonic()
    async with session.post(base + path, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{r.request_id}: {path} answered {resp.status}: {await resp.text()}")
        if not r.stream:
            data = await resp.json()
            r.response_id = data["id"]
            r.prompt_tokens, r.completion_tokens = data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"]
        else:
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                r.response_id = chunk["id"]
                if chunk.get("choices"):
                    r.content_chunks += 1
                if chunk.get("usage"):
                    r.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    r.completion_tokens = chunk["usage"]["completion_tokens"]
    r.latency_s, r.done_at = time.monotonic() - t0, time.time()


async def _drive(base: str, model: str, warmup: Sent, requests: list[Sent], seed: int) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _one(session, base, model, warmup, random.Random(rng.random()))
        await asyncio.gather(*(_one(session, base, model, r, random.Random(rng.random())) for r in requests))


def drive(server: VllmServer, tag: str, per_kind: int = 4, seed: int = 0) -> list[Sent]:
    """Sends one request alone (the server's first requests are slow), then 4 x per_kind requests
    at once; returns what the client saw of all of them, the first one first."""
    rng = random.Random(seed + 1000)
    warmup = Sent(request_id=f"{tag}-warmup-{rng.getrandbits(32):08x}", endpoint="chat", stream=False,
                  max_tokens=8, trace_id=f"{rng.getrandbits(128) | 1:032x}",
                  parent_span_id=f"{rng.getrandbits(64) | 1:016x}")
    requests = plan(tag, per_kind, seed)
    asyncio.run(_drive(server.url(""), server.name, warmup, requests, seed))
    return [warmup, *requests]
