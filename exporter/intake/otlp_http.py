"""OTLP/HTTP intake: ``POST /v1/traces``, protobuf or JSON, optionally gzip, served with aiohttp.

The transport's part of each call; `core.Receiver.export` does the rest, and the outcome is
answered as `status.STATUS` says: an accepted message with an ExportTraceServiceResponse, a
refused one with a google.rpc.Status, both in the request's encoding (protobuf when the
Content-Type is not one of the two).

- A Content-Type other than CT_PROTOBUF or CT_JSON, or a Content-Encoding other than gzip or
  none, is refused (unsupported_media_type).
- A body over max_bytes, before or after gzip inflation, is refused (too_large) without being
  inflated further.
- Bodies are read while the bytes in flight (each counted at its Content-Length, or max_bytes
  without one) stay within `core.BytesInFlight`; beyond, a body is read without being kept and
  the message refused (shed), so that memory stays bounded whatever the number of senders.
- A body not received within BODY_READ_TIMEOUT_S is refused (too_slow), its bytes no longer held.
- Refusals made before the body is read whole close the connection rather than drain it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

from aiohttp import web
from google.rpc import status_pb2

from jouletrace.exporter.intake import core
from jouletrace.exporter.intake.otlp import DecodeError
from jouletrace.exporter.intake.status import RETRY_AFTER_S, STATUS

__all__ = ["HttpIntake", "TRACES_PATH", "CT_PROTOBUF", "CT_JSON"]

log = logging.getLogger(__name__)

PROTOCOL = "http"
TRACES_PATH = "/v1/traces"
CT_PROTOBUF = "application/x-protobuf"
CT_JSON = "application/json"
_FORMATS = {CT_PROTOBUF: "protobuf", CT_JSON: "json"}
_CONTENT_TYPES = {fmt: ct for ct, fmt in _FORMATS.items()}


class HttpIntake:
    """OTLP/HTTP on host:port, over TLS with `ssl_context`. `await start()` listens (OSError if it
    cannot); `port` is then the bound port (useful with port 0); `await stop()` closes it."""

    name = "otlp_http"  # the port's name in the daemon's `ports`

    def __init__(self, host: str, port: int, receiver: core.Receiver, *, ssl_context: ssl.SSLContext | None = None):
        self.host = host
        self.port = port
        self.receiver = receiver
        self.ssl_context = ssl_context
        self._in_flight = core.BytesInFlight(receiver.max_bytes)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # client_max_size is moot: the handler reads the body itself, against max_bytes, so that
        # every refusal is counted. Automatic decompression is off so that gzip is inflated here
        # with a bound.
        app = web.Application(client_max_size=self.receiver.max_bytes)
        app.router.add_post(TRACES_PATH, self._guarded)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("OTLP/HTTP intake listening on %s", runner.addresses)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _guarded(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("OTLP/HTTP intake failed on a request")
            return _answer(self.receiver.refuse(PROTOCOL, "internal", "internal error"), "protobuf")

    async def _handle(self, request: web.Request) -> web.Response:
        """Admit one message: its bytes are counted in flight while it is received."""
        max_bytes = self.receiver.max_bytes
        ctype = request.content_type
        fmt = _FORMATS.get(ctype)
        if fmt is None:
            return self._refuse("unsupported_media_type",
                                f"unsupported Content-Type {ctype!r}; use {CT_PROTOBUF} or {CT_JSON}", "protobuf",
                                close=True)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip"):
            return self._refuse("unsupported_media_type",
                                f"unsupported Content-Encoding {encoding!r}; use gzip or none", fmt, close=True)
        length = request.content_length
        if length is not None and length > max_bytes:
            return self._refuse("too_large", f"body of {length} bytes exceeds the limit of {max_bytes}", fmt,
                                close=True)
        held = max_bytes if length is None else length  # a body of unknown length may reach max_bytes
        if not self._in_flight.take(held):
            # drained unkept, so that the sender reads the answer (closing unread would reset it)
            try:
                await asyncio.wait_for(_discard_body(request), core.BODY_READ_TIMEOUT_S)
            except asyncio.TimeoutError:
                return self._too_slow(fmt)
            return self._refuse("shed", core.IN_FLIGHT_FULL, fmt)
        try:
            return await self._receive(request, fmt, encoding == "gzip", length)
        finally:
            self._in_flight.give(held)

    async def _receive(self, request: web.Request, fmt: str, gzipped: bool, length: int | None) -> web.Response:
        """Read and inflate one admitted message, then export it."""
        max_bytes = self.receiver.max_bytes
        try:
            body = await asyncio.wait_for(_read_body(request, length, max_bytes), core.BODY_READ_TIMEOUT_S)
        except asyncio.IncompleteReadError:
            return self._refuse("malformed", "body ended early", fmt)
        except asyncio.TimeoutError:
            return self._too_slow(fmt)
        if body is None:
            return self._refuse("too_large", f"body exceeds the limit of {max_bytes} bytes", fmt, close=True)
        if gzipped:
            try:
                body = core.gunzip_bounded(body, max_bytes)
            except core.TooLarge as exc:
                return self._refuse("too_large", str(exc), fmt)
            except DecodeError as exc:
                return self._refuse("malformed", str(exc), fmt)
        return _answer(await self.receiver.export(body, fmt, PROTOCOL), fmt)

    def _refuse(self, reason: str, message: str, fmt: str, *, close: bool = False) -> web.Response:
        resp = _answer(self.receiver.refuse(PROTOCOL, reason, message), fmt)
        if close:  # the unread remainder of the body is not wanted; close rather than drain it
            resp.force_close()
        return resp

    def _too_slow(self, fmt: str) -> web.Response:
        return self._refuse("too_slow", f"body not received within {core.BODY_READ_TIMEOUT_S:g} s", fmt, close=True)


def _answer(outcome: core.Outcome, fmt: str) -> web.Response:
    """The response to an outcome, as status.STATUS says, encoded as fmt."""
    answer = STATUS[outcome.reason]
    if outcome.accepted:
        body = outcome.response(fmt)
    else:
        log.debug("OTLP/HTTP %d %s: %s", answer.http, outcome.reason, outcome.message)
        if fmt == "json":
            body = json.dumps({"code": answer.rpc_code, "message": outcome.message}).encode()
        else:
            body = status_pb2.Status(code=answer.rpc_code, message=outcome.message).SerializeToString()
    headers = {"Retry-After": str(RETRY_AFTER_S)} if answer.retry else None
    return web.Response(status=answer.http, body=body, content_type=_CONTENT_TYPES[fmt], headers=headers)


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
