"""The request record: one finished inference request as read from its span.

Times are Unix epoch seconds (float); durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


class IntakeFull(Exception):
    """The ledger holds as many pending requests as it may; the sender should retry later."""


@dataclass(slots=True)
class RequestRecord:
    """A finished request, decoded from an `llm_request` or OpenTelemetry GenAI span.

    Phase durations (`queue_s`, `prefill_s`, `decode_s`) are None when the span does not carry
    them; attribution then treats the whole span as running on the GPU.
    """

    request_id: str
    model: str
    start: float
    end: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    ttft_s: float | None = None
    output_kind: str = "text"  # "text", "image" or "video"
    output_count: int = 0  # images or videos produced; 0 for text
    trace_id: bytes = b""
    span_id: bytes = b""
