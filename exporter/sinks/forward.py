"""Span forwarding: every accepted OTLP trace message sent on to an upstream OTLP receiver (an
OpenTelemetry Collector, Jaeger, Tempo), each request span carrying its attributed energy.

Holding
    A request span's energy is known once the ledger completes its request: `--settle-delay`
    seconds after the request ended, plus up to one energy counter interval and one attribution
    pass. The forwarder holds each accepted message, as received (after gunzip), until every
    request span in it has a result from the ledger (`Ledger.on_results`), then sends it. Spans
    that are not requests ride along with their message. A message still waiting `hold_s` after
    it arrived (`hold_seconds`: settle delay + 2 counter intervals + HOLD_MARGIN_S) is sent as it
    is, its spans without a result marked ``unsettled``. The time from receipt to the upstream's
    answer is observed in the delay histogram (seconds).

Annotation
    Messages are parsed with the official `ExportTraceServiceRequest` class (OTLP/JSON first
    converted to it: hex ids to bytes); each request span gets these attributes appended, and
    nothing else changes (ids, parents, resources, scopes, the other spans and attributes):

    ``jouletrace.energy.status``                   settled, late_partial, late, duplicate, unsettled
    ``jouletrace.energy.joules``                   double, J (settled and late_partial only)
    ``jouletrace.energy.joules_per_output_token``  double, J (the same, when output tokens > 0)
    ``jouletrace.gpu.uuids``                       array of strings: the GPUs the energy came from

Delivery
    OTLP/gRPC (``grpc://host:port``, ``grpcs://`` with TLS) or OTLP/HTTP protobuf (``http(s)://``
    URL; ``/v1/traces`` is appended to a URL without a path). Ready messages are concatenated
    (concatenated `ExportTraceServiceRequest` encodings are one valid message) up to BATCH_BYTES
    per call, one call at a time. Retryable failures (per the OTLP specification: gRPC
    UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, ABORTED, OUT_OF_RANGE, DATA_LOSS and
    RESOURCE_EXHAUSTED with RetryInfo; HTTP 429, 502, 503, 504; connection errors; timeouts) keep
    the messages at the head and back off from BACKOFF_MIN_S doubling to `retry_max_s`, or as
    the upstream asks (RetryInfo, Retry-After). Other failures drop the messages (reason
    ``rejected``), among them an HTTP/2 answer to an ``http://`` URL (a gRPC receiver: the log
    says to use ``grpc://``); spans refused in a partial success are dropped with reason ``partial``.
    An ``http(s)://`` URL on OTLP/gRPC's port (OTLP_GRPC_PORT) gets one warning line at `start()`.

Bounds
    Held messages take `buffer_bytes` at most. `offer()` is O(1) and never waits: past the bound it
    drops the oldest held messages (reason ``buffer_full``). Every offered span ends counted as
    sent or dropped (by reason), or is still held (`held_spans`). Results are kept RESULT_TTL_S
    seconds for messages that arrive after them; a message's results travel with it.

Threads
    `offer()` and the forwarding task run on the event loop; `on_results` is called by the ledger
    from any thread (it appends to a deque and wakes the task). Parsing and annotating run on one
    worker thread so that large messages never hold up the intake's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import email.utils
import json
import logging
import math
import struct
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

import aiohttp
import grpc
import numpy as np
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from jouletrace.exporter.intake.otlp_grpc import GRPC_METHOD
from jouletrace.exporter.intake.otlp_http import CT_PROTOBUF
from jouletrace.exporter.ledger.ledger import span_key

__all__ = ["Forwarder", "annotate", "hold_seconds", "parse_endpoint", "otlp_json_to_message", "DROP_REASONS",
           "DELAY_BUCKETS_S"]

log = logging.getLogger(__name__)

ATTR_STATUS = "jouletrace.energy.status"
ATTR_JOULES = "jouletrace.energy.joules"
ATTR_PER_TOKEN = "jouletrace.energy.joules_per_output_token"
ATTR_GPUS = "jouletrace.gpu.uuids"
_OURS = (ATTR_STATUS, ATTR_JOULES, ATTR_PER_TOKEN, ATTR_GPUS)

SETTLED, LATE_PARTIAL, LATE, DUPLICATE, UNSETTLED = "settled", "late_partial", "late", "duplicate", "unsettled"
_WITH_ENERGY = (SETTLED, LATE_PARTIAL)
_UNSETTLED = (0.0, 0, UNSETTLED)

DROP_REASONS = ("buffer_full", "rejected", "partial", "malformed", "shutdown")
#: Upper bounds (s) of the forwarding delay histogram.
DELAY_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0)

TICK_S = 0.5  # the task looks at held messages at least this often
BATCH_BYTES = 1 << 20  # ready messages sent in one call, bytes at most (one larger message goes alone)
BACKOFF_MIN_S = 0.5
RESULT_TTL_S = 10.0
HOLD_MARGIN_S = 30.0
OTLP_GRPC_PORT = "4317"  # OpenTelemetry's port for OTLP/gRPC (4318: OTLP/HTTP)

_RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                   grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DATA_LOSS}
_RETRYABLE_HTTP = {429, 502, 503, 504}
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"

# message states
_WAITING, _READY, _INFLIGHT, _DONE = range(4)


# --------------------------------------------------------------------------------------------
# Endpoint, conversion and annotation (pure functions)


def hold_seconds(longest_hold_s: float, counter_interval_s: float) -> float:
    """How long a message waits for its spans' results at most, s. A request completes at most
    the longest settlement hold (fixed settle delay or max hold) + one energy counter interval +
    one attribution pass after it ends."""
    return longest_hold_s + 2 * counter_interval_s + HOLD_MARGIN_S


def parse_endpoint(url: str) -> tuple[str, str, bool]:
    """(protocol "grpc" or "http", gRPC target or HTTP URL, TLS) of a `--forward-otlp` value."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("grpc", "grpcs"):
        if not parts.netloc:
            raise ValueError(f"expected grpc://host:port, got {url!r}")
        return "grpc", parts.netloc, parts.scheme == "grpcs"
    if parts.scheme in ("http", "https") and parts.netloc:
        if parts.path in ("", "/"):
            url = urllib.parse.urlunsplit(parts._replace(path="/v1/traces"))
        return "http", url, parts.scheme == "https"
    raise ValueError(f"expected grpc://host:port or an http(s):// URL, got {url!r}")


def _answers_http2(exc: aiohttp.ClientResponseError) -> bool:
    """An HTTP/1.1 request answered by an HTTP/2 frame (its header's length starts with zero bytes,
    where `HTTP/1.1` was due): the server speaks only HTTP/2, as a gRPC server does."""
    return exc.message.startswith("Bad status line") and "b'\\x00\\x00" in exc.message


def _items(obj, camel: str, snake: str) -> list:
    value = obj.get(camel, obj.get(snake)) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def _hex_ids_to_base64(obj) -> None:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping reads bytes as base64."""
    if not isinstance(obj, dict):
        return
    for camel, snake in (("traceId", "trace_id"), ("spanId", "span_id"), ("parentSpanId", "parent_span_id")):
        for k in (camel, snake):
            if isinstance(obj.get(k), str):
                obj[k] = base64.b64encode(bytes.fromhex(obj[k])).decode()


def otlp_json_to_message(body: bytes | bytearray) -> trace_service_pb2.ExportTraceServiceRequest:
    """An OTLP/JSON export request as the protobuf message (unknown fields ignored, per OTLP)."""
    data = json.loads(body)
    for rs in _items(data, "resourceSpans", "resource_spans"):
        for ss in _items(rs, "scopeSpans", "scope_spans"):
            for span in _items(ss, "spans", "spans"):
                _hex_ids_to_base64(span)
                for link in _items(span, "links", "links"):
                    _hex_ids_to_base64(link)
    return json_format.ParseDict(data, trace_service_pb2.ExportTraceServiceRequest(), ignore_unknown_fields=True)


def _attribute(key: str, value: AnyValue) -> bytes:
    """One `Span.attributes` entry as it is encoded inside a Span."""
    span = Span()
    span.attributes.add(key=key, value=value)
    return span.SerializeToString()


def _double_prefix(key: str) -> bytes:
    """`_attribute(key, double)` less its last 8 bytes (the double, little-endian)."""
    return _attribute(key, AnyValue(double_value=1.0))[:-8]


_STATUS = {status: _attribute(ATTR_STATUS, AnyValue(string_value=status))
           for status in (SETTLED, LATE_PARTIAL, LATE, DUPLICATE, UNSETTLED)}
_JOULES = _double_prefix(ATTR_JOULES)
_PER_TOKEN = _double_prefix(ATTR_PER_TOKEN)
_MARK = b"jouletrace."


def annotate(body: bytes | bytearray, fmt: str, keys: Collection[int], results: Mapping[int, tuple],
             gpu_uuids: list[str]) -> bytes:
    """The message `body` (fmt "protobuf" or "json") as protobuf, its request spans annotated.

    `keys`: span keys (`ledger.span_key`) of the message's request spans; `results`: key ->
    (energy J, output tokens, status). A request span without a result is marked unsettled.
    Attributes of these names already on a span are replaced. The attributes are encoded once
    (the joules as an 8-byte double after a fixed prefix) and merged into each span.
    """
    if fmt == "json":
        msg = otlp_json_to_message(body)
    elif not keys:
        return bytes(body)  # no request span: nothing to add
    else:
        msg = trace_service_pb2.ExportTraceServiceRequest.FromString(bytes(body))
    uuids = _attribute(ATTR_GPUS, AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=u)
                                                                           for u in gpu_uuids])))
    replace = _MARK in body  # spans may carry these attributes already (forwarded twice): rare
    pack = struct.Struct("<d").pack
    for rs in msg.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                key = span_key(span.trace_id, span.span_id)
                if key not in keys:
                    continue
                energy, tokens, status = results.get(key, _UNSETTLED)
                if replace:
                    attrs = span.attributes
                    for i in reversed([i for i, kv in enumerate(attrs) if kv.key in _OURS]):
                        del attrs[i]
                if status in _WITH_ENERGY:
                    per_token = _PER_TOKEN + pack(energy / tokens) if tokens > 0 else b""
                    span.MergeFromString(_STATUS[status] + _JOULES + pack(energy) + per_token + uuids)
                else:
                    span.MergeFromString(_STATUS[status] + uuids)
    return msg.SerializeToString()


# --------------------------------------------------------------------------------------------
# The forwarder


@dataclass(eq=False, slots=True)
class _Message:
    body: bytes | bytearray | None
    fmt: str  # "protobuf", "json", or "annotated" (protobuf, ready to send)
    new_keys: np.ndarray | None  # request span keys as offered, until registered
    spans: int
    size: int
    received: float  # monotonic seconds
    state: int = _WAITING
    keys: frozenset = frozenset()
    unresolved: set = field(default_factory=set)
    resolved: dict = field(default_factory=dict)


@dataclass(slots=True)
class _Outcome:
    ok: bool
    retry: bool = False
    retry_after_s: float | None = None
    rejected_spans: int = 0
    why: str = ""


class Forwarder:
    """Holds accepted OTLP messages until their energy is known and sends them upstream.

    `offer()` from the intake, `on_results` to the ledger; `await start()`, `await stop(grace_s)`.
    url: the `--forward-otlp` endpoint; gpu_uuids: gives the sampled GPUs' UUIDs, asked as each
    message leaves (a device file's GPUs are named once it appears); hold_s: longest wait for
    results, s; buffer_bytes: held messages at most, bytes; timeout_s: one call at most, s;
    retry_max_s: longest wait between retries, s; clock: monotonic seconds.
    """

    def __init__(self, url: str, *, gpu_uuids: Callable[[], list[str]], hold_s: float, buffer_bytes: int,
                 timeout_s: float, retry_max_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.protocol, self.target, self.tls = parse_endpoint(url)
        self.url = url
        self.gpu_uuids = gpu_uuids
        self.hold_s = hold_s
        self.buffer_bytes = buffer_bytes
        self.timeout_s = timeout_s
        self.retry_max_s = retry_max_s
        self._clock = clock
        # held messages: all (arrival order), waiting for results (arrival order), ready to send;
        # finished ones are skipped where they lie
        self._held: collections.deque[_Message] = collections.deque()
        self._new: collections.deque[_Message] = collections.deque()
        self._waiting: collections.deque[_Message] = collections.deque()
        self._ready: collections.deque[_Message] = collections.deque()
        self._waiters: dict[int, list[_Message]] = {}  # key -> messages waiting for its result
        self._results: dict[int, tuple] = {}  # key -> (energy J, output tokens, status), recent ones
        self._results_by_time: collections.deque = collections.deque()  # (arrival, keys)
        self._inbox: collections.deque = collections.deque()  # from on_results, any thread
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._closing = False
        self._deadline = math.inf
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward-annotate")
        self._channel = None
        self._export = None
        self._session: aiohttp.ClientSession | None = None
        self._logged_rejections: set[str] = set()
        # self-metrics
        self.buffered_bytes = 0
        self.held_spans = 0
        self.sent_spans = 0
        self.dropped_spans = dict.fromkeys(DROP_REASONS, 0)
        self.retries = 0
        self.up = True
        self.delay_counts = [0] * (len(DELAY_BUCKETS_S) + 1)  # per bucket, then +Inf; not cumulative
        self.delay_sum_s = 0.0

    # -- inputs ---------------------------------------------------------------------------
    def offer(self, body: bytes | bytearray, keys: np.ndarray, spans: int, fmt: str) -> None:
        """Hold an accepted message (`fmt` "protobuf" or "json") for forwarding; O(1) amortized
        (each message is dropped at most once), never waits.

        `keys`: `ledger.span_keys` of the request rows the ledger was given; `spans`: all its spans.
        """
        m = _Message(body, fmt, keys, spans, len(body), self._clock())
        if self._closing:
            self._count_dropped(spans, "shutdown")
            return
        if m.size > self.buffer_bytes or not self._make_room(m.size):
            self._count_dropped(spans, "buffer_full")
            return
        self._held.append(m)
        self._new.append(m)
        self.buffered_bytes += m.size
        self.held_spans += spans
        if self._wake is not None:
            self._wake.set()

    def on_results(self, keys: np.ndarray, energy_j: np.ndarray, completion_tokens: np.ndarray, status: str) -> None:
        """The ledger's per-request results (see `Ledger.on_results`); any thread, returns at once."""
        if self._closed:
            return
        self._inbox.append((keys, energy_j, completion_tokens, status))
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop has closed
                pass

    # -- bookkeeping (event loop) ---------------------------------------------------------
    def _make_room(self, size: int) -> bool:
        """Drop the oldest held messages (not in flight) until `size` more bytes fit."""
        held, in_flight = self._held, []
        while self.buffered_bytes + size > self.buffer_bytes and held:
            m = held.popleft()
            if m.state == _INFLIGHT:
                in_flight.append(m)
            elif m.state != _DONE:
                self._finish(m)
                self._count_dropped(m.spans, "buffer_full")
        held.extendleft(reversed(in_flight))
        return self.buffered_bytes + size <= self.buffer_bytes

    def _finish(self, m: _Message) -> None:
        if m.state == _WAITING:
            self._unwait(m)
        m.state = _DONE
        m.body = None
        m.resolved = {}
        self.buffered_bytes -= m.size
        self.held_spans -= m.spans

    def _unwait(self, m: _Message) -> None:
        for k in m.unresolved:
            waiting = self._waiters.get(k)
            if waiting is not None:
                waiting.remove(m)
                if not waiting:
                    del self._waiters[k]
        m.unresolved = set()

    def _make_ready(self, m: _Message) -> None:
        m.state = _READY
        self._ready.append(m)

    def _count_dropped(self, spans: int, reason: str) -> None:
        self.dropped_spans[reason] += spans

    def _register(self) -> None:
        """Look up the results of newly offered messages; wait for the rest."""
        results, waiters = self._results, self._waiters
        while self._new:
            m = self._new.popleft()
            if m.state == _DONE:
                continue
            keys = set(m.new_keys.tolist())
            keys.discard(0)  # no identity: never matched
            m.keys, m.new_keys = frozenset(keys), None
            for k in keys:
                r = results.get(k)
                if r is None:
                    m.unresolved.add(k)
                    waiters.setdefault(k, []).append(m)
                else:
                    m.resolved[k] = r
            if m.unresolved:
                self._waiting.append(m)
            else:
                self._make_ready(m)

    def _take_results(self, now: float) -> None:
        """Merge the ledger's results; a duplicate never replaces a known result."""
        results, waiters = self._results, self._waiters
        while self._inbox:
            keys, energy, tokens, status = self._inbox.popleft()
            keys = keys.tolist()
            for k, e, n in zip(keys, energy.tolist(), tokens.tolist()):
                if status == DUPLICATE and k in results:
                    continue
                r = results[k] = (e, n, status)
                for m in waiters.pop(k, ()):
                    m.resolved[k] = r
                    m.unresolved.discard(k)
                    if not m.unresolved and m.state == _WAITING:
                        self._make_ready(m)
            self._results_by_time.append((now, keys))
        cutoff = now - RESULT_TTL_S
        while self._results_by_time and self._results_by_time[0][0] < cutoff:
            for k in self._results_by_time.popleft()[1]:
                results.pop(k, None)

    def _age(self, now: float) -> None:
        """Messages waiting longer than hold_s (or all of them when closing) go as they are."""
        cutoff = now - self.hold_s
        while self._waiting:
            m = self._waiting[0]
            if m.state == _WAITING and (m.received > cutoff and not self._closing):
                break
            self._waiting.popleft()
            if m.state == _WAITING:
                self._unwait(m)
                self._make_ready(m)
        while self._held and self._held[0].state == _DONE:
            self._held.popleft()

    def _pass(self) -> None:
        now = self._clock()
        self._register()
        self._take_results(now)
        self._age(now)

    # -- sending --------------------------------------------------------------------------
    def _take_batch(self) -> list[_Message]:
        batch, size = [], 0
        while self._ready:
            m = self._ready[0]
            if m.state != _READY:
                self._ready.popleft()
                continue
            if batch and size + m.size > BATCH_BYTES:
                break
            self._ready.popleft()
            m.state = _INFLIGHT
            batch.append(m)
            size += m.size
        return batch

    def _annotate_all(self, batch: list[_Message]) -> list[bytes | None]:
        """Worker thread: each message annotated, or None if it does not parse."""
        out = []
        for m in batch:
            if m.fmt == "annotated":
                out.append(m.body)
                continue
            try:
                out.append(annotate(m.body, m.fmt, m.keys, m.resolved, self.gpu_uuids()))
            except Exception as exc:  # the intake's decoder accepted it; the official parser did not
                log.debug("forwarding: cannot parse a %s message: %s", m.fmt, exc)
                out.append(None)
        return out

    async def _send_batch(self, batch: list[_Message]) -> None:
        loop = asyncio.get_running_loop()
        bodies = await loop.run_in_executor(self._pool, self._annotate_all, batch)
        keep = []
        for m, body in zip(batch, bodies):
            if body is None:
                self._finish(m)
                self._count_dropped(m.spans, "malformed")
                continue
            self.buffered_bytes += len(body) - m.size
            m.body, m.size, m.fmt, m.resolved = body, len(body), "annotated", {}
            keep.append(m)
        if not keep:
            return
        timeout = self.timeout_s
        if self._closing:
            timeout = max(0.1, min(timeout, self._deadline - self._clock()))
        payload = keep[0].body if len(keep) == 1 else b"".join(m.body for m in keep)
        try:
            outcome = await self._call(payload, timeout)
        except Exception as exc:  # unforeseen: keep the messages and retry rather than lose them
            outcome = _Outcome(False, retry=True, why=repr(exc))
        now = self._clock()
        spans = sum(m.spans for m in keep)
        if outcome.ok:
            for m in keep:
                self._observe_delay(now - m.received)
                self._finish(m)
            self.sent_spans += spans - outcome.rejected_spans
            if outcome.rejected_spans:
                self._count_dropped(outcome.rejected_spans, "partial")
                self._log_rejection("partial", outcome.why)
            self._backoff_s = 0.0
            if not self.up:
                log.info("forwarding to %s works again (%d retries so far)", self.url, self.retries)
            self.up = True
        elif outcome.retry:
            self.retries += 1
            for m in reversed(keep):
                m.state = _READY
                self._ready.appendleft(m)
            self._backoff_s = min(self.retry_max_s, max(BACKOFF_MIN_S, 2 * self._backoff_s))
            delay = self._backoff_s
            if outcome.retry_after_s is not None:  # as the upstream asks, within reason
                delay = min(max(outcome.retry_after_s, BACKOFF_MIN_S), 10 * self.retry_max_s)
            self._retry_at = math.inf if self._closing else now + delay
            if self.up:
                log.warning("forwarding to %s failing (%s); holding spans (%d bytes) and retrying",
                            self.url, outcome.why, self.buffered_bytes)
            self.up = False
        else:
            for m in keep:
                self._finish(m)
            self._count_dropped(spans, "rejected")
            self._log_rejection("rejected", outcome.why)
            self.up = True  # it answered

    def _observe_delay(self, seconds: float) -> None:
        self.delay_counts[int(np.searchsorted(DELAY_BUCKETS_S, seconds))] += 1
        self.delay_sum_s += seconds

    def _log_rejection(self, reason: str, why: str) -> None:
        level = logging.DEBUG if why in self._logged_rejections else logging.WARNING
        self._logged_rejections.add(why)
        log.log(level, "forwarding to %s: upstream refused spans (%s): %s", self.url, reason, why)

    async def _call(self, payload: bytes, timeout: float) -> _Outcome:
        if self.protocol == "grpc":
            return await self._call_grpc(payload, timeout)
        return await self._call_http(payload, timeout)

    async def _call_grpc(self, payload: bytes, timeout: float) -> _Outcome:
        try:
            resp = await self._export(payload, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            why = f"gRPC {code.name}: {exc.details()}"
            retry_after = _grpc_retry_delay(exc.trailing_metadata())
            if code in _RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None):
                return _Outcome(False, retry=True, retry_after_s=retry_after, why=why)
            return _Outcome(False, why=why)
        return _partial(resp)

    async def _call_http(self, payload: bytes, timeout: float) -> _Outcome:
        try:
            async with self._session.post(self.target, data=payload, headers={"Content-Type": CT_PROTOBUF},
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if isinstance(exc, aiohttp.ClientResponseError) and _answers_http2(exc):  # no retry mends it
                return _Outcome(False, why=f"the upstream answers in HTTP/2, as an OTLP/gRPC receiver does (port "
                                           f"{OTLP_GRPC_PORT} by convention): forward to grpc://{self._host_port()} "
                                           "instead")
            return _Outcome(False, retry=True, why=f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= status < 300:
            try:
                return _partial(trace_service_pb2.ExportTraceServiceResponse.FromString(body))
            except Exception:  # an answer that is not an ExportTraceServiceResponse: accepted all
                return _Outcome(True)
        why = f"HTTP {status}"
        if status in _RETRYABLE_HTTP:
            return _Outcome(False, retry=True, retry_after_s=_retry_after_seconds(retry_after), why=why)
        return _Outcome(False, why=why)

    def _host_port(self) -> str:
        return urllib.parse.urlsplit(self.target).netloc

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.protocol == "grpc":
            options = [("grpc.initial_reconnect_backoff_ms", int(BACKOFF_MIN_S * 1000)),
                       ("grpc.min_reconnect_backoff_ms", int(BACKOFF_MIN_S * 1000)),
                       ("grpc.max_reconnect_backoff_ms", int(self.retry_max_s * 1000))]
            if self.tls:
                self._channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(), options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
            self._export = self._channel.unary_unary(
                GRPC_METHOD, request_serializer=None,
                response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        else:
            self._session = aiohttp.ClientSession()
            if self._host_port().rpartition(":")[2] == OTLP_GRPC_PORT:
                log.warning("--forward-otlp %s: %s is the OTLP/gRPC port; use grpc://%s if the target speaks gRPC",
                            self.url, OTLP_GRPC_PORT, self._host_port())
        self._task = asyncio.create_task(self._run(), name="forward-otlp")
        log.info("forwarding spans to %s (OTLP/%s), holding up to %d bytes", self.url,
                 "gRPC" if self.protocol == "grpc" else "HTTP", self.buffer_bytes)

    async def _run(self) -> None:
        while True:
            try:
                if await self._step():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad pass stop forwarding
                log.exception("forwarding pass failed")
                await asyncio.sleep(TICK_S)

    async def _step(self) -> bool:
        """One pass and at most one call upstream; True when the task is done (closing)."""
        self._wake.clear()
        self._pass()
        now = self._clock()
        if self._closing and (not self._ready or now >= self._deadline or self._retry_at == math.inf):
            return True
        if self._ready and now >= self._retry_at:
            batch = self._take_batch()
            if batch:
                await self._send_batch(batch)
            return False
        wait = TICK_S if not self._ready else max(0.0, min(TICK_S, self._retry_at - now))
        try:
            await asyncio.wait_for(self._wake.wait(), wait)
        except asyncio.TimeoutError:
            pass
        return False

    async def stop(self, grace_s: float = 3.0) -> None:
        """Send what is held, results or not, for up to grace_s (one try if the upstream is down);
        count the rest dropped (reason shutdown)."""
        if self._task is None:
            return
        self._closing = True
        self._deadline = self._clock() + grace_s
        self._retry_at = 0.0
        self._wake.set()
        try:
            await asyncio.wait_for(self._task, grace_s + 1.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        self._closed = True
        for m in self._held:
            if m.state != _DONE:
                self._finish(m)
                self._count_dropped(m.spans, "shutdown")
        self._held.clear()
        if self._channel is not None:
            await self._channel.close()
        if self._session is not None:
            await self._session.close()
        self._pool.shutdown(wait=False)

    def snapshot(self) -> dict:
        """Counters for the metrics (read on the event loop)."""
        return {"sent": self.sent_spans, "dropped": dict(self.dropped_spans), "retries": self.retries,
                "buffer_bytes": self.buffered_bytes, "held_spans": self.held_spans, "up": self.up,
                "delay_counts": list(self.delay_counts), "delay_sum": self.delay_sum_s}


def _partial(resp: trace_service_pb2.ExportTraceServiceResponse) -> _Outcome:
    if resp.HasField("partial_success") and resp.partial_success.rejected_spans > 0:
        return _Outcome(True, rejected_spans=int(resp.partial_success.rejected_spans),
                        why=resp.partial_success.error_message or "partial success")
    return _Outcome(True)


def _grpc_retry_delay(metadata) -> float | None:
    """RetryInfo's delay (s) from a gRPC error's trailing metadata, if the upstream sent one."""
    for key, value in metadata or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            st = status_pb2.Status.FromString(value)
            for detail in st.details:
                if detail.type_url == _RETRY_INFO_TYPE:
                    info = error_details_pb2.RetryInfo.FromString(detail.value)
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except Exception:
            return None
    return None


def _retry_after_seconds(value: str | None) -> float | None:
    """An HTTP Retry-After header (seconds or an HTTP date) in seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
