"""OTLP trace intake: OTLP/HTTP (aiohttp) and OTLP/gRPC (grpc.aio) servers feeding a sink.

Both servers decode each export request with `exporter.otlp`, hand its request spans to
``sink.submit(batch)`` as one `RequestBatch` (not called when the message holds none) and answer
per the OTLP specification. While ``sink.full`` holds, a message is refused before it is decoded
(shed), so that refusing a flood costs little:

====================  ==========================  ===================  ======================
outcome               HTTP                        gRPC                 counted as rejected
====================  ==========================  ===================  ======================
accepted              200 ExportTraceServiceResp  OK                   -
some spans invalid    200 + partial_success       OK + partial_success invalid_span (spans)
body too large        413                         RESOURCE_EXHAUSTED   too_large (messages)
undecodable           400 + google.rpc.Status     INVALID_ARGUMENT     malformed (messages)
body too slow         408                         DEADLINE_EXCEEDED    too_slow (messages)
bad Content-Type or   415                         -                    unsupported_media_type
Content-Encoding                                                       (messages)
sink full, or too     503 + Retry-After           UNAVAILABLE +        queue_full (spans), or
many bytes in flight                              RetryInfo            shed (messages)
several messages in   -                           INVALID_ARGUMENT     malformed (messages)
one call
bug in the intake     500                         INTERNAL             internal (messages)
====================  ==========================  ===================  ======================

Each intake holds the messages it is receiving or decoding within IN_FLIGHT_MESSAGES x max_bytes;
a message beyond that bound is refused (shed). The bounds are separate, so that slow senders on
one protocol do not hold back the other.

Given a `forward` (`exporter.forward.Forwarder`), each accepted message (answered 200 or OK,
partial success included) is offered to it, as received after gunzip, with the span keys of the
request rows handed to the sink.

Bound ports (useful with port 0): `bound_port(obj)` answers the port of either server; it is
also ``runner.addresses[0][1]`` for the HTTP runner and ``server.bound_port`` for the gRPC server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
import zlib

import grpc
from aiohttp import web
from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from jouletrace.exporter.intake.otlp import DecodeError, DecodeResult, decode_json, decode_protobuf, reject_future
from jouletrace.exporter.ledger.ledger import span_keys
from jouletrace.exporter.ledger.records import IntakeFull

__all__ = [
    "IntakeStats",
    "start_http_intake",
    "start_grpc_intake",
    "bound_port",
    "PROTOCOLS",
    "REASONS",
    "TRACES_PATH",
    "GRPC_SERVICE",
    "GRPC_METHOD",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
REASONS = ("too_large", "malformed", "invalid_span", "queue_full", "shed", "too_slow", "unsupported_media_type",
           "internal")

TRACES_PATH = "/v1/traces"
GRPC_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
GRPC_METHOD = f"/{GRPC_SERVICE}/Export"

CT_PROTOBUF = "application/x-protobuf"
CT_JSON = "application/json"
RETRY_AFTER_S = 1
MAX_ERROR_MESSAGE_CHARS = 1024
# Bodies up to this size are decoded on the event loop (a few ms at most); larger ones in the
# default executor so that the loop keeps turning while they decode.
INLINE_DECODE_BYTES = 1 << 20
IN_FLIGHT_MESSAGES = 16  # an intake receives at most this many largest messages at once
GRPC_STREAMS_PER_CONNECTION = 100  # HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS, the least RFC 9113 advises
BODY_READ_TIMEOUT_S = 30.0  # a message not received by then is refused (too_slow), its bytes no longer held
LEDGER_FULL = "request ledger is full; retry later"
IN_FLIGHT_FULL = "too many bytes in flight; retry later"


class IntakeStats:
    """Thread-safe intake counters, read at scrape time with `snapshot()`.

    received[protocol]            spans in successfully decoded messages (accepted + ignored +
                                  invalid + those refused because the sink was full)
    accepted[protocol]            request spans handed to the sink
    ignored[protocol]             spans that are not inference requests (not an error)
    rejected[(protocol, reason)]  reasons in REASONS; ``invalid_span`` and ``queue_full`` count
                                  spans, the others count export messages (their spans are unknown)
    requests[(protocol, code)]    export calls answered, by HTTP status ("200", "413", ...) or gRPC
                                  status name ("OK", "RESOURCE_EXHAUSTED", ...); always a str

    Every (protocol, ...) key of received/accepted/ignored/rejected exists from the start at 0.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = dict.fromkeys(PROTOCOLS, 0)
        self._accepted = dict.fromkeys(PROTOCOLS, 0)
        self._ignored = dict.fromkeys(PROTOCOLS, 0)
        self._rejected = {(p, r): 0 for p in PROTOCOLS for r in REASONS}
        self._requests: dict[tuple[str, str], int] = {}

    def count(
        self,
        protocol: str,
        code: str,
        *,
        received: int = 0,
        accepted: int = 0,
        ignored: int = 0,
        rejected: dict[str, int] | None = None,
    ) -> None:
        """Count one answered export call and what it carried."""
        with self._lock:
            self._received[protocol] = self._received.get(protocol, 0) + received
            self._accepted[protocol] = self._accepted.get(protocol, 0) + accepted
            self._ignored[protocol] = self._ignored.get(protocol, 0) + ignored
            if rejected:
                for reason, n in rejected.items():
                    key = (protocol, reason)
                    self._rejected[key] = self._rejected.get(key, 0) + n
            key = (protocol, code)
            self._requests[key] = self._requests.get(key, 0) + 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "received": dict(self._received),
                "accepted": dict(self._accepted),
                "ignored": dict(self._ignored),
                "rejected": dict(self._rejected),
                "requests": dict(self._requests),
            }


class _BytesInFlight:
    """Bytes of OTLP messages being received or decoded by one intake, held within `limit` bytes.
    Used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        """Hold n more bytes if that stays within the limit; False (nothing held) otherwise."""
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class _TooLarge(Exception):
    pass


def _gunzip_bounded(data: bytes | bytearray, limit: int) -> bytes:
    """Inflate a gzip body (several members allowed), never producing more than limit + 1 bytes.

    Raises _TooLarge past the limit and DecodeError if the data is not complete gzip.
    """
    out: list[bytes] = []
    total = 0
    while True:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = d.decompress(data, limit - total + 1)
        except zlib.error as exc:
            raise DecodeError(f"invalid gzip body: {exc}") from None
        total += len(chunk)
        if total > limit:
            raise _TooLarge(f"decompressed body exceeds {limit} bytes")
        out.append(chunk)
        if not d.eof:
            raise DecodeError("truncated gzip body")
        data = d.unused_data
        if not data:
            break
    return b"".join(out)


def _partial_message(result: DecodeResult) -> str:
    msg = f"{result.rejected} span(s) rejected: " + "; ".join(result.errors)
    if result.rejected > len(result.errors):
        msg += "; ..."
    return msg[:MAX_ERROR_MESSAGE_CHARS]


def _decode_and_submit(body, decode, sink, default_model: str):
    """Shared by both protocols: (outcome, result, message). outcome is "ok", "malformed",
    "queue_full" or "shed" (refused undecoded; result None)."""
    if sink.full:
        return "shed", None, LEDGER_FULL
    try:
        result = reject_future(decode(body, default_model), time.time())
    except DecodeError as exc:
        return "malformed", None, str(exc)[:MAX_ERROR_MESSAGE_CHARS]
    if len(result.batch):
        try:
            sink.submit(result.batch)
        except IntakeFull:
            return "queue_full", result, LEDGER_FULL
    return "ok", result, ""


async def _decode_and_submit_async(body, decode, sink, default_model: str):
    """_decode_and_submit, off the event loop for a large body. A cancellation (the sender went
    away) while it runs is held back until it ends, so that the spans it submits are counted and
    forwarded by the caller all the same."""
    if len(body) <= INLINE_DECODE_BYTES:
        return _decode_and_submit(body, decode, sink, default_model)
    done = asyncio.get_running_loop().run_in_executor(None, _decode_and_submit, body, decode, sink, default_model)
    while True:
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if done.cancelled():
                raise


def _forward(forward, body, result: DecodeResult, fmt: str) -> None:
    """Offer an accepted message to the forwarder, if there is one."""
    if forward is not None:
        forward.offer(body, span_keys(result.batch.rows), result.spans, fmt)


def _counts(result: DecodeResult | None, outcome: str) -> dict:
    if result is None:
        return {"rejected": {outcome: 1}}
    rejected = {}
    if result.rejected:
        rejected["invalid_span"] = result.rejected
    accepted = 0
    if outcome == "queue_full":
        rejected["queue_full"] = len(result.batch)
    else:
        accepted = len(result.batch)
    return {
        "received": result.spans,
        "accepted": accepted,
        "ignored": result.ignored,
        "rejected": rejected,
    }


# --------------------------------------------------------------------------------------------
# OTLP/HTTP

_EMPTY_RESPONSE_PB = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
_EMPTY_RESPONSE_JSON = b"{}"


def _partial_response(result: DecodeResult, as_json: bool) -> bytes:
    resp = trace_service_pb2.ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = result.rejected
    resp.partial_success.error_message = _partial_message(result)
    if as_json:
        return json.dumps(json_format.MessageToDict(resp)).encode()
    return resp.SerializeToString()


def _status_body(code: int, message: str, as_json: bool) -> bytes:
    if as_json:
        return json.dumps({"code": code, "message": message}).encode()
    return status_pb2.Status(code=code, message=message).SerializeToString()


async def start_http_intake(
    host: str, port: int, sink, stats: IntakeStats, *, max_bytes: int, default_model: str, forward=None,
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    """Serve ``POST /v1/traces`` (OTLP/HTTP, protobuf or JSON, optionally gzip) on host:port,
    over TLS with ``ssl_context``.

    Returns the started runner; ``bound_port(runner)`` (or ``runner.addresses[0][1]``) is the
    port, ``await runner.cleanup()`` stops it. Bodies over max_bytes, before or after gzip
    inflation, are answered 413 without being inflated further. Messages are read while the
    bytes in flight (each counted at its Content-Length, or max_bytes without one) stay within
    IN_FLIGHT_MESSAGES x max_bytes; beyond, a message is read without being kept and answered
    503 + Retry-After (shed), so that memory stays bounded whatever the number of senders.
    """

    in_flight = _BytesInFlight(IN_FLIGHT_MESSAGES * max_bytes)

    def reply(code: int, body: bytes, content_type: str, outcome_counts: dict, **extra) -> web.Response:
        stats.count("http", str(code), **outcome_counts)
        return web.Response(status=code, body=body, content_type=content_type, **extra)

    def fail(code: int, rpc_code: int, reason: str, message: str, as_json: bool, **extra) -> web.Response:
        log.debug("OTLP/HTTP %d %s: %s", code, reason, message)
        ct = CT_JSON if as_json else CT_PROTOBUF
        return reply(code, _status_body(rpc_code, message, as_json), ct, {"rejected": {reason: 1}}, **extra)

    def retry_later(message: str, as_json: bool, outcome_counts: dict) -> web.Response:
        log.debug("OTLP/HTTP 503: %s", message)
        return reply(503, _status_body(code_pb2.UNAVAILABLE, message, as_json), CT_JSON if as_json else CT_PROTOBUF,
                     outcome_counts, headers={"Retry-After": str(RETRY_AFTER_S)})

    def too_slow(as_json: bool) -> web.Response:
        return _closing(fail(408, code_pb2.DEADLINE_EXCEEDED, "too_slow",
                             f"body not received within {BODY_READ_TIMEOUT_S:g} s", as_json))

    async def handle(request: web.Request) -> web.StreamResponse:
        ctype = request.content_type
        if ctype == CT_PROTOBUF:
            as_json = False
            decode = decode_protobuf
        elif ctype == CT_JSON:
            as_json = True
            decode = decode_json
        else:
            return _closing(fail(
                415, code_pb2.INVALID_ARGUMENT, "unsupported_media_type",
                f"unsupported Content-Type {ctype!r}; use {CT_PROTOBUF} or {CT_JSON}", False,
            ))
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            return _closing(fail(
                415, code_pb2.INVALID_ARGUMENT, "unsupported_media_type",
                f"unsupported Content-Encoding {encoding!r}; use gzip or none", as_json,
            ))

        length = request.content_length
        if length is not None and length > max_bytes:
            return _closing(fail(
                413, code_pb2.RESOURCE_EXHAUSTED, "too_large",
                f"body of {length} bytes exceeds the limit of {max_bytes}", as_json,
            ))
        held = max_bytes if length is None else length  # a body of unknown length may reach max_bytes
        if not in_flight.take(held):
            # drained unkept, so that the sender reads the answer (closing unread would reset it)
            try:
                await asyncio.wait_for(_discard_body(request), BODY_READ_TIMEOUT_S)
            except asyncio.TimeoutError:
                return too_slow(as_json)
            return retry_later(IN_FLIGHT_FULL, as_json, _counts(None, "shed"))
        try:
            return await receive(request, as_json, decode, encoding, length)
        finally:
            in_flight.give(held)

    async def receive(request: web.Request, as_json: bool, decode, encoding: str, length: int | None):
        """Read, inflate, decode and submit one message whose bytes are counted in flight."""
        try:
            body = await asyncio.wait_for(_read_body(request, length, max_bytes), BODY_READ_TIMEOUT_S)
        except asyncio.IncompleteReadError:
            return fail(400, code_pb2.INVALID_ARGUMENT, "malformed", "body ended early", as_json)
        except asyncio.TimeoutError:
            return too_slow(as_json)
        if body is None:
            return _closing(fail(
                413, code_pb2.RESOURCE_EXHAUSTED, "too_large",
                f"body exceeds the limit of {max_bytes} bytes", as_json,
            ))
        if encoding == "gzip":
            try:
                body = _gunzip_bounded(body, max_bytes)
            except _TooLarge as exc:
                return fail(413, code_pb2.RESOURCE_EXHAUSTED, "too_large", str(exc), as_json)
            except DecodeError as exc:
                return fail(400, code_pb2.INVALID_ARGUMENT, "malformed", str(exc), as_json)

        outcome, result, message = await _decode_and_submit_async(body, decode, sink, default_model)
        if outcome == "ok":
            _forward(forward, body, result, "json" if as_json else "protobuf")
            ct = CT_JSON if as_json else CT_PROTOBUF
            if result.rejected:
                out = _partial_response(result, as_json)
            else:
                out = _EMPTY_RESPONSE_JSON if as_json else _EMPTY_RESPONSE_PB
            return reply(200, out, ct, _counts(result, outcome))
        if outcome == "malformed":
            return fail(400, code_pb2.INVALID_ARGUMENT, "malformed", message, as_json)
        return retry_later(message, as_json, _counts(result, outcome))

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handle(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("OTLP/HTTP intake failed on a request")
            stats.count("http", "500", rejected={"internal": 1})
            return web.Response(
                status=500, content_type=CT_PROTOBUF,
                body=_status_body(code_pb2.INTERNAL, "internal error", False),
            )

    # client_max_size is moot: the handler reads the body itself, against max_bytes, so that
    # every refusal is counted. Automatic decompression is off so that gzip is inflated here
    # with a bound.
    app = web.Application(client_max_size=max_bytes)
    app.router.add_post(TRACES_PATH, guarded)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("OTLP/HTTP intake listening on %s", runner.addresses)
    return runner


async def _read_body(request: web.Request, length: int | None, limit: int):
    """The body, or None if it is longer than limit. IncompleteReadError if it ends early."""
    stream = request.content
    if length is not None:
        # readexactly(0) at the end of the stream raises: an empty body is an empty message
        return await stream.readexactly(length) if length else b""
    buf = bytearray()
    while True:
        chunk = await stream.readany()
        if not chunk:
            return buf
        buf += chunk
        if len(buf) > limit:
            return None


async def _discard_body(request: web.Request) -> None:
    """Read the body to its end, keeping none of it."""
    while await request.content.readany():
        pass


def _closing(resp: web.Response) -> web.Response:
    # The unread remainder of the body is not wanted; close rather than drain it.
    resp.force_close()
    return resp


# --------------------------------------------------------------------------------------------
# OTLP/gRPC

async def start_grpc_intake(
    host: str, port: int, sink, stats: IntakeStats, *, max_bytes: int, default_model: str, forward=None,
    credentials: grpc.ServerCredentials | None = None,
) -> grpc.aio.Server:
    """Serve ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` on host:port, over TLS
    with ``credentials``.

    Returns the started server; its ``bound_port`` attribute (or ``bound_port(server)``) is the
    port, ``await server.stop(grace)`` stops it. A call is admitted before its message is read:
    while the sink is full, or IN_FLIGHT_MESSAGES calls are being received or decoded, it is
    answered UNAVAILABLE + RetryInfo (shed) and its message never read. gRPC's core refuses a message over
    max_bytes (before or after gzip inflation) with RESOURCE_EXHAUSTED, counted here as too_large;
    a call that ends without a message is counted so too, as the two cannot be told apart. A
    connection opens at most GRPC_STREAMS_PER_CONNECTION calls at once; a call beyond is refused by
    HTTP/2 (REFUSED_STREAM, which senders see as UNAVAILABLE, never processed) and not counted here.
    """

    in_flight = _BytesInFlight(IN_FLIGHT_MESSAGES * max_bytes)

    def count(code: grpc.StatusCode, **kw) -> None:
        stats.count("grpc", code.name, **kw)

    def retry_later(message: str, outcome_counts: dict):
        count(grpc.StatusCode.UNAVAILABLE, **outcome_counts)
        return grpc.StatusCode.UNAVAILABLE, message, _retry_trailers(message)

    async def read_one(context: grpc.aio.ServicerContext):
        """The call's one message; EOF if none came (or one over the limit); None if several."""
        message = await context.read()
        if message is not grpc.aio.EOF and await context.read() is not grpc.aio.EOF:
            return None
        return message

    async def process(context: grpc.aio.ServicerContext):
        """(status code or None for OK, details, response bytes; trailing metadata for an error)."""
        if sink.full:
            return retry_later(LEDGER_FULL, _counts(None, "shed"))
        if not in_flight.take(max_bytes):
            return retry_later(IN_FLIGHT_FULL, _counts(None, "shed"))
        try:
            try:
                request = await asyncio.wait_for(read_one(context), BODY_READ_TIMEOUT_S)
            except asyncio.TimeoutError:
                count(grpc.StatusCode.DEADLINE_EXCEEDED, rejected={"too_slow": 1})
                return grpc.StatusCode.DEADLINE_EXCEEDED, f"message not received within {BODY_READ_TIMEOUT_S:g} s", ()
            if request is grpc.aio.EOF:
                count(grpc.StatusCode.RESOURCE_EXHAUSTED, rejected={"too_large": 1})
                return grpc.StatusCode.RESOURCE_EXHAUSTED, f"no message of at most {max_bytes} bytes received", ()
            if request is None:
                count(grpc.StatusCode.INVALID_ARGUMENT, rejected={"malformed": 1})
                return grpc.StatusCode.INVALID_ARGUMENT, "Export takes one message per call", ()
            outcome, result, message = await _decode_and_submit_async(request, decode_protobuf, sink, default_model)
        finally:
            in_flight.give(max_bytes)
        if outcome == "malformed":
            count(grpc.StatusCode.INVALID_ARGUMENT, rejected={"malformed": 1})
            return grpc.StatusCode.INVALID_ARGUMENT, message, ()
        if outcome in ("queue_full", "shed"):
            return retry_later(message, _counts(result, outcome))
        count(grpc.StatusCode.OK, **_counts(result, outcome))
        _forward(forward, request, result, "protobuf")
        return None, "", _partial_response(result, False) if result.rejected else _EMPTY_RESPONSE_PB

    async def export(requests, context: grpc.aio.ServicerContext) -> bytes:
        try:
            code, details, response = await process(context)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("OTLP/gRPC intake failed on a request")
            count(grpc.StatusCode.INTERNAL, rejected={"internal": 1})
            code, details, response = grpc.StatusCode.INTERNAL, "internal error", ()
        if code is not None:
            log.debug("OTLP/gRPC %s: %s", code.name, details)
            await context.abort(code, details, response)
        return response

    # Served as a client-streaming method (on the wire, a unary call is a stream of one message)
    # so that a call is admitted or refused before its message is read; messages arrive as raw
    # bytes (no deserializer) for the protobuf decoder.
    handler = grpc.method_handlers_generic_handler(
        GRPC_SERVICE,
        {"Export": grpc.stream_unary_rpc_method_handler(export)},
    )
    server = grpc.aio.server(
        handlers=(handler,),
        options=(
            ("grpc.max_receive_message_length", min(max_bytes, 2**31 - 1)),
            # Flow-control windows stay at HTTP/2's 64 KiB instead of growing to the sender's
            # bandwidth-delay product, so that a call refused unread has at most that much of its
            # message buffered by the transport (megabytes each, under a flood, without this).
            ("grpc.http2.bdp_probe", 0),
            # and a connection opens at most this many calls at once (HTTP/2 refuses more with
            # REFUSED_STREAM), so that a sender holds at most 100 x 64 KiB here per connection
            ("grpc.max_concurrent_streams", GRPC_STREAMS_PER_CONNECTION),
            ("grpc.max_send_message_length", 1 << 20),
            # without this, a second process could bind the same port and silently take a share
            # of the traffic
            ("grpc.so_reuseport", 0),
        ),
    )
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        bound = 0
        why = f": {exc}"
    else:
        why = ""
    if not bound:
        await server.stop(None)
        raise OSError(f"cannot listen on {address}{why}")
    await server.start()
    server.bound_port = bound  # grpc.aio.Server has no accessor for it
    log.info("OTLP/gRPC intake listening on %s (port %d)", address, bound)
    return server


def _retry_trailers(message: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata of an UNAVAILABLE answer asking the sender to retry in RETRY_AFTER_S s:
    a google.rpc.RetryInfo in the status details (as the OTLP specification reads it) and alone
    under ``google.rpc.retryinfo-bin`` (as OpenTelemetry's Python exporter reads it)."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_AFTER_S))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )


def bound_port(server) -> int:
    """The TCP port a server returned by start_http_intake or start_grpc_intake listens on."""
    if isinstance(server, web.AppRunner):
        addresses = server.addresses
        if not addresses:
            raise ValueError("the HTTP intake is not listening")
        return addresses[0][1]
    port = getattr(server, "bound_port", None)
    if not isinstance(port, int):
        raise ValueError("not a server started by start_grpc_intake")
    return port
