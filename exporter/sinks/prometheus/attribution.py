"""The ledger's attribution: energy (J), requests and tokens per model, the per-request energy
histogram, the window's efficiency gauges, and the span accounting of late, duplicate and
clock-corrected spans.

The token counters were named `jouletrace_model_prompt_tokens_total` and
`jouletrace_model_completion_tokens_total` in 0.1.0; they are now input and output tokens, as
OpenTelemetry's GenAI conventions say. The old names stay for one release as duplicate counters
whose HELP starts with "DEPRECATED: use <new name>"."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import ENERGY_BUCKETS_J, Ledger
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector, cumulative_buckets, deprecated_counter
from jouletrace.exporter.sinks.prometheus.labels import MODEL_LABELS, backend


class AttributionCollector(FamilyCollector):
    def __init__(self, samplers: list[GPUSampler], ledger: Ledger):
        self.samplers = samplers  # their backend labels the energy
        self.ledger = ledger

    def families(self):
        lab = MODEL_LABELS
        return (
            CounterMetricFamily("jouletrace_model_energy_joules", "GPU energy attributed to the model's requests.",
                                labels=lab),
            CounterMetricFamily("jouletrace_model_requests", "Requests finished.", labels=lab),
            CounterMetricFamily("jouletrace_model_input_tokens", "Input (prompt) tokens of finished requests.",
                                labels=lab),
            CounterMetricFamily("jouletrace_model_output_tokens", "Output (completion) tokens of finished requests.",
                                labels=lab),
            CounterMetricFamily("jouletrace_model_images", "Images generated.", labels=lab),
            CounterMetricFamily("jouletrace_model_videos", "Videos generated.", labels=lab),
            HistogramMetricFamily("jouletrace_request_energy_joules", "Energy attributed to each finished request.",
                                  labels=lab),
            GaugeMetricFamily("jouletrace_model_energy_per_output_token_joules",
                              "Attributed energy per output token generated over the sliding window.", labels=lab),
            GaugeMetricFamily("jouletrace_model_output_tokens_per_second_per_watt",
                              "Output tokens per second per watt of all measured GPU power (static power "
                              "included) over the sliding window.", labels=lab),
            GaugeMetricFamily("jouletrace_model_energy_per_image_joules", "Energy per image over the window.",
                              labels=lab),
            GaugeMetricFamily("jouletrace_model_energy_per_video_joules", "Energy per video over the window.",
                              labels=lab),
            CounterMetricFamily("jouletrace_spans_late", "Request spans that arrived after part (part=partial) or "
                                "all (part=whole) of their request's time had been attributed; that time got no "
                                "energy.", labels=["part"]),
            CounterMetricFamily("jouletrace_spans_duplicate", "Request spans seen twice (same trace and span id), "
                                "counted once.", labels=[]),
            GaugeMetricFamily("jouletrace_span_clock_offset_seconds", "Least (arrival - end) of the model's "
                              "request spans over 2 minutes: the senders' clock lag plus the shortest export "
                              "delay; negative: their clock is ahead, and their spans are corrected.",
                              labels=["model"]),
            CounterMetricFamily("jouletrace_spans_clock_corrected", "Request spans moved back onto the exporter's "
                                "clock because their sender's clock is ahead.", labels=[]),
            GaugeMetricFamily("jouletrace_requests_pending", "Requests held for attribution.", labels=[]),
            CounterMetricFamily("jouletrace_model_labels_folded", "Spans whose model label folded into `other` "
                                "(the model label cap was reached).", labels=[]),
            CounterMetricFamily("jouletrace_attribution_passes", "Attribution passes run.", labels=[]),
            CounterMetricFamily("jouletrace_attribution_seconds", "Wall seconds spent in attribution passes.",
                                labels=[]),
            CounterMetricFamily("jouletrace_attribution_errors", "Attribution passes that failed (stage=pass; the "
                                "next pass runs) and ledger consumers that raised on accepted requests "
                                "(stage=consumer; the requests stay accepted).", labels=["stage"]),
            deprecated_counter("jouletrace_model_prompt_tokens", "jouletrace_model_input_tokens", lab),
            deprecated_counter("jouletrace_model_completion_tokens", "jouletrace_model_output_tokens", lab),
        )

    def fill(self, energy, requests, input_tokens, output_tokens, images, videos, hist, per_token, per_watt, per_image,
             per_video, late, duplicate, offset, corrected, pending, folded, passes, seconds, errors, old_prompt,
             old_completion):
        led = self.ledger
        be = backend(self.samplers)
        for name, m in led.snapshot_models():
            labels = [name, be]
            energy.add_metric(labels, m.energy_j)
            requests.add_metric(labels, m.requests)
            for families, value in (((input_tokens, old_prompt), m.prompt_tokens),
                                    ((output_tokens, old_completion), m.completion_tokens)):
                for family in families:
                    family.add_metric(labels, value)
            images.add_metric(labels, m.images)
            videos.add_metric(labels, m.videos)
            hist.add_metric(labels, cumulative_buckets(ENERGY_BUCKETS_J, m.bucket_counts), m.energy_observed_j)
        for name, ws in led.window().items():
            for family, value in ((per_token, ws.joules_per_output_token),
                                  (per_watt, ws.output_tokens_per_second_per_watt),
                                  (per_image, ws.joules_per_image), (per_video, ws.joules_per_video)):
                if value is not None:
                    family.add_metric([name, be], value)
        late.add_metric(["partial"], led.spans_late)
        late.add_metric(["whole"], led.spans_expired)
        duplicate.add_metric([], led.spans_duplicate)
        for model, offset_s in led.clock_offsets().items():
            offset.add_metric([model], offset_s)
        corrected.add_metric([], led.skew.corrected)
        pending.add_metric([], led.pending)
        folded.add_metric([], led.folded_models)
        passes.add_metric([], led.passes)
        seconds.add_metric([], led.pass_seconds)
        errors.add_metric(["pass"], led.pass_errors)
        errors.add_metric(["consumer"], led.consumer_errors)
