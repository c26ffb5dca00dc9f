"""vLLM-like OTLP payloads for the intake benchmarks: the captured vLLM span, copied with fresh ids."""

from __future__ import annotations

import os
import pathlib
import sys

TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "reliability")]
from span_load import vllm_message  # noqa: E402


def build(spans: int, end_s: float, spacing_s: float = 0.001, service: str = "bench-model") -> bytes:
    """One ExportTraceServiceRequest of `spans` llm_request spans ending up to `end_s`, unique ids."""
    msg, ss, span = vllm_message(service)
    duration = span.end_time_unix_nano - span.start_time_unix_nano
    for i in range(spans):
        s = ss.spans.add()
        s.CopyFrom(span)
        s.trace_id = os.urandom(16)
        s.span_id = os.urandom(8)
        end = int((end_s - (spans - i) * spacing_s) * 1e9)
        s.end_time_unix_nano = end
        s.start_time_unix_nano = end - duration
    return msg.SerializeToString()
