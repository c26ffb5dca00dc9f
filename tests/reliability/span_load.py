"""Spans for the load and hostile-input tests and benchmarks/flood.py: OpenTelemetry SDK spans, and
floods that post vLLM-like OTLP messages (fresh ids and current times on every send) over
OTLP/HTTP and OTLP/gRPC for a while and tally the exporter's answers."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import os
import struct
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from jouletrace.exporter.intake.otlp_grpc import GRPC_METHOD
from servers import http_get, sum_samples

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32.0-cpu-llm_request.otlp.pb"
# (protocol, code) of the answers a sender retries; "refused_stream" is HTTP/2's REFUSED_STREAM (a
# call beyond the connection's stream limit, never processed), which gRPC reports as UNAVAILABLE
RETRYABLE = {("http", "429"), ("http", "503"), ("grpc", "UNAVAILABLE"), ("grpc", "RESOURCE_EXHAUSTED"),
             ("grpc", "refused_stream")}



def sdk_span(i: int, end_ns: int, resource: dict | None = None, **attributes) -> ReadableSpan:
    """A finished 0.5 s GenAI request span of the OpenTelemetry SDK, ids made from `i`."""
    attrs = {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5, **attributes}
    ctx = SpanContext(trace_id=(1 << 64) + i, span_id=(1 << 32) + i, is_remote=False)
    return ReadableSpan(name="chat", context=ctx, resource=Resource(resource or {}), attributes=attrs,
                        start_time=end_ns - 500_000_000, end_time=end_ns)


def vllm_message(service: str) -> tuple:
    """An empty OTLP message of vLLM's scope for `service`, its scope spans to add to, and the
    fixture's llm_request span to copy: (message, scope spans, span)."""
    src = trace_service_pb2.ExportTraceServiceRequest.FromString(FIXTURE.read_bytes())
    span = next(s for rs in src.resource_spans for ss in rs.scope_spans for s in ss.spans if s.name == "llm_request")
    msg = trace_service_pb2.ExportTraceServiceRequest()
    rs = msg.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    ss.scope.name = "vllm.tracing.otel"
    return msg, ss, span


class Stamper:
    """One message of `spans` llm_request spans of model `service`, copied with fresh trace ids and
    times ending at the moment of each `stamp()`."""

    def __init__(self, spans: int, service: str = "flood-model", spacing_s: float = 1e-4):
        msg, ss, span = vllm_message(service)
        self.end_ns = 1 << 62  # the template's last end; times are distinct, so each is found once
        duration = span.end_time_unix_nano - span.start_time_unix_nano
        tids, times = [], []
        for i in range(spans):
            s = ss.spans.add()
            s.CopyFrom(span)
            s.trace_id, s.span_id = os.urandom(16), os.urandom(8)
            s.end_time_unix_nano = self.end_ns - int((spans - 1 - i) * spacing_s * 1e9)
            s.start_time_unix_nano = s.end_time_unix_nano - duration
            tids.append(s.trace_id)
            times += [b"\x39" + struct.pack("<Q", s.start_time_unix_nano), b"\x41" + struct.pack("<Q", s.end_time_unix_nano)]
        self.template = np.frombuffer(msg.SerializeToString(), np.uint8)
        body = self.template.tobytes()
        self.spans = spans
        tid_at, time_at, pos = [], [], 0
        for i, tid in enumerate(tids):  # in the order serialized: each span's trace id, start, end
            tid_at.append(pos := body.index(tid, pos))
            for t in times[2 * i:2 * i + 2]:
                time_at.append((pos := body.index(t, pos)) + 1)
        self._tid_at = np.array(tid_at)[:, None] + np.arange(8)
        self._time_at = np.array(time_at)[:, None] + np.arange(8)
        self._offsets = self.template[self._time_at].copy().view("<i8").ravel() - self.end_ns  # ns, <= 0
        self._serial = itertools.count(1)

    def stamp(self) -> bytes:
        out = self.template.copy()
        first = next(self._serial) * self.spans
        out[self._tid_at] = np.arange(first, first + self.spans, dtype=">u8").view(np.uint8).reshape(-1, 8)
        out[self._time_at] = (self._offsets + time.time_ns()).astype("<i8").view(np.uint8).reshape(-1, 8)
        return out.tobytes()


@dataclasses.dataclass
class Tally:
    """What a flood sent and how the exporter answered."""

    spans: int  # per message
    answers: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (protocol, code)
    without_retry_hint: int = 0  # the exporter's retryable answers lacking Retry-After / RetryInfo
    seconds: float = 0.0  # how long messages were sent

    @classmethod
    def combined(cls, tallies: list["Tally"]) -> "Tally":
        """One tally of several floods that ran side by side."""
        answers = collections.Counter()
        for t in tallies:
            answers.update(t.answers)
        return cls(tallies[0].spans, answers, sum(t.without_retry_hint for t in tallies), max(t.seconds for t in tallies))

    def add(self, protocol: str, code: str, hinted: bool = True) -> None:
        self.answers[protocol, code] += 1
        if (protocol, code) in RETRYABLE and code != "refused_stream" and not hinted:
            self.without_retry_hint += 1

    @property
    def messages(self) -> int:
        return sum(self.answers.values())

    @property
    def accepted_spans(self) -> int:
        return self.spans * (self.answers["http", "200"] + self.answers["grpc", "OK"])

    @property
    def retry_spans(self) -> int:
        return self.spans * sum(n for key, n in self.answers.items() if key in RETRYABLE)

    @property
    def unanswered_spans(self) -> int:
        return self.spans * sum(n for (_, code), n in self.answers.items() if code == "timeout")

    def sent_spans(self, protocol: str) -> int:
        return self.spans * sum(n for (p, _), n in self.answers.items() if p == protocol)

    @property
    def other(self) -> dict:
        return {f"{p} {c}": n for (p, c), n in self.answers.items() if c not in ("200", "OK") and (p, c) not in RETRYABLE}


def _retry_info(err: grpc.aio.AioRpcError) -> bool:
    raw = dict(err.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
    return raw is not None and error_details_pb2.RetryInfo.FromString(raw).retry_delay.seconds > 0


def _grpc_outcome(err: grpc.aio.AioRpcError) -> str:
    """The code of a failed call, or "timeout" (the sender's deadline passed, and the call was
    given up on its side) or "refused_stream"."""
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.CANCELLED or (code == grpc.StatusCode.DEADLINE_EXCEEDED
                                              and "not received within" not in details):  # the exporter's too_slow
        return "timeout"
    if code == grpc.StatusCode.UNAVAILABLE and "RST_STREAM" in details and "error code 7" in details:
        return "refused_stream"
    return code.name


async def flood(http_url: str | None, grpc_target: str | None, stamper: Stamper, seconds: float,
                in_flight: int = 16, rate: float | None = None, timeout_s: float = 30.0) -> Tally:
    """Flood each given protocol for `seconds`: closed loop, `in_flight` messages at a time, or,
    given `rate` (messages/s per protocol), open loop: a message sent every 1/rate s whatever the
    answers, over at most `in_flight` HTTP connections. A message not answered within `timeout_s`
    is tallied as (protocol, "timeout")."""
    tally = Tally(stamper.spans)
    deadline = time.monotonic() + seconds

    async def post(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(http_url, data=stamper.stamp(), timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                await r.read()
                tally.add("http", str(r.status), "Retry-After" in r.headers)
        except asyncio.TimeoutError:
            tally.add("http", "timeout")

    async def export(call) -> None:
        try:
            await call(stamper.stamp(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            tally.add("grpc", _grpc_outcome(err), _retry_info(err))
        else:
            tally.add("grpc", "OK")

    async def closed_loop(send, arg) -> None:
        while time.monotonic() < deadline:
            await send(arg)

    async def open_loop(send, arg) -> None:
        sent, start, tasks = 0, time.monotonic(), set()
        while (now := time.monotonic()) < deadline:
            due = int((now - start) * rate) + 1
            for _ in range(due - sent):
                task = asyncio.create_task(send(arg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent = due
            await asyncio.sleep(min(1 / rate, deadline - now))
        await asyncio.gather(*tasks)

    loop = closed_loop if rate is None else open_loop
    workers = []
    async with aiohttp.ClientSession(headers={"Content-Type": "application/x-protobuf"},
                                     connector=aiohttp.TCPConnector(limit=in_flight)) as session, \
            grpc.aio.insecure_channel(grpc_target or "unused:0") as channel:
        if http_url:
            workers += [loop(post, session) for _ in range(in_flight if rate is None else 1)]
        if grpc_target:
            call = channel.unary_unary(GRPC_METHOD)
            workers += [loop(export, call) for _ in range(in_flight if rate is None else 1)]
        await asyncio.gather(*workers)
    tally.seconds = seconds
    return tally


def exporter_counts(exporter) -> tuple[float, float]:
    """(request spans the exporter accepted, requests it counted as finished) so far."""
    text = http_get(exporter.url("/metrics"), timeout=30)[1]
    accepted = (sum_samples(text, "jouletrace_spans_received_total") - sum_samples(text, "jouletrace_spans_ignored_total")
                - sum_samples(text, "jouletrace_spans_rejected_total", reason="invalid_span")
                - sum_samples(text, "jouletrace_spans_rejected_total", reason="queue_full")
                - sum_samples(text, "jouletrace_spans_duplicate_total"))
    return accepted, sum_samples(text, "jouletrace_model_requests_total")


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")
