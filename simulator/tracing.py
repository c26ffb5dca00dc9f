"""The simulated engine's span pipeline, configured as vLLM's: `--otlp-traces-endpoint`, with the
resource's `service.name` from OTEL_SERVICE_NAME, else the served model name."""

from __future__ import annotations

import os

from jouletrace.loadgen.tracing import tracer_provider


def span_exporter_provider(endpoint: str, served_model: str):
    """A tracer provider sending to `endpoint` (OTLP/gRPC, or OTLP/HTTP for a `.../v1/traces` URL)."""
    return tracer_provider(os.environ.get("OTEL_SERVICE_NAME") or served_model, endpoint)
