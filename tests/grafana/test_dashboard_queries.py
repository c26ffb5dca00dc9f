"""Every PromQL query of the dashboards runs against a real Prometheus scraping a simulated fleet
(tests/integration/fleet.py) and returns data: template variables first, through Prometheus' label-values
API as Grafana resolves them (a custom variable stands for its first value), then every panel target with
the variables substituted. The inference-pod panel follows the inference namespace, not the exporters';
the power-capping panels answer before the fleet's second power limit (no advice yet, actuation unused)
and after it."""

import json
import pathlib
import re
import sys
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from fleet import INFERENCE_POD, POWER_BUDGET_W, POWER_LIMITS_W, TARGET_LABELS, Fleet  # noqa: E402
from servers import http_get  # noqa: E402

BOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))}
BUILTINS = {"__rate_interval": "1m", "__interval": "15s"}
LABEL_VALUES = re.compile(r"label_values\((?:(.*),\s*)?(\w+)\)")
VARIABLES = [(b, v["name"]) for b, board in BOARDS.items() for v in board["templating"]["list"] if v["type"] == "query"]
TARGETS = [(b, p["title"], t["refId"], t["expr"]) for b, board in BOARDS.items() for p in board["panels"]
           for t in p.get("targets", [])]
EXPRS = {(b, title, ref): expr for b, title, ref, expr in TARGETS}


def row_titles(board: dict, row: str) -> list[str]:
    """Titles of the panels under the row titled `row`."""
    titles, current = [], None
    for p in board["panels"]:
        if p["type"] == "row":
            current = p["title"]
        elif current == row:
            titles.append(p["title"])
    return titles


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    yield f
    f.stop()


def substitute(expr: str, values: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)


def regex_escape(value: str) -> str:
    """What Grafana's Prometheus datasource puts in for a multi-value or all-value variable."""
    return re.sub(r"([$^*{}\[\]'+?.()|\\])", r"\\\\\1", value)


@pytest.fixture(scope="module")
def resolved(fleet) -> dict[str, tuple[dict[str, list[str]], dict[str, str]]]:
    """Per dashboard: the values of each query variable on the fleet, resolved in order, and what each
    `$name` stands for in a query (the first value, as Grafana formats it)."""
    out = {}
    for name, board in BOARDS.items():
        found, values = {}, dict(BUILTINS)
        for var in board["templating"]["list"]:
            if var["type"] == "custom":
                values[var["name"]] = var["query"].split(",")[0]
            if var["type"] != "query":
                continue
            selector, label = LABEL_VALUES.fullmatch(var["query"]).groups()
            params = urllib.parse.urlencode({"match[]": substitute(selector, values)} if selector else {})
            status, body = http_get(f"http://127.0.0.1:{fleet.prometheus.port}/api/v1/label/{label}/values?{params}")
            assert status == 200, body
            options = found[var["name"]] = json.loads(body)["data"]
            if options:
                multi = var.get("multi") or var.get("includeAll")
                values[var["name"]] = regex_escape(options[0]) if multi else options[0]
        out[name] = found, values
    return out


@pytest.mark.parametrize("board,variable", VARIABLES, ids=[f"{b}-{v}" for b, v in VARIABLES])
def test_variable_resolves(resolved, board, variable):
    assert resolved[board][0][variable], f"{board}: ${variable} resolves to no value on the fleet"


@pytest.mark.parametrize("board,title,ref,expr", TARGETS, ids=[f"{b}-{t}-{r}" for b, t, r, _ in TARGETS])
def test_query_returns_data(fleet, resolved, board, title, ref, expr):
    promql = substitute(expr, resolved[board][1])
    assert fleet.query(promql), f"{board} / {title} / {ref} returned no data: {promql}"


def test_the_inference_namespace_shows_its_pods_where_the_exporters_namespace_shows_none(fleet, resolved):
    """Node-mode exporters run in a namespace of their own; the pod series carry the inference pods'."""
    found, values = resolved["jouletrace-overview"]
    assert found["namespace"] == [TARGET_LABELS["namespace"]] and found["pod_namespace"] == [INFERENCE_POD[0]]
    expr = EXPRS["jouletrace-overview", "Power per inference pod (node mode)", "A"]
    shown = fleet.query(substitute(expr, {**values, "pod_namespace": INFERENCE_POD[0]}))
    assert [(s["metric"]["k8s_namespace"], s["metric"]["k8s_pod"]) for s in shown] == [INFERENCE_POD]
    assert fleet.query(substitute(expr, {**values, "pod_namespace": TARGET_LABELS["namespace"]})) == []


@pytest.mark.parametrize("board", BOARDS)
def test_power_capping_panels_before_and_after_a_second_limit(fleet, resolved, board):
    """Before: one limit observed, so no advice and 'not enough data', and no change made; every query
    answers (no data, not an error). After the fleet set the second limit through the admin API: the
    advice among the two limits, the budget's within it, and one change of action `set`."""
    assert "Power headroom per GPU" in row_titles(BOARDS[board], "Power capping")

    def values(title: str, ref: str, at: float | None = None) -> dict[tuple, float]:
        series = fleet.query(substitute(EXPRS[board, title, ref], resolved[board][1]), at)
        return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in series}

    before = fleet.uncapped_at
    row = row_titles(BOARDS[board], "Power capping")
    for b, title, ref in EXPRS:
        if b == board and title in row:
            values(title, ref, before)  # raises where Prometheus answers an error
    advised = "Advised and enforced power limit"
    assert values(advised, "A", before) == {} and values(advised, "B", before) == {}
    assert set(values(advised, "C", before).values()) == {POWER_LIMITS_W[0]}
    assert set(values("Power-cap advice status", "A", before).values()) == {1.0}
    assert set(values("Power limits observed", "A", before).values()) == {1.0}
    assert {dict(k)["action"]: v for k, v in values("Power-limit changes", "A", before).items()} == \
        {"set": 0.0, "rollback": 0.0, "restore": 0.0}

    assert values(advised, "A") and set(values(advised, "A").values()) <= set(POWER_LIMITS_W)
    assert set(values(advised, "B").values()) == {max(w for w in POWER_LIMITS_W if w <= POWER_BUDGET_W)}
    assert set(values(advised, "C").values()) == {POWER_LIMITS_W[1]}
    assert set(values("Power-cap advice status", "A").values()) == {0.0}
    assert set(values("Power limits observed", "A").values()) == {2.0}
    assert {dict(k)["action"]: v for k, v in values("Power-limit changes", "A").items()} == \
        {"set": 1.0, "rollback": 0.0, "restore": 0.0}
