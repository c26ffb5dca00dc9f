"""Power-cap advice and actuation (PowerCap): the recommended limits per model and deadline (W),
the limits observed, whether there is data enough to advise, each GPU's headroom (W) and the
limit changes the exporter made."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jouletrace.exporter.powercap import actuation
from jouletrace.exporter.powercap.advisor import PowerCap, power_percentile
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector
from jouletrace.exporter.sinks.prometheus.labels import GPU_LABELS, MODEL_LABELS, backend, gpu_label_values

ADVICE_LABELS = ("model", "deadline_ms", "basis", "backend")


class PowerCapCollector(FamilyCollector):
    def __init__(self, powercap: PowerCap):
        self.powercap = powercap

    def families(self):
        return (
            GaugeMetricFamily("jouletrace_powercap_recommended_watts", "Power limit per GPU with the least energy "
                              "per output within the latency deadline, from the observed windows.",
                              labels=ADVICE_LABELS),
            GaugeMetricFamily("jouletrace_powercap_budget_recommended_watts", "Power limit per GPU that serves the "
                              "most within the deadline while the GPUs, counted at their limit, stay within "
                              "--powercap-budget.", labels=ADVICE_LABELS),
            GaugeMetricFamily("jouletrace_powercap_limits_observed", "Distinct power limits observed in the windows "
                              "kept for advice.", labels=MODEL_LABELS),
            GaugeMetricFamily("jouletrace_powercap_insufficient_data", "1 while there is not enough data to advise: "
                              "no window observed yet, or fewer than 2 distinct power limits.",
                              labels=["model", "reason", "backend"]),
            GaugeMetricFamily("jouletrace_power_headroom_watts", "Enforced power limit minus the 99th percentile of "
                              "power over the window, at least 0.", labels=GPU_LABELS),
            CounterMetricFamily("jouletrace_powercap_changes", "Power-limit changes made by the exporter, by action: "
                                "set (admin API), rollback (latency guard), restore.", labels=["action"]),
        )

    def fill(self, recommended, budget, observed, insufficient, headroom, changes):
        pc = self.powercap
        advice = pc.advice()
        be = backend(pc.samplers)
        if not advice:
            insufficient.add_metric(["", "no_windows", be], 1.0)
        for a in advice:
            observed.add_metric([a.model, be], len(a.limits_w))
            if a.insufficient:
                insufficient.add_metric([a.model, "too_few_limits", be], 1.0)
            for family, recs in ((recommended, a.recommendations), (budget, a.budget)):
                for r in recs:
                    if r.point is not None:
                        family.add_metric([a.model, f"{r.deadline.ms:g}", r.deadline.basis, be],
                                          r.point.power_limit_w)
        for s in pc.samplers:
            p99 = power_percentile(s, pc.ledger.window_s)
            with s.lock:
                limit = s.status.power_limit_w
            if p99 is not None and limit is not None:
                # a GPU at its cap reads a little above it at times (each reading averages
                # its own period, the cap holds over a longer one): that leaves no headroom, not less
                headroom.add_metric(gpu_label_values(s.device), max(0.0, limit - p99))
        counts = pc.actuator.changes if pc.actuator is not None else {}
        for action in actuation.ACTIONS:
            changes.add_metric([action], counts.get(action, 0))
