"""The dashboards, built with Grafana's Foundation SDK: a fleet overview and a per-deployment drill-down
with a row per GPU. `build.py` turns them into JSON; edit them here, never in the JSON."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, StackingConfig
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.common import GraphThresholdsStyleMode, LineInterpolation, StackingMode
from grafana_foundation_sdk.models.dashboard import (DashboardLinkType, DataSourceRef, DynamicConfigValue,
                                                     FieldColorModeId, Threshold, ThresholdsMode, ValueMap,
                                                     ValueMappingResult, VariableHide, VariableRefresh,
                                                     VariableSort)
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"
TOKENS_PER_S = "suffix: tok/s"
TOKENS_PER_S_PER_W = "suffix: tok/s/W"
TAG = "jouletrace"


def _panel(builder, title: str, unit: str, description: str, *targets: tuple[str, str], span: int = 8):
    """A panel of `span` columns of 24 whose targets are (PromQL, legend) pairs."""
    panel = builder.title(title).unit(unit).description(description).datasource(DATASOURCE).span(span).height(8)
    for ref, (expr, legend) in zip("ABCDEFGH", targets):
        panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
    return panel


def _energy_heatmap(selector: str, description: str):
    panel = (heatmap.Panel().calculate(False).y_axis(heatmap.YAxisConfig().unit(units.Joule))
             .cell_values(heatmap.CellValues().unit(units.RequestsPerSecond))
             .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Oranges").steps(64)
                    .scale(HeatmapColorScale.EXPONENTIAL).exponent(0.5)))
    panel = _panel(panel, "Energy per request", units.RequestsPerSecond, description, span=12)
    query = f"sum by (le) (rate(jouletrace_request_energy_joules_bucket{{{selector}}}{RATE}))"
    return panel.with_target(prometheus.Dataquery().ref_id("A").format(PromQueryFormat.HEATMAP).expr(query)
                             .legend_format("{{le}}"))


def _limit_dashed(panel, series: str = ".*limit.*"):
    """Limit series (power limits; budgets, with `series` naming them) drawn dashed, so the power line is
    seen against them."""
    dashed = DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})
    return panel.override_by_regexp(series, [dashed])


def _thresholds(panel, value: float, below: str, above: str):
    """Colours values below and from `value` on (the level at which the panel's description says to act)."""
    steps = [Threshold(None, below), Threshold(value, above)]
    return panel.thresholds(dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))


def _span_ratio(panel):
    """A red line under 95 % of the engine's tokens seen in spans."""
    return _thresholds(panel, 0.95, "red", "green").thresholds_style(
        GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))


def _zero_where_none(expr: str, by: str, selector: str, present: str = "jouletrace_gpu_up") -> str:
    """`expr`, and 0 for each group (`by`) of the `present` series (by default, of GPUs) that has no series in
    it: counters of errors exist only once an error happened, and a flat zero says more than no data."""
    return f"{expr} or on ({by}) 0 * max by ({by}) ({present}{{{selector}}})"


def _powercap_panels(by: str, pods: str, models: str, gpus: str, changes: tuple[str, str]) -> list:
    """The power-capping row's panels for the exporters grouped `by` (labels ending in `pod`): the advice for
    the models `models` selects beside the enforced limit and power of the GPUs `gpus` selects, headroom,
    whether there is data to advise, and the limit changes of the exporters `pods` selects, summed by
    `changes[0]` (labels ending in `action`) with legend `changes[1]`. All of it reads docs/powercap.md."""
    advice = f"{by}, model, basis, deadline_ms"
    advised = _limit_dashed(_panel(
        timeseries.Panel(), "Advised and enforced power limit", units.Watt,
        "The power limit per GPU each exporter advises for each model and latency deadline "
        "(--powercap-deadlines): of the limits it observed, the one with the least energy per output token whose "
        "latency (basis: median ITL, p99 TPOT or generation latency) meets the deadline; with --powercap-budget, "
        "also the limit that serves the most within the budget. Beside it the highest enforced limit among the "
        "pod's GPUs (dashed: the cap in force, whoever set it) and its busiest GPU's average power. No advice "
        "line until windows at two limits were observed (advice status below). An enforced limit above the "
        "advice spends energy the deadline does not need: lower it, by the admin API or a power sweep. Advice "
        "from the exporter's own history compares limits only as well as the load was alike.",
        (f"max by ({advice}) (jouletrace_powercap_recommended_watts{{{models}}})",
         "{{pod}} {{model}} {{basis}} within {{deadline_ms}} ms"),
        (f"max by ({advice}) (jouletrace_powercap_budget_recommended_watts{{{models}}})",
         "{{pod}} {{model}} {{basis}} within {{deadline_ms}} ms and the budget"),
        (f"max by ({by}) (jouletrace_gpu_power_limit_watts{{{gpus}}})", "{{pod}} enforced limit"),
        (f"max by ({by}) (rate(jouletrace_gpu_energy_joules_total{{{gpus}}}{RATE}))", "{{pod}} power, busiest GPU"),
        span=12))
    headroom = _panel(
        timeseries.Panel(), "Power headroom per GPU", units.Watt,
        "Enforced power limit minus the 99th percentile of power over the exporter's window, per GPU "
        "(docs/powercap.md#headroom). Near zero: the GPU is power-capped. Large all the time: the GPU never "
        "needs its limit, so a lower limit would cost no speed, or the GPU is idle.",
        (f"max by ({by}, gpu) (jouletrace_power_headroom_watts{{{gpus}}})", "{{pod}} GPU {{gpu}}"), span=12).min(0)
    status = _panel(
        statetimeline.Panel().mappings([ValueMap({"0": ValueMappingResult(text="advising", color="green"),
                                                  "1": ValueMappingResult(text="not enough data", color="orange")})]),
        "Power-cap advice status", units.Short,
        "Whether each exporter has data enough to advise a limit for each model: not until it has observed "
        "windows (--window) at two distinct power limits, each held through the window on all its GPUs; a "
        "row with no model is an exporter that has observed no window yet. An exporter whose limit never "
        "changes never advises: run a power sweep (jouletrace loadgen sweep --power-limits) or hold a second "
        "limit for a while.",
        (_zero_where_none(f"max by ({by}, model) (jouletrace_powercap_insufficient_data{{{models}}})",
                          f"{by}, model", models, "jouletrace_powercap_limits_observed"), "{{pod}} {{model}}"))
    observed = _thresholds(_panel(
        stat.Panel(), "Power limits observed", units.Short,
        "Distinct power limits among the windows each exporter keeps for advice (its last 1,440 windows), per "
        "model. Below 2 there is no advice. A window counts only when one limit held through it on all the "
        "exporter's GPUs.",
        (f"max by ({by}, model) (jouletrace_powercap_limits_observed{{{models}}})", "{{pod}} {{model}}")),
        2, "orange", "green")
    changed = _panel(
        timeseries.Panel().line_interpolation(LineInterpolation.STEP_AFTER), "Power-limit changes", units.Short,
        "Power-limit changes the exporters made since they started, by action: set (the admin API, "
        "--powercap-actuation on), rollback (the latency guard put back the limits before a set whose windows "
        "missed --powercap-guard-deadline), restore (DELETE /api/v1/powercap, or the exporter's stop putting "
        "the original limits back). Flat at 0 while actuation is off or unused. A rollback means a limit was "
        "too low for the deadline: the audit log (--powercap-audit-log) says which, when and who set it.",
        (f"sum by ({changes[0]}) (jouletrace_powercap_changes_total{{{pods}}})", changes[1])).min(0)
    return [advised, headroom, status, observed, changed]


def _per_output(family: str, unit: str, by: str, selector: str) -> str:
    """The window gauges `<family>_per_million_output_tokens<unit>`, `_per_image<unit>` and `_per_video<unit>`
    as one set of series, averaged `by` and labelled `per`."""
    parts = [f'label_replace({family}_per_{name}{unit}{{{selector}}}, "per", "{per}", "", "")'
             for name, per in (("million_output_tokens", "1M output tokens"), ("image", "image"), ("video", "video"))]
    return f"avg by ({by}, per) ({' or '.join(parts)})"


def _variable(name: str, label: str, query: str, description: str, multi: bool = True):
    var = (dash.QueryVariable(name).label(label).description(description).query(query).datasource(DATASOURCE)
           .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.NATURAL_ASC))
    return var.multi(True).include_all(True).all_value(".*") if multi else var


def _dashboard(uid: str, title: str, description: str):
    link = (dash.DashboardLink("jouletrace").type(DashboardLinkType.DASHBOARDS).tags([TAG]).as_dropdown(True)
            .include_vars(True).keep_time(True))
    datasource = (dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
                  .description("The Prometheus that scrapes the jouletrace exporters."))
    return (dash.Dashboard(title).uid(uid).description(description).tags([TAG]).time("now-1h", "now").refresh("30s")
            .timezone("browser").link(link).with_variable(datasource))


def _numbered(builder):
    """The built dashboard with its panels numbered in order (Grafana keys panel state and links by id)."""
    model = builder.build()
    for number, panel in enumerate(model.panels, 1):
        panel.id_val = number
    return model


def overview():
    ns = 'namespace=~"$namespace"'
    tokens = f"sum by (model) (rate(jouletrace_model_output_tokens_total{{{ns}}}{RATE}))"
    gpu_power = f"sum by (namespace, pod, gpu) (rate(jouletrace_gpu_energy_joules_total{{{ns}}}{RATE}))"
    pod_power = f"sum by (job, instance) (rate(jouletrace_gpu_energy_joules_total{{{ns}}}{RATE}))"
    pod_models = f"group by (job, instance, model) (jouletrace_model_requests_total{{{ns}}})"
    idle = f"sum by (namespace) (rate(jouletrace_gpu_idle_energy_joules_total{{{ns}}}{RATE}))"
    attributed = f"sum by (namespace) (rate(jouletrace_gpu_attributed_energy_joules_total{{{ns}}}{RATE}))"

    def histogram(series: str) -> str:
        return f"rate(jouletrace_request_energy_joules_{series}{{{ns}}}{RATE})"

    advised, headroom, advice_status, limits_observed, changes = _powercap_panels(
        "namespace, pod", ns, ns, ns, ("action", "{{action}}"))
    # the power-budget row: every node with the chosen topology key, labelled with its group
    group_of = 'group by (node, $group) (jouletrace_node_topology_info{$group!=""})'
    budget_nodes = f"jouletrace_node_power_max_watts * on (node) group_left ($group) {group_of}"
    node_buckets = (f"sum by ($group, node, le) (rate(jouletrace_node_power_watts_bucket{RATE}) "
                    f"* on (node) group_left ($group) {group_of})")

    return _numbered(
        _dashboard("jouletrace-overview", "jouletrace / Fleet overview",
                   "Where an inference fleet's joules go: energy per token and per request by model, GPU power "
                   "against its limits, the batch and KV-cache load that explain the energy, data quality and "
                   "exporter health.")
        .with_variable(_variable("namespace", "Namespace", "label_values(jouletrace_build_info, namespace)",
                                 "Kubernetes namespaces of the jouletrace exporters (the `namespace` target label)."))
        .with_variable(_variable("job", "Scrape job",
                                 'label_values(jouletrace_build_info{namespace=~"$namespace"}, job)',
                                 "Prometheus scrape jobs that collect jouletrace exporters, for their `up` series.")
                       .hide(VariableHide.HIDE_VARIABLE))
        .with_variable(_variable("pod_namespace", "Inference namespace",
                                 'label_values(jouletrace_pod_energy_joules_total{namespace=~"$namespace"}, '
                                 'k8s_namespace)',
                                 "Kubernetes namespaces of the inference pods whose requests node-mode exporters "
                                 "attribute energy to (the pod series' `k8s_namespace` label), not the exporters' "
                                 "own namespace."))
        .with_variable(dash.CustomVariable("group").label("Group by").values("rack,row,pdu")
                       .description("The topology key the power-budget row sums nodes by (a label of "
                                    "jouletrace_node_topology_info, --topology)."))
        .with_row(dash.Row("Energy efficiency by model, beside the load that explains it"))
        .with_panel(_panel(
            timeseries.Panel(), "Energy per output token", units.Joule,
            "Energy attributed to requests divided by the output tokens generated, per model, over the fleet; "
            "idle energy is not in it (see idle energy share). It falls as batches grow, since each decode step's "
            "energy is shared by more tokens, and rises with long prompts. A rise with no change in batch size or "
            "KV-cache use (the panels beside) points at the GPUs: check power caps and clocks in the drill-down.",
            (f"sum by (model) (rate(jouletrace_model_energy_joules_total{{{ns}}}{RATE})) / {tokens}", "{{model}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Running batch per engine", units.Short,
            "Requests in the engine's running batch (vLLM num_requests_running), averaged over the engines of "
            "each model. Bigger batches mean fewer joules per token until the GPU is compute-bound. A batch "
            "pinned at max_num_seqs with requests waiting means the engine is full: add replicas or raise "
            "max_num_seqs if the KV cache allows.",
            (f"avg by (model) (jouletrace_engine_requests_running{{{ns}}})", "{{model}}")))
        .with_panel(_panel(
            timeseries.Panel(), "KV-cache usage", units.PercentUnit,
            "Fraction of the engines' KV cache in use, averaged over the engines of each model. Near 100 % the "
            "engine preempts sequences and recomputes them, which costs energy for no new tokens: lower "
            "max_num_seqs or max_model_len, or give the engine more GPU memory.",
            (f"avg by (model) (jouletrace_engine_kv_cache_usage_ratio{{{ns}}})", "{{model}}")).max(1))
        .with_panel(_panel(
            timeseries.Panel(), "Throughput per watt", TOKENS_PER_S_PER_W,
            "Output tokens per second per watt of all the GPU power of the pods serving each model, static power "
            "included (that is, output tokens per joule measured). It is the fleet's efficiency as the ML.ENERGY "
            "study defines it: higher is better. A fall with steady load means energy went elsewhere: see idle "
            "share and power below.",
            (f"{tokens} / sum by (model) ({pod_power} * on (job, instance) group_right () {pod_models})",
             "{{model}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Requests waiting", units.Short,
            "Requests queued in the engines of each model, not yet running. A steady queue means the replicas "
            "are saturated: latency grows while energy per token is already at its best. Add replicas.",
            (f"sum by (model) (jouletrace_engine_requests_waiting{{{ns}}})", "{{model}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Output tokens", TOKENS_PER_S,
            "Output tokens per second generated for each model, counted from the request spans. It is the "
            "numerator of throughput per watt and the denominator of energy per token.",
            (tokens, "{{model}}")))
        .with_row(dash.Row("GPU power"))
        .with_panel(_limit_dashed(_panel(
            timeseries.Panel(), "Power and enforced limit per GPU", units.Watt,
            "Average power of each GPU from its energy counter (solid) and its enforced power limit (dashed). "
            "Power at the limit means the cap throttles clocks (see clocks-event reasons in the drill-down): "
            "raising the limit buys speed at more joules per token, lowering it saves energy when latency allows.",
            (gpu_power, "{{pod}} GPU {{gpu}}"),
            (f"max by (namespace, pod, gpu) (jouletrace_gpu_power_limit_watts{{{ns}}})", "{{pod}} GPU {{gpu}} limit"),
            span=16)))
        .with_panel(_panel(
            timeseries.Panel(), "Idle energy share", units.PercentUnit,
            "Share of the finalized GPU energy spent while no request ran, per namespace. Idle energy is paid "
            "for no token: a high share means over-provisioned replicas; scale them down or consolidate models.",
            (f"{idle} / ({idle} + {attributed})", "{{namespace}}")).min(0).max(1))
        .with_panel(_panel(
            timeseries.Panel(), "Power per inference pod (node mode)", units.Watt,
            "GPU power attributed to the requests of each inference pod, from node-mode exporters (--node-mode on), "
            "which give each GPU's energy to the pods holding it: on a GPU shared by time-slicing each pod sees "
            "its share, not the whole GPU. The inference namespace picks the pods' own namespaces, which differ "
            "from the exporters'. Empty without node mode; a pod missing here has spans that do not name it "
            "(k8s/README.md).",
            ("sum by (k8s_namespace, k8s_pod) (rate(jouletrace_pod_energy_joules_total"
             f'{{{ns}, k8s_namespace=~"$pod_namespace"}}{RATE}))', "{{k8s_namespace}}/{{k8s_pod}}"), span=24))
        .with_row(dash.Row("Power capping"))
        .with_panel(advised).with_panel(headroom).with_panel(advice_status).with_panel(limits_observed)
        .with_panel(changes)
        .with_row(dash.Row("Requests"))
        .with_panel(_energy_heatmap(
            ns, "Distribution of the energy attributed to each finished request (requests per second in each "
                "energy bucket), all models. Long reasoning outputs and large prompts sit high; a band moving "
                "up at steady traffic means each request costs more: compare energy per token."))
        .with_panel(_panel(
            timeseries.Panel(), "Energy per response", units.Joule,
            "Mean and 95th-percentile energy of a finished request, per model, from the request energy "
            "histogram. Energy per response is energy per token times response length: if it rises while "
            "energy per token holds, responses got longer (check max_tokens and the workload).",
            (f"sum by (model) ({histogram('sum')}) / sum by (model) ({histogram('count')})", "{{model}} mean"),
            (f"histogram_quantile(0.95, sum by (model, le) ({histogram('bucket')}))",
             "{{model}} p95"), span=12))
        .with_row(dash.Row("Cost and carbon"))
        .with_panel(_panel(
            timeseries.Panel(), "Energy cost per output", units.Short,
            "Cost of the energy attributed to each model per million output tokens, per image and per video, over "
            "the exporters' window, at the electricity price they are given (--electricity-price or --grid-file, "
            "docs/cost.md), averaged over the exporters. Idle energy is not in it. It moves with energy per token "
            "and with the price: if it rises at a steady price, look at the efficiency row.",
            (_per_output("jouletrace_model_cost", "", "model, currency", ns), "{{model}} {{currency}} per {{per}}"),
            span=12))
        .with_panel(_panel(
            timeseries.Panel(), "Emissions per output", units.Gram,
            "Grams CO2e of the energy attributed to each model per million output tokens, per image and per video, "
            "at the grid carbon intensity the exporters are given (--grid-carbon-intensity or --grid-file), "
            "averaged over the exporters. Shifting deferrable load to hours of low intensity lowers it at the "
            "same energy.",
            (_per_output("jouletrace_model_co2e", "_grams", "model", ns), "{{model}} per {{per}}"), span=12))
        .with_panel(_panel(
            timeseries.Panel(), "Energy spend per hour", units.Short,
            "What the energy attributed to each model costs per hour, by currency, each joule at the price in "
            "effect when it was attributed. Empty where no exporter has a price. Idle energy comes on top (see the "
            "idle energy share): a high share is money paid for no token.",
            (f"sum by (model, currency) (rate(jouletrace_model_cost_total{{{ns}}}{RATE})) * 3600",
             "{{model}} {{currency}}/h"), span=12))
        .with_panel(_panel(
            timeseries.Panel(), "Emissions per hour", units.Gram,
            "Grams CO2e per hour of the energy attributed to each model, each joule at the grid carbon intensity in "
            "effect when it was attributed. Empty where no exporter has an intensity. Idle energy emits on top.",
            (f"sum by (model) (rate(jouletrace_model_co2e_grams_total{{{ns}}}{RATE})) * 3600", "{{model}} per hour"),
            span=12))
        .with_row(dash.Row("Data quality"))
        .with_panel(_span_ratio(_panel(
            timeseries.Panel(), "Spans per engine token", units.PercentUnit,
            "Output tokens seen in request spans per output token the engine itself counted, since the exporter's "
            "first scrape of the engine. Below 100 % spans are missing, so energy per token is overstated and "
            "idle share too: check the engine's OTLP endpoint and the exporter's intake rejections.",
            (f"min by (namespace, pod, model) (jouletrace_engine_span_token_ratio{{{ns}}})", "{{pod}} {{model}}"))))
        .with_panel(_panel(
            timeseries.Panel(), "Late spans", units.CountsPerSecond,
            "Spans that arrived after part (partial) or all (whole) of their request's time had been split: that "
            "time got no energy. Settlement waits for the engine's running requests (--engine-metrics) up to "
            "--max-hold, else for a delay adapted to the spans' age: late spans mean a hold ran out (raise "
            "--max-hold), no engine scrape (give --engine-metrics), or a fixed --settle-delay that is too short.",
            (f"sum by (part) (rate(jouletrace_spans_late_total{{{ns}}}{RATE}))", "{{part}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Attribution lag", units.Seconds,
            "How far behind now the energy of each exporter has been split among requests. It should sit near "
            "the settle hold (jouletrace_settle_hold_seconds) plus a counter interval; growing without bound means a "
            "GPU stopped answering or the exporter is overloaded: see exporter health.",
            (f"time() - min by (namespace, pod) (jouletrace_gpu_finalized_timestamp_seconds{{{ns}}})", "{{pod}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Span sender clock offset", units.Seconds,
            "Least (arrival - end) of each model's request spans over 2 minutes: the senders' clock lag plus the "
            "shortest export delay. Below zero the senders' clocks are ahead (their spans are corrected); seconds "
            "above zero, near the settle hold, make spans late: check NTP on the inference hosts.",
            (f"min by (namespace, pod, model) (jouletrace_span_clock_offset_seconds{{{ns}}})", "{{pod}} {{model}}"),
            span=24))
        .with_row(dash.Row("Exporter health"))
        .with_panel(_panel(
            stat.Panel(), "Exporters up", units.Short,
            "jouletrace exporters that answered their last scrape, of all scraped. Fewer up than scraped means "
            "lost energy data for those pods: check the exporter container's logs and restarts.",
            ('sum(up{job=~"$job", namespace=~"$namespace"})', "up"),
            ('count(up{job=~"$job", namespace=~"$namespace"})', "scraped"), span=4))
        .with_panel(_panel(
            stat.Panel(), "GPUs up", units.Short,
            "GPUs whose last read succeeded, of all the GPUs the exporters sample. A GPU down is retried every "
            "second; one that stays down needs its driver checked (nvidia-smi) and its read errors below.",
            (f"sum(jouletrace_gpu_up{{{ns}}})", "up"), (f"count(jouletrace_gpu_up{{{ns}}})", "sampled"), span=4))
        .with_panel(_panel(
            timeseries.Panel(), "GPU read errors", units.CountsPerSecond,
            "Failed GPU reads per second per pod (NVML errors on real GPUs), zero where none. Sustained errors "
            "leave gaps that are integrated from power or lost: the drill-down splits them by call and code.",
            (_zero_where_none(f"sum by (namespace, pod) (rate(jouletrace_gpu_read_errors_total{{{ns}}}{RATE}))",
                              "namespace, pod", ns), "{{pod}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Power sample age", units.Seconds,
            "Age of the oldest last power sample among each pod's GPUs. It should stay near the power interval "
            "(0.1 s); seconds mean the sampler stalls: the exporter lacks CPU, or NVML calls hang.",
            (f"max by (namespace, pod) (jouletrace_gpu_sample_age_seconds{{{ns}}})", "{{pod}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Span intake rejections", units.CountsPerSecond,
            "Spans or OTLP messages the exporters refused, by reason. queue_full and shed: more requests wait for "
            "attribution than --max-pending, or too many bytes are in flight (senders retry). too_large: raise "
            "--max-message-bytes. too_slow: a body took over 30 s. malformed or invalid_span: the sender's spans "
            "are broken.",
            (f"sum by (reason) (rate(jouletrace_spans_rejected_total{{{ns}}}{RATE}))", "{{reason}}")))
        .with_panel(_panel(
            timeseries.Panel(), "Engine scrape failures", units.CountsPerSecond,
            "Failed scrapes of the engines' /metrics by reason (down, slow, garbage). While they fail, batch, "
            "KV-cache and span-ratio panels go stale: check --engine-metrics and the engine's health.",
            (f"sum by (namespace, pod, reason) (rate(jouletrace_engine_scrape_failures_total{{{ns}}}{RATE}))",
             "{{pod}} {{reason}}")))
        .with_row(dash.Row("Power budget"))
        .with_panel(_limit_dashed(_panel(
            timeseries.Panel(), "Group power against its budget", units.Watt,
            "Per rack, row or PDU (Group by): the sum of its nodes' 100 ms power peaks over the exporters' "
            "window (--power-peak-window), every namespace, against its budget (dashed, "
            "jouletrace_power_budget_watts). The sum bounds the group's own 100 ms peak from above. Above 90 % "
            "for 5 minutes raises JouletracePowerBudgetNear: lower the group's GPU power limits (jouletrace plan "
            "budget) or move load out (docs/power-budget.md).",
            (f"sum by ($group) ({budget_nodes})", "{{$group}}"),
            ('max by ($group) (jouletrace_power_budget_watts{$group!=""})', "{{$group}} budget")), ".*budget.*"))
        .with_panel(_panel(
            timeseries.Panel(), "Node power distribution", units.Watt,
            "Median and 99th percentile of each node's power over 100 ms intervals, from its histogram "
            "(jouletrace_node_power_watts), with its group. A p99 near the node's peak with a low median is a "
            "bursty node whose peaks a budget must carry; p99 close to the nameplate means its GPUs run at their "
            "limits.",
            (f"histogram_quantile(0.5, {node_buckets})", "{{$group}} {{node}} median"),
            (f"histogram_quantile(0.99, {node_buckets})", "{{$group}} {{node}} p99")))
        .with_panel(_thresholds(_panel(
            timeseries.Panel(), "Headroom in servers", units.Short,
            "How many more servers each group's budget holds: its budget less the sum of its nodes' peaks, "
            "divided by the largest peak one of its servers (all the exporters of a node together) showed over "
            "the last hour. Below 1 (red) the group cannot take another such server at its peak; below 0 its "
            "peaks exceed the budget.",
            (f'(max by ($group) (jouletrace_power_budget_watts{{$group!=""}}) - on ($group) sum by ($group) '
             f"({budget_nodes})) / on ($group) max by ($group) (sum by (node) "
             f"(max_over_time(jouletrace_node_power_max_watts[1h])) * on (node) group_left ($group) {group_of})",
             "{{$group}}")), 1, "red", "green").thresholds_style(
                 GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE)))
    )


def deployment():
    pods = 'namespace="$namespace", pod=~"$pod"'
    models = f'{pods}, model=~"$model"'
    gpus = f'{pods}, gpu=~"$gpu"'
    advised, headroom, advice_status, limits_observed, changes = _powercap_panels(
        "pod", pods, models, gpus, ("pod, action", "{{pod}} {{action}}"))
    return _numbered(
        _dashboard("jouletrace-deployment", "jouletrace / Deployment",
                   "One deployment's pods: energy per token and per request, engine load, and a row per GPU with "
                   "power, clocks, activity and throttle reasons.")
        .with_variable(_variable("namespace", "Namespace", "label_values(jouletrace_build_info, namespace)",
                                 "The deployment's Kubernetes namespace.", multi=False))
        .with_variable(_variable("pod", "Pod", 'label_values(jouletrace_build_info{namespace="$namespace"}, pod)',
                                 "Pods of the deployment whose jouletrace exporters are scraped."))
        .with_variable(_variable("model", "Model", f"label_values(jouletrace_model_requests_total{{{pods}}}, model)",
                                 "Model labels of the requests these pods served."))
        .with_variable(_variable("gpu", "GPU", f"label_values(jouletrace_gpu_up{{{pods}}}, gpu)",
                                 "GPU indices in these pods: each selected index gets a row of its own."))
        .with_row(dash.Row("Energy"))
        .with_panel(_panel(
            timeseries.Panel(), "Energy per output token", units.Joule,
            "Each exporter's attributed energy per output token over its sliding window (--window). Compare pods "
            "of one model: one above the others has slower or power-capped GPUs, or smaller batches.",
            (f"jouletrace_model_energy_per_output_token_joules{{{models}}}", "{{pod}} {{model}}"), span=12))
        .with_panel(_panel(
            timeseries.Panel(), "Throughput per watt", TOKENS_PER_S_PER_W,
            "Each exporter's output tokens per second per watt of all its GPUs' power over its window, static "
            "power included. Low values with a small running batch mean the pod is under-used.",
            (f"jouletrace_model_output_tokens_per_second_per_watt{{{models}}}", "{{pod}} {{model}}"), span=12))
        .with_panel(_panel(
            timeseries.Panel().stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40),
            "Attributed and idle power", units.Watt,
            "Finalized GPU power of each pod, split into what requests used (attributed) and what was spent while "
            "none ran (idle); stacked, they make the measured power. A thick idle band is capacity paid for and "
            "unused: scale the deployment down.",
            (f"sum by (pod) (rate(jouletrace_gpu_attributed_energy_joules_total{{{pods}}}{RATE}))",
             "{{pod}} attributed"),
            (f"sum by (pod) (rate(jouletrace_gpu_idle_energy_joules_total{{{pods}}}{RATE}))", "{{pod}} idle"),
            span=12))
        .with_panel(_energy_heatmap(
            models, "Distribution of the energy of each finished request of the selected pods and models "
                       "(requests per second in each energy bucket). A second band high up is a class of long "
                       "requests: find it in the traces (--forward-otlp adds each request's energy to its span)."))
        .with_row(dash.Row("Engine"))
        .with_panel(_panel(
            timeseries.Panel(), "Output and input tokens", TOKENS_PER_S,
            "Tokens per second of finished requests per pod, from their spans. Input-heavy (long prompt) traffic "
            "costs more prefill energy per output token.",
            (f"sum by (pod) (rate(jouletrace_model_output_tokens_total{{{models}}}{RATE}))", "{{pod}} output"),
            (f"sum by (pod) (rate(jouletrace_model_input_tokens_total{{{models}}}{RATE}))", "{{pod}} input")))
        .with_panel(_panel(
            timeseries.Panel(), "Running and waiting requests", units.Short,
            "The engine's running batch and its queue per pod. The running batch is the main lever on energy per "
            "token; a queue behind a full batch means the pod is saturated.",
            (f"sum by (pod) (jouletrace_engine_requests_running{{{models}}})", "{{pod}} running"),
            (f"sum by (pod) (jouletrace_engine_requests_waiting{{{models}}})", "{{pod}} waiting")))
        .with_panel(_panel(
            timeseries.Panel(), "KV-cache usage", units.PercentUnit,
            "Fraction of each engine's KV cache in use. Near 100 % the engine preempts and recomputes sequences, "
            "energy spent twice: lower max_num_seqs or give the cache more memory.",
            (f"max by (pod) (jouletrace_engine_kv_cache_usage_ratio{{{models}}})", "{{pod}}")).max(1))
        .with_panel(_span_ratio(_panel(
            timeseries.Panel(), "Spans per engine token", units.PercentUnit,
            "Output tokens in spans per output token the engine counted. Below 100 % spans are lost between the "
            "engine and the exporter: check the engine's tracing settings and the exporter's rejections.",
            (f"min by (pod) (jouletrace_engine_span_token_ratio{{{models}}})", "{{pod}}"))))
        .with_panel(_panel(
            timeseries.Panel(), "Engine metrics up", units.BoolOnOff,
            "1 while the exporter can scrape the engine's /metrics. At 0 the engine panels are stale and the span "
            "ratio cannot be computed: check the engine and --engine-metrics.",
            (f"max by (pod) (jouletrace_engine_up{{{pods}}})", "{{pod}}")).min(0).max(1))
        .with_panel(_panel(
            timeseries.Panel(), "GPU read errors", units.CountsPerSecond,
            "Failed GPU reads per second by GPU, call and code, zero where none. Persistent errors mark a GPU "
            "down; gpu_lost on simulated GPUs means the engine's device file is missing.",
            (_zero_where_none(f"sum by (pod, gpu, call, code) (rate(jouletrace_gpu_read_errors_total{{{gpus}}}{RATE}))",
                              "pod, gpu", gpus), "{{pod}} GPU {{gpu}} {{code}}")))
        .with_row(dash.Row("Power capping"))
        .with_panel(advised).with_panel(headroom).with_panel(advice_status).with_panel(limits_observed)
        .with_panel(changes)
        .with_row(dash.Row("GPU $gpu").repeat("gpu"))
        .with_panel(_limit_dashed(_panel(
            timeseries.Panel(), "Power and limit", units.Watt,
            "Sampled power draw, the average power from the energy counter, and the enforced limit (dashed). Power "
            "pinned at the limit while the sw_power_cap reason is active means the cap slows this GPU.",
            (f"max by (pod) (jouletrace_gpu_power_watts{{{gpus}}})", "{{pod}} sampled"),
            (f"sum by (pod) (rate(jouletrace_gpu_energy_joules_total{{{gpus}}}{RATE}))", "{{pod}} average"),
            (f"max by (pod) (jouletrace_gpu_power_limit_watts{{{gpus}}})", "{{pod}} limit"))))
        .with_panel(_panel(
            timeseries.Panel(), "SM clock", units.Hertz,
            "SM clock. It drops when a power cap or heat throttles the GPU (see the reasons beside); a clock low "
            "under load with no reason active points at application clocks set by hand.",
            (f"max by (pod) (jouletrace_gpu_sm_clock_hertz{{{gpus}}})", "{{pod}}")))
        .with_panel(_thresholds(_panel(
            statetimeline.Panel().color_scheme(dash.FieldColor().mode(FieldColorModeId.THRESHOLDS)),
            "Clocks-event (throttle) reasons", units.BoolOnOff,
            "Which clocks-event reasons hold. sw_power_cap: the power limit caps clocks (raise the limit for "
            "speed, or accept it for efficiency). sw_thermal, hw_thermal, hw_slowdown, hw_power_brake: cooling "
            "or power delivery trouble; have the node checked.",
            (f"max by (pod, reason) (jouletrace_gpu_clocks_event_active{{{gpus}}})", "{{pod}} {{reason}}")),
            1, "green", "red"))
        .with_panel(_panel(
            timeseries.Panel(), "Activity", units.PercentUnit,
            "Kernel utilization (time a kernel ran), and where the GPU has GPM, SM occupancy, tensor pipe activity "
            "and DRAM bandwidth. High utilization with low occupancy or tensor activity means small batches or "
            "memory-bound decode: larger batches use the same power for more tokens.",
            (f"max by (pod) (jouletrace_gpu_utilization_ratio{{{gpus}}})", "{{pod}} utilization"),
            (f"max by (pod) (jouletrace_gpu_sm_occupancy_ratio{{{gpus}}})", "{{pod}} SM occupancy"),
            (f"max by (pod) (jouletrace_gpu_tensor_activity_ratio{{{gpus}}})", "{{pod}} tensor"),
            (f"max by (pod) (jouletrace_gpu_dram_bandwidth_utilization_ratio{{{gpus}}})", "{{pod}} DRAM"),
            span=12).max(1))
        .with_panel(_panel(
            timeseries.Panel(), "Memory", units.BytesIEC,
            "GPU memory in use and in all. vLLM takes most of it for the KV cache at start, so this stays flat; "
            "the KV-cache usage panel shows how full that reservation is.",
            (f"max by (pod) (jouletrace_gpu_memory_used_bytes{{{gpus}}})", "{{pod}} used"),
            (f"max by (pod) (jouletrace_gpu_memory_total_bytes{{{gpus}}})", "{{pod}} total"), span=12))
    )


DASHBOARDS = (overview, deployment)
