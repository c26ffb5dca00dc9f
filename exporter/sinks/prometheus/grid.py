"""Cost and emissions per model (Grid): over the sliding window of the energy-per-token gauges, the
attributed energy per million output tokens, per image and per video priced per kWh (in the
`currency` label's unit) and in grams CO2e; the totals of each model's attributed energy priced as it
grew; and the grid file's errors and read time (Unix s).

The cost series are declared only where a price is given (`--electricity-price`, or a grid file
that may hold one), the emissions series only where a carbon intensity is, the grid file's only
with `--grid-file`: /metrics holds none of them where none is configured."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jouletrace.exporter.gpu.sampler import GPUSampler
from jouletrace.exporter.grid import PER_MILLION, Grid, per_kwh
from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.sinks.prometheus.families import FamilyCollector
from jouletrace.exporter.sinks.prometheus.labels import MODEL_LABELS, backend

COST_LABELS = (*MODEL_LABELS, "currency")
PER = (("million_output_tokens", "per million output tokens"), ("image", "per image"), ("video", "per video"))


class GridCollector(FamilyCollector):
    def __init__(self, grid: Grid, samplers: list[GPUSampler], ledger: Ledger):
        self.grid = grid
        self.samplers = samplers  # their backend labels the energy
        self.ledger = ledger
        # the flags and the path never change: what is declared is decided once
        self._shown = tuple(prefix for prefix, given in (
            ("jouletrace_model_cost", grid.flags.electricity_price is not None or bool(grid.path)),
            ("jouletrace_model_co2e", grid.flags.grid_carbon_intensity is not None or bool(grid.path)),
            ("jouletrace_grid_file", bool(grid.path))) if given)

    def families(self):
        return tuple(f for f in self._every_family() if f.name.startswith(self._shown))

    @staticmethod
    def _every_family():
        return (
            *(GaugeMetricFamily(f"jouletrace_model_cost_per_{per}", f"Cost of the attributed energy {what} over "
                                "the sliding window, in the currency labelled.", labels=COST_LABELS) for per, what in PER),
            CounterMetricFamily("jouletrace_model_cost", "Cost of the energy attributed to the model's requests, "
                                "at the price in effect as it was attributed.", labels=COST_LABELS),
            *(GaugeMetricFamily(f"jouletrace_model_co2e_per_{per}_grams", f"Emissions of the attributed energy {what} "
                                "over the sliding window, grams CO2e.", labels=MODEL_LABELS) for per, what in PER),
            CounterMetricFamily("jouletrace_model_co2e_grams", "Emissions of the energy attributed to the model's "
                                "requests, grams CO2e, at the carbon intensity in effect as it was attributed.",
                                labels=MODEL_LABELS),
            CounterMetricFamily("jouletrace_grid_file_errors", "Reads of --grid-file that failed, by reason "
                                "(missing, unreadable, invalid); the last good values stayed.", labels=["reason"]),
            GaugeMetricFamily("jouletrace_grid_file_read_timestamp_seconds", "When the values in effect were read "
                              "from --grid-file.", labels=[]),
        )

    def fill(self, *declared):
        names = {f.name: f for f in declared}  # those not declared are filled, then dropped
        cost_token, cost_image, cost_video, cost, co2e_token, co2e_image, co2e_video, co2e, errors, read_at = (
            names.get(f.name, f) for f in self._every_family())
        values, costs, grams, errs, read_time = self.grid.snapshot()
        be = backend(self.samplers)
        price, intensity = values.electricity_price, values.grid_carbon_intensity
        for name, ws in self.ledger.window().items():
            for joules, per, priced, emitted in ((ws.joules_per_output_token, PER_MILLION, cost_token, co2e_token),
                                                 (ws.joules_per_image, 1, cost_image, co2e_image),
                                                 (ws.joules_per_video, 1, cost_video, co2e_video)):
                if joules is None:
                    continue
                if price is not None:
                    priced.add_metric([name, be, values.currency], per_kwh(joules * per, price))
                if intensity is not None:
                    emitted.add_metric([name, be], per_kwh(joules * per, intensity))
        for (name, currency), total in sorted(costs.items()):
            cost.add_metric([name, be, currency], total)
        for name, total in sorted(grams.items()):
            co2e.add_metric([name, be], total)
        if self.grid.path:
            for reason, n in sorted(errs.items()):
                errors.add_metric([reason], n)
            if read_time is not None:
                read_at.add_metric([], read_time)
