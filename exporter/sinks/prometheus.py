"""The Prometheus collector: renders the samplers', ledger's and intake's state at scrape time."""

from __future__ import annotations

import time
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from jouletrace import __version__
from jouletrace.exporter.engine import GAUGES, UP, EngineState, span_token_ratio
from jouletrace.exporter.gpu.device import Selection
from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import ENERGY_BUCKETS_J, Ledger
from jouletrace.exporter.sinks.forward import DELAY_BUCKETS_S

GPU_LABELS = ["gpu", "uuid", "backend"]


class JouletraceCollector(Collector):
    def __init__(self, samplers: list[GPUSampler], ledger: Ledger, intake_snapshot: Callable[[], dict],
                 engines: list[EngineState] = (), clock: Callable[[], float] = time.time,
                 forward_snapshot: Callable[[], dict] | None = None, selection: Selection = Selection(),
                 config_reloads: dict[str, int] | None = None):
        self.samplers = samplers
        self.ledger = ledger
        self.intake_snapshot = intake_snapshot
        self.engines = list(engines)
        self.forward_snapshot = forward_snapshot  # None: span forwarding is off, no forward_* series
        self.selection = selection
        self.config_reloads = config_reloads if config_reloads is not None else {}
        self._clock = clock

    def describe(self):  # rendering needs no sample collection at registration
        return []

    def collect(self) -> Iterator:
        yield from self._gpus()
        yield from self._models()
        yield from self._engines()
        yield from self._self()
        if self.forward_snapshot is not None:
            yield from self._forward(self.forward_snapshot())

    def _gpus(self) -> Iterator:
        def gauge(name, doc, extra=()):
            return GaugeMetricFamily(f"jouletrace_gpu_{name}", doc, labels=GPU_LABELS + list(extra))

        def counter(name, doc, extra=()):
            return CounterMetricFamily(f"jouletrace_gpu_{name}", doc, labels=GPU_LABELS + list(extra))

        energy = counter("energy_joules", "GPU energy measured since the exporter started (settled to the energy "
                         "counter; method=power_integral where the GPU has none).", ["method"])
        attributed = counter("attributed_energy_joules", "Finalized GPU energy attributed to requests.")
        idle = counter("idle_energy_joules", "Finalized GPU energy spent while no request ran.")
        finalized = gauge("finalized_timestamp_seconds", "Time up to which this GPU's energy has been attributed.")
        up = gauge("up", "1 while the GPU answers reads, 0 after a read error.")
        age = gauge("sample_age_seconds", "Seconds since the last successful power sample.")
        power = gauge("power_watts", "Power draw.")
        limit = gauge("power_limit_watts", "Enforced power limit.")
        clock = gauge("sm_clock_hertz", "SM clock.")
        util = gauge("utilization_ratio", "Fraction of time a kernel was running (0-1).")
        mem = gauge("memory_used_bytes", "GPU memory in use.")
        mem_total = gauge("memory_total_bytes", "GPU memory in all.")
        temp = gauge("temperature_celsius", "GPU temperature.")
        reasons = gauge("clocks_event_active", "1 while this clocks-event (throttle) reason holds; "
                        "reason=sw_power_cap means the power cap is limiting clocks.", ["reason"])
        occupancy = gauge("sm_occupancy_ratio", "GPM SM occupancy (0-1), where supported.")
        tensor = gauge("tensor_activity_ratio", "GPM tensor pipe activity (0-1), where supported.")
        dram = gauge("dram_bandwidth_utilization_ratio", "GPM DRAM bandwidth utilization (0-1), where supported.")
        resets = counter("counter_resets", "Energy counter resets seen (driver reload); those intervals were "
                         "integrated from power.")
        rejected = counter("counter_rejected", "Implausible energy counter jumps rejected.")
        reads = counter("energy_counter_reads", "Energy counter reads (each costs ~4 ms CPU on H100).")
        errors = counter("read_errors", "GPU read errors (NVML errors on real GPUs) by call and code.", ["call", "code"])
        cpu = counter("sampler_cpu_seconds", "CPU seconds spent by this GPU's sampler thread.")
        now = self._clock()
        for sampler, totals in zip(self.samplers, self.ledger.gpus):
            d = sampler.device
            labels = [str(d.index), d.uuid, d.backend]
            with sampler.lock:
                energy.add_metric(labels + [sampler.method], sampler.timeline.total_j)
                st = sampler.status
                p, last = sampler.power_w, sampler.last_sample_time
            attributed.add_metric(labels, totals.attributed_j)
            idle.add_metric(labels, totals.idle_j)
            if totals.finalized_until is not None:
                finalized.add_metric(labels, totals.finalized_until)
            up.add_metric(labels, 1.0 if sampler.healthy else 0.0)
            if last is not None:
                age.add_metric(labels, max(0.0, now - last))
            for family, value in ((power, p), (limit, st.power_limit_w), (clock, st.sm_clock_hz),
                                  (util, st.utilization), (mem, st.memory_used_bytes),
                                  (mem_total, st.memory_total_bytes), (temp, st.temperature_c),
                                  (occupancy, st.sm_occupancy), (tensor, st.tensor_activity),
                                  (dram, st.dram_bandwidth_utilization)):
                if value is not None:
                    family.add_metric(labels, float(value))
            for reason, active in st.clocks_event_reasons.items():
                reasons.add_metric(labels + [reason], 1.0 if active else 0.0)
            resets.add_metric(labels, sampler.counter_resets)
            rejected.add_metric(labels, sampler.counter_rejected)
            reads.add_metric(labels, sampler.counter_reads)
            for (call, code), n in sorted(sampler.errors.items()):
                errors.add_metric(labels + [call, code], n)
            cpu.add_metric(labels, sampler.cpu_seconds)
        yield from (energy, attributed, idle, finalized, up, age, power, limit, clock, util, mem, mem_total, temp,
                    reasons, occupancy, tensor, dram, resets, rejected, reads, errors, cpu)

    def _backend(self) -> str:
        return ",".join(sorted({s.device.backend for s in self.samplers})) or "none"

    def _models(self) -> Iterator:
        # energy-valued series carry the backend too, so simulated joules never pass for measured ones
        lab = ["model", "backend"]
        backend = self._backend()
        energy = CounterMetricFamily("jouletrace_model_energy_joules", "GPU energy attributed to the model's requests.", labels=lab)
        requests = CounterMetricFamily("jouletrace_model_requests", "Requests finished.", labels=lab)
        prompt = CounterMetricFamily("jouletrace_model_prompt_tokens", "Prompt (input) tokens of finished requests.", labels=lab)
        completion = CounterMetricFamily("jouletrace_model_completion_tokens", "Completion (output) tokens of finished requests.", labels=lab)
        images = CounterMetricFamily("jouletrace_model_images", "Images generated.", labels=lab)
        videos = CounterMetricFamily("jouletrace_model_videos", "Videos generated.", labels=lab)
        hist = HistogramMetricFamily("jouletrace_request_energy_joules", "Energy attributed to each finished request.", labels=lab)
        for name, m in self.ledger.snapshot_models():
            energy.add_metric([name, backend], m.energy_j)
            requests.add_metric([name, backend], m.requests)
            prompt.add_metric([name, backend], m.prompt_tokens)
            completion.add_metric([name, backend], m.completion_tokens)
            images.add_metric([name, backend], m.images)
            videos.add_metric([name, backend], m.videos)
            cumulative, buckets = 0, []
            for bound, n in zip(list(ENERGY_BUCKETS_J) + [float("inf")], m.bucket_counts):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            hist.add_metric([name, backend], buckets, m.energy_observed_j)
        yield from (energy, requests, prompt, completion, images, videos, hist)

        per_token = GaugeMetricFamily("jouletrace_model_energy_per_output_token_joules",
                                      "Attributed energy per output token generated over the sliding window.", labels=lab)
        per_watt = GaugeMetricFamily("jouletrace_model_output_tokens_per_second_per_watt",
                                     "Output tokens per second per watt of all measured GPU power (static power "
                                     "included) over the sliding window.", labels=lab)
        per_image = GaugeMetricFamily("jouletrace_model_energy_per_image_joules", "Energy per image over the window.", labels=lab)
        per_video = GaugeMetricFamily("jouletrace_model_energy_per_video_joules", "Energy per video over the window.", labels=lab)
        for name, ws in self.ledger.window().items():
            for family, value in ((per_token, ws.joules_per_output_token), (per_watt, ws.output_tokens_per_second_per_watt),
                                  (per_image, ws.joules_per_image), (per_video, ws.joules_per_video)):
                if value is not None:
                    family.add_metric([name, backend], value)
        yield from (per_token, per_watt, per_image, per_video)

    def _engines(self) -> Iterator:
        """The inference servers' own series, beside the energy (the study's latent factors)."""
        up = GaugeMetricFamily("jouletrace_engine_up", "1 while the engine's metrics endpoint answers.",
                               labels=["engine"])
        failures = CounterMetricFamily("jouletrace_engine_scrape_failures", "Failed engine scrapes by reason "
                                       "(down, slow, garbage).", labels=["engine", "reason"])
        lab = ["engine", "model"]
        running = GaugeMetricFamily("jouletrace_engine_requests_running", "Requests in the engine's running batch.",
                                    labels=lab)
        waiting = GaugeMetricFamily("jouletrace_engine_requests_waiting", "Requests waiting in the engine's queue.",
                                    labels=lab)
        kv = GaugeMetricFamily("jouletrace_engine_kv_cache_usage_ratio", "KV-cache usage (0-1).", labels=lab)
        prompt = CounterMetricFamily("jouletrace_engine_prompt_tokens", "Prompt tokens the engine counted.", labels=lab)
        generation = CounterMetricFamily("jouletrace_engine_generation_tokens", "Output tokens the engine counted.",
                                         labels=lab)
        ratio = GaugeMetricFamily("jouletrace_engine_span_token_ratio", "Output tokens seen in spans per output token "
                                  "the engine counted since the first scrape: below 1 means spans are missing.",
                                  labels=lab)
        for st in self.engines:
            answers = st.state == UP
            up.add_metric([st.url], 1.0 if answers else 0.0)
            for reason, n in sorted(st.failures.items()):
                failures.add_metric([st.url, reason], n)
            for model, series in st.values.items():
                labels = [st.url, model]
                for family, key in ((running, "requests_running"), (waiting, "requests_waiting"),
                                    (kv, "kv_cache_usage_ratio"), (prompt, "prompt_tokens"),
                                    (generation, "generation_tokens")):
                    if key in series and (answers or key not in GAUGES):  # a failed engine's gauges are stale
                        family.add_metric(labels, series[key])
                value = span_token_ratio(st, model, self.ledger.completion_tokens(model))
                if value is not None:
                    ratio.add_metric(labels, value)
        yield from (up, failures, running, waiting, kv, prompt, generation, ratio)

    def _self(self) -> Iterator:
        snap = self.intake_snapshot()
        received = CounterMetricFamily("jouletrace_spans_received", "Spans received.", labels=["protocol"])
        for protocol, n in sorted(snap.get("received", {}).items()):
            received.add_metric([protocol], n)
        ignored = CounterMetricFamily("jouletrace_spans_ignored", "Spans received that describe no inference request.",
                                      labels=["protocol"])
        for protocol, n in sorted(snap.get("ignored", {}).items()):
            ignored.add_metric([protocol], n)
        rejected = CounterMetricFamily("jouletrace_spans_rejected", "Spans (or whole messages) rejected, by reason.",
                                       labels=["protocol", "reason"])
        for (protocol, reason), n in sorted(snap.get("rejected", {}).items()):
            rejected.add_metric([protocol, reason], n)
        exports = CounterMetricFamily("jouletrace_otlp_requests", "OTLP export calls answered, by status code.",
                                      labels=["protocol", "code"])
        for (protocol, code), n in sorted(snap.get("requests", {}).items()):
            exports.add_metric([protocol, str(code)], n)
        yield from (received, ignored, rejected, exports)
        led = self.ledger
        late = CounterMetricFamily("jouletrace_spans_late", "Request spans that arrived after part (part=partial) or all "
                                   "(part=whole) of their request's time had been attributed; that time got no energy.",
                                   labels=["part"])
        late.add_metric(["partial"], led.spans_late)
        late.add_metric(["whole"], led.spans_expired)
        yield late
        yield CounterMetricFamily("jouletrace_spans_duplicate", "Request spans seen twice (same trace and span id), "
                                  "counted once.", value=led.spans_duplicate)
        offset = GaugeMetricFamily("jouletrace_span_clock_offset_seconds", "Least (arrival - end) of the model's "
                                   "request spans over 2 minutes: the senders' clock lag plus the shortest export "
                                   "delay; negative: their clock is ahead, and their spans are corrected.",
                                   labels=["model"])
        for model, seconds in led.clock_offsets().items():
            offset.add_metric([model], seconds)
        yield offset
        yield CounterMetricFamily("jouletrace_spans_clock_corrected", "Request spans moved back onto the exporter's "
                                  "clock because their sender's clock is ahead.", value=led.skew.corrected)
        yield GaugeMetricFamily("jouletrace_requests_pending", "Requests held for attribution.", value=led.pending)
        yield CounterMetricFamily("jouletrace_model_labels_folded", "Spans whose model label folded into `other` "
                                  "(the model label cap was reached).", value=led.folded_models)
        yield CounterMetricFamily("jouletrace_attribution_passes", "Attribution passes run.", value=led.passes)
        yield CounterMetricFamily("jouletrace_attribution_seconds", "Wall seconds spent in attribution passes.",
                                  value=led.pass_seconds)
        info = InfoMetricFamily("jouletrace_build", "jouletrace version and GPU backend.")
        info.add_metric([], {"version": __version__, "backend": self._backend()})
        yield info
        reloads = CounterMetricFamily("jouletrace_config_reloads", "Configuration reloads by result.",
                                      labels=["result"])
        for result in ("applied", "restart_needed", "invalid"):
            reloads.add_metric([result], self.config_reloads.get(result, 0))
        yield reloads
        chosen = InfoMetricFamily("jouletrace_gpu_selection", "Which GPUs are sampled and where the choice came from.")
        chosen.add_metric([], {"source": self.selection.source,
                               "gpus": ",".join(s.device.uuid for s in self.samplers)})
        yield chosen

    @staticmethod
    def _forward(snap: dict) -> Iterator:
        """Span forwarding (`--forward-otlp`): every offered span is sent, dropped or still held."""
        yield CounterMetricFamily("jouletrace_forward_spans_sent", "Spans forwarded and accepted upstream.",
                                  value=snap["sent"])
        dropped = CounterMetricFamily("jouletrace_forward_spans_dropped", "Spans not forwarded, by reason: "
                                      "buffer_full, rejected (upstream refused, not retryable), partial (refused in "
                                      "a partial success), malformed, shutdown.", labels=["reason"])
        for reason, n in snap["dropped"].items():
            dropped.add_metric([reason], n)
        yield dropped
        yield GaugeMetricFamily("jouletrace_forward_spans_held", "Spans held for forwarding (waiting for their "
                                "energy, or for the upstream).", value=snap["held_spans"])
        yield GaugeMetricFamily("jouletrace_forward_buffer_bytes", "Bytes of span messages held for forwarding.",
                                value=snap["buffer_bytes"])
        yield CounterMetricFamily("jouletrace_forward_retries", "Forwarding calls that failed and were retried.",
                                  value=snap["retries"])
        yield GaugeMetricFamily("jouletrace_forward_up", "0 after a forwarding call failed and until one succeeds.",
                                value=1.0 if snap["up"] else 0.0)
        cumulative, buckets = 0, []
        for bound, n in zip(list(DELAY_BUCKETS_S) + [float("inf")], snap["delay_counts"]):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        yield HistogramMetricFamily("jouletrace_forward_delay_seconds", "Seconds from a message's receipt to its "
                                    "delivery upstream (mostly the wait for its spans' energy to settle).",
                                    buckets=buckets, sum_value=snap["delay_sum"])
