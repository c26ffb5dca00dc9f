"""Every PromQL query of the dashboards runs against a real Prometheus scraping a simulated fleet
(tests/integration/fleet.py) and returns data: template variables first, through Prometheus' label-values
API as Grafana resolves them (a custom variable stands for its first value), then every panel target with
the variables substituted."""

import json
import pathlib
import re
import sys
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from fleet import Fleet  # noqa: E402
from servers import http_get  # noqa: E402

BOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))}
BUILTINS = {"__rate_interval": "1m", "__interval": "15s"}
LABEL_VALUES = re.compile(r"label_values\((?:(.*),\s*)?(\w+)\)")
VARIABLES = [(b, v["name"]) for b, board in BOARDS.items() for v in board["templating"]["list"] if v["type"] == "query"]
TARGETS = [(b, p["title"], t["refId"], t["expr"]) for b, board in BOARDS.items() for p in board["panels"]
           for t in p.get("targets", [])]


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
