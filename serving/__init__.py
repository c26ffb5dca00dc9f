"""Inference servers instrumented the way jouletrace reads them: one OpenTelemetry span per request,
with the GenAI attributes that attribution needs ([serving.md](../docs/serving.md))."""
