"""Finished requests as read from their spans: one record, or a batch of rows.

Times are Unix epoch seconds (float); durations are seconds. The intake hands the ledger a
`RequestBatch`: a numpy structured array with one row per request span (what the protobuf decoder
writes directly), the distinct model names and pods its rows index, and the request ids. `RequestRecord`
is the same request as an object, for the JSON decoder and for tests.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np


class IntakeFull(Exception):
    """The ledger holds as many pending requests as it may; the sender should retry later."""


#: Output kinds, as stored in a batch's `output_kind` column.
OUTPUT_KINDS = ("text", "image", "video")

#: One row per request span. Absent phase durations are NaN; `pod` is -1 when the span's resource
#: names no Kubernetes pod. 112 bytes, fields naturally aligned.
REQUEST_DTYPE = np.dtype([
    ("start", "<f8"), ("end", "<f8"),
    ("queue_s", "<f8"), ("prefill_s", "<f8"), ("decode_s", "<f8"), ("ttft_s", "<f8"),
    ("prompt_tokens", "<i8"), ("completion_tokens", "<i8"), ("output_count", "<i8"),
    ("trace_id", "V16"), ("span_id", "V8"),
    ("model", "<i4"), ("pod", "<i4"), ("output_kind", "i1"), ("_pad", "V7"),
])


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
    pod: str = ""  # the Kubernetes pod that served it: `namespace/name`, or `name`; empty: unknown


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(slots=True)
class RequestBatch:
    """Request spans column-wise: `rows` (REQUEST_DTYPE), `models` indexed by rows["model"], `pods`
    by rows["pod"] (-1: none), ids."""

    rows: np.ndarray
    models: list[str]
    request_ids: list[str]
    pods: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls) -> "RequestBatch":
        return cls(np.zeros(0, REQUEST_DTYPE), [], [], [])

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord]) -> "RequestBatch":
        records = list(records)
        rows = np.zeros(len(records), REQUEST_DTYPE)
        models: dict[str, int] = {}
        pods: dict[str, int] = {}
        for i, r in enumerate(records):
            rows[i] = (r.start, r.end, _nan(r.queue_s), _nan(r.prefill_s), _nan(r.decode_s), _nan(r.ttft_s),
                       r.prompt_tokens, r.completion_tokens, r.output_count,
                       r.trace_id.ljust(16, b"\0")[:16], r.span_id.ljust(8, b"\0")[:8],
                       models.setdefault(r.model, len(models)), pods.setdefault(r.pod, len(pods)) if r.pod else -1,
                       OUTPUT_KINDS.index(r.output_kind), b"\0" * 7)
        return cls(rows, list(models), [r.request_id for r in records], list(pods))

    def records(self) -> list[RequestRecord]:
        out = []
        for row, rid in zip(self.rows, self.request_ids):
            out.append(RequestRecord(
                request_id=rid, model=self.models[row["model"]], start=float(row["start"]), end=float(row["end"]),
                prompt_tokens=int(row["prompt_tokens"]), completion_tokens=int(row["completion_tokens"]),
                queue_s=_none(row["queue_s"]), prefill_s=_none(row["prefill_s"]), decode_s=_none(row["decode_s"]),
                ttft_s=_none(row["ttft_s"]), output_kind=OUTPUT_KINDS[row["output_kind"]],
                output_count=int(row["output_count"]), trace_id=bytes(row["trace_id"]), span_id=bytes(row["span_id"]),
                pod=self.pods[row["pod"]] if row["pod"] >= 0 else ""))
        return out
