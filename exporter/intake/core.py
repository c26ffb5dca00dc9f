"""The protocol-neutral part of the OTLP trace intake: one `Receiver.export` per received message.

`Receiver.export(body, fmt, protocol)` decodes an export message (``fmt`` "protobuf" or "json",
already inflated), hands its request spans to the sink as one `RequestBatch` (not when the message
holds none), offers an accepted message to the forwarder, counts it in `IntakeStats` and returns
its `Outcome`. While ``sink.full`` holds, a message is refused before it is decoded (shed), so that
refusing a flood costs little. Refusals the transport makes before a message is whole (too large,
too slow, ...) are counted through `Receiver.refuse`. The transport adapters (otlp_http, otlp_grpc)
answer an outcome as `status.STATUS` says.

Each adapter holds the messages it is receiving or decoding within `BytesInFlight`
(IN_FLIGHT_MESSAGES x max_bytes bytes); the bounds are separate, so that slow senders on one
protocol do not hold back the other.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from jouletrace.exporter.intake.otlp import DecodeError, DecodeResult, decode_json, decode_protobuf, reject_future
from jouletrace.exporter.intake.status import ACCEPTED, STATUS
from jouletrace.exporter.ledger.ledger import span_keys
from jouletrace.exporter.ledger.records import IntakeFull, RequestBatch

__all__ = [
    "IntakeStats",
    "Sink",
    "Outcome",
    "Receiver",
    "BytesInFlight",
    "TooLarge",
    "gunzip_bounded",
    "PROTOCOLS",
    "REASONS",
]

PROTOCOLS = ("http", "grpc")
REASONS = ("too_large", "malformed", "invalid_span", "queue_full", "shed", "too_slow", "unsupported_media_type",
           "internal")

MAX_ERROR_MESSAGE_CHARS = 1024
# Bodies up to this size are decoded on the event loop (a few ms at most); larger ones in the
# default executor so that the loop keeps turning while they decode.
INLINE_DECODE_BYTES = 1 << 20
IN_FLIGHT_MESSAGES = 16  # an intake receives at most this many largest messages at once
BODY_READ_TIMEOUT_S = 30.0  # a message not received by then is refused (too_slow), its bytes no longer held
LEDGER_FULL = "request ledger is full; retry later"
IN_FLIGHT_FULL = "too many bytes in flight; retry later"

_DECODERS = {"protobuf": decode_protobuf, "json": decode_json}


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

    def count(self, protocol: str, outcome: Outcome) -> None:
        """Count one answered export call and what it carried."""
        result = outcome.result
        rejected: dict[str, int] = {}
        accepted = 0
        if result is None:  # refused undecoded: one message
            rejected[outcome.reason] = 1
        else:
            if result.rejected:
                rejected["invalid_span"] = result.rejected
            if outcome.accepted:
                accepted = len(result.batch)
            else:  # refused after decoding: its request spans
                rejected[outcome.reason] = len(result.batch)
        with self._lock:
            if result is not None:
                self._received[protocol] = self._received.get(protocol, 0) + result.spans
                self._ignored[protocol] = self._ignored.get(protocol, 0) + result.ignored
            self._accepted[protocol] = self._accepted.get(protocol, 0) + accepted
            for reason, n in rejected.items():
                key = (protocol, reason)
                self._rejected[key] = self._rejected.get(key, 0) + n
            key = (protocol, STATUS[outcome.reason].code(protocol))
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


class Sink(Protocol):
    """Where accepted request spans go (the ledger)."""

    @property
    def full(self) -> bool:
        """Whether it takes no more requests for now: messages are then shed undecoded."""

    def submit(self, batch: RequestBatch) -> object:
        """Take a batch of request spans whole, or raise IntakeFull taking none."""


@dataclass(frozen=True)
class Outcome:
    """What became of one export message.

    reason   status.ACCEPTED, or the reason (in REASONS) it was refused for
    message  why it was refused, or which spans of an accepted message were rejected ("" if none)
    result   the decoded message; None when refused undecoded
    """

    reason: str
    message: str = ""
    result: DecodeResult | None = None

    @property
    def accepted(self) -> bool:
        return self.reason == ACCEPTED

    def response(self, fmt: str) -> bytes:
        """The ExportTraceServiceResponse of an accepted message, encoded as fmt ("protobuf" or
        "json"): empty, or with a partial_success naming the spans rejected."""
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if self.result.rejected:
            resp.partial_success.rejected_spans = self.result.rejected
            resp.partial_success.error_message = self.message
        if fmt == "json":
            return json.dumps(json_format.MessageToDict(resp)).encode()
        return resp.SerializeToString()


class Receiver:
    """Decodes, submits, forwards and counts the export messages both transports receive.

    Given a `forward` (`sinks.forward.Forwarder`), each accepted message (partial success
    included) is offered to it, as received after gunzip, with the span keys of the request rows
    handed to the sink.
    """

    def __init__(self, sink: Sink, stats: IntakeStats, *, max_bytes: int, default_model: str, forward=None):
        self.sink = sink
        self.stats = stats
        self.max_bytes = max_bytes
        self.default_model = default_model
        self.forward = forward

    def refuse(self, protocol: str, reason: str, message: str) -> Outcome:
        """Count a message refused before it was decoded (by the transport, or shed); its outcome."""
        outcome = Outcome(reason, message)
        self.stats.count(protocol, outcome)
        return outcome

    async def export(self, body: bytes | bytearray, fmt: str, protocol: str) -> Outcome:
        """Receive one whole export message: decode it (off the event loop if larger than
        INLINE_DECODE_BYTES), submit its request spans, forward it if accepted, count it.

        Raises what the sink raises besides IntakeFull. A cancellation (the sender went away)
        while a message decodes off the loop is held back until it is done, so that the spans it
        submitted are counted and forwarded all the same."""
        if self.sink.full:
            return self.refuse(protocol, "shed", LEDGER_FULL)
        if len(body) <= INLINE_DECODE_BYTES:
            outcome = self._decode_and_submit(body, fmt)
        else:
            done = asyncio.get_running_loop().run_in_executor(None, self._decode_and_submit, body, fmt)
            while True:
                try:
                    outcome = await asyncio.shield(done)
                    break
                except asyncio.CancelledError:
                    if done.cancelled():
                        raise
        self.stats.count(protocol, outcome)
        if outcome.accepted and self.forward is not None:
            result = outcome.result
            self.forward.offer(body, span_keys(result.batch.rows), result.spans, fmt)
        return outcome

    def _decode_and_submit(self, body, fmt: str) -> Outcome:
        try:
            result = reject_future(_DECODERS[fmt](body, self.default_model), time.time())
        except DecodeError as exc:
            return Outcome("malformed", str(exc)[:MAX_ERROR_MESSAGE_CHARS])
        if len(result.batch):
            try:
                self.sink.submit(result.batch)
            except IntakeFull:
                return Outcome("queue_full", LEDGER_FULL, result)
        return Outcome(ACCEPTED, _rejected_spans_message(result) if result.rejected else "", result)


def _rejected_spans_message(result: DecodeResult) -> str:
    msg = f"{result.rejected} span(s) rejected: " + "; ".join(result.errors)
    if result.rejected > len(result.errors):
        msg += "; ..."
    return msg[:MAX_ERROR_MESSAGE_CHARS]


class BytesInFlight:
    """Bytes of the messages one intake is receiving or decoding, held within IN_FLIGHT_MESSAGES x
    max_bytes. Used from the event loop only."""

    def __init__(self, max_bytes: int) -> None:
        self.limit = IN_FLIGHT_MESSAGES * max_bytes
        self.held = 0

    def take(self, n: int) -> bool:
        """Hold n more bytes if that stays within the limit; False (nothing held) otherwise."""
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class TooLarge(Exception):
    pass


def gunzip_bounded(data: bytes | bytearray, limit: int) -> bytes:
    """Inflate a gzip body (several members allowed), never producing more than limit + 1 bytes.

    Raises TooLarge past the limit and DecodeError if the data is not complete gzip.
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
            raise TooLarge(f"decompressed body exceeds {limit} bytes")
        out.append(chunk)
        if not d.eof:
            raise DecodeError("truncated gzip body")
        data = d.unused_data
        if not data:
            break
    return b"".join(out)
