"""jouletrace_gpu_*: each GPU's readings (its sampler) and the energy attributed on it (the ledger).
Energy in J, power in W, clocks in Hz, memory in bytes, times in Unix seconds.

The energy counter's resets, rejected jumps and reads were named `jouletrace_gpu_counter_resets_total`,
`jouletrace_gpu_counter_rejected_total` and `jouletrace_gpu_energy_counter_reads_total` in 0.1.0:
names holding a metric type, which Prometheus's naming rules refuse. Those names stay for one release
as duplicate counters whose HELP starts with "DEPRECATED: use <new name>"."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector, deprecated_counter
from jouletrace.exporter.sinks.prometheus.labels import GPU_LABELS, gpu_label_values


def _gauge(name: str, doc: str, extra: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"jouletrace_gpu_{name}", doc, labels=[*GPU_LABELS, *extra])


def _counter(name: str, doc: str, extra: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"jouletrace_gpu_{name}", doc, labels=[*GPU_LABELS, *extra])


def _deprecated(old: str, new: str) -> CounterMetricFamily:
    return deprecated_counter(f"jouletrace_gpu_{old}", f"jouletrace_gpu_{new}", GPU_LABELS)


class GPUCollector(FamilyCollector):
    def __init__(self, samplers: list[GPUSampler], ledger: Ledger, clock: Callable[[], float] = time.time):
        self.samplers = samplers
        self.ledger = ledger
        self._clock = clock

    def families(self):
        return (
            _counter("energy_joules", "GPU energy measured since the exporter started (settled to the energy "
                     "counter; method=power_integral where the GPU has none).", ["method"]),
            _counter("attributed_energy_joules", "Finalized GPU energy attributed to requests."),
            _counter("idle_energy_joules", "Finalized GPU energy spent while no request ran."),
            _gauge("finalized_timestamp_seconds", "Time up to which this GPU's energy has been attributed."),
            _gauge("up", "1 while the GPU answers reads, 0 after a read error."),
            _gauge("sample_age_seconds", "Seconds since the last successful power sample."),
            _gauge("power_watts", "Power draw."),
            _gauge("power_limit_watts", "Enforced power limit."),
            _gauge("sm_clock_hertz", "SM clock."),
            _gauge("utilization_ratio", "Fraction of time a kernel was running (0-1)."),
            _gauge("memory_used_bytes", "GPU memory in use."),
            _gauge("memory_total_bytes", "GPU memory in all."),
            _gauge("temperature_celsius", "GPU temperature."),
            _gauge("clocks_event_active", "1 while this clocks-event (throttle) reason holds; "
                   "reason=sw_power_cap means the power cap is limiting clocks.", ["reason"]),
            _gauge("sm_occupancy_ratio", "GPM SM occupancy (0-1), where supported."),
            _gauge("tensor_activity_ratio", "GPM tensor pipe activity (0-1), where supported."),
            _gauge("dram_bandwidth_utilization_ratio", "GPM DRAM bandwidth utilization (0-1), where supported."),
            _counter("energy_resets", "Energy counter resets seen (driver reload); those intervals were "
                     "integrated from power."),
            _counter("energy_jumps_rejected", "Implausible energy counter jumps rejected."),
            _counter("energy_reads", "Energy counter reads (each costs ~4 ms CPU on H100)."),
            _counter("read_errors", "GPU read errors (NVML errors on real GPUs) by call and code.", ["call", "code"]),
            _counter("sampler_cpu_seconds", "CPU seconds spent by this GPU's sampler thread."),
            _deprecated("counter_resets", "energy_resets"),
            _deprecated("counter_rejected", "energy_jumps_rejected"),
            _deprecated("energy_counter_reads", "energy_reads"),
        )

    def fill(self, energy, attributed, idle, finalized, up, age, power, limit, clock, util, mem, mem_total, temp,
             reasons, occupancy, tensor, dram, resets, rejected, reads, errors, cpu, old_resets, old_rejected, old_reads):
        now = self._clock()
        for sampler, totals in zip(self.samplers, self.ledger.gpus):
            labels = gpu_label_values(sampler.device)
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
            for families, value in (((resets, old_resets), sampler.counter_resets),
                                    ((rejected, old_rejected), sampler.counter_rejected),
                                    ((reads, old_reads), sampler.counter_reads)):
                for family in families:
                    family.add_metric(labels, value)
            for (call, code), n in sorted(sampler.errors.items()):
                errors.add_metric(labels + [call, code], n)
            cpu.add_metric(labels, sampler.cpu_seconds)
