"""OTLP/gRPC intake: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``, served with grpc.aio.

The transport's part of each call; `core.Receiver.export` does the rest, and the outcome is
answered as `status.STATUS` says: OK with an ExportTraceServiceResponse, or the refusal's status
code and message (with a google.rpc.RetryInfo when the sender should retry).

- A call is admitted before its message is read: while the sink is full, or the bytes in flight
  (`core.BytesInFlight`, max_bytes for each call being received or decoded) would pass their
  bound, it is refused (shed) and its message never read.
- gRPC's core refuses a message over max_bytes (before or after gzip inflation) with
  RESOURCE_EXHAUSTED, counted here as too_large; a call that ends without a message is counted
  so too, as the two cannot be told apart. A call with several messages is malformed.
- A message not received within BODY_READ_TIMEOUT_S is refused (too_slow), its bytes no longer held.
- A connection opens at most GRPC_STREAMS_PER_CONNECTION calls at once; a call beyond is refused
  by HTTP/2 (REFUSED_STREAM, which senders see as UNAVAILABLE, never processed) and not counted here.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from jouletrace.exporter.intake import core
from jouletrace.exporter.intake.status import RETRY_AFTER_S, STATUS

__all__ = ["GrpcIntake", "GRPC_SERVICE", "GRPC_METHOD"]

log = logging.getLogger(__name__)

PROTOCOL = "grpc"
GRPC_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
GRPC_METHOD = f"/{GRPC_SERVICE}/Export"
GRPC_STREAMS_PER_CONNECTION = 100  # HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS, the least RFC 9113 advises
STOP_GRACE_S = 2.0  # at stop, calls in progress are given this long to finish


class GrpcIntake:
    """OTLP/gRPC on host:port, over TLS with `credentials`. `await start()` listens (OSError if it
    cannot); `port` is then the bound port (useful with port 0); `await stop()` closes it."""

    name = "otlp_grpc"  # the port's name in the daemon's `ports`

    def __init__(self, host: str, port: int, receiver: core.Receiver, *,
                 credentials: grpc.ServerCredentials | None = None):
        self.host = host
        self.port = port
        self.receiver = receiver
        self.credentials = credentials
        self._in_flight = core.BytesInFlight(receiver.max_bytes)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        # Served as a client-streaming method (on the wire, a unary call is a stream of one message)
        # so that a call is admitted or refused before its message is read; messages arrive as raw
        # bytes (no deserializer) for the protobuf decoder.
        handler = grpc.method_handlers_generic_handler(
            GRPC_SERVICE,
            {"Export": grpc.stream_unary_rpc_method_handler(self._export)},
        )
        server = grpc.aio.server(
            handlers=(handler,),
            options=(
                ("grpc.max_receive_message_length", min(self.receiver.max_bytes, 2**31 - 1)),
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
        host = self.host
        address = f"[{host}]:{self.port}" if ":" in host and not host.startswith("[") else f"{host}:{self.port}"
        try:
            bound = (server.add_secure_port(address, self.credentials) if self.credentials
                     else server.add_insecure_port(address))
        except RuntimeError as exc:
            bound = 0
            why = f": {exc}"
        else:
            why = ""
        if not bound:
            await server.stop(None)
            raise OSError(f"cannot listen on {address}{why}")
        await server.start()
        self._server = server
        self.port = bound
        log.info("OTLP/gRPC intake listening on %s (port %d)", address, bound)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(STOP_GRACE_S)
            self._server = None

    async def _export(self, requests, context: grpc.aio.ServicerContext) -> bytes:
        try:
            outcome = await self._receive(context)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("OTLP/gRPC intake failed on a request")
            outcome = self.receiver.refuse(PROTOCOL, "internal", "internal error")
        answer = STATUS[outcome.reason]
        if not outcome.accepted:
            log.debug("OTLP/gRPC %s: %s", answer.grpc.name, outcome.message)
            trailers = _retry_trailers(answer.rpc_code, outcome.message) if answer.retry else ()
            await context.abort(answer.grpc, outcome.message, trailers)
        return outcome.response("protobuf")

    async def _receive(self, context: grpc.aio.ServicerContext) -> core.Outcome:
        """Admit the call, read its one message and export it."""
        receiver = self.receiver
        if receiver.sink.full:
            return receiver.refuse(PROTOCOL, "shed", core.LEDGER_FULL)
        if not self._in_flight.take(receiver.max_bytes):
            return receiver.refuse(PROTOCOL, "shed", core.IN_FLIGHT_FULL)
        try:
            try:
                message = await asyncio.wait_for(_read_one(context), core.BODY_READ_TIMEOUT_S)
            except asyncio.TimeoutError:
                return receiver.refuse(PROTOCOL, "too_slow",
                                       f"message not received within {core.BODY_READ_TIMEOUT_S:g} s")
            if message is grpc.aio.EOF:
                return receiver.refuse(PROTOCOL, "too_large",
                                       f"no message of at most {receiver.max_bytes} bytes received")
            if message is None:
                return receiver.refuse(PROTOCOL, "malformed", "Export takes one message per call")
            return await receiver.export(message, "protobuf", PROTOCOL)
        finally:
            self._in_flight.give(receiver.max_bytes)


async def _read_one(context: grpc.aio.ServicerContext):
    """The call's one message; EOF if none came (or one over the limit); None if several."""
    message = await context.read()
    if message is not grpc.aio.EOF and await context.read() is not grpc.aio.EOF:
        return None
    return message


def _retry_trailers(code: int, message: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata of an answer asking the sender to retry in RETRY_AFTER_S s:
    a google.rpc.RetryInfo in the status details (as the OTLP specification reads it) and alone
    under ``google.rpc.retryinfo-bin`` (as OpenTelemetry's Python exporter reads it)."""
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_AFTER_S))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code, message=message, details=[detail])
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )
